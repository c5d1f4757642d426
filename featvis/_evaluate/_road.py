"""Noisy linear imputation (Rong et al., "A Consistent and Efficient Evaluation Strategy for
Attribution Methods", ICML 2022): the substrate of ROAD.

Each removed pixel takes the weighted mean of its eight neighbours (weight 1/6 for the four
sharing an edge, 1/12 for the four diagonal ones; neighbours outside the image are left out),
removed neighbours being unknowns too: one sparse linear system per image and mask, the same
system as the authors' code (also in pytorch-grad-cam, ``metrics/road.py``), then Gaussian noise
of standard deviation ``noise`` (absolute, in the model's input space) is added to the imputed
values. The system is assembled here in one vectorized step instead of a ``lil_matrix`` loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

__all__ = [
    "MULTIGRID_INTERIOR",
    "MULTIGRID_UNKNOWNS",
    "NEIGHBOURS",
    "RTOL",
    "RTOL_NOISY",
    "RTOL_PER_NOISE",
    "impute",
    "impute_many",
    "solve",
    "system",
]

#: ``method="auto"`` solves by multigrid a system with this many unknowns, or with
#: :data:`MULTIGRID_INTERIOR` unknowns whose eight neighbours are all unknown. SuperLU's cost
#: is its fill, which blobs of removed pixels (a CAM's) make and scattered ones (a random
#: map's) do not: measured on Lite0's 224 x 224 inputs, multigrid is 1.3x faster from 2,500
#: unknowns of a blob and 3x from 25,000, and a random map's scattered pixels are 4-10x faster
#: direct below 10,000 unknowns, equal at 25,000 (docs/evaluation.md, its last section).
MULTIGRID_UNKNOWNS = 25_000
#: See :data:`MULTIGRID_UNKNOWNS`.
MULTIGRID_INTERIOR = 2_000
#: The multigrid solve's relative residual, for an imputation without noise.
RTOL = 1e-7
#: With noise, the relative residual is this times the noise's standard deviation (at least
#: :data:`RTOL`, at most :data:`RTOL_NOISY`): the solve need not be exact far below the noise
#: it is about to add. At ROAD's noise of 0.01 (rtol 1e-5) the imputed values lie within
#: 7.1e-5 of SuperLU's (0.7 % of the noise; 7.6e-6 to 2.6e-5 on a CAM's masks, up to 7.1e-5
#: on a random map's), the probabilities within 1.2e-5 of the exact solve's, and ROAD costs
#: 0.12 s an image less on a 2-core Xeon (docs/evaluation.md).
RTOL_PER_NOISE = 1e-3
#: See :data:`RTOL_PER_NOISE`.
RTOL_NOISY = 1e-5

#: ``((dy, dx), weight)`` of the eight neighbours, as in the ROAD paper's code.
NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)


def impute(
    image: np.ndarray,
    removed: np.ndarray,
    *,
    noise: float = 0.01,
    rng: np.random.Generator,
    method: str = "auto",
) -> np.ndarray:
    """``image`` with the ``removed`` pixels filled by noisy linear imputation.

    Parameters
    ----------
    image : ndarray, shape (C, H, W)
        The model's input for one image (not modified).
    removed : ndarray of bool, shape (H, W)
        The pixels to replace.
    noise : float
        Standard deviation of the Gaussian noise added to each imputed value (0: none).
    rng : numpy.random.Generator
    method : {"auto", "direct", "multigrid"}
        How the system is solved (:func:`solve`).

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    return impute_many(image, [removed], noise=noise, rng=rng, method=method)[0]


