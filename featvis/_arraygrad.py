"""Closed-form gradients for :class:`featvis.testing.ArrayBackend` chains, in numpy.

Each differentiable step carries a vector-Jacobian product ``vjp(x, y, g) -> dx``: given the
step's input ``x``, its output ``y`` and the gradient ``g`` of an objective with respect to
``y``, the gradient with respect to ``x``. Chaining them backwards from an
:class:`featvis.Objective`'s cotangent gives exact gradients with no framework, which is what
featvis's own tests of the CAM formulas run on. Everything is computed in float64.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from featvis._axes import as_nchw
from featvis._capabilities import Gradients, Objective, as_scores, gradient_request
from featvis._errors import ArgumentError
from featvis._layers import Layer

if TYPE_CHECKING:
    from featvis.testing import ArrayBackend

__all__ = ["conv_vjp", "differentiate", "gap_vjp", "linear_vjp", "maxpool2_vjp", "relu_vjp"]

Vjp = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


def conv_vjp(weight: np.ndarray, pad: int) -> Vjp:
    """Of a stride-1 convolution with ``weight`` ``(O, C, k, k)`` and zero padding ``pad``:
    the full correlation of ``g`` with the flipped kernel, channels transposed."""
    flipped = weight[:, :, ::-1, ::-1].astype(np.float64)
    k = weight.shape[-1]

    def vjp(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        back = k - 1 - pad
        padded = np.pad(g.astype(np.float64), ((0, 0), (0, 0), (back, back), (back, back)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
        return np.einsum("nohwij,ocij->nchw", windows, flipped, optimize=True)

    return vjp


def relu_vjp(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    return np.where(x > 0, g, 0.0)


def maxpool2_vjp(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    """To the first maximum of each 2x2 window (row-major), as argmax picks it."""
    n, c, h, w = x.shape
    hh, ww = h // 2, w // 2
    blocks = x[:, :, : hh * 2, : ww * 2].reshape(n, c, hh, 2, ww, 2).transpose(0, 1, 2, 4, 3, 5)
    first = blocks.reshape(n, c, hh, ww, 4).argmax(axis=-1)
    routed = np.zeros((n, c, hh, ww, 4))
    np.put_along_axis(routed, first[..., None], g[..., None].astype(np.float64), axis=-1)
    out = np.zeros((n, c, h, w))
    out[:, :, : hh * 2, : ww * 2] = (
        routed.reshape(n, c, hh, ww, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(n, c, hh * 2, ww * 2)
    )
    return out


def gap_vjp(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    h, w = x.shape[2:]
    return np.broadcast_to(g[:, :, None, None] / (h * w), x.shape).astype(np.float64)


def linear_vjp(weight: np.ndarray) -> Vjp:
    """Of ``y = x @ weight.T + bias``."""

    def vjp(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
        return g.astype(np.float64) @ weight.astype(np.float64)

    return vjp


def softmax_vjp(x: np.ndarray, y: np.ndarray, g: np.ndarray) -> np.ndarray:
    y64 = y.astype(np.float64)
    return y64 * (g - (g * y64).sum(axis=1, keepdims=True))


def differentiate(
    backend: ArrayBackend,
    images: Any,
    layers: Sequence[str | Layer],
    objective: Objective,
    *,
    input: bool = False,
    batch_size: int | None = None,
) -> Gradients:
    """:meth:`featvis.Differentiable.gradients` for an ArrayBackend whose steps have vjps."""
    req = gradient_request(backend, layers, objective, input=input, batch_size=batch_size)
    target = req.target
    batch = backend._prepare(images)
    size = batch_size or len(batch)
    parts = [
        _one_batch(
            backend,
            batch[s : s + size],
            np.arange(s, min(s + size, len(batch))),
            [layer.index for layer in req.layers],
            target,
            objective,
            input,
        )
        for s in range(0, len(batch), size)
    ]
    acts: dict[str, np.ndarray] = {}
    grads: dict[str, np.ndarray] = {}
    for j, (name, _) in enumerate(req.named()):
        acts[name] = np.concatenate([p[2][j] for p in parts])
        grads[name] = np.concatenate([p[3][j] for p in parts])
    return Gradients(
        values=np.concatenate([p[0] for p in parts]),
        output=np.concatenate([p[1] for p in parts]),
        activations=acts,
        gradients=grads,
        input=np.concatenate([p[4] for p in parts]) if input else None,
    )


def _one_batch(
    backend: ArrayBackend,
    batch: np.ndarray,
    index: np.ndarray,
    wanted: list[int],
    target: Layer | None,
    objective: Objective,
    want_input: bool,
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray | None]:
    steps = backend.steps
    last = len(steps) - 1 if target is None else target.index
    inputs: list[np.ndarray] = []
    outputs: list[np.ndarray] = []
    x = batch
    for step in steps[: last + 1]:
        inputs.append(np.array(x, copy=True))  # a step may work in place
        x = step.fn(x)
        outputs.append(np.array(x, copy=True))
    raw = outputs[last]
    n = len(batch)
    output = as_scores(raw, n, "The last step") if target is None else as_nchw(raw)
    values, cotangent = objective.fn(output, index)
    values = np.asarray(values, np.float32).reshape(-1)
    cotangent = np.asarray(cotangent, np.float64)
    if values.shape != (n,) or cotangent.shape != output.shape:
        raise ArgumentError(
            f"The objective returned values of shape {values.shape} and a cotangent of shape "
            f"{cotangent.shape} for an output of shape {output.shape}."
        )
    g = cotangent.reshape(raw.shape)
    lowest = 0 if want_input else min([*wanted, last])
    grad_of: dict[int, np.ndarray] = {}
    for i in range(last, lowest - 1, -1):
        grad_of[i] = g
        if i > lowest or want_input:
            vjp = steps[i].vjp
            if vjp is None:
                raise ArgumentError(
                    f"Step {steps[i].name!r} has no vjp: it cannot be differentiated."
                )
            g = vjp(inputs[i], outputs[i], g)
    acts, grads = [], []
    for i in wanted:
        a = outputs[i] if i <= last else None
        if a is None:  # after the objective's layer: run on, its gradient is zero
            a = backend.activations(batch, steps[i].name)
            acts.append(a)
            grads.append(np.zeros_like(a))
            continue
        acts.append(as_nchw(a))
        grads.append(as_nchw(grad_of[i].astype(np.float32)))
    inp = g.astype(np.float32) if want_input else None
    return values, output, acts, grads, inp
