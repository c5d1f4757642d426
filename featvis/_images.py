"""Images in: reading files and arrays into RGB, and preparing model input (:class:`Preprocess`)."""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featvis._errors import ArgumentError, ImageError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageSource",
    "Images",
    "Preprocess",
    "prepare_images",
    "read_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: One image: a file path, a PIL image, or an HxW / HxWxC array (uint8, uint16, bool or float).
ImageSource = str | os.PathLike | Image.Image | np.ndarray
#: One image, a list of them, or a prepared NCHW float array.
Images = ImageSource | Sequence[ImageSource]

_BACKGROUND = 255.0  # transparent pixels are shown over white, as a browser shows them


@dataclass(frozen=True)
class Preprocess:
    """How a backend turns images into model input.

    Each image is made RGB (or gray when ``mean`` has one value), resized to ``size`` with
    Pillow's bilinear filter (antialiased when shrinking; the whole image is kept, nothing is
    cropped, so an activation map lines up with the image), scaled to [0, 1], and normalized as
    ``(x - mean) / std`` per channel. The result is an NCHW float32 array.

    Parameters
    ----------
    size : (int, int) or None
        Target ``(height, width)``. ``None`` keeps each image's own size (then all images of one
        call must have the same size).
    mean, std : tuple of float
        Per channel, in [0, 1] pixel units. Three values for RGB input, one for grayscale.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import Preprocess
    >>> pre = Preprocess(size=(2, 2), mean=(0.5,), std=(0.5,))
    >>> pre(np.full((4, 4), 255, np.uint8)).tolist()
    [[[[1.0, 1.0], [1.0, 1.0]]]]
    """

    size: tuple[int, int] | None = (224, 224)
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        if self.size is not None:
            if len(self.size) != 2 or not all(
                isinstance(s, (int, np.integer)) and s > 0 for s in self.size
            ):
                raise ArgumentError(
                    f"Preprocess size must be (height, width) in pixels, got {self.size!r}."
                )
            object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if len(self.mean) not in (1, 3) or len(self.std) != len(self.mean):
            raise ArgumentError(
                "Preprocess mean and std need one value per channel (3 for RGB, 1 for gray), "
                f"got mean={self.mean} and std={self.std}."
            )
        if any(s == 0 for s in self.std):
            raise ArgumentError(f"Preprocess std must not contain 0, got {self.std}.")

    @property
    def channels(self) -> int:
        """Number of channels the model takes: 3 (RGB) or 1 (gray)."""
        return len(self.mean)

    def __call__(self, images: Images) -> np.ndarray:
        """Prepare ``images`` as an NCHW float32 array (see :func:`prepare_images`)."""
        return prepare_images(images, self)


def _name(source: object) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    if isinstance(source, Image.Image):
        return f"PIL image ({source.mode}, {source.width}x{source.height})"
    if isinstance(source, np.ndarray):
        return f"array of shape {source.shape} and dtype {source.dtype}"
    return type(source).__name__


def _open(path: str | os.PathLike) -> Image.Image:
    """Open and decode an image file, with errors that name the file and say what to do."""
    shown = os.fspath(path)
    if not os.path.exists(path):
        raise ImageError(f"No such image file: {shown!r}.")
    if os.path.isdir(path):
        raise ImageError(f"{shown!r} is a folder, not an image file.")
    try:
        with warnings.catch_warnings():
            # Over MAX_IMAGE_PIXELS Pillow only warns (it refuses at twice that); refuse at once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(path)
            try:
                image.load()
            except BaseException:
                image.close()
                raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise ImageError(
            f"{shown!r} is too large to decode safely ({exc}). If you trust the file, raise "
            "PIL.Image.MAX_IMAGE_PIXELS before calling featvis."
        ) from None
    except UnidentifiedImageError:
        raise ImageError(
            f"{shown!r} is not an image file Pillow can read (PNG, JPEG, TIFF, BMP, WebP, ...)."
        ) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(
            f"{shown!r} could not be decoded ({exc}); it may be truncated or corrupt."
        ) from None
    return image


def _pil_to_rgb(image: Image.Image, name: str) -> Image.Image | np.ndarray:
    """An upright 8-bit RGB PIL image, or a float32 HxWx3 array for deeper images."""
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        gray = np.asarray(image).astype(np.float32) / 65535.0
        return np.repeat(np.clip(gray, 0.0, 1.0)[:, :, None], 3, axis=2)
    if mode == "F":
        return _array_to_float_rgb(np.asarray(image), name)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "PA":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV and friends: Pillow converts them correctly.
    return image.convert("RGB")


