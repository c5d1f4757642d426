"""Gradient-weighted class activation maps, on any :class:`featvis.Differentiable` backend.

Each method gets, from one forward and one backward pass (:meth:`Differentiable.gradients`),
the layer's activations ``A`` (``(N, C, h, w)``) and the gradient ``G = dy/dA`` of the explained
score ``y`` (a class score, or the difference of two), and combines them by its paper's
formula; the map is then ``ReLU`` of the result, at the layer's grid. The formulas are written
out in each function's docstring. At several layers (``explain(layer=[...])``) the same one
pass gives every layer's ``A`` and ``G``: the backward pass runs down to the shallowest layer
once, not once per layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from featvis._capabilities import Differentiable, Objective, require
from featvis._explain._registry import MethodRequest, MethodResult
from featvis._explain._targets import Resolved, Targets
from featvis._layers import Layer

__all__ = ["FORMULAS", "at_layers", "gradcam", "gradcampp", "hirescam", "layercam", "xgradcam"]

#: Images per forward and backward pass when the caller does not choose.
GRADIENT_BATCH = 32

#: A method's formula: the map at the layer's grid, ``(N, h, w)`` float32, from the layer's
#: activations ``A`` and the gradient ``G`` of the explained score, both ``(N, C, h, w)``.
Formula = Callable[[np.ndarray, np.ndarray], np.ndarray]


def layer_gradients(
    req: MethodRequest, layers: Sequence[Layer]
) -> tuple[list[tuple[np.ndarray, np.ndarray]], Resolved, np.ndarray]:
    """``([(A, G) per layer], targets, scores)``, from one forward and backward pass per batch.

    A target that is the predicted class is resolved from the same forward pass's scores (the
    objective sees them before the backward pass), so no extra forward pass is run.
    """
    backend = require(req.backend, Differentiable, needed_for="a gradient method")
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

    names = [layer.name for layer in layers]
    g = backend.gradients(
        req.batch,
        names,
        Objective(objective, description="the explained score"),
        batch_size=req.batch_size or GRADIENT_BATCH,
    )
    resolved = Resolved(
        classes,
        contrast if (contrast >= 0).any() else None,
        np.stack(weights),  # type: ignore[arg-type]
    )
    return [(g.activations[name], g.gradients[name]) for name in names], resolved, g.values


def at_layers(formula: Formula) -> Callable[[MethodRequest, Sequence[Layer]], list[MethodResult]]:
    """The ``run_layers`` of a gradient method (:class:`featvis.Method`): ``formula`` at each
    layer, every layer's ``A`` and ``G`` from one pass."""

    def run_layers(req: MethodRequest, layers: Sequence[Layer]) -> list[MethodResult]:
        pairs, targets, scores = layer_gradients(req, layers)
        return [MethodResult(formula(a, g), targets, scores) for a, g in pairs]

    return run_layers


def _run(req: MethodRequest, formula: Formula) -> MethodResult:
    assert req.layer is not None
    return at_layers(formula)(req, (req.layer,))[0]


def _relu_sum(weighted: np.ndarray) -> np.ndarray:
    """``ReLU(sum over channels)`` of ``(N, C, h, w)``, float32."""
    return np.maximum(weighted.sum(axis=1, dtype=np.float64), 0.0).astype(np.float32)


def _channel_cam(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``ReLU(sum_k w[n, k] A[n, k])``: a map from one weight per channel."""
    cam = np.einsum("nc,nchw->nhw", w.astype(np.float64), a.astype(np.float64))
    return np.maximum(cam, 0.0).astype(np.float32)


def _gradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return _channel_cam(a, g.mean(axis=(2, 3), dtype=np.float64))


def _gradcampp(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    g64, a64 = g.astype(np.float64), a.astype(np.float64)
    g2 = g64 * g64
    denominator = 2.0 * g2 + a64.sum(axis=(2, 3), keepdims=True) * g2 * g64
    alpha = np.divide(g2, denominator, out=np.zeros_like(g2), where=(g64 != 0) & (denominator != 0))
    return _channel_cam(a, (alpha * np.maximum(g64, 0.0)).sum(axis=(2, 3)))


def _xgradcam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    a64 = a.astype(np.float64)
    total = a64.sum(axis=(2, 3), keepdims=True)
    share = np.divide(a64, total, out=np.zeros_like(a64), where=total != 0)
    return _channel_cam(a, (share * g).sum(axis=(2, 3)))


def _layercam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return _relu_sum(np.maximum(g, 0.0) * a)


def _hirescam(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    return _relu_sum(g * a)


#: Each built-in gradient method's formula, by its name (for :func:`at_layers`).
FORMULAS: dict[str, Formula] = {
    "gradcam": _gradcam,
    "gradcampp": _gradcampp,
    "xgradcam": _xgradcam,
    "layercam": _layercam,
    "hirescam": _hirescam,
}


def gradcam(req: MethodRequest) -> MethodResult:
    """Grad-CAM (Selvaraju et al., 2017): ``ReLU(sum_k w_k A_k)``, ``w_k = mean_ij G_k``."""
    return _run(req, _gradcam)


def gradcampp(req: MethodRequest) -> MethodResult:
    """Grad-CAM++ (Chattopadhyay et al., 2018, eq. 19): ``w_k = sum_ij alpha_kij ReLU(G_kij)``
    with ``alpha_kij = G^2 / (2 G^2 + sum_ab A_kab G^3)`` (0 where ``G`` is 0).

    The paper takes ``Y = exp(S)``, whose derivatives are ``exp(S)`` times those of ``S``; the
    ``exp(S)`` factors cancel in ``alpha`` and leave one common factor in ``w``, which only
    scales the map and is left out, as pytorch-grad-cam does. Unlike torch-cam 0.5 (whose
    in-place division never reaches ``alpha``, so its weights are ``sum G^2 ReLU(G)``), the
    normalization of ``alpha`` is applied; no epsilon is added to the denominator.
    """
    return _run(req, _gradcampp)


def xgradcam(req: MethodRequest) -> MethodResult:
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij`` (0 for a
    channel whose activations sum to 0)."""
    return _run(req, _xgradcam)


def layercam(req: MethodRequest) -> MethodResult:
    """LayerCAM (Jiang et al., 2021): ``ReLU(sum_k ReLU(G_k) * A_k)``, position by position."""
    return _run(req, _layercam)


def hirescam(req: MethodRequest) -> MethodResult:
    """HiResCAM (Draelos & Carin, 2020): ``ReLU(sum_k G_k * A_k)``, position by position; for a
    head of global average pooling and a fully connected layer it is exactly what the score
    sums over the positions."""
    return _run(req, _hirescam)
