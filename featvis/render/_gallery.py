"""gallery: RGB images (optimized images, dataset examples) tiled as one grid, row by row."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from featvis._errors import ArgumentError
from featvis.render._montage import grid_shape
from featvis.render._picture import Picture

__all__ = ["gallery"]

_LABEL_HEIGHT = 12  # pixels of Pillow's default bitmap font, with a margin


def gallery(
    images: np.ndarray,
    *,
    grid: tuple[int | None, int | None] | None = None,
    padding: int = 2,
    labels: Sequence[str] | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
) -> Picture:
    """Tile ``N`` RGB images into one picture, row by row (the layer view of
    :func:`featvis.maximize`: one optimized image per channel).

    Parameters
    ----------
    images : ndarray, shape (N, H, W, 3)
        Float in [0, 1] (clipped) or uint8. Not modified.
    grid : (rows, cols), optional
        As for :func:`featvis.montage` (a near-square grid by default).
    padding : int
        Pixels between the images and around them.
    labels : sequence of str, optional
        One caption per image, written under it.
    background : (int, int, int)
        Color of the padding.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import gallery
    >>> gallery(np.zeros((3, 8, 8, 3)), padding=1).size  # a 2x2 grid, one tile empty
    (19, 19)
    """
    a = np.asarray(images)
    if a.ndim != 4 or a.shape[3] != 3 or len(a) == 0:
        raise ArgumentError(f"gallery needs RGB images of shape (N, H, W, 3), got {a.shape}.")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ArgumentError(f"padding must be a whole number >= 0, got {padding!r}.")
    if labels is not None and len(labels) != len(a):
        raise ArgumentError(f"{len(labels)} labels for {len(a)} images: give one per image.")
    if a.dtype != np.uint8:
        a = np.nan_to_num(np.asarray(a, np.float64), nan=0.0)
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    n, h, w = a.shape[:3]
    label = _LABEL_HEIGHT if labels is not None else 0
    rows, cols = grid_shape(grid, n, (h + label, w))
    cell_h, cell_w = h + label + padding, w + padding
    canvas = np.empty((rows * cell_h + padding, cols * cell_w + padding, 3), np.uint8)
    canvas[:] = np.asarray(background, np.uint8)
    for i in range(n):
        y, x = (i // cols) * cell_h + padding, (i % cols) * cell_w + padding
        canvas[y : y + h, x : x + w] = a[i]
    if labels is None:
        return Picture(canvas)
    picture = Image.fromarray(canvas)
    draw = ImageDraw.Draw(picture)
    for i, text in enumerate(labels):
        y, x = (i // cols) * cell_h + padding + h, (i % cols) * cell_w + padding
        draw.text((x + 1, y), str(text), fill=(0, 0, 0))
    return Picture(np.asarray(picture))
