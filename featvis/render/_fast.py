"""Fast twins of the montage steps in :mod:`featvis.render._tiles`, fenced here.

Each function returns exactly what its plain twin returns (the tests compare them byte for
byte); they exist because the render rows of ``benchmarks/bench_render.py`` show they pay
(figures in docs/performance.md):

- :func:`levels` folds normalization and rounding into two fused passes written straight into
  uint8, instead of normalize's float result followed by three more passes.
- :func:`tile`, when a tile row plus its gap is 2, 4 or 8 bytes (7x7 tiles of a deep layer),
  copies each tile row as one machine word read from where the row starts: that read runs up
  to 8 bytes past the tiles, which is only safe because :func:`levels` leaves 8 spare bytes
  after its result (:func:`levels_buffer`). Other tile sizes take the plain path: copying
  tile rows as numpy voids measured no gain on the 55x55 row.
"""

from __future__ import annotations

import math

import numpy as np

from featvis.render import _tiles
from featvis.render._normalize import Clip, Scope, _fix_nonfinite, _Range, _range
from featvis.render._tiles import LEVELS, NODATA

__all__ = ["levels", "levels_buffer", "tile"]


def levels(
    channels: np.ndarray, scope: Scope | None, clip: Clip, limits: tuple[float, float] | None
) -> np.ndarray:
    """What :func:`featvis.render._tiles.levels` returns, from fused passes: the scale and the
    rounding are folded into one subtract and one multiply, written straight into uint8."""
    out = levels_buffer(channels.shape)
    if scope == "global" and clip is None and limits is None:
        least, most = float(channels.min()), float(channels.max())
        if math.isfinite(least) and math.isfinite(most):
            # The common case, kept lean: (a - low + 0.5/k) * k = (a - low) * k + 0.5, cast
            # (truncating) into uint8 rounds to the nearest level. Constant input gives 0.
            step = LEVELS / (most - least) if most > least else 0.0
            tmp = np.subtract(channels, np.float32(least - 0.5 / step if step else least))
            np.multiply(tmp, np.float32(step), out=tmp)
            np.copyto(out, tmp, casting="unsafe")
            return out
    if scope is None:
        r = _Range(
            low=np.float32(0.0),
            scale=np.float32(1.0),
            clipped=True,
            finite=bool(np.isfinite(channels.min()) and np.isfinite(channels.max())),
        )
    else:
        r = _range(channels, scope, clip, limits)
    low, scale, finite, clipped = r.low, r.scale, r.finite, r.clipped
    k = scale * np.float32(LEVELS)
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
        np.clip(tmp, 0.0, float(LEVELS), out=tmp)
    else:
        _fix_nonfinite(tmp, channels, float(LEVELS))
    tmp += np.float32(0.5)
    nan = np.isnan(tmp)
    tmp[nan] = 0.0
    np.copyto(out, tmp, casting="unsafe")
    out[nan] = NODATA  # NaN shows in the separator color: no data
    return out


_WORDS: dict[int, type] = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_FILLED: dict[type, int] = {word: np.iinfo(word).max for word in _WORDS.values()}  # NODATA bytes


def tile(levels: np.ndarray, rows: int, cols: int, padding: int) -> np.ndarray:
    """What :func:`featvis.render._tiles.tile` returns; through :func:`tile_words` when a tile
    row plus its gap is 2, 4 or 8 bytes and ``levels`` has 8 spare bytes after it (as
    :func:`levels` leaves), else through the plain twin itself."""
    _, h, w = levels.shape
    step_h, step_w = h + padding, w + padding
    shape = (rows * step_h + padding, cols * step_w + padding)
    word = _WORDS.get(step_w)
    base = levels.base
    if word is not None and base is not None and base.nbytes >= levels.nbytes + 8:
        canvas = np.empty(shape, np.uint8)
        tile_words(levels, canvas, rows, cols, padding, word)
        return canvas
    return _tiles.tile(levels, rows, cols, padding)


def tile_words(
    levels: np.ndarray, canvas: np.ndarray, rows: int, cols: int, padding: int, word: type
) -> None:
    """The fast path of :func:`tile` when a tile row plus its gap is 2, 4 or 8 bytes.

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


def levels_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialized uint8 array of ``shape`` with 8 spare bytes after it (for
    :func:`tile_words`)."""
    size = math.prod(shape)
    return np.empty(size + 8, np.uint8)[:size].reshape(shape)
