"""Maps from the scores of perturbed images, with no layer: occlusion and RISE.

Both need only :class:`featvis.Scorer`. The perturbed copies of one image are evaluated in
batches, one image at a time, so memory does not grow with the number of images explained.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from featvis._capabilities import Scorer, require
from featvis._errors import ArgumentError
from featvis._explain._common import (
    PERTURBATION_BATCH,
    chunks,
    distinct_images,
    is_count,
    progress_bar,
    resize_matrix,
)
from featvis._explain._registry import MethodRequest, MethodResult
from featvis._predict import to_probabilities

__all__ = ["occlusion", "rise"]

#: The occlusion grid when no window is given: this many windows per side.
DEFAULT_GRID = 14


def _pair(value: Any, name: str) -> tuple[int, int]:
    if is_count(value):
        return int(value), int(value)
    try:
        pair = tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(map(is_count, pair)):
        raise ArgumentError(f"{name} must be a positive integer or (height, width), got {value!r}.")
    return int(pair[0]), int(pair[1])


def windows(size: tuple[int, int], window: tuple[int, int], stride: tuple[int, int]) -> list:
    """Top-left corners of the occlusion windows, as captum's ``Occlusion`` places them: along
    each axis ``ceil((size - window) / stride) + 1`` positions from 0 by ``stride`` (the last
    window may stop at the edge)."""
    axes = []
    for n, w, s in zip(size, window, stride):
        if w > n:
            raise ArgumentError(f"The occlusion window {window} is larger than the input {size}.")
        if s > w and w < n:
            raise ArgumentError(
                f"An occlusion stride {stride} larger than the window {window} leaves pixels "
                "that no window covers."
            )
        axes.append([i * s for i in range(math.ceil((n - w) / s) + 1)])
    return axes


def _grid_scores(
    backend: Scorer,
    x: np.ndarray,
    corners: list[tuple[int, int]],
    window: tuple[int, int],
    baseline: float,
    size: int,
    bar: object,
) -> np.ndarray:
    """Scores of ``x`` with each window set to ``baseline``, ``(len(corners), K)``."""
    parts = []
    for part in chunks(len(corners), size):
        copies = np.repeat(x[None], part.stop - part.start, axis=0)
        for j, (top, left) in enumerate(corners[part]):
            copies[j, :, top : top + window[0], left : left + window[1]] = baseline
        parts.append(backend.scores(copies, batch_size=size))
        if bar is not None:
            bar.update(len(copies))  # type: ignore[attr-defined]
    return np.concatenate(parts)


def occlusion(req: MethodRequest) -> MethodResult:
    """Occlusion (Zeiler & Fergus, 2014), as captum's ``Occlusion`` computes it.

    Each window of the input (all channels) is set to ``baseline`` in turn, and the drop of the
    explained score is the window's value (``.raw`` is the grid of drops). A pixel's value in
    ``.maps`` is the mean drop over the windows that cover it, which is captum's attribution.

    Options
    -------
    window : int or (int, int)
        Window size in input pixels; default the input's size divided by 14 (16 at 224).
    stride : int or (int, int)
        Default the window (windows tile the image: a 14 x 14 grid at 224).
    baseline : float
        The value occluded pixels take in the prepared input; default 0, the dataset's mean
        colour after mean/std normalization (captum's default baseline).
    refine : float, optional
        Coarse to fine: evaluate a grid of windows twice as large (stride doubled) first, then
        the fine windows only inside the ``refine`` fraction of coarse cells with the largest
        drop; elsewhere a fine window takes the drop of the coarse window over it. About
        ``1/4 + refine`` of the cost (docs/explain.md measures the error).
    """
    backend = require(req.backend, Scorer, needed_for="method 'occlusion'")
    height, width = req.batch.shape[2:]
    given = req.options.get("window")  # None: the default, but 0 is refused, not replaced
    default = (max(1, height // DEFAULT_GRID), max(1, width // DEFAULT_GRID))
    window = _pair(default if given is None else given, "window")
    stride = _pair(window if req.options.get("stride") is None else req.options["stride"], "stride")
    baseline = float(req.options.get("baseline", 0.0))
    refine: Any = req.options.get("refine")
    if refine is not None and not 0.0 < float(refine) <= 1.0:
        raise ArgumentError(f"refine must be a fraction in (0, 1], got {refine!r}.")
    ys, xs = windows((height, width), window, stride)
    corners = [(top, left) for top in ys for left in xs]
    scores = req.scores if req.scores is not None else backend.scores(req.batch)
    targets = req.targets.resolve(scores)
    n = len(req.batch)
    size = req.batch_size or PERTURBATION_BATCH
    raw = np.zeros((n, len(ys), len(xs)), np.float32)
    groups = distinct_images(req.batch)
    coarse = None
    if refine is not None:
        coarse_window = (window[0] * 2, window[1] * 2)
        coarse_window = (min(coarse_window[0], height), min(coarse_window[1], width))
        coarse = (
            coarse_window,
            windows((height, width), coarse_window, (stride[0] * 2, stride[1] * 2)),
        )
    steps = len(groups) * len(corners)
    with progress_bar(steps, req.progress, "occlusion") as bar:
        for group in groups:
            x = req.batch[group[0]]
            base = scores[group]
            if coarse is None:
                grid = _grid_scores(backend, x, corners, window, baseline, size, bar)
                for row, i in enumerate(group):
                    t = targets.weights[i]
                    drops = base[row] @ t - grid.astype(np.float64) @ t
                    raw[i] = drops.reshape(len(ys), len(xs))
                continue
            raw[group] = _coarse_to_fine(
                backend,
                x,
                base,
                targets.weights[group],
                corners,
                window,
                baseline,
                size,
                coarse,
                float(refine),
                (len(ys), len(xs)),
                stride,
            )
    maps = _pixel_means(raw, (height, width), ys, xs, window)
    return MethodResult(raw, targets, targets.values(scores), maps)


def _coarse_to_fine(
    backend: Scorer,
    x: np.ndarray,
    base: np.ndarray,
    weights: np.ndarray,
    corners: list[tuple[int, int]],
    window: tuple[int, int],
    baseline: float,
    size: int,
    coarse: tuple,
    refine: float,
    shape: tuple[int, int],
    stride: tuple[int, int],
) -> np.ndarray:
    (coarse_window, (cys, cxs)) = coarse
    coarse_corners = [(top, left) for top in cys for left in cxs]
    grid = _grid_scores(backend, x, coarse_corners, coarse_window, baseline, size, None)
    out = np.zeros((len(weights), *shape), np.float32)
    # The coarse window each fine window lies in, and which coarse cells to refine (the union
    # over the targets of this image's top cells).
    owner = np.array(
        [
            min(top // (stride[0] * 2), len(cys) - 1) * len(cxs)
            + min(left // (stride[1] * 2), len(cxs) - 1)
            for top, left in corners
        ]
    )
    coarse_drops = np.diagonal(base @ weights.T)[None, :] - grid.astype(np.float64) @ weights.T
    count = max(1, round(refine * len(coarse_corners)))
    chosen: set[int] = set()
    for j in range(len(weights)):
        chosen.update(np.argsort(-coarse_drops[:, j], kind="stable")[:count].tolist())
    fine = [k for k, cell in enumerate(owner) if cell in chosen]
    fine_scores = _grid_scores(backend, x, [corners[k] for k in fine], window, baseline, size, None)
    for j, t in enumerate(weights):
        drops = coarse_drops[owner, j].copy()
        drops[fine] = float(base[j] @ t) - fine_scores.astype(np.float64) @ t
        out[j] = drops.reshape(shape)
    return out


def _pixel_means(
    raw: np.ndarray, size: tuple[int, int], ys: list[int], xs: list[int], window: tuple[int, int]
) -> np.ndarray:
    """Per pixel, the mean of the grid values of the windows covering it (captum's weights)."""
    n = len(raw)
    total = np.zeros((n, *size), np.float64)
    count = np.zeros(size, np.float64)
    for a, top in enumerate(ys):
        for b, left in enumerate(xs):
            total[:, top : top + window[0], left : left + window[1]] += raw[:, a, b, None, None]
            count[top : top + window[0], left : left + window[1]] += 1.0
    return (total / np.maximum(count, 1.0)).astype(np.float32)


def rise_masks(
    count: int, size: tuple[int, int], *, cells: int, p: float, seed: int, start: int = 0
) -> np.ndarray:
    """Masks ``start`` to ``start + count`` of RISE's seeded sequence, ``(count, H, W)``.

    As the paper's code: a ``cells x cells`` grid of Bernoulli(``p``) values, upsampled
    bilinearly to ``(cells + 1)`` cell sizes and cropped at a random shift of less than a
    cell. Mask ``i`` depends only on ``seed`` and ``i``.
    """
    height, width = size
    cell = (math.ceil(height / cells), math.ceil(width / cells))
    up = ((cells + 1) * cell[0], (cells + 1) * cell[1])
    ry = resize_matrix(cells, up[0], False)  # built once: RISE asks for 2 masks at a time
    rx = resize_matrix(cells, up[1], False).T
    masks = np.empty((count, height, width), np.float32)
    for j in range(count):
        rng = np.random.default_rng([seed, start + j])
        grid = (rng.random((cells, cells)) < p).astype(np.float32)
        dy, dx = int(rng.integers(0, cell[0])), int(rng.integers(0, cell[1]))
        masks[j] = (ry @ grid @ rx)[dy : dy + height, dx : dx + width]
    return masks


def rise(req: MethodRequest) -> MethodResult:
    """RISE (Petsiuk et al., 2018): ``sum_i P_i M_i / (N p)`` over ``N`` random smooth masks
    ``M_i`` (see :func:`rise_masks`), where ``P_i`` is the explained probability of the
    image multiplied by mask ``i`` (in the prepared input, so hidden pixels take the
    dataset's mean colour). Seeded: the same ``seed`` gives the same masks and map.

    Options
    -------
    masks : int
        Number of masks ``N`` (default 2000; the paper uses 4000 to 8000).
    cells : int
        Grid cells per side (default 7).
    p : float
        Probability that a cell is kept (default 0.5).
    """
    backend = require(req.backend, Scorer, needed_for="method 'rise'")
    count = req.options.get("masks", 2000)
    cells = req.options.get("cells", 7)
    p = req.options.get("p", 0.5)
    if not (is_count(count) and is_count(cells) and isinstance(p, (int, float)) and 0 < p < 1):
        raise ArgumentError(
            f"RISE takes whole numbers masks >= 1 and cells >= 1, and 0 < p < 1; got "
            f"masks={count!r}, cells={cells!r}, p={p!r}."
        )
    count, cells, p = int(count), int(cells), float(p)
    height, width = req.batch.shape[2:]
    scores = req.scores if req.scores is not None else backend.scores(req.batch)
    targets = req.targets.resolve(scores)
    to_probabilities(scores[:1], backend.score_kind)  # one logit an image: refused before the work
    size = req.batch_size or PERTURBATION_BATCH
    n = len(req.batch)
    maps = np.zeros((n, height, width), np.float64)
    groups = distinct_images(req.batch)
    with progress_bar(count * len(groups), req.progress, "rise") as bar:
        for part in chunks(count, size):
            masks = rise_masks(
                part.stop - part.start,
                (height, width),
                cells=cells,
                p=p,
                seed=req.seed,
                start=part.start,
            )
            flat = masks.reshape(len(masks), -1).astype(np.float64)
            for group in groups:
                out = backend.scores(req.batch[group[0]][None] * masks[:, None], batch_size=size)
                probs = to_probabilities(out, backend.score_kind)
                for i in group:
                    values = probs.astype(np.float64) @ targets.weights[i]
                    maps[i] += (values @ flat).reshape(height, width)
                if bar is not None:
                    bar.update(len(masks))
    maps /= count * p
    out32 = maps.astype(np.float32)
    return MethodResult(out32, targets, targets.values(scores), out32.copy())
