"""How far apart two activations of one layer are: the numbers of a :class:`ComparisonRow`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["ATOL", "RTOL", "Stats", "stats"]

#: Default tolerances, chosen from measurement: fp32 PyTorch and ONNX Runtime on CPU differ by
#: about 1e-6 of a layer's peak on ResNet-18 and AlexNet, up to ~1e-5 where the exporter folds
#: a BatchNorm into the convolution before it (docs/onnx.md has the zoo's worst cases); 1e-4
#: leaves room for other kernels and orders of summation while still catching a wrong weight,
#: layout or layer (errors of 1e-2 and more).
RTOL = 1e-4
ATOL = 1e-6


@dataclass(frozen=True)
class Stats:
    """``max |a - b|``, that relative to ``max |a|``, the cosine similarity, and the verdict
    ``max |a - b| <= rtol * max |a| + atol``; ``note`` says why there are no numbers."""

    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    note: str = ""


def stats(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> Stats:
    """Compare ``b`` with the reference ``a`` (NaN where both are NaN counts as equal)."""
    if a.shape != b.shape:
        return Stats(math.nan, math.nan, math.nan, False, f"shapes differ: {a.shape} vs {b.shape}")
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return Stats(math.nan, math.nan, math.nan, False, "NaN in one backend only")
    keep = ~nan_a
    x, y = a[keep].astype(np.float64), b[keep].astype(np.float64)
    if x.size == 0:
        return Stats(0.0, 0.0, 1.0, True)
    max_abs = float(np.max(np.abs(x - y)))
    peak = float(np.max(np.abs(x)))
    max_rel = max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else math.inf)
    norms = float(np.linalg.norm(x)) * float(np.linalg.norm(y))
    cosine = float(np.dot(x, y) / norms) if norms > 0 else (1.0 if max_abs == 0 else 0.0)
    passed = bool(np.isfinite(max_abs)) and max_abs <= rtol * peak + atol
    return Stats(max_abs, max_rel, cosine, passed)
