"""The two steps of a montage, written plainly: values to palette levels, levels to a canvas.

These are the reference: :mod:`featvis.render._fast` has faster twins of both, and the tests
check that the two give the same bytes.
"""

from __future__ import annotations

import numpy as np

from featvis.render._normalize import Clip, Scope, normalize

__all__ = ["LEVELS", "NODATA", "levels", "tile"]

#: Gray levels a montage uses for data (palette entries 0..254); entry 255 is "no data".
LEVELS = 254
NODATA = 255


def levels(
    channels: np.ndarray, scope: Scope | None, clip: Clip, limits: tuple[float, float] | None
) -> np.ndarray:
    """Values -> palette levels 0..254 (NaN -> NODATA), uint8 of the same shape: the plain
    way, :func:`normalize` then rounding. :mod:`featvis.render._fast` has the fused twin."""
    if scope is None:
        unit = np.clip(channels, 0.0, 1.0)  # NaN stays NaN
    else:
        unit = normalize(channels, scope=scope, clip=clip, limits=limits)
    np.multiply(unit, np.float32(LEVELS), out=unit)
    unit += np.float32(0.5)
    if np.isnan(unit.max()):  # NaN is "no data": the separator color
        nan = np.isnan(unit)
        unit[nan] = 0.0
        out = unit.astype(np.uint8)
        out[nan] = NODATA
        return out
    return unit.astype(np.uint8)


def tile(levels: np.ndarray, rows: int, cols: int, padding: int) -> np.ndarray:
    """Place (C, h, w) uint8 tiles row by row on a canvas of NODATA with ``padding`` gaps:
    the plain way. :mod:`featvis.render._fast` has the faster twin."""
    count, h, w = levels.shape
    step_h, step_w = h + padding, w + padding
    canvas = np.full((rows * step_h + padding, cols * step_w + padding), NODATA, np.uint8)
    cells = np.full((rows * cols, h, w), NODATA, np.uint8)
    cells[:count] = levels
    # The canvas without its top and left border, as (rows, h, cols, w) tile pixels.
    tiles = canvas[padding:, padding:].reshape(rows, step_h, cols, step_w)[:, :h, :, :w]
    tiles[...] = cells.reshape(rows, cols, h, w).transpose(0, 2, 1, 3)
    return canvas
