"""The metrics of :func:`featvis.evaluate`, as numpy over :class:`featvis.Scorer`.

Every metric scores one image's map against the model's output on perturbed copies of the
image, all built here and sent to :meth:`featvis.Scorer.scores` in batches. Images are the
model's prepared ``(C, H, W)`` input, maps are ``(H, W)`` at the same size, and "the score" is
the target class's probability (the softmax of the scores, unless the backend's
:attr:`~featvis.Scorer.score_kind` says they are probabilities already).

Pixel order: a map's pixels ranked from the highest value to the lowest, ties in raster order
(``np.argsort(-map, kind="stable")``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from featvis._capabilities import Scorer
from featvis._errors import ArgumentError
from featvis._evaluate._road import impute_many
from featvis._predict import to_probabilities
from featvis._threads import available_cpus

__all__ = [
    "SUBSTRATES",
    "confidence_change",
    "deletion_insertion",
    "kept_prediction",
    "probability",
    "road",
    "spearman",
    "substrate",
]

#: What replaces removed pixels: ``blur`` (scikit-image's ``gaussian``), ``mean`` (each
#: channel's mean over the image), ``zeros`` (0 in the model's input space: for ImageNet
#: normalization, the dataset's mean colour).
SUBSTRATES = ("blur", "mean", "zeros")


def probability(scorer: Scorer, batch: np.ndarray, batch_size: int | None) -> np.ndarray:
    """``(N, K)`` class probabilities of a prepared batch."""
    return to_probabilities(scorer.scores(batch, batch_size=batch_size), scorer.score_kind)


def substrate(image: np.ndarray, kind: str, *, sigma: float = 5.0) -> np.ndarray:
    """The ``(C, H, W)`` image that replaces removed pixels of ``image``.

    ``blur``: ``skimage.filters.gaussian(image, sigma=sigma, channel_axis=0,
    mode="nearest")``, each channel blurred alone; ``mean``: each channel's mean; ``zeros``.
    """
    if kind == "blur":
        from skimage.filters import gaussian

        return np.asarray(
            gaussian(image.astype(np.float64), sigma=sigma, channel_axis=0, mode="nearest"),
            np.float32,
        )
    if kind == "mean":
        return np.broadcast_to(image.mean(axis=(1, 2), keepdims=True), image.shape).astype(
            np.float32
        )
    if kind == "zeros":
        return np.zeros_like(image, np.float32)
    raise ArgumentError(f"Unknown substrate {kind!r}; choose one of {', '.join(SUBSTRATES)}.")


def order(saliency: np.ndarray) -> np.ndarray:
    """Each pixel's rank, 0 for the most salient (ties in raster order), shape ``(H, W)``."""
    flat = np.asarray(saliency, np.float64).reshape(-1)
    ranks = np.empty(flat.size, np.int64)
    ranks[np.argsort(-flat, kind="stable")] = np.arange(flat.size)
    return ranks.reshape(saliency.shape)


def counts(pixels: int, steps: int) -> np.ndarray:
    """Pixels removed after each of ``0..steps`` steps: ``round(i * pixels / steps)``."""
    return np.rint(np.arange(steps + 1) * (pixels / steps)).astype(np.int64)


def _auc(curve: np.ndarray, pixels: int) -> np.ndarray:
    """Trapezoidal area under curves (last axis) sampled at the fractions of pixels actually
    removed, ``counts(pixels, k) / pixels`` for ``k + 1`` points: ``i / k`` exactly when ``k``
    divides ``pixels``, otherwise within ``1 / (2 * pixels)`` of it."""
    x = counts(pixels, curve.shape[-1] - 1) / pixels
    return ((curve[..., 1:] + curve[..., :-1]) * np.diff(x)).sum(axis=-1) / 2


def deletion_insertion(
    scorer: Scorer,
    image: np.ndarray,
    saliency: np.ndarray,
    target: int,
    *,
    steps: int,
    deletion: str | None,
    insertion: str | None,
    sigma: float,
    batch_size: int | None,
) -> dict[str, np.ndarray]:
    """Deletion and insertion curves of one image (Petsiuk et al., RISE, 2018).

    Deletion starts from the image and replaces, after step ``i`` of ``steps``, the
    ``round(i * H * W / steps)`` most salient pixels (all channels) by the ``deletion``
    substrate; insertion starts from the ``insertion`` substrate and puts the same pixels of
    the image back. The curve is the target's probability at each of the ``steps + 1`` points
    (``steps + 1`` forwards each, sent together); the metric is its trapezoidal area over the
    fraction of pixels changed, ``round(i * H * W / steps) / (H * W)`` from 0 to 1. Low
    deletion and high insertion are good.

    Returns ``{"deletion": (steps + 1,), "insertion": (steps + 1,)}`` for those asked.
    """
    rank = order(saliency)[None]
    done = counts(rank.size, steps)
    stacks, names = [], []
    for name, kind in (("deletion", deletion), ("insertion", insertion)):
        if kind is None:
            continue
        fill = substrate(image, kind, sigma=sigma)
        for n in done:
            changed = rank < n
            stacks.append(
                np.where(changed, fill, image)
                if name == "deletion"
                else np.where(changed, image, fill)
            )
        names.append(name)
    if not names:
        return {}
    p = probability(scorer, np.stack(stacks), batch_size)[:, target]
    return {name: p[i * len(done) : (i + 1) * len(done)] for i, name in enumerate(names)}