def _array_to_float_rgb(array: np.ndarray, name: str) -> np.ndarray:
    """HxW / HxWxC array of any supported dtype -> float32 HxWx3 in [0, 1]."""
    if array.ndim == 3 and array.shape[0] in (1, 3, 4) and array.shape[2] not in (1, 2, 3, 4):
        raise ImageError(
            f"The {name} looks channels-first (C, H, W). Pass images as (H, W) or (H, W, C), "
            "e.g. array.transpose(1, 2, 0), or pass a prepared (N, C, H, W) float array."
        )
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 2, 3, 4)):
        raise ImageError(
            f"Cannot read an image from an {name}: expected (H, W), (H, W, 1), (H, W, 3) or "
            "(H, W, 4), or a prepared (N, C, H, W) float array."
        )
    if array.dtype == np.uint8:
        data = array.astype(np.float32) / 255.0
    elif array.dtype == np.uint16:
        data = array.astype(np.float32) / 65535.0
    elif array.dtype == np.bool_:
        data = array.astype(np.float32)
    elif np.issubdtype(array.dtype, np.floating):
        data = array.astype(np.float32)
        if not np.isfinite(data).all():
            raise ImageError(f"The {name} contains NaN or infinite values.")
        lo, hi = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        if lo < -1e-3 or hi > 1.0 + 1e-3:
            raise ImageError(
                f"A float image must hold values in [0, 1]; the {name} spans "
                f"[{lo:g}, {hi:g}]. Divide by 255 (or 65535), or pass a uint8 array."
            )
        np.clip(data, 0.0, 1.0, out=data)
    else:
        raise ImageError(
            f"Unsupported image dtype {array.dtype} ({name}); use uint8 (0-255), uint16 "
            "(0-65535) or float in [0, 1]."
        )
    if data.ndim == 2:
        data = data[:, :, None]
    channels = data.shape[2]
    if channels in (2, 4):  # gray + alpha, RGB + alpha: composite over white
        alpha = data[:, :, -1:]
        data = data[:, :, :-1] * alpha + (1.0 - alpha)
    if data.shape[2] == 1:
        data = np.repeat(data, 3, axis=2)
    return np.ascontiguousarray(data, dtype=np.float32)


def _load(source: ImageSource) -> Image.Image | np.ndarray:
    """Any single image -> an upright 8-bit RGB PIL image, or float32 HxWx3 in [0, 1]."""
    loaded = _load_any(source)
    height, width = _hw(loaded)
    if height == 0 or width == 0:
        raise ImageError(f"The image {_name(source)} is empty ({height}x{width} pixels).")
    return loaded


def _load_any(source: ImageSource) -> Image.Image | np.ndarray:
    if isinstance(source, (str, os.PathLike)):
        return _pil_to_rgb(_open(source), _name(source))
    if isinstance(source, Image.Image):
        return _pil_to_rgb(source, _name(source))
    if isinstance(source, np.ndarray):
        if source.dtype == np.uint8 and source.ndim == 3 and source.shape[2] == 3:
            return Image.fromarray(source)  # the common case; keep it on Pillow's fast path
        return _array_to_float_rgb(source, _name(source))
    raise ImageError(
        f"Cannot use {type(source).__name__} as an image: pass a file path, a PIL image, an "
        "(H, W[, C]) array, a list of those, or a prepared (N, C, H, W) float array."
    )


def read_image(source: ImageSource) -> np.ndarray:
    """Read one image as an upright RGB uint8 array, shape (H, W, 3).

    EXIF orientation is applied; grayscale, palette, CMYK and 16-bit images become RGB (16-bit
    and float values are rounded to 8 bits); transparent pixels are composited over white.

    Parameters
    ----------
    source : str, os.PathLike, PIL.Image.Image or ndarray
        A file, a PIL image, or an ``(H, W)``/``(H, W, C)`` array: uint8, uint16, bool, or float
        in [0, 1].

    Returns
    -------
    ndarray, shape (H, W, 3), dtype uint8

    Raises
    ------
    ImageError
        If the file is missing, is not an image, is truncated, or is larger than
        ``PIL.Image.MAX_IMAGE_PIXELS``; or if the array has a shape or dtype that is not an image.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import read_image
    >>> read_image(np.array([[0.0, 1.0]])).tolist()
    [[[0, 0, 0], [255, 255, 255]]]
    """
    loaded = _load(source)
    if isinstance(loaded, Image.Image):
        return np.asarray(loaded).copy()
    return (loaded * 255.0 + 0.5).astype(np.uint8)


