"""The figures featvis draws for people: the size rule every output follows, and the captions
that say what a figure shows (shared by :func:`featvis.report`, the demo and the CLI)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError
from featvis._images import ImageSource, read_image
from featvis._layers import Layer
from featvis.render import Picture, grid_shape, montage, tied_channels
from featvis.render._normalize import TIEBREAK

__all__ = [
    "MAX_SIZE",
    "MIN_TILE",
    "Figure",
    "called",
    "check_max_size",
    "describe",
    "for_display",
    "montage_figure",
    "readable_scale",
    "strongest",
]

#: The longer side, in pixels, of the photo in every figure featvis writes (reports, the demo,
#: ``featvis show``), unless the caller gives another ``max_size`` (``None``: full size). The
#: model always sees the full image; a 16-megapixel photo beside each map made 15 MB PNGs.
#: Montages are enlarged up to this size too (:func:`readable_scale`), never shrunk.
MAX_SIZE = 1024
#: The side, in pixels, that montage tiles are enlarged to when they are smaller and the
#: montage stays within the size limit (a deep layer's 7x7 maps cannot be read at 7 pixels).
MIN_TILE = 32

_NORMALIZATION = {
    "global": "normalized over all channels together (MATLAB's mat2gray): the same gray means "
    "the same value in every tile",
    "channel": "each channel normalized alone: tiles cannot be compared with each other",
}


def check_max_size(max_size: int | None) -> int | None:
    """``max_size`` checked: a positive number of pixels, or ``None`` for no limit."""
    if max_size is None:
        return None
    if not isinstance(max_size, (int, np.integer)) or isinstance(max_size, bool) or max_size < 1:
        raise ArgumentError(
            f"max_size must be a positive number of pixels or None, got {max_size!r}."
        )
    return int(max_size)


def for_display(image: ImageSource, max_size: int | None = MAX_SIZE) -> np.ndarray:
    """``image`` as RGB uint8, shrunk (keeping its aspect, Lanczos) so that its longer side is
    at most ``max_size`` pixels; never enlarged."""
    rgb = read_image(image)
    limit = check_max_size(max_size)
    height, width = rgb.shape[:2]
    if limit is None or max(height, width) <= limit:
        return rgb
    scale = limit / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))


def readable_scale(
    shape: tuple[int, int, int],
    grid: tuple[int | None, int | None] | None = None,
    max_size: int | None = MAX_SIZE,
    padding: int = 1,
) -> int:
    """The ``scale`` for :func:`featvis.montage` of ``(C, H, W)`` maps: tiles enlarged (by a
    whole factor) towards :data:`MIN_TILE` pixels, as long as the montage's longer side stays
    within ``max_size``. 1 when the tiles are big enough already.

    Examples
    --------
    >>> from featvis._figures import readable_scale
    >>> readable_scale((1280, 7, 7)), readable_scale((32, 112, 112))
    (3, 1)
    """
    count, h, w = shape
    rows, cols = grid_shape(grid, count, (h, w))
    wanted = max(1, math.ceil(MIN_TILE / max(1, min(h, w))))
    limit = check_max_size(max_size)
    if limit is None:
        return wanted
    for scale in range(wanted, 1, -1):
        side = max(rows * (scale * h + padding), cols * (scale * w + padding)) + padding
        if side <= limit:
            return scale
    return 1


@dataclass
class Figure:
    """One picture of a report, with its title and a caption saying what it shows.

    ``format`` is ``"jpeg"`` for figures that contain a photograph (a tenth of the PNG's size)
    and ``"png"`` for maps and montages, which must stay exact. The picture is encoded once,
    for the report and for :meth:`save` alike.
    """

    title: str
    picture: Picture
    caption: str = ""
    format: Literal["png", "jpeg"] = "png"
    _data: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def suffix(self) -> str:
        """``".png"`` or ``".jpg"``."""
        return ".jpg" if self.format == "jpeg" else ".png"

    @property
    def mime(self) -> str:
        return f"image/{self.format}"

    def data(self) -> bytes:
        """The encoded picture."""
        if self._data is None:
            self._data = self.picture.jpeg() if self.format == "jpeg" else self.picture.png()
        return self._data

    def save(self, path: str | Path) -> Path:
        """Write the encoded picture to ``path`` (whose suffix should be :attr:`suffix`)."""
        path = Path(path)
        path.write_bytes(self.data())
        return path


def normalization_caption(scope: str | None) -> str:
    """The sentence written under a figure about how its values were scaled."""
    if scope is None:
        return "values shown as they are, clipped to [0, 1]"
    return _NORMALIZATION.get(scope, f"normalization: {scope}")


def called(layer: Layer) -> str:
    """``conv1 (features.0)``; ``conv1 (conv2d, module _conv_stem)`` for an exported layer."""
    module = f", module {layer.source}" if layer.source and layer.source != layer.name else ""
    return f"{layer.alias} ({layer.name}{module})"


def describe(layer: Layer, acts: np.ndarray) -> str:
    """``conv1 (features.0): 64 channels of 55x55`` for one image's ``(C, H, W)`` maps (or a
    batch's ``(N, C, H, W)``)."""
    channels, height, width = acts.shape[-3:]
    return f"{called(layer)}: {channels} channels of {height}x{width}"


def strongest(acts: np.ndarray, by: Literal["max", "mean", "l2"] = "max") -> tuple[int, str]:
    """The strongest channel of one image's ``(C, H, W)`` maps, and why, in words: ``"the
    layer's largest single value, 16.47"``, or for a tie (broken by :data:`TIEBREAK`) ``"the
    largest mean of the 103 channels that tie for the layer's largest single value, 6"``."""
    tied = tied_channels(acts, by=by)
    k = tied[0]
    flat = np.asarray(acts, np.float64).reshape(len(acts), -1)[k]
    value = {
        "max": np.nanmax(flat),
        "mean": np.nanmean(flat),
        "l2": np.sqrt(np.nansum(flat * flat)),
    }[by]
    what = {"max": "largest single value", "mean": "largest mean", "l2": "largest L2 norm"}[by]
    if len(tied) == 1:
        return k, f"the layer's {what}, {value:.4g}"
    second = {"max": "max", "mean": "mean", "l2": "L2 norm"}[TIEBREAK[by]]
    return k, (
        f"the largest {second} of the {len(tied)} channels that tie for the layer's {what}, "
        f"{value:.4g}"
    )


def montage_figure(
    layer: Layer,
    acts: np.ndarray,
    scope: Literal["global", "channel"] = "global",
    *,
    max_size: int | None = MAX_SIZE,
    grid: tuple[int | None, int | None] | None = None,
    cmap: str = "gray",
) -> Figure:
    """Every channel of one image's activations ``(C, H, W)``, with what and how it shows."""
    scale = readable_scale(acts.shape, grid, max_size)
    enlarged = f" Each value is drawn as {scale}x{scale} pixels." if scale > 1 else ""
    return Figure(
        f"{layer.alias}: all {len(acts)} channels",
        montage(acts, grid=grid, scope=scope, scale=scale, cmap=cmap),
        f"{describe(layer, acts)}, tiled row by row from channel 0; "
        f"{normalization_caption(scope)}.{enlarged}",
    )
