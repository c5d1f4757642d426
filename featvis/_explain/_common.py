"""Pieces the methods share: bilinear resampling as matrices, batches of images, progress."""

from __future__ import annotations

import functools
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

__all__ = [
    "bilinear_matrix",
    "distinct_images",
    "is_count",
    "progress_bar",
    "resize_matrix",
    "upsample",
]

#: Perturbed images per call of ``scores`` when the caller does not choose (occlusion, RISE,
#: Score-CAM, and featvis.evaluate): small, because on a CPU the activations of a large batch
#: no longer stay in cache. EfficientNet-Lite0 at 224 px through PyTorch, ms per image at
#: batches of 1/2/4/8/16/32: 14-18/10/14-15/24-26/24-32/47-74 on this project's 2-core AMD
#: EPYC (2 MB L2 a core, 2026-12-02; occlusion 14x14 1.6 s at 2, 2.3 s at 4, 4.6-5.2 s at 8);
#: an earlier 2-core machine: 39 at 4-8, 57 at 32. ONNX Runtime is flat (11-16 ms here). On a
#: GPU, pass a larger ``batch_size``.
PERTURBATION_BATCH = 2


def bilinear_matrix(n_in: int, n_out: int, *, align_corners: bool = False) -> np.ndarray:
    """The ``(n_out, n_in)`` float64 matrix of 1-D linear interpolation.

    ``align_corners=False`` is the half-pixel convention of OpenCV's ``resize``, PyTorch's
    ``interpolate(..., align_corners=False)`` and :func:`featvis.resize` when enlarging:
    output pixel ``i`` samples input position ``(i + 0.5) * n_in / n_out - 0.5``, clamped to
    the edge. ``align_corners=True`` maps the first and last pixels onto each other, as
    ``torch.nn.UpsamplingBilinear2d`` does. A 2-D map resizes as ``Ry @ map @ Rx.T``.

    Examples
    --------
    >>> from featvis._explain._common import bilinear_matrix
    >>> (bilinear_matrix(2, 4) @ [0.0, 1.0]).tolist()
    [0.0, 0.25, 0.75, 1.0]
    """
    if align_corners:
        position = np.zeros(n_out) if n_out == 1 else np.arange(n_out) * ((n_in - 1) / (n_out - 1))
    else:
        position = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    position = np.clip(position, 0.0, n_in - 1)
    low = np.floor(position).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    frac = position - low
    matrix = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, low), 1.0 - frac)
    np.add.at(matrix, (rows, high), frac)
    return matrix


def upsample(maps: np.ndarray, size: tuple[int, int], *, align_corners: bool = False) -> np.ndarray:
    """``(..., h, w)`` maps resized bilinearly to ``(..., *size)``, float32."""
    h, w = maps.shape[-2:]
    if (h, w) == tuple(size):
        return np.array(maps, dtype=np.float32, copy=True)
    ry = resize_matrix(h, int(size[0]), align_corners)
    rx = resize_matrix(w, int(size[1]), align_corners)
    return np.matmul(np.matmul(ry, maps.astype(np.float32, copy=False)), rx.T)


@functools.lru_cache(maxsize=32)
def resize_matrix(n_in: int, n_out: int, align_corners: bool) -> np.ndarray:
    """:func:`bilinear_matrix` as float32, read-only, built once per size (every explanation
    resizes its maps to the same few input sizes)."""
    matrix = bilinear_matrix(n_in, n_out, align_corners=align_corners).astype(np.float32)
    matrix.flags.writeable = False
    return matrix


def distinct_images(batch: np.ndarray) -> list[list[int]]:
    """Rows of ``batch`` grouped by identical content, in order of first appearance: a method
    that perturbs the image runs once per distinct image, whatever the targets asked of it."""
    groups: dict[bytes, list[int]] = {}
    for i, row in enumerate(batch):
        groups.setdefault(np.ascontiguousarray(row).tobytes(), []).append(i)
    return list(groups.values())


@contextmanager
def progress_bar(total: int, progress: bool | None, desc: str) -> Iterator[Any]:
    """A tqdm bar on stderr, or None. ``progress=None``: only when stderr is a terminal and
    there is more than one step."""
    if progress is False or total <= 1:
        yield None
        return
    from tqdm.auto import tqdm

    bar = tqdm(
        total=total,
        desc=desc,
        disable=None if progress is None else False,
        file=sys.stderr,
        leave=False,
    )
    try:
        yield bar
    finally:
        bar.close()


def chunks(total: int, size: int) -> Iterator[slice]:
    """Slices of ``range(total)`` of at most ``size``."""
    for start in range(0, total, size):
        yield slice(start, min(start + size, total))


def is_count(value: Any) -> bool:
    """Whether ``value`` is a positive whole number (an int or NumPy integer, not a bool, a
    float or a string: ``masks=2.7`` is refused rather than truncated)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and bool(value >= 1)
