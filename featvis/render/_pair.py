"""One channel next to the image: resize, pair (MATLAB's imshowpair) and overlay."""

from __future__ import annotations

from typing import Literal

import numpy as np
from PIL import Image

from featvis._deprecation import renamed
from featvis._errors import ArgumentError
from featvis._images import ImageSource, read_image
from featvis.render._colormaps import colormap
from featvis.render._normalize import normalize
from featvis.render._picture import Picture

__all__ = ["overlay", "pair", "resize"]

_FILTERS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}
PairMode = Literal["montage", "blend", "falsecolor", "overlay"]


def _target_size(size: object) -> tuple[int, int]:
    if isinstance(size, Picture):
        return size.size
    if isinstance(size, Image.Image):
        return (size.height, size.width)
    if isinstance(size, np.ndarray):
        if size.ndim < 2:
            raise ArgumentError(f"Cannot take a size from an array of shape {size.shape}.")
        return (int(size.shape[0]), int(size.shape[1]))
    try:
        height, width = (int(v) for v in size)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        raise ArgumentError(
            f"size must be (height, width) or an image to match, got {size!r}."
        ) from None
    if height < 1 or width < 1:
        raise ArgumentError(f"size must be positive, got {(height, width)}.")
    return height, width


@renamed(map="a")
def resize(
    a: np.ndarray,
    size: tuple[int, int] | np.ndarray | Image.Image | Picture,
    *,
    method: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
) -> np.ndarray:
    """Resize an activation map to an image's size (MATLAB's ``imresize(act, imgSize)``).

    Uses Pillow's float resampling, which is much faster than scikit-image's. Pixel centres are
    aligned (the half-pixel convention of MATLAB and OpenCV). At the borders the kernel keeps
    only the taps inside the map and renormalizes them, so edge values extend outward.
    Shrinking widens the kernel by the scale factor (antialiasing, as MATLAB's ``imresize``
    does). Bicubic results are clipped to the map's range (no overshoot). NaN spreads to the
    pixels it touches.

    Parameters
    ----------
    a : ndarray, shape (H, W) or (C, H, W)
        The map(s). Not modified. (Called ``map`` before featvis 0.2; that name still works
        until 0.3, with a DeprecationWarning.)
    size : (height, width), or an image (array, PIL image, Picture) whose size to match
    method : {"nearest", "bilinear", "bicubic"}
        MATLAB's default is bicubic; bilinear (the default here) never overshoots.

    Returns
    -------
    ndarray of float32, shape (height, width) or (C, height, width)

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import resize
    >>> resize(np.array([[0.0, 1.0]]), (1, 4)).tolist()
    [[0.0, 0.25, 0.75, 1.0]]
    """
    a = np.asarray(a)
    if method not in _FILTERS:
        raise ArgumentError(f"method must be one of {', '.join(_FILTERS)}, got {method!r}.")
    height, width = _target_size(size)
    if a.ndim == 3:
        return np.stack([resize(m, (height, width), method=method) for m in a])
    if a.ndim != 2:
        raise ArgumentError(f"resize takes an (H, W) or (C, H, W) map, got shape {a.shape}.")
    if a.size == 0:
        raise ArgumentError(f"resize got an empty map (shape {a.shape}).")
    data = np.ascontiguousarray(a, dtype=np.float32)
    if data.shape == (height, width):
        return data.copy()
    out = np.asarray(Image.fromarray(data, mode="F").resize((width, height), _FILTERS[method]))
    if method == "bicubic":
        with np.errstate(invalid="ignore"):
            out = np.clip(out, np.nanmin(data), np.nanmax(data))
    return np.array(out, dtype=np.float32)


def _single_map(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    squeezed = a.reshape(a.shape[-2:]) if a.ndim > 2 and a.size == np.prod(a.shape[-2:]) else a
    if squeezed.ndim != 2:
        raise ArgumentError(
            f"pair and overlay take one channel, an (H, W) map, got shape {a.shape}; "
            "pick one with acts[i, channel]."
        )
    return squeezed


def _prepared(
    image: ImageSource, a: np.ndarray, scope: str | None, method: str
) -> tuple[np.ndarray, np.ndarray]:
    """The image as uint8 RGB, and the map in [0, 1] at the image's size (NaN becomes 0)."""
    rgb = read_image(image)
    values = _single_map(a)
    if scope == "global":
        values = normalize(values, scope="global")
    elif scope is None:
        values = np.clip(values.astype(np.float32), 0.0, 1.0)
    else:
        raise ArgumentError(
            f"scope must be 'global' (mat2gray of this one map) or None (values already in "
            f"[0, 1]), got {scope!r}."
        )
    values = resize(values, rgb.shape[:2], method=method)  # type: ignore[arg-type]
    return rgb, np.nan_to_num(np.clip(values, 0.0, 1.0), nan=0.0)


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return (values * 255.0 + 0.5).astype(np.uint8)


def _apply_cmap(values: np.ndarray, cmap: str) -> np.ndarray:
    return colormap(cmap)[_to_uint8(values)]


def _gray(rgb: np.ndarray) -> np.ndarray:
    # ITU-R 601-2 luma, as MATLAB's rgb2gray and Pillow's convert("L").
    return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)) / np.float32(255.0)