def _resize_rgb(
    loaded: Image.Image | np.ndarray, size: tuple[int, int]
) -> Image.Image | np.ndarray:
    height, width = size
    if isinstance(loaded, Image.Image):
        if loaded.size == (width, height):
            return loaded
        return loaded.resize((width, height), Image.Resampling.BILINEAR)
    if loaded.shape[:2] == (height, width):
        return loaded
    out = np.empty((height, width, loaded.shape[2]), np.float32)
    for c in range(loaded.shape[2]):
        channel = Image.fromarray(np.ascontiguousarray(loaded[:, :, c]), mode="F")
        out[:, :, c] = np.asarray(channel.resize((width, height), Image.Resampling.BILINEAR))
    return out


def _normalize_into(
    out: np.ndarray, loaded: Image.Image | np.ndarray, preprocess: Preprocess
) -> None:
    """Write ``(x - mean) / std`` of one HxWx3 image into ``out`` (shape C, H, W)."""
    if isinstance(loaded, Image.Image):
        pixels = np.asarray(loaded)
        unit = 1.0 / 255.0
    else:
        pixels = loaded
        unit = 1.0
    if preprocess.channels == 1:
        # ITU-R 601-2 luma, the transform Pillow's convert("L") uses.
        weights = np.array([0.299, 0.587, 0.114], np.float32)
        gray = pixels.astype(np.float32) @ weights
        np.multiply(gray, unit / preprocess.std[0], out=out[0])
        out[0] -= preprocess.mean[0] / preprocess.std[0]
        return
    for c in range(3):
        np.multiply(pixels[:, :, c], unit / preprocess.std[c], out=out[c], casting="unsafe")
        out[c] -= preprocess.mean[c] / preprocess.std[c]


def _as_list(images: Any) -> list[ImageSource]:
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("No images were given (an empty list).")
        return list(images)
    return [images]


def prepare_images(images: Images, preprocess: Preprocess) -> np.ndarray:
    """Turn images into an NCHW float32 model input.

    Parameters
    ----------
    images : image, list of images, or ndarray of shape (N, C, H, W)
        An image is a file path, a PIL image, or an ``(H, W[, C])`` array (see
        :func:`read_image`). A 4-D float array is taken as already prepared and used as it is
        (cast to float32).
    preprocess : Preprocess

    Returns
    -------
    ndarray, shape (N, C, H, W), dtype float32
        A new array; the inputs are never modified.

    Raises
    ------
    ImageError
        For an image that cannot be read (the message names it).

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import Preprocess, prepare_images
    >>> gray = np.full((30, 40), 255, np.uint8)  # one white grayscale image, any size
    >>> preprocess = Preprocess(size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3)
    >>> batch = prepare_images([gray, gray], preprocess)
    >>> batch.shape, batch.dtype, float(batch.max())
    ((2, 3, 8, 8), dtype('float32'), 1.0)
    """
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if not np.issubdtype(images.dtype, np.floating):
            raise ImageError(
                f"A 4-D array is used as a prepared (N, C, H, W) model input and must be float, "
                f"got {images.dtype}. For raw images pass a list of (H, W, C) arrays."
            )
        return np.array(images, dtype=np.float32, order="C", copy=True)
    sources = _as_list(images)
    loaded = [_load(source) for source in sources]
    if preprocess.size is not None:
        size = preprocess.size
    else:
        sizes = {_hw(item) for item in loaded}
        if len(sizes) > 1:
            raise ImageError(
                f"Images of different sizes ({sorted(sizes)}) cannot form one batch when "
                "Preprocess.size is None; give a Preprocess with a size."
            )
        size = sizes.pop()
    out = np.empty((len(loaded), preprocess.channels, *size), np.float32)
    for i, item in enumerate(loaded):
        _normalize_into(out[i], _resize_rgb(item, size), preprocess)
    return out


def _hw(loaded: Image.Image | np.ndarray) -> tuple[int, int]:
    if isinstance(loaded, Image.Image):
        return (loaded.height, loaded.width)
    return (int(loaded.shape[0]), int(loaded.shape[1]))


def image_size(source: ImageSource) -> tuple[int, int]:
    """The ``(height, width)`` of an image as :func:`read_image` would return it."""
    return _hw(_load(source))


def is_image_path(value: object) -> bool:
    """Whether ``value`` is a path to an existing file (used to tell images from models)."""
    return isinstance(value, (str, Path)) and Path(value).is_file()
