"""montage: every channel of one image's activations as a grid of tiles."""

from __future__ import annotations

import functools
import math

import numpy as np

from featvis._deprecation import renamed
from featvis._errors import ArgumentError
from featvis.render import _fast as fast
from featvis.render._colormaps import colormap
from featvis.render._normalize import Clip, Scope, one_image
from featvis.render._picture import Picture
from featvis.render._tiles import LEVELS, NODATA

__all__ = ["NODATA", "default_grid", "grid_shape", "montage", "palette_for"]

#: The separator / empty-tile / NaN color: a blue no gray map contains.
_SEPARATOR_ON_GRAY = (40, 90, 160)
_SEPARATOR_ON_COLOR = (255, 255, 255)


@functools.lru_cache(maxsize=64)
def palette_for(cmap: str, separator: tuple[int, int, int] | None = None) -> np.ndarray:
    """A (256, 3) palette: ``cmap`` sampled at 255 levels, then the separator color."""
    table = colormap(cmap)
    levels = np.round(np.arange(LEVELS + 1) * (255 / LEVELS)).astype(np.intp)
    palette = np.empty((256, 3), np.uint8)
    palette[: LEVELS + 1] = table[levels]
    if separator is None:
        separator = _SEPARATOR_ON_GRAY if cmap == "gray" else _SEPARATOR_ON_COLOR
    palette[NODATA] = separator
    return palette


