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

import numpy as np

__all__ = ["NEIGHBOURS", "impute"]

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
    image: np.ndarray, removed: np.ndarray, *, noise: float = 0.01, rng: np.random.Generator
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

    Returns
    -------
    ndarray, shape (C, H, W), float32
    """
    from scipy.sparse import csc_matrix  # here: importing scipy.sparse costs 0.3 s
    from scipy.sparse.linalg import spsolve

    c, h, w = image.shape
    flat = np.asarray(image, np.float64).reshape(c, -1)
    missing = np.asarray(removed, bool).reshape(-1)
    unknown = np.flatnonzero(missing)
    out = np.array(flat, copy=True)
    if len(unknown) == 0:
        return out.reshape(c, h, w).astype(np.float32)
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
        vals.append(np.full(int(is_unknown.sum()), weight))
        known = ~is_unknown
        np.add.at(rhs, eq[known], -weight * flat[:, target[known]].T)
    rows.append(np.arange(len(unknown)))
    cols.append(np.arange(len(unknown)))
    vals.append(-total)
    matrix = csc_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(unknown), len(unknown)),
    )
    solved = np.asarray(spsolve(matrix, rhs)).reshape(len(unknown), c)
    if noise:
        solved = solved + noise * rng.standard_normal(solved.shape)
    out[:, unknown] = solved.T
    return out.reshape(c, h, w).astype(np.float32)
