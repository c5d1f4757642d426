"""Channel-weighted maps without gradients: Score-CAM and Ablation-CAM.

Both weigh each channel ``A_k`` of the layer by what the model's score does when the image (or
the layer) is changed according to that channel, then draw ``ReLU(sum_k w_k A_k)``. They need
only the model's scores (:class:`featvis.Scorer`; Ablation-CAM also
:class:`featvis.Patchable`), so they run on ONNX models and third-party backends as they do on
PyTorch.

The masked images or ablated activations of one image are evaluated in batches; an image that
appears several times in the batch (to be explained for several targets) is evaluated once.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featvis._capabilities import Patchable, Scorer, require
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

__all__ = ["ablationcam", "scorecam"]

#: Bytes of ablated activations handed to ``patched_scores`` at once.
ABLATION_BYTES = 512 << 20


def _softmax(values: np.ndarray) -> np.ndarray:
    shifted = np.exp(values - values.max())
    return shifted / shifted.sum()


def _setup(req: MethodRequest) -> tuple[Any, np.ndarray, np.ndarray]:
    backend: Any = require(req.backend, Scorer, needed_for="a gradient-free method")
    assert req.layer is not None
    acts = backend.activations(req.batch, req.layer, batch_size=req.batch_size)
    scores = (
        req.scores
        if req.scores is not None
        else backend.scores(req.batch, batch_size=req.batch_size)
    )
    return backend, acts, scores


def scorecam(req: MethodRequest) -> MethodResult:
    """Score-CAM (Wang et al., 2020), as pytorch-grad-cam computes it.

    Each channel ``A_k`` is upsampled to the input's size (bilinear, corners aligned, as
    ``torch.nn.UpsamplingBilinear2d``), scaled to [0, 1] by its own minimum and maximum, and
    multiplies the prepared input; the model's explained score of each masked image ``s_k``
    gives ``w = softmax_k(s_k)``, and the map is ``ReLU(sum_k w_k A_k)``.

    A channel that is constant (all zero after a ReLU, or all at a ReLU6's ceiling) masks the
    whole image to zeros: all of them share one forward pass of that zero input, which is
    exactly what evaluating each would give. So the cost is one forward pass per channel that
    varies, plus one.

    Options
    -------
    channels : int, optional
        Keep only the ``channels`` channels whose activations vary most (largest variance),
        as "Faster Score-CAM" does; the others are left out of the sum and of the softmax.
        Faster in proportion, approximate (docs/explain.md measures the error). When it is
        at least the number of channels that vary, nothing is left out: the exact map.
    """
    backend, acts, scores = _setup(req)
    keep = req.options.get("channels")
    if keep is not None and not is_count(keep):
        raise ArgumentError(f"channels must be a positive integer, got {keep!r}.")
    targets = req.targets.resolve(scores)
    n, c, h, w = acts.shape
    height, width = req.batch.shape[2:]
    ry = resize_matrix(h, height, True)
    rx = resize_matrix(w, width, True).T
    size = req.batch_size or PERTURBATION_BATCH
    groups = distinct_images(req.batch)
    raw = np.zeros((n, h, w), np.float32)
    plans = []
    for group in groups:
        a = acts[group[0]]
        varying = np.flatnonzero(a.max(axis=(1, 2)) > a.min(axis=(1, 2)))
        trimmed = keep is not None and keep < len(varying)
        if trimmed:
            spread = a[varying].var(axis=(1, 2))
            varying = np.sort(varying[np.argsort(-spread, kind="stable")[:keep]])
        # untrimmed, the constant channels stay in (one shared pass): the map is then exact
        constant = np.array([], int) if trimmed else np.setdiff1d(np.arange(c), varying)
        plans.append((group, varying, constant))
    total = sum(len(v) + (len(k) > 0) for _, v, k in plans)
    with progress_bar(total, req.progress, "scorecam") as bar:
        for group, varying, constant in plans:
            x = req.batch[group[0]]
            a = acts[group[0]]
            masked_scores = []
            for part in chunks(len(varying), size):
                masks = np.matmul(np.matmul(ry, a[varying[part]]), rx)  # (m, H, W)
                low = masks.min(axis=(1, 2), keepdims=True)
                high = masks.max(axis=(1, 2), keepdims=True)
                masks = (masks - low) / (high - low + np.float32(1e-8))
                masked_scores.append(backend.scores(x[None] * masks[:, None], batch_size=size))
                if bar is not None:
                    bar.update(len(masks))
            k_scores = (
                np.concatenate(masked_scores)
                if masked_scores
                else np.zeros((0, scores.shape[1]), np.float32)
            )
            zero_scores = None
            if len(constant):
                zero_scores = backend.scores(np.zeros_like(x)[None])
                if bar is not None:
                    bar.update(1)
            for i in group:
                t = targets.weights[i].astype(np.float64)
                values = k_scores.astype(np.float64) @ t
                channel_values = np.zeros(c)
                channel_values[varying] = values
                if zero_scores is not None:
                    channel_values[constant] = float(zero_scores[0].astype(np.float64) @ t)
                chosen = np.concatenate([varying, constant]).astype(int)
                weights = np.zeros(c)
                if len(chosen):
                    weights[chosen] = _softmax(channel_values[chosen])
                cam = np.einsum("c,chw->hw", weights, a.astype(np.float64))
                raw[i] = np.maximum(cam, 0.0)
    return MethodResult(raw, targets, targets.values(scores))


def ablationcam(req: MethodRequest) -> MethodResult:
    """Ablation-CAM (Desai & Ramaswamy, 2020): ``w_k = (y - y_k) / y``, where ``y`` is the
    explained score and ``y_k`` the score with channel ``k`` of the layer set to zero; the map
    is ``ReLU(sum_k w_k A_k)``.

    The part of the model before the layer runs once per image: the ablated copies of the
    layer's output are built from it during that pass and the rest of the model runs on them
    in a batch (:meth:`featvis.Patchable.patched_scores`); the unablated copy, row 0, gives
    ``y`` (and the predicted class), so no other forward pass runs. A channel that is already
    all zero changes nothing when ablated: its weight is 0 without a pass. ``batch_size`` does
    not split the copies (every pass would run the model up to the layer again: at 2 copies a
    pass, Lite0's map took 6.2 s instead of 0.12 s); they go in passes of at most 512 MB of
    replacements.
    pytorch-grad-cam sets an ablated channel to the layer's minimum minus 1e7 when the layer
    has negative values; featvis always sets it to zero, as the paper does (the same map
    after a ReLU, where both set zero).
    """
    backend: Any = require(req.backend, Patchable, needed_for="method 'ablationcam'")
    assert req.layer is not None
    n = len(req.batch)
    groups = distinct_images(req.batch)
    shape = req.layer.output_shape
    dims = [d for d in (shape or ())[1:] if d is not None]
    # All the ablated copies of an image in one pass when they fit (and the shape is known).
    one_pass = len(dims) == 3 and (1 + dims[0]) * 4 * int(np.prod(dims)) <= ABLATION_BYTES
    acts = (
        None if one_pass else backend.activations(req.batch, req.layer, batch_size=req.batch_size)
    )
    patched_by_image: dict[int, np.ndarray] = {}
    layer_acts: dict[int, np.ndarray] = {}

    def ablated(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        live = np.flatnonzero(np.any(a != 0, axis=(1, 2)))
        rows = np.repeat(a[None], 1 + len(live), axis=0)
        rows[np.arange(1, 1 + len(live)), live] = 0.0  # row 0: the layer as it is
        return rows, live

    with progress_bar(len(groups), req.progress, "ablationcam") as bar:
        for group in groups:
            first = group[0]
            image = req.batch[first : first + 1]
            if one_pass:

                def build(own: np.ndarray, _first: int = first) -> np.ndarray:
                    layer_acts[_first] = own[0]
                    return ablated(own[0])[0]

                patched = backend.patched_scores(image, req.layer, build)
            else:
                assert acts is not None
                layer_acts[first] = acts[first]
                rows, _ = ablated(acts[first])
                per_pass = max(1, ABLATION_BYTES // max(1, acts[first].nbytes))
                patched = np.concatenate(
                    [
                        backend.patched_scores(image, req.layer, rows[part])
                        for part in chunks(len(rows), per_pass)
                    ]
                )
            patched_by_image[first] = patched
            if bar is not None:
                bar.update(1)
    baseline = np.zeros((n, patched_by_image[groups[0][0]].shape[1]), np.float32)
    for group in groups:
        baseline[group] = patched_by_image[group[0]][0]
    scores = req.scores if req.scores is not None else baseline
    targets = req.targets.resolve(scores)
    h, w = layer_acts[groups[0][0]].shape[1:]
    raw = np.zeros((n, h, w), np.float32)
    for group in groups:
        a = layer_acts[group[0]]
        live = np.flatnonzero(np.any(a != 0, axis=(1, 2)))  # as ablated() chose them
        values_all = patched_by_image[group[0]].astype(np.float64)
        for i in group:
            values = values_all @ targets.weights[i].astype(np.float64)
            base, drops = values[0], values[1:]
            weights = np.zeros(len(a))
            if base != 0:
                weights[live] = (base - drops) / base
            raw[i] = np.maximum(np.einsum("c,chw->hw", weights, a.astype(np.float64)), 0.0)
    return MethodResult(raw, targets, targets.values(scores))
