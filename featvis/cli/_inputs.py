"""What the command line's MODEL and IMAGE arguments may be, and how they are opened."""

from __future__ import annotations

import importlib
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featvis._backend import Backend
from featvis._errors import ArgumentError, BackendNotFoundError, ImageError, ModelError
from featvis._images import _load, read_image
from featvis.plugins import list_models, load

__all__ = ["DISPLAY_SIZE", "IMAGE_HELP", "MODEL_HELP", "for_display", "open_image", "open_model"]

MODEL_HELP = (
    "a model: a path to an .onnx file; a name (efficientnet_lite0, torchvision:alexnet, "
    "torchvision:resnet18:random ...; see `featvis models`); or package.module:callable, a "
    "function that returns a torch.nn.Module"
)
IMAGE_HELP = "an image file, or skimage:NAME for a scikit-image sample (skimage:astronaut)"

#: Files that hold pickles: loading one runs whatever code it contains.
_PICKLE_SUFFIXES = {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".tar"}
_CALLABLE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def _from_callable(spec: str, backend: str | None) -> Backend:
    module_name, _, attr = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ModelError(f"Cannot import {module_name!r} for model {spec!r}: {exc}") from None
    for part in attr.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise ModelError(
                f"{module_name!r} has no attribute {attr!r} (model {spec!r})."
            ) from None
    if not callable(target):
        raise ModelError(f"{spec!r} is not callable; it must be a function returning a model.")
    return load(target(), backend=backend)


def open_model(spec: str, *, backend: str | None = None) -> Backend:
    """A backend for the MODEL argument of the command line (see :data:`MODEL_HELP`)."""
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelError(f"No such ONNX file: {spec!r}.")
        return load(path, backend=backend)
    if path.suffix.lower() in _PICKLE_SUFFIXES:
        raise ModelError(
            f"featvis does not open pickled model files such as {spec!r}: unpickling runs any "
            "code the file contains. Export the model to ONNX (torch.onnx.export) and pass the "
            ".onnx file, or pass package.module:callable, a function of yours that builds the "
            "model and loads its weights (torch.load(..., weights_only=True))."
        )
    if path.is_file():
        raise ModelError(
            f"featvis cannot open {spec!r}: model files must be ONNX (.onnx). Export the model to "
            "ONNX, or pass package.module:callable returning a model an installed backend takes."
        )
    named = [model for model in list_models() if model.matches(spec)]
    if named:
        opened = named[0].load(spec)
        if backend is not None and opened.name != backend:
            raise ArgumentError(
                f"Model {spec!r} opens with the {opened.name!r} backend; "
                f"--backend {backend} applies to model files and callables. For ONNX, export "
                "it first (featvis demo --backend onnx does)."
            )
        return opened
    if _CALLABLE.match(spec):
        return _from_callable(spec, backend)
    names = ", ".join(m.name + ("NAME" if m.prefix else "") for m in list_models()) or "none"
    raise BackendNotFoundError(
        f"Unknown model {spec!r}. Pass an .onnx file, a model name ({names}), or "
        "package.module:callable."
    )


def open_image(spec: str) -> tuple[str, Any]:
    """``(label, image)`` for the IMAGE argument (a file path, or ``skimage:NAME``): the image
    decoded, as featvis's functions take it."""
    if spec.startswith("skimage:"):
        name = spec.partition(":")[2]
        import skimage.data

        loader = getattr(skimage.data, name, None)
        if not callable(loader) or name.startswith("_"):
            raise ImageError(f"scikit-image has no sample image {name!r} (try skimage:astronaut).")
        try:
            image = np.asarray(loader())
        except Exception as exc:  # a sample that must be downloaded fails offline
            raise ImageError(f"Cannot load scikit-image's sample {name!r}: {exc}") from None
        if image.ndim not in (2, 3):
            raise ImageError(f"scikit-image's sample {name!r} is not a 2-D image.")
        return f"scikit-image {name}", image
    path = Path(spec)
    if not path.is_file():
        raise ImageError(f"No such image file: {spec!r}.")
    # Decoded once here, upright and RGB (16-bit kept as float): every figure and the model
    # reuse it instead of decoding the file again.
    return path.name, _load(path)


#: The longer side of the image in the demo's and the report's figures, in pixels. The model
#: sees the full image (resized by its Preprocess); a 16-megapixel photo beside each map made
#: 15 MB PNGs and a 130 MB report.
DISPLAY_SIZE = 1024


def for_display(image: Any) -> np.ndarray:
    """``image`` as RGB uint8, shrunk (keeping its aspect) to at most :data:`DISPLAY_SIZE`."""
    rgb = read_image(image)
    height, width = rgb.shape[:2]
    scale = DISPLAY_SIZE / max(height, width)
    if scale >= 1:
        return rgb
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def parse_grid(text: str) -> tuple[int | None, int | None]:
    """``"8x12"`` -> (8, 12); either side may be ``?`` to compute it (``"8x?"``)."""
    match = re.fullmatch(r"\s*(\d+|\?)\s*[xX*,]\s*(\d+|\?)\s*", text)
    if not match:
        raise ArgumentError(
            f"--grid takes ROWSxCOLS, e.g. 8x12 (or 8x? to compute one), not {text!r}."
        )
    rows, cols = (None if part == "?" else int(part) for part in match.groups())
    return rows, cols
