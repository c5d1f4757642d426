"""Gradient-weighted class activation maps, on any :class:`featvis.Differentiable` backend.

Each method gets, from one forward and one backward pass (:meth:`Differentiable.gradients`),
the layer's activations ``A`` (``(N, C, h, w)``) and the gradient ``G = dy/dA`` of the explained
score ``y`` (a class score, or the difference of two), and combines them by its paper's
formula; the map is then ``ReLU`` of the result, at the layer's grid. The formulas are written
out in each function's docstring.
"""

from __future__ import annotations

import numpy as np

from featvis._capabilities import Differentiable, Objective, require
from featvis._explain._registry import MethodRequest, MethodResult
from featvis._explain._targets import Resolved, Targets

__all__ = ["gradcam", "gradcampp", "hirescam", "layercam", "xgradcam"]

#: Images per forward and backward pass when the caller does not choose.
GRADIENT_BATCH = 32


def layer_gradients(req: MethodRequest) -> tuple[np.ndarray, np.ndarray, Resolved, np.ndarray]:
    """``(A, G, targets, scores)`` for the request's layer, from one pass per batch.

    A target that is the predicted class is resolved from the same forward pass's scores (the
    objective sees them before the backward pass), so no extra forward pass is run.
    """
    backend = require(req.backend, Differentiable, needed_for="a gradient method")
    assert req.layer is not None
    n = len(req.batch)
    classes = np.zeros(n, np.int64)
    contrast = np.full(n, -1, np.int64)
    weights: list[np.ndarray | None] = [None] * n

    def objective(scores: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows = Targets(req.targets.classes[index], req.targets.contrast[index])
        resolved = rows.resolve(scores if req.scores is None else req.scores[index])
        classes[index] = resolved.classes
        if resolved.contrast is not None:
            contrast[index] = resolved.contrast
        for i, row in zip(index.tolist(), resolved.weights):
            weights[i] = row
        return resolved.values(scores), resolved.weights

    g = backend.gradients(
        req.batch,
        [req.layer.name],
        Objective(objective, description="the explained score"),
        batch_size=req.batch_size or GRADIENT_BATCH,
    )
    resolved = Resolved(
        classes,
        contrast if (contrast >= 0).any() else None,
        np.stack(weights),  # type: ignore[arg-type]
    )
    return g.activations[req.layer.name], g.gradients[req.layer.name], resolved, g.values


def _relu_sum(weighted: np.ndarray) -> np.ndarray:
    """``ReLU(sum over channels)`` of ``(N, C, h, w)``, float32."""
    return np.maximum(weighted.sum(axis=1, dtype=np.float64), 0.0).astype(np.float32)


def _channel_cam(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``ReLU(sum_k w[n, k] A[n, k])``: a map from one weight per channel."""
    cam = np.einsum("nc,nchw->nhw", w.astype(np.float64), a.astype(np.float64))
    return np.maximum(cam, 0.0).astype(np.float32)


def gradcam(req: MethodRequest) -> MethodResult:
    """Grad-CAM (Selvaraju et al., 2017): ``ReLU(sum_k w_k A_k)``, ``w_k = mean_ij G_k``."""
    a, g, targets, scores = layer_gradients(req)
    return MethodResult(_channel_cam(a, g.mean(axis=(2, 3), dtype=np.float64)), targets, scores)


def gradcampp(req: MethodRequest) -> MethodResult:
    """Grad-CAM++ (Chattopadhyay et al., 2018, eq. 19): ``w_k = sum_ij alpha_kij ReLU(G_kij)``
    with ``alpha_kij = G^2 / (2 G^2 + sum_ab A_kab G^3)`` (0 where ``G`` is 0).

    The paper takes ``Y = exp(S)``, whose derivatives are ``exp(S)`` times those of ``S``; the
    ``exp(S)`` factors cancel in ``alpha`` and leave one common factor in ``w``, which only
    scales the map and is left out, as pytorch-grad-cam does. Unlike torch-cam 0.5 (whose
    in-place division never reaches ``alpha``, so its weights are ``sum G^2 ReLU(G)``), the
    normalization of ``alpha`` is applied; no epsilon is added to the denominator.
    """
    a, g, targets, scores = layer_gradients(req)
    g64, a64 = g.astype(np.float64), a.astype(np.float64)
    g2 = g64 * g64
    denominator = 2.0 * g2 + a64.sum(axis=(2, 3), keepdims=True) * g2 * g64
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(g64 != 0) & (denominator != 0))
    w = (alpha * np.maximum(g64, 0.0)).sum(axis=(2, 3))
    return MethodResult(_channel_cam(a, w), targets, scores)


def xgradcam(req: MethodRequest) -> MethodResult:
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij`` (0 for a
    channel whose activations sum to 0)."""
    a, g, targets, scores = layer_gradients(req)
    a64 = a.astype(np.float64)
    total = a64.sum(axis=(2, 3), keepdims=True)
    share = np.divide(a64, total, out=np.zeros_like(a64), where=total != 0)
    return MethodResult(_channel_cam(a, (share * g).sum(axis=(2, 3))), targets, scores)


def layercam(req: MethodRequest) -> MethodResult:
    """LayerCAM (Jiang et al., 2021): ``ReLU(sum_k ReLU(G_k) * A_k)``, position by position."""
    a, g, targets, scores = layer_gradients(req)
    return MethodResult(_relu_sum(np.maximum(g, 0.0) * a), targets, scores)


def hirescam(req: MethodRequest) -> MethodResult:
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_k G_k * A_k)``, position by position; for a
    head of global average pooling and a fully connected layer it is exactly what the score
    sums over the positions."""
    a, g, targets, scores = layer_gradients(req)
    return MethodResult(_relu_sum(g * a), targets, scores)