def road(
    scorer: Scorer,
    image: np.ndarray,
    saliency: np.ndarray,
    target: int,
    *,
    percentiles: Sequence[float],
    noise: float,
    rng: np.random.Generator,
    batch_size: int | None,
) -> dict[str, np.ndarray]:
    """ROAD (Rong et al., 2022), removal and debiasing, with pytorch-grad-cam's conventions.

    For each ``p`` of ``percentiles``: MoRF removes the pixels whose map value is at or above
    the map's ``p``-th percentile (``np.percentile``: the top ``100 - p`` %), LeRF those whose
    value is at or below its ``100 - p``-th (the bottom ``100 - p`` %, as pytorch-grad-cam's
    ``1 - map``, but in float64, so that the map's scale does not matter); removed pixels are
    filled by noisy linear imputation (:func:`featvis._evaluate._road.impute`, noise ``noise``
    in the input space). The curves
    are the target's probability at each ``p``; ROAD (combined, pytorch-grad-cam's
    ``ROADCombined``) is ``mean(LeRF - MoRF) / 2``: high is good. A mask that removes every
    pixel (a constant map: every value is at its percentile) leaves nothing to impute from:
    that point is NaN, and so is the image's ROAD, which the means leave out.
    """
    masks, defined = [], []
    for reverse in (False, True):
        # LeRF ranks by -map in float64: pytorch-grad-cam's 1 - map (for maps in [0, 1]) in
        # float32 merged values closer than 6e-8, so a map's scale changed which pixels tie
        # at a cut (a map times 1e-9 was all ties: NaN)
        values = -np.asarray(saliency, np.float64) if reverse else saliency
        for p in percentiles:
            removed = ~(values < np.percentile(values, p))
            defined.append(not removed.all())
            if defined[-1]:
                masks.append(removed)
    stacks = impute_many(image, masks, noise=noise, rng=rng, threads=available_cpus())
    probs = np.full(len(defined), np.nan)
    if stacks:
        probs[np.flatnonzero(defined)] = probability(scorer, np.stack(stacks), batch_size)[
            :, target
        ]
    morf, lerf = probs[: len(percentiles)], probs[len(percentiles) :]
    return {"morf": morf, "lerf": lerf}


def unit_range(saliency: np.ndarray) -> np.ndarray:
    """The map scaled to ``[0, 1]`` (min to 0, max to 1); a constant map becomes all zeros,
    as pytorch-grad-cam's ``scale_cam_image`` makes it: a map that marks no region keeps
    none (all ones would keep the whole image and score the best drop there is)."""
    s = np.asarray(saliency, np.float64)
    low, high = np.nanmin(s), np.nanmax(s)
    if not high > low:
        return np.zeros(s.shape, np.float32)
    return ((s - low) / (high - low)).astype(np.float32)


def confidence_change(
    scorer: Scorer,
    images: np.ndarray,
    maps: np.ndarray,
    targets: np.ndarray,
    clean: np.ndarray,
    *,
    batch_size: int | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Average drop and increase in confidence (Chattopadhay et al., Grad-CAM++, 2018).

    Each image (the model's input) is multiplied by its map scaled to ``[0, 1]``
    (pytorch-grad-cam's ``CamMultImageConfidenceChange``); ``Y`` is the target's probability
    on the image, ``O`` on the product. Per image: drop ``max(0, Y - O) / Y`` (the paper's
    percentage over 100; low is good) and increase ``O > Y`` (high is good).

    Returns ``(drop, increase, O)``, each ``(N,)``.
    """
    product = np.stack([x * unit_range(m)[None] for x, m in zip(images, maps)])
    probs = probability(scorer, product, batch_size)
    kept = probs[np.arange(len(targets)), targets]
    drop = np.maximum(0.0, clean - kept) / np.maximum(clean, np.finfo(np.float32).tiny)
    return drop.astype(np.float32), (kept > clean).astype(np.float32), kept


def kept_prediction(
    scorer: Scorer,
    image: np.ndarray,
    saliency: np.ndarray,
    target: int,
    *,
    keep: Sequence[float],
    kind: str,
    sigma: float,
    batch_size: int | None,
) -> np.ndarray:
    """Whether the model still predicts ``target`` from the top of the map alone.

    For each fraction ``q`` of ``keep``: the ``round(q * H * W)`` most salient pixels are kept,
    the rest replaced by the ``kind`` substrate; 1.0 where the top-1 class of that image is
    still ``target``, else 0.0. Returns ``(len(keep),)``.
    """
    rank = order(saliency)[None]
    fill = substrate(image, kind, sigma=sigma)
    stack = np.stack([np.where(rank < round(q * rank.size), image, fill) for q in keep])
    probs = probability(scorer, stack, batch_size)
    return (probs.argmax(axis=1) == target).astype(np.float32)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps' values (average ranks for ties); NaN when
    either is constant."""
    from scipy.stats import rankdata

    ra = rankdata(np.asarray(a, np.float64).reshape(-1))
    rb = rankdata(np.asarray(b, np.float64).reshape(-1))
    ra -= ra.mean()
    rb -= rb.mean()
    denominator = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denominator) if denominator > 0 else float("nan")


def sensitivity(base: np.ndarray, moved: np.ndarray) -> float:
    """``||moved - base||_2 / ||base||_2`` of two maps; NaN for an all-zero base map."""
    norm = float(np.linalg.norm(np.asarray(base, np.float64)))
    if not norm > 0:
        return float("nan")
    return float(np.linalg.norm(np.asarray(moved, np.float64) - base) / norm)