@renamed(map="a", normalize="scope")
def overlay(
    image: ImageSource,
    a: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    scope: Literal["global"] | None = "global",
    method: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
) -> Picture:
    """A heat map of ``map`` laid over the image, as Grad-CAM tools draw one.

    Parameters
    ----------
    image : path, PIL image or (H, W[, C]) array
    a : ndarray, shape (h, w)
        One channel; resized to the image's size with :func:`resize`.
    alpha : float
        Weight of the heat map, from 0 (only the image) to 1 (only the heat map).
    cmap : str
        Colormap of the heat map.
    scope : {"global"} or None
        ``"global"``: scale the map with ``mat2gray`` first; ``None``: take it as [0, 1].
    method : {"nearest", "bilinear", "bicubic"}

    Returns
    -------
    Picture
        The image's size, RGB: ``(1 - alpha) * image + alpha * cmap(a)``.

    Notes
    -----
    ``map`` and ``normalize`` are the names of ``a`` and ``scope`` before featvis 0.2; they
    still work until 0.3, with a DeprecationWarning.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import overlay
    >>> image = np.full((4, 6, 3), 255, np.uint8)  # a white image
    >>> heat = overlay(image, np.array([[0.0, 1.0]]), alpha=0.5)
    >>> heat.size
    (4, 6)
    >>> np.asarray(heat)[0, 0].tolist(), np.asarray(heat)[0, -1].tolist()  # jet's blue, red
    ([128, 128, 192], [192, 128, 128])
    """
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"alpha must be between 0 and 1, got {alpha!r}.")
    rgb, values = _prepared(image, a, scope, method)
    heat = _apply_cmap(values, cmap).astype(np.float32)
    blended = rgb.astype(np.float32) * np.float32(1.0 - alpha) + heat * np.float32(alpha)
    return Picture((blended + 0.5).astype(np.uint8))


@renamed(map="a", normalize="scope")
def pair(
    image: ImageSource,
    a: np.ndarray,
    *,
    mode: PairMode = "montage",
    scope: Literal["global"] | None = "global",
    cmap: str | None = None,
    alpha: float = 0.5,
    method: Literal["nearest", "bilinear", "bicubic"] = "bilinear",
) -> Picture:
    """An image and one activation map together, like MATLAB's ``imshowpair``.

    The map is normalized (``mat2gray``), then resized to the image's size.

    Parameters
    ----------
    image : path, PIL image or (H, W[, C]) array
    a : ndarray, shape (h, w)
        One channel, e.g. ``acts[0, 31]``.
    mode : {"montage", "blend", "falsecolor", "overlay"}
        ``"montage"``: side by side, the map in ``cmap`` (gray by default), as the seed's
        ``imshowpair(im, act, 'montage')``. ``"blend"``: the image in gray and the map averaged
        with weight ``alpha``. ``"falsecolor"``: the image in green and the map in magenta, so
        gray shows where they agree (MATLAB's default). ``"overlay"``: see :func:`overlay`
        (a heat map in ``cmap``, jet by default).
    scope : {"global"} or None
        ``"global"``: ``mat2gray`` of this map; ``None`` takes the map as already in [0, 1].
    cmap : str, optional
        Colormap of the map: ``"montage"`` mode (default gray) and ``"overlay"`` mode (default
        jet). ``"blend"`` and ``"falsecolor"`` have fixed colors, and refuse a ``cmap``.
    alpha : float
        Weight of the map in ``"blend"`` and ``"overlay"`` mode.
    method : {"nearest", "bilinear", "bicubic"}
        How the map is resized.

    Returns
    -------
    Picture
        RGB; twice the image's width in ``"montage"`` mode, the image's size otherwise.

    Notes
    -----
    ``map`` and ``normalize`` are the names of ``a`` and ``scope`` before featvis 0.2; they
    still work until 0.3, with a DeprecationWarning.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import pair
    >>> image = np.zeros((4, 4, 3), np.uint8)
    >>> pair(image, np.eye(2)).size
    (4, 8)
    """
    if mode == "overlay":
        return overlay(image, a, alpha=alpha, cmap=cmap or "jet", scope=scope, method=method)
    if mode not in ("montage", "blend", "falsecolor"):
        raise ArgumentError(
            f"mode must be 'montage', 'blend', 'falsecolor' or 'overlay', got {mode!r}."
        )
    if cmap is not None and mode != "montage":
        raise ArgumentError(
            f"mode={mode!r} draws fixed colors ("
            + (
                "the image in gray, the map averaged in"
                if mode == "blend"
                else "the image in green, the map in magenta"
            )
            + f"); cmap={cmap!r} applies to 'montage' and 'overlay' mode."
        )
    rgb, values = _prepared(image, a, scope, method)
    if mode == "montage":
        return Picture(np.concatenate([rgb, _apply_cmap(values, cmap or "gray")], axis=1))
    gray = _gray(rgb)
    if mode == "blend":
        if not 0.0 <= alpha <= 1.0:
            raise ArgumentError(f"alpha must be between 0 and 1, got {alpha!r}.")
        mixed = _to_uint8(gray * np.float32(1.0 - alpha) + values * np.float32(alpha))
        return Picture(np.repeat(mixed[:, :, None], 3, axis=2))
    green, magenta = _to_uint8(gray), _to_uint8(values)
    return Picture(np.stack([magenta, green, magenta], axis=2))
