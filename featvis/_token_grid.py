"""Token grids: the grid of positions a flattened sequence of ``length`` tokens lays on an
image (a vision transformer's patches, with or without a class token).
"""

from __future__ import annotations

import functools
import math

__all__ = ["token_grid"]


@functools.lru_cache(maxsize=1024)
def token_grid(length: int, image_size: tuple[int, int] | None) -> tuple[int, int, int] | None:
    """The grid a token sequence of ``length`` lays on the image: ``(prefix, h, w)`` or None.

    The grid is what a patch size ``p`` (any real number, as a stride of a convolution or of
    pooling) cuts an image of ``image_size`` into: ``h = floor(H / p)`` and ``w = floor(W / p)``,
    or both rounded up. The sequence is that grid (``length == h * w``), or a class token and
    that grid (``length == 1 + h * w``, ``prefix`` 1). A square image gives square grids only.

    Examples
    --------
    >>> from featvis._token_grid import token_grid
    >>> token_grid(197, (224, 224)), token_grid(196, (224, 224)), token_grid(20, (64, 64))
    ((1, 14, 14), (0, 14, 14), None)
    >>> token_grid(14 * 20, (224, 320))
    (0, 14, 20)
    """
    if image_size is None or length < 1:
        return None
    height, width = image_size
    if height < 1 or width < 1:
        return None
    for prefix in (0, 1):
        count = length - prefix
        if count < 1:
            continue
        for h in _divisors(count):
            w = count // h
            if h <= height and w <= width and _patch_fits(h, w, height, width):
                return prefix, h, w
    return None


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return small + [n // d for d in reversed(small) if d * d != n]


def _patch_fits(h: int, w: int, height: int, width: int) -> bool:
    """Whether one patch size p gives ``floor(height / p) == h`` and ``floor(width / p) == w``,
    or the same with ``ceil``: the intervals of p that each side allows overlap."""
    # floor(x / p) == g  <=>  x / (g + 1) < p <= x / g
    if max(height / (h + 1), width / (w + 1)) < min(height / h, width / w):
        return True
    if height / h == width / w:  # both intervals end at the same p: p = H/h = W/w fits
        return True
    # ceil(x / p) == g  <=>  x / g <= p < x / (g - 1)
    low = max(height / h, width / w)
    high = min(height / (h - 1) if h > 1 else math.inf, width / (w - 1) if w > 1 else math.inf)
    return low < high
