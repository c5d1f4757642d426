"""montage: every channel of one image's activations as a grid of tiles."""

from __future__ import annotations

import functools
import math

import numpy as np

from featvis._errors import ArgumentError
from featvis.render._colormaps import colormap
from featvis.render._normalize import Clip, _fix_nonfinite, _Range, _range, one_image
from featvis.render._picture import Picture

__all__ = ["NODATA", "default_grid", "montage", "palette_for"]

#: Gray levels a montage uses for data (palette entries 0..254); entry 255 is "no data".
_LEVELS = 254
NODATA = 255
#: The separator / empty-tile / NaN color: a blue no gray map contains.
_SEPARATOR_ON_GRAY = (40, 90, 160)
_SEPARATOR_ON_COLOR = (255, 255, 255)


@functools.lru_cache(maxsize=64)
def palette_for(cmap: str, separator: tuple[int, int, int] | None = None) -> np.ndarray:
    """A (256, 3) palette: ``cmap`` sampled at 255 levels, then the separator color."""
    table = colormap(cmap)
    levels = np.round(np.arange(_LEVELS + 1) * (255 / _LEVELS)).astype(np.intp)
    palette = np.empty((256, 3), np.uint8)
    palette[: _LEVELS + 1] = table[levels]
    if separator is None:
        separator = _SEPARATOR_ON_GRAY if cmap == "gray" else _SEPARATOR_ON_COLOR
    palette[NODATA] = separator
    return palette


