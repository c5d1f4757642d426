"""What the command line's MODEL and IMAGE arguments may be, how they are opened, and the types
of its options (with messages in the command line's own words)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from PIL import Image

from featvis._backend import Backend
from featvis._errors import ArgumentError, BackendNotFoundError, ImageError, ModelError
from featvis._figures import MAX_SIZE
from featvis._images import _load
from featvis.plugins import PICKLE_SUFFIXES, list_models, load, pickle_refusal

__all__ = [
    "IMAGE_HELP",
    "MIN_IMAGE_SIDE",
    "MODEL_HELP",
    "add_max_size",
    "layer_list",
    "max_size",
    "open_image",
    "open_model",
    "parse_grid",
    "positive_int",
]

MODEL_HELP = (
    "a model: a path to an .onnx file; a name (efficientnet_lite0, torchvision:alexnet, "
    "torchvision:resnet18:random ...; see `featvis models`); or module:callable, a function "
    "that returns a torch.nn.Module (module is looked up in the current folder first, as "
    "uvicorn does, then in the installed packages; a file.py:callable works too)"
)
IMAGE_HELP = "an image file, or skimage:NAME for a scikit-image sample (skimage:astronaut)"

#: Images with a side shorter than this are refused: the model would see one stretched color.
MIN_IMAGE_SIDE = 16

_CALLABLE = re.compile(r"^(?P<module>[A-Za-z_][\w.]*|.+\.py):(?P<attr>[A-Za-z_][\w.]*)$")


@contextmanager
def _working_directory_importable() -> Iterator[None]:
    """The current folder first on ``sys.path`` for the block (as uvicorn and gunicorn do)."""
    cwd = os.getcwd()
    if cwd in sys.path:
        yield
        return
    sys.path.insert(0, cwd)
    try:
        yield
    finally:
        with suppress(ValueError):  # the block may have changed sys.path itself
            sys.path.remove(cwd)


def _import(module_name: str, spec: str) -> ModuleType:
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ModelError(f"No such Python file {module_name!r} for model {spec!r}.")
        found = importlib.util.spec_from_file_location(path.stem, path)
        if found is None or found.loader is None:
            raise ModelError(f"Cannot import {module_name!r} for model {spec!r}.")
        module = importlib.util.module_from_spec(found)
        sys.modules.setdefault(path.stem, module)
        found.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):  # the module itself is not there
            raise ModelError(
                f"Cannot import {module_name!r} for model {spec!r}: {exc}. featvis looks for it "
                f"in the current folder ({os.getcwd()}) and in the installed packages."
            ) from None
        raise ModelError(
            f"Cannot import {module_name!r} for model {spec!r}: it imports {exc.name!r}, which "
            f"is not installed ({exc})."
        ) from None


def _from_callable(spec: str, module_name: str, attr: str, backend: str | None) -> Backend:
    with _working_directory_importable():
        target: Any = _import(module_name, spec)
        for part in attr.split("."):
            try:
                target = getattr(target, part)
            except AttributeError:
                raise ModelError(
                    f"{module_name!r} has no attribute {attr!r} (model {spec!r})."
                ) from None
        if not callable(target):
            raise ModelError(f"{spec!r} is not callable; it must be a function returning a model.")
        model = target()
    return load(model, backend=backend)


def open_model(spec: str, *, backend: str | None = None) -> Backend:
    """A backend for the MODEL argument of the command line (see :data:`MODEL_HELP`)."""
    path = Path(spec)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise ModelError(f"No such ONNX file: {spec!r}.")
        return load(path, backend=backend)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise ModelError(pickle_refusal(spec))
    callable_spec = _CALLABLE.match(spec)
    if path.is_file() and callable_spec is None:
        raise ModelError(
            f"featvis cannot open {spec!r}: model files must be ONNX (.onnx). Export the model to "
            "ONNX, or pass module:callable, a function returning a model an installed backend "
            "takes."
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
    if callable_spec is not None:
        return _from_callable(spec, callable_spec["module"], callable_spec["attr"], backend)
    names = ", ".join(m.name + ("NAME" if m.prefix else "") for m in list_models()) or "none"
    raise BackendNotFoundError(
        f"Unknown model {spec!r}. Pass an .onnx file, a model name ({names}), or module:callable."
    )


def open_image(spec: str) -> tuple[str, Any]:
    """``(label, image)`` for the IMAGE argument (a file path, or ``skimage:NAME``): the image
    decoded, as featvis's functions take it. Images smaller than :data:`MIN_IMAGE_SIDE` on a
    side are refused."""
    if spec.startswith("skimage:"):
        name = spec.partition(":")[2]
        image: Any = _plain_sample(name)
        if image is None:
            import skimage.data

            loader = getattr(skimage.data, name, None)
            if not callable(loader) or name.startswith("_"):
                raise ImageError(
                    f"scikit-image has no sample image {name!r} (try skimage:astronaut)."
                )
            try:
                image = np.asarray(loader())
            except Exception as exc:  # a sample that must be downloaded fails offline
                raise ImageError(f"Cannot load scikit-image's sample {name!r}: {exc}") from None
        if image.ndim not in (2, 3):
            raise ImageError(f"scikit-image's sample {name!r} is not a 2-D image.")
        label = f"scikit-image {name}"
    else:
        path = Path(spec)
        if not path.is_file():
            raise ImageError(
                f"{spec!r} is a folder, not an image file."
                if path.is_dir()
                else f"No such image file: {spec!r}."
            )
        # Decoded once here, upright and RGB (16-bit kept as float): every figure and the
        # model reuse it instead of decoding the file again.
        image, label = _load(path), path.name
    height, width = (image.height, image.width) if hasattr(image, "height") else image.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageError(
            f"{label} is {height}x{width} pixels: too small to look at (the model would see one "
            f"stretched color). Use an image of at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE}."
        )
    return label, image


#: scikit-image samples that are a PNG file of skimage.data read as it is (a test checks that
#: Pillow reads the same array as the sample's loader). Reading them with Pillow skips the import
#: of skimage.io (and through it scipy.linalg): 0.3-0.8 s of `featvis demo` on this machine.
PLAIN_SAMPLES = frozenset(
    {"astronaut", "camera", "chelsea", "coffee", "coins", "moon", "page", "text"}
)


def _plain_sample(name: str) -> np.ndarray | None:
    """The sample ``name`` read with Pillow, if it is one of :data:`PLAIN_SAMPLES`."""
    if name not in PLAIN_SAMPLES:
        return None
    found = importlib.util.find_spec("skimage.data")
    if found is None or not found.submodule_search_locations:
        return None
    path = Path(next(iter(found.submodule_search_locations))) / f"{name}.png"
    if not path.is_file():
        return None
    with Image.open(path) as picture:
        return np.asarray(picture)


# -- option types: argparse shows an ArgumentTypeError's message as it is -----------------------


def parse_grid(text: str) -> tuple[int | None, int | None]:
    """``"8x12"`` -> (8, 12); either side may be ``?`` to compute it (``"8x?"``)."""
    match = re.fullmatch(r"\s*(\d+|\?)\s*[xX*,]\s*(\d+|\?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(
            f"takes ROWSxCOLS, e.g. 8x12 (or 8x? to compute one side), not {text!r}"
        )
    rows, cols = (None if part == "?" else int(part) for part in match.groups())
    if rows == 0 or cols == 0:
        raise argparse.ArgumentTypeError(f"needs at least one row and one column, not {text!r}")
    return rows, cols


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or not text.strip().isdecimal():
        raise argparse.ArgumentTypeError(f"takes a whole number of at least 1, not {text!r}")
    return value


def channel_index(text: str) -> int:
    """A channel number as typed: checked against the layer later, where its size is known."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a channel number (from 0), not {text!r}") from None


def max_size(text: str) -> int | None:
    """``--max-size PX``: a number of pixels (at least 64), or 0 for the full size."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value == 0:
        return None
    if value < 64:
        raise argparse.ArgumentTypeError(
            f"takes a number of pixels (at least 64), or 0 for the full size; not {text!r}"
        )
    return value


def add_max_size(parser: argparse.ArgumentParser) -> None:
    """``--max-size PX``, the one size rule of every figure the commands write."""
    parser.add_argument(
        "--max-size",
        type=max_size,
        default=MAX_SIZE,
        metavar="PX",
        help=f"longer side of the image in the figures (default {MAX_SIZE}; 0: full size); "
        "montages of small maps are enlarged up to it",
    )


def layer_list(text: str) -> list[str]:
    """``conv1,relu5`` -> ["conv1", "relu5"]."""
    names = [part.strip() for part in text.split(",")]
    if not all(names):
        raise argparse.ArgumentTypeError(
            f"takes layer names separated by commas, e.g. conv1,conv5,relu5; not {text!r}"
        )
    return names
