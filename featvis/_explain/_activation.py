"""Maps from one forward pass to the layer: CAM (a linear head's weights) and EigenCAM."""

from __future__ import annotations

import weakref
from typing import cast

import numpy as np

from featvis._capabilities import LinearHead, Scorer
from featvis._errors import ArgumentError, CapabilityError
from featvis._explain._registry import MethodRequest, MethodResult
from featvis._explain._targets import Resolved
from featvis._predict import softmax

__all__ = ["cam", "eigencam", "first_component"]

# Backends whose head has been checked against their scores, per layer name.
_checked: weakref.WeakKeyDictionary[object, set[str]] = weakref.WeakKeyDictionary()


def _check_head(req: MethodRequest, logits: np.ndarray) -> None:
    """Once per backend and layer: the scores are the head applied to the layer's spatial
    mean, else CAM would silently explain something else."""
    backend = cast(Scorer, req.backend)  # explain checked it
    assert req.layer is not None
    try:
        done = _checked.setdefault(backend, set())
    except TypeError:  # a backend that takes no weak reference: check every time
        done = set()
    if req.layer.name in done:
        return
    first = req.scores[:1] if req.scores is not None else backend.scores(req.batch[:1])
    mine = softmax(logits[:1]) if backend.score_kind == "probabilities" else logits[:1]
    tolerance = 1e-3 * max(1.0, float(np.abs(first).max()))
    if mine.shape != first.shape or not np.allclose(mine, first, rtol=0, atol=tolerance):
        raise CapabilityError(
            f"CAM needs scores that are a fully connected layer applied to the spatial mean of "
            f"the layer it explains; for layer {req.layer.name!r} ({req.layer.alias}) they are "
            "not (another pooling, more than one fully connected layer, or another layer). "
            "Explain the last layer before global average pooling, or use a method that works "
            "on any network: gradcam, or the gradient-free scorecam, ablationcam, occlusion."
        )
    done.add(req.layer.name)


def cam(req: MethodRequest) -> MethodResult:
    """CAM (Zhou et al., 2016): ``ReLU(sum_k W[c, k] A_k)``, where ``W`` is the weight of the
    fully connected layer that makes the scores from the layer's global average pool.

    One forward pass to the layer, no gradient: the scores themselves are computed from the
    layer's activations and the head (after checking once that they equal the model's).
    """
    backend = req.backend  # a Scorer and a LinearHead: explain checked both (an isinstance of
    assert req.layer is not None  # a runtime protocol costs 30 us: once is enough)
    head = cast(LinearHead, backend).linear_head()
    if head is None:
        raise CapabilityError(
            "CAM needs a model whose scores come from one fully connected layer after global "
            "average pooling, and this one does not end in a fully connected layer. Use "
            "gradcam, or the gradient-free scorecam, ablationcam, occlusion or rise."
        )
    # float32 throughout (a pooled mean of 49 values, sums of 1280 products: 4e-7 of the
    # peak from float64 on Lite0): converting the head and the layer to float64 cost more than
    # the products, after a forward pass that left them out of the caches
    weight, bias = (np.asarray(t, np.float32) for t in head)
    a = backend.activations(req.batch, req.layer, batch_size=req.batch_size)
    if weight.ndim != 2 or weight.shape[1] != a.shape[1]:
        raise CapabilityError(
            f"CAM explains the layer the fully connected head reads through global average "
            f"pooling; layer {req.layer.name!r} has {a.shape[1]} channels and the head takes "
            f"{weight.shape[1] if weight.ndim == 2 else weight.shape} inputs. Leave layer= out "
            "for the last spatial layer, or use gradcam."
        )
    logits = a.mean(axis=(2, 3)) @ weight.T + bias
    _check_head(req, logits)
    probabilities = cast(Scorer, backend).score_kind == "probabilities"
    scores = softmax(logits) if probabilities else logits
    targets = req.targets.resolve(scores)
    # Only the explained classes' rows of the head (one, or two for a contrast): the product
    # with every row was a second pass over the whole head
    used = np.flatnonzero(targets.weights.any(axis=0))
    w = targets.weights[:, used].astype(np.float32) @ weight[used]
    raw = np.maximum(np.einsum("nc,nchw->nhw", w, a), 0.0)
    return MethodResult(raw, targets, targets.values(scores))


def first_component(acts: np.ndarray) -> np.ndarray:
    """The projection of one image's ``(C, h, w)`` activations on their first principal
    component, ``(h, w)`` float64, with EigenCAM's sign convention.

    The positions are the samples: ``X`` is ``(h*w, C)``, centred over positions. Only the
    first singular vector is computed, from the smaller of ``X X^T`` and ``X^T X`` (49 x 49 for
    a 7 x 7 layer of 1280 channels, where a full SVD computes a 1280 x 1280 ``V``). The sign
    of a singular vector is arbitrary; featvis takes the one whose projection correlates
    positively with the sum of the layer's channels, so that where the layer is strongly
    active the map is high (a flipped map would otherwise be cut away by the ReLU).
    """
    c, h, w = acts.shape
    x = acts.reshape(c, h * w).T.astype(np.float64)
    x = x - x.mean(axis=0)
    x[~np.isfinite(x)] = 0.0
    if h * w <= c:
        _, vectors = np.linalg.eigh(x @ x.T)
        projection = x @ (x.T @ vectors[:, -1])
    else:
        _, vectors = np.linalg.eigh(x.T @ x)
        projection = x @ vectors[:, -1]
    if projection @ x.sum(axis=1) < 0:
        projection = -projection
    return projection.reshape(h, w)


def eigencam(req: MethodRequest) -> MethodResult:
    """EigenCAM (Muhammad & Yeasin, 2020): ``ReLU`` of the projection of the layer's
    activations on their first principal component (see :func:`first_component`).

    Not class-discriminative by design: the map depends on the image and the layer, not on a
    target class, so ``Explanation.targets`` are -1 and the scores NaN.
    """
    assert req.layer is not None
    a = req.backend.activations(req.batch, req.layer, batch_size=req.batch_size)
    raw = np.stack([np.maximum(first_component(one), 0.0) for one in a]).astype(np.float32)
    n = len(a)
    none = Resolved(np.full(n, -1, np.int64), None, np.zeros((n, 0), np.float32))
    return MethodResult(raw, none, np.full(n, np.nan, np.float32))


def check_no_target(target: object, method: str) -> None:
    if target is not None:
        raise ArgumentError(
            f"{method} is not class-discriminative: its map does not depend on a target "
            "class. Leave target= out, or use a class-discriminative method (gradcam, "
            "scorecam, ...)."
        )