@functools.lru_cache(maxsize=256)
def default_grid(channels: int, tile: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """A near-square ``(rows, cols)`` grid for ``channels`` tiles of ``tile = (h, w)`` pixels.

    Among grids at most twice as wide as tall and no taller than wide (MATLAB's 8x12 for 96
    channels is 1.5 times as wide), the one with the fewest empty tiles wins, the squarest of
    those; with none such, the squarest grid.

    Examples
    --------
    >>> from featvis.render import default_grid
    >>> default_grid(96), default_grid(64), default_grid(32), default_grid(3)
    ((8, 12), (8, 8), (4, 8), (2, 2))
    """
    if channels < 1:
        raise ArgumentError("A montage needs at least one channel.")
    h, w = tile
    rows = np.arange(1, channels + 1)
    cols = -(-channels // rows)
    keep = (rows - 1) * cols < channels  # no wholly empty row
    rows, cols = rows[keep], cols[keep]
    aspect = (cols * w) / (rows * h)
    squareness = np.abs(np.log(aspect))
    fits = (aspect >= 1.0) & (aspect <= 2.0)
    if fits.any():
        empty = rows * cols - channels
        best = int(np.lexsort((squareness, np.where(fits, empty, np.iinfo(np.int64).max)))[0])
    else:
        best = int(np.argmin(squareness))
    return int(rows[best]), int(cols[best])


def grid_shape(
    grid: tuple[int | None, int | None] | None, channels: int, tile: tuple[int, int] = (1, 1)
) -> tuple[int, int]:
    """The ``(rows, cols)`` a montage of ``channels`` tiles uses for ``grid``.

    ``None`` (or ``(None, None)``) chooses one (:func:`default_grid`); one side ``None`` is
    computed from the other. A grid must hold every channel and leave no row or column wholly
    empty (a 100x100 grid for 32 channels would be a picture of filler).

    Examples
    --------
    >>> from featvis.render import grid_shape
    >>> grid_shape((4, None), 32), grid_shape(None, 96)
    ((4, 8), (8, 12))
    """
    if channels < 1:
        raise ArgumentError("A montage needs at least one channel.")
    if grid is None:
        return default_grid(channels, tile)
    try:
        rows, cols = grid
    except (TypeError, ValueError):
        raise ArgumentError(f"grid must be (rows, cols), got {grid!r}.") from None
    if rows is None and cols is None:
        return default_grid(channels, tile)
    try:
        if rows is None:
            cols = int(cols)  # type: ignore[arg-type]
            rows = math.ceil(channels / cols) if cols >= 1 else 0
        elif cols is None:
            rows = int(rows)
            cols = math.ceil(channels / rows) if rows >= 1 else 0
        rows, cols = int(rows), int(cols)
    except (TypeError, ValueError):
        raise ArgumentError(f"grid must be two whole numbers (rows, cols), got {grid!r}.") from None
    if rows < 1 or cols < 1:
        raise ArgumentError(f"A grid needs at least one row and one column, got {rows}x{cols}.")
    if rows * cols < channels:
        raise ArgumentError(
            f"A {rows}x{cols} grid holds {rows * cols} tiles, but there are {channels} channels: "
            "give a bigger grid, or none to have one chosen."
        )
    if cols > channels or (rows - 1) * cols >= channels:
        fit = f"{math.ceil(channels / min(cols, channels))}x{min(cols, channels)}"
        raise ArgumentError(
            f"A {rows}x{cols} grid for {channels} channels leaves whole rows or columns empty; "
            f"{fit} holds them all."
        )
    return rows, cols


def _as_channels(a: np.ndarray) -> np.ndarray:
    a = one_image(a, "montage")
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ArgumentError(
            f"montage takes (C, H, W), (1, C, H, W) or one (H, W) map, got shape {a.shape}."
        )
    if a.size == 0:
        raise ArgumentError(f"montage got an empty array (shape {a.shape}).")
    return a.astype(np.float32, copy=False)


@renamed(normalize="scope")
def montage(
    a: np.ndarray,
    *,
    grid: tuple[int | None, int | None] | None = None,
    padding: int = 1,
    scope: Scope | None = "global",
    clip: Clip = None,
    limits: tuple[float, float] | None = None,
    scale: int = 1,
    cmap: str = "gray",
    separator: tuple[int, int, int] | None = None,
) -> Picture:
    """Every channel of one image's activations, tiled row by row, like MATLAB's ``montage``.

    Parameters
    ----------
    a : ndarray, shape (C, H, W) or (1, C, H, W)
        One image's activations (``acts[i]`` of a batch). Not modified.
    grid : (rows, cols), optional
        Tiles are filled row by row: channel 0 at the top left, channel ``cols`` starting the
        second row (MATLAB's ``'Size', [8 12]``). Either may be ``None`` to be computed; by
        default a near-square grid is chosen (:func:`default_grid`). A grid must hold every
        channel without a wholly empty row or column (:func:`grid_shape`).
    padding : int
        Width in pixels of the separator drawn between tiles and around them (0 for none).
    scope : {"global", "channel"} or None
        As in :func:`normalize`: ``"global"`` is MATLAB's ``mat2gray`` over all channels;
        ``"channel"`` scales each tile alone; ``None`` takes values already in [0, 1] (values
        outside are clipped). (Called ``normalize`` before featvis 0.2; that name still works
        until 0.3, with a DeprecationWarning.)
    clip, limits
        As in :func:`normalize`.
    scale : int
        Draw each value as a ``scale x scale`` block of pixels (nearest neighbour), so that the
        tiny maps of a deep layer (7x7) can be read.
    cmap : str
        Colormap for the values (see ``featvis.render.COLORMAPS``).
    separator : (int, int, int), optional
        RGB color of separators, empty tiles and NaN values. By default a blue that no gray
        level matches (white with a color map).

    Returns
    -------
    Picture
        Of ``rows * (scale * H + padding) + padding`` by ``cols * (scale * W + padding) +
        padding`` pixels, 255 gray levels per value.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import montage
    >>> picture = montage(np.arange(6.0).reshape(6, 1, 1), grid=(2, 3), padding=0)
    >>> np.asarray(picture)[:, :, 0].tolist()
    [[0, 51, 102], [153, 204, 255]]
    >>> montage(np.zeros((32, 7, 7)), grid=(4, 8), scale=3).size
    (89, 177)
    """
    channels = _as_channels(a)
    count, h, w = channels.shape
    rows, cols = grid_shape(grid, count, (h, w))
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ArgumentError(f"padding must be a non-negative integer, got {padding!r}.")
    if not isinstance(scale, (int, np.integer)) or isinstance(scale, bool) or scale < 1:
        raise ArgumentError(f"scale must be a positive integer, got {scale!r}.")
    if scope not in ("global", "channel", None):
        raise ArgumentError(f"scope must be 'global', 'channel' or None, got {scope!r}.")
    if scope is None and (limits is not None or clip is not None):
        raise ArgumentError("limits and clip need scope='global' or 'channel'.")
    palette = palette_for(cmap, separator)
    levels = fast.levels(channels, scope, clip, limits)
    if scale > 1:
        levels = levels.repeat(scale, axis=1).repeat(scale, axis=2)
    return Picture(fast.tile(levels, rows, cols, padding), palette)