@functools.lru_cache(maxsize=256)
def default_grid(channels: int, tile: tuple[int, int] = (1, 1)) -> tuple[int, int]:
    """A near-square ``(rows, cols)`` grid for ``channels`` tiles of ``tile = (h, w)`` pixels.

    Among grids a little wider than tall (width/height between 1 and 1.6, like MATLAB's 8x12
    for 96 channels) the one with the fewest empty tiles wins; with none such, the squarest.

    Examples
    --------
    >>> from featvis.render import default_grid
    >>> default_grid(96), default_grid(64), default_grid(3)
    ((8, 12), (8, 8), (2, 2))
    """
    if channels < 1:
        raise ArgumentError("A montage needs at least one channel.")
    h, w = tile
    rows = np.arange(1, channels + 1)
    cols = -(-channels // rows)
    keep = (rows - 1) * cols < channels  # no wholly empty row
    rows, cols = rows[keep], cols[keep]
    aspect = (cols * w) / (rows * h)
    fits = (aspect >= 1.0) & (aspect <= 1.6)
    if fits.any():
        empty = np.where(fits, rows * cols - channels, np.iinfo(np.int64).max)
        best = int(np.argmin(empty))  # ties: the first, i.e. the fewest rows
    else:
        best = int(np.argmin(np.abs(np.log(aspect))))
    return int(rows[best]), int(cols[best])


def _grid(
    grid: tuple[int | None, int | None] | None, channels: int, tile: tuple[int, int]
) -> tuple[int, int]:
    if grid is None:
        return default_grid(channels, tile)
    try:
        rows, cols = grid
    except (TypeError, ValueError):
        raise ArgumentError(f"grid must be (rows, cols), got {grid!r}.") from None
    if rows is None and cols is None:
        return default_grid(channels, tile)
    if rows is None:
        rows = math.ceil(channels / int(cols))  # type: ignore[arg-type]
    elif cols is None:
        cols = math.ceil(channels / int(rows))
    rows, cols = int(rows), int(cols)  # type: ignore[arg-type]
    if rows < 1 or cols < 1 or rows * cols < channels:
        raise ArgumentError(
            f"A {rows}x{cols} grid holds {max(rows, 0) * max(cols, 0)} tiles, but there are "
            f"{channels} channels; use a bigger grid or grid=None to choose one."
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
    return a.astype(np.float32, copy=False)


def montage(
    a: np.ndarray,
    *,
    grid: tuple[int | None, int | None] | None = None,
    padding: int = 1,
    normalize: str | None = "global",
    clip: Clip = None,
    limits: tuple[float, float] | None = None,
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
        default a near-square grid is chosen (:func:`default_grid`).
    padding : int
        Width in pixels of the separator drawn between tiles and around them (0 for none).
    normalize : {"global", "channel"} or None
        ``"global"`` is MATLAB's ``mat2gray`` over all channels; ``"channel"`` scales each tile
        alone; ``None`` takes values already in [0, 1] (values outside are clipped).
    clip, limits
        As in :func:`normalize`.
    cmap : str
        Colormap for the values (see ``featvis.render.COLORMAPS``).
    separator : (int, int, int), optional
        RGB color of separators, empty tiles and NaN values. By default a blue that no gray
        level matches (white with a color map).

    Returns
    -------
    Picture
        Of ``rows * (H + padding) + padding`` by ``cols * (W + padding) + padding`` pixels, 255
        gray levels per value.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import montage
    >>> picture = montage(np.arange(6.0).reshape(6, 1, 1), grid=(2, 3), padding=0)
    >>> np.asarray(picture)[:, :, 0].tolist()
    [[0, 51, 102], [153, 204, 255]]
    """
    channels = _as_channels(a)
    count, h, w = channels.shape
    rows, cols = _grid(grid, count, (h, w))
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ArgumentError(f"padding must be a non-negative integer, got {padding!r}.")
    if normalize is None and (limits is not None or clip is not None):
        raise ArgumentError("limits and clip need normalize='global' or 'channel'.")
    palette = palette_for(cmap, separator)
    return Picture(_tile(_levels(channels, normalize, clip, limits), rows, cols, padding), palette)


def _levels(
    channels: np.ndarray, normalize: str | None, clip: Clip, limits: tuple[float, float] | None
) -> np.ndarray:
    """Values -> palette levels 0..254 (NaN -> NODATA), uint8 of the same shape."""
    out = _levels_buffer(channels.shape)
    if normalize == "global" and clip is None and limits is None:
        least, most = float(channels.min()), float(channels.max())
        if math.isfinite(least) and math.isfinite(most):
            # The common case, kept lean: (a - low + 0.5/k) * k = (a - low) * k + 0.5, cast
            # (truncating) into uint8 rounds to the nearest level. Constant input gives 0.
            step = _LEVELS / (most - least) if most > least else 0.0
            tmp = np.subtract(channels, np.float32(least - 0.5 / step if step else least))
            np.multiply(tmp, np.float32(step), out=tmp)
            np.copyto(out, tmp, casting="unsafe")
            return out
    if normalize is None:
        r = _Range(
            low=np.float32(0.0),
            scale=np.float32(1.0),
            clipped=True,
            finite=bool(np.isfinite(channels.min()) and np.isfinite(channels.max())),
        )
    else:
        r = _range(channels, normalize, clip, limits)
    low, scale, finite, clipped = r.low, r.scale, r.finite, r.clipped
    k = scale * np.float32(_LEVELS)
    if finite and not clipped:  # per-channel ranges: the same two passes, broadcast
        with np.errstate(divide="ignore"):
            shift = np.where(k > 0, low - np.float32(0.5) / np.where(k > 0, k, 1), low)
        tmp = np.subtract(channels, shift.astype(np.float32))
        np.multiply(tmp, k, out=tmp)
        np.copyto(out, tmp, casting="unsafe")
        return out
    tmp = np.subtract(channels, low)
    with np.errstate(invalid="ignore"):
        np.multiply(tmp, k, out=tmp)
    if finite:
        np.clip(tmp, 0.0, float(_LEVELS), out=tmp)
    else:
        _fix_nonfinite(tmp, channels, float(_LEVELS))
    tmp += np.float32(0.5)
    nan = np.isnan(tmp)
    tmp[nan] = 0.0
    np.copyto(out, tmp, casting="unsafe")
    out[nan] = NODATA  # NaN shows in the separator color: no data
    return out


_WORDS: dict[int, type] = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_FILLED: dict[type, int] = {word: np.iinfo(word).max for word in _WORDS.values()}  # NODATA bytes


def _tile(levels: np.ndarray, rows: int, cols: int, padding: int) -> np.ndarray:
    """Place (C, h, w) uint8 tiles row by row on a canvas of NODATA with ``padding`` gaps.

    ``levels`` must be the start of a buffer with at least 8 spare bytes after it (see
    :func:`_levels_buffer`): the fast path reads each tile row as one machine word.
    """
    count, h, w = levels.shape
    step_h, step_w = h + padding, w + padding
    shape = (rows * step_h + padding, cols * step_w + padding)
    word = _WORDS.get(step_w)
    base = levels.base
    if word is not None and base is not None and base.nbytes >= levels.nbytes + 8:
        canvas = np.empty(shape, np.uint8)
        _tile_words(levels, canvas, rows, cols, padding, word)
        return canvas
    canvas = np.full(shape, NODATA, np.uint8)
    tiles = canvas[padding:, padding:].reshape(rows, step_h, cols, step_w)[:, :h, :, :w]
    # Move each tile row (w bytes) as one element: several times faster than numpy's
    # element-wise strided copy for small tiles (2048 tiles of 7x7 are 14k runs of 7 bytes).
    dest = tiles.view(f"V{w}")[..., 0]  # (rows, h, cols)
    source = levels.view(f"V{w}")[..., 0]  # (count, h)
    full_rows = count // cols
    if full_rows:
        dest[:full_rows] = source[: full_rows * cols].reshape(full_rows, cols, h).transpose(0, 2, 1)
    rest = count - full_rows * cols
    if rest:
        dest[full_rows, :, :rest] = source[full_rows * cols :].T
    return canvas


def _tile_words(
    levels: np.ndarray, canvas: np.ndarray, rows: int, cols: int, padding: int, word: type
) -> None:
    """The fast path of :func:`_tile` when a tile row plus its gap is 2, 4 or 8 bytes.

    Each tile row is read as one machine word of ``w + padding`` bytes from where the row
    starts (running into the next row) and copied straight into the canvas through an
    unaligned word view, then the ``padding`` bytes it carried past the row are set to NODATA:
    a transposing copy of machine words, which numpy does about twice as fast as moving runs
    of ``w`` bytes (and faster than a ufunc, which buffers unaligned words).
    """
    count, h, w = levels.shape
    width = canvas.shape[1]
    step = w + padding
    rows_as_words = np.ndarray(
        shape=(count * h,), dtype=word, buffer=levels.base, offset=0, strides=(w,)
    )
    nodata = _FILLED[word]  # every byte NODATA
    # (rows, h, cols) words at each tile row's first pixel on the canvas.
    out = np.ndarray(
        shape=(rows, h, cols),
        dtype=word,
        buffer=canvas,
        offset=padding * width + padding,
        strides=((h + padding) * width, width, step),
    )
    full_rows = count // cols
    source = rows_as_words[: full_rows * cols * h].reshape(full_rows, cols, h)
    np.copyto(out[:full_rows], source.transpose(0, 2, 1))
    rest = count - full_rows * cols
    if rest:
        np.copyto(
            out[full_rows, :, :rest], rows_as_words[full_rows * cols * h :].reshape(rest, h).T
        )
        out[full_rows, :, rest:] = nodata
    out[full_rows + bool(rest) :] = nodata  # empty rows of a grid chosen by the caller
    canvas[:padding] = NODATA
    body = canvas[padding:].reshape(rows, h + padding, width)
    body[:, h:] = NODATA  # the gap under each row of tiles
    body[:, :h, :padding] = NODATA  # the left border
    if padding:  # the bytes each word carried past its row: the gap after each tile
        body[:, :h, padding:].reshape(rows, h, cols, step)[..., w:] = NODATA


def _levels_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialized uint8 array of ``shape`` with 8 spare bytes after it (for _tile)."""
    size = math.prod(shape)
    return np.empty(size + 8, np.uint8)[:size].reshape(shape)
