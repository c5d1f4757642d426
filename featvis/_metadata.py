"""What featvis records about a model in a file it exports (an ONNX file's ``metadata_props``):
how images are prepared for it, and its class names, so the file opens as the model did.

Plain strings and JSON: the plugin that writes the file (torch's ``to_onnx``) and the one that
reads it (the ONNX backend) share this format through the core.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from featvis._errors import FeatvisError, ModelError
from featvis._images import Preprocess

__all__ = ["CATEGORIES_KEY", "PREPROCESS_KEY", "entries", "read"]

PREPROCESS_KEY = "featvis.preprocess"
CATEGORIES_KEY = "featvis.categories"


def entries(preprocess: Preprocess, categories: Sequence[str] | None) -> dict[str, str]:
    """The metadata to write: ``{key: JSON text}``."""
    out = {
        PREPROCESS_KEY: json.dumps(
            {
                "size": None if preprocess.size is None else list(preprocess.size),
                "mean": list(preprocess.mean),
                "std": list(preprocess.std),
            }
        )
    }
    if categories is not None:
        out[CATEGORIES_KEY] = json.dumps([str(name) for name in categories])
    return out


def read(props: Mapping[str, str], origin: str) -> tuple[Preprocess | None, list[str] | None]:
    """The preprocessing and class names recorded in ``props`` (None where absent).

    Raises
    ------
    ModelError
        If an entry is there but is not what featvis writes (the fix: pass ``preprocess=``, or
        set ``backend.categories``, and remove the entry from the file).
    """
    preprocess = categories = None
    text = props.get(PREPROCESS_KEY)
    if text is not None:
        try:
            value: Any = json.loads(text)
            size = value["size"]
            preprocess = Preprocess(
                size=None if size is None else (size[0], size[1]),
                mean=tuple(value["mean"]),
                std=tuple(value["std"]),
            )
        except (ValueError, TypeError, KeyError, IndexError, FeatvisError) as exc:
            raise ModelError(
                f"{origin} records its preprocessing in metadata {PREPROCESS_KEY!r}, but "
                f"{text[:80]!r} is not {{'size': [H, W], 'mean': [...], 'std': [...]}} ({exc}). "
                "Pass preprocess=featvis.Preprocess(...) to featvis.load to say how images "
                "are prepared."
            ) from None
    text = props.get(CATEGORIES_KEY)
    if text is not None:
        try:
            names = json.loads(text)
        except ValueError:
            names = None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ModelError(
                f"{origin} records its class names in metadata {CATEGORIES_KEY!r}, but it is "
                "not a JSON list of strings. Remove the entry, or set backend.categories."
            )
        categories = names
    return preprocess, categories