def impute_many(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    *,
    noise: float = 0.01,
    rng: np.random.Generator,
    method: str = "auto",
    threads: int = 1,
) -> list[np.ndarray]:
    """:func:`impute` of ``image`` for each of ``masks``, the systems solved in ``threads``.

    SuperLU and scipy's sparse products release the GIL, so on two cores two threads solve
    ROAD's 18 systems 1.7x faster (docs/evaluation.md). The noise is drawn afterwards, in
    the order of ``masks``: the result is the same as one :func:`impute` after another.
    A multigrid solve stops at a relative residual of :data:`RTOL` without noise, and of
    :data:`RTOL_PER_NOISE` times ``noise`` with it (its error then stays under 1 % of the
    noise added).

    Each mask draws a whole image of noise, ``(C, H, W)``, of which its removed pixels take
    theirs: a pixel keeps its noise whatever else is removed. Drawing only as many values as
    there are removed pixels (pytorch-grad-cam's ``randn_like``) has the same distribution,
    but one pixel more in a mask shifts the noise of every pixel after it, and of every mask
    after it: a map that moves one pixel across a percentile cut (an ONNX export's 1e-7
    rounding of a smooth map does) then changed ROAD by up to 3.7e-3 on Lite0's maps, now by
    at most 4.8e-4 (48 images, docs/evaluation.md).
    """
    c, h, w = image.shape
    flat = np.asarray(image, np.float64).reshape(c, -1)
    rtol = min(max(RTOL, RTOL_PER_NOISE * noise), RTOL_NOISY)

    def solved(removed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        missing = np.asarray(removed, bool).reshape(-1)
        unknown = np.flatnonzero(missing)
        if len(unknown) == 0:
            return unknown, np.zeros((0, c))
        matrix, rhs, ys, xs = system(flat, missing, h, w)
        return unknown, solve(matrix, rhs, ys, xs, method=method, rtol=rtol)

    if threads > 1 and len(masks) > 1:
        with ThreadPoolExecutor(min(threads, len(masks))) as pool:
            solutions = list(pool.map(solved, masks))
    else:
        solutions = [solved(m) for m in masks]
    out = []
    for unknown, values in solutions:
        image_out = np.array(flat, copy=True)
        field = noise * rng.standard_normal(flat.shape) if noise else None
        if len(unknown):
            image_out[:, unknown] = values.T if field is None else values.T + field[:, unknown]
        out.append(image_out.reshape(c, h, w).astype(np.float32))
    return out


def system(
    flat: np.ndarray, missing: np.ndarray, h: int, w: int
) -> tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
    """The imputation system of ``flat`` (C, H*W) with the ``missing`` pixels unknown.

    Returns the matrix (CSR, symmetric positive definite: the weights of each unknown's
    neighbours summed on the diagonal, minus each unknown neighbour's weight off it), the
    right-hand sides (n, C: the weighted sum of the known neighbours) and each unknown's row
    and column.
    """
    from scipy.sparse import csr_matrix  # here: importing scipy.sparse costs 0.3 s

    c = flat.shape[0]
    unknown = np.flatnonzero(missing)
    slot = np.full(h * w, -1, np.int64)
    slot[unknown] = np.arange(len(unknown))
    ys, xs = np.divmod(unknown, w)
    total = np.zeros(len(unknown))
    rows, cols, vals = [], [], []
    rhs = np.zeros((len(unknown), c))
    for (dy, dx), weight in NEIGHBOURS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        total[inside] += weight
        eq = np.flatnonzero(inside)
        target = ny[inside] * w + nx[inside]
        is_unknown = missing[target]
        rows.append(eq[is_unknown])
        cols.append(slot[target[is_unknown]])
        vals.append(np.full(int(is_unknown.sum()), -weight))
        known = ~is_unknown
        np.add.at(rhs, eq[known], weight * flat[:, target[known]].T)
    rows.append(np.arange(len(unknown)))
    cols.append(np.arange(len(unknown)))
    vals.append(total)
    matrix = csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(unknown), len(unknown)),
    )
    return matrix, rhs, ys, xs


def _multigrid_pays(matrix: Any) -> bool:
    if matrix.shape[0] >= MULTIGRID_UNKNOWNS:
        return True
    interior = np.count_nonzero(np.diff(matrix.indptr) == len(NEIGHBOURS) + 1)
    return bool(interior >= MULTIGRID_INTERIOR)


def solve(
    matrix: Any,
    rhs: np.ndarray,
    ys: np.ndarray,
    xs: np.ndarray,
    *,
    method: str = "auto",
    rtol: float = RTOL,
) -> np.ndarray:
    """The imputation system's solution, (n, C) float64.

    ``"direct"`` is SuperLU (``scipy.sparse.linalg.spsolve``), the plain path. ``"multigrid"``
    is :func:`featvis._evaluate._multigrid.solve`, to a relative residual of ``rtol``;
    ``"auto"`` (the default) takes it where it is faster (:data:`MULTIGRID_UNKNOWNS`), and
    the direct path elsewhere or should it not converge.
    """
    if method not in ("auto", "direct", "multigrid"):
        raise ValueError(f"method must be 'auto', 'direct' or 'multigrid', got {method!r}")
    if method == "multigrid" or (method == "auto" and _multigrid_pays(matrix)):
        from featvis._evaluate import _multigrid

        try:
            return _multigrid.solve(matrix, rhs, ys, xs, rtol=rtol)
        except RuntimeError:  # did not converge (never seen on an image): solve it directly
            if method == "multigrid":
                raise
    from scipy.sparse.linalg import spsolve

    return np.asarray(spsolve(matrix.tocsc(), rhs)).reshape(len(rhs), -1)
