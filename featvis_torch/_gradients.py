"""Gradients through a torch model (:class:`featvis.Differentiable` for :class:`TorchBackend`).

One forward pass and one ``torch.autograd.grad`` per batch, and nothing else:

- **Never into the parameters.** ``torch.autograd.grad`` returns the gradients of the tensors
  asked for and accumulates nothing, so every parameter's ``.grad`` and ``requires_grad`` stay
  as they were (``.backward()`` would add into ``.grad``, and zeroing it would lose the user's).
- **Backward only down to the first layer asked for.** Unless the gradient with respect to the
  input is wanted, the forward pass runs without recording until that layer's output, which
  becomes the leaf of the graph: the part of the model before it costs what a plain forward
  costs, and the backward pass stops there.
- **In-place operations after a tapped layer cannot corrupt it** (``ReLU(inplace=True)`` after a
  convolution in ResNet, DenseNet, AlexNet): the hook keeps the layer's own output and hands
  the rest of the model a copy, so the activation and its gradient are the layer's, and
  autograd never sees a saved tensor modified in place.
- **The forward pass stops** after the last tensor needed when the objective is on a layer.
- Hooks, training flags and the grad mode are restored whatever happens, as for activations
  (:class:`featvis_torch._capture.Extraction`); the graph is freed with the call.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from featvis import ArgumentError, Gradients, Layer, LayoutError, ModelError, Objective
from featvis._capabilities import as_scores, gradient_request
from featvis_torch._capture import Extraction, StopForward, first_tensor, nchw_view, to_host

if TYPE_CHECKING:
    from featvis_torch._backend import TorchBackend

__all__ = ["differentiate"]


class _Tap:
    """The forward hook of one differentiation: keeps the outputs of the wanted calls of each
    module, starts recording the graph at the first of them, hands the rest of the model a copy,
    and stops the forward pass after the last one when nothing later is needed."""

    def __init__(
        self,
        wanted: dict[int, dict[int, int]],
        count: int,
        *,
        record_from_first: bool,
        stop_after_last: bool,
    ) -> None:
        self.wanted = wanted  # id(module) -> {call: slot}
        self.calls = dict.fromkeys(wanted, 0)
        self.held: list[torch.Tensor | None] = [None] * count
        self.remaining = count
        self.record_from_first = record_from_first
        self.stop_after_last = stop_after_last
        self.owner = threading.get_ident()
        self.bad: int | None = None

    def __call__(self, module: nn.Module, args: Any, output: Any) -> Any:
        if threading.get_ident() != self.owner:
            return None
        key = id(module)
        call = self.calls[key] = self.calls[key] + 1
        slot = self.wanted[key].get(call)
        if slot is None:
            return None
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            self.bad = slot
            raise StopForward
        if self.record_from_first and not torch.is_grad_enabled():
            # The first tapped layer: from here on the graph is recorded, with its output as
            # the leaf. What ran before costs a plain forward pass, and backward stops here.
            output = output.detach().requires_grad_(True)
            torch.set_grad_enabled(True)
        self.held[slot] = output
        self.remaining -= 1
        if self.remaining == 0 and self.stop_after_last:
            raise StopForward
        # A copy for the rest of the model: an in-place operation that follows (a ReLU) changes
        # the copy, not the layer's own output, whose value and gradient are then exact.
        return output.clone()


def differentiate(
    backend: TorchBackend,
    images: Any,
    layers: Sequence[str | Layer],
    objective: Objective,
    *,
    input: bool = False,
    batch_size: int | None = None,
) -> Gradients:
    """:meth:`featvis.Differentiable.gradients` for a :class:`TorchBackend`."""
    req = gradient_request(backend, layers, objective, input=input, batch_size=batch_size)
    distinct, target = req.distinct, req.target
    batch = backend._prepare(images)
    total = len(batch)
    size = batch_size or total
    parts = []
    for start in range(0, total, size):
        index = np.arange(start, min(start + size, total))
        parts.append(
            _one_batch(
                backend, batch[start : start + size], index, distinct, target, objective, input
            )
        )
    by_name = {
        layer.name: (_cat([p.acts[j] for p in parts]), _cat([p.grads[j] for p in parts]))
        for j, layer in enumerate(distinct)
    }
    activations: dict[str, np.ndarray] = {}
    gradients: dict[str, np.ndarray] = {}
    for name, layer in req.named():
        activations[name], gradients[name] = by_name[layer.name]
    return Gradients(
        values=_cat([p.values for p in parts]),
        output=_cat([p.output for p in parts]),
        activations=activations,
        gradients=gradients,
        input=_cat([p.input for p in parts]) if input else None,
    )


def _cat(parts: list[Any]) -> Any:
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


@dataclass
class _Part:
    """What one batch gave."""

    values: np.ndarray
    output: np.ndarray
    acts: list[np.ndarray]
    grads: list[np.ndarray]
    input: np.ndarray | None


def _one_batch(
    backend: TorchBackend,
    batch: Any,
    index: np.ndarray,
    layers: list[Layer],
    target: Layer | None,
    objective: Objective,
    want_input: bool,
) -> _Part:
    model = backend.model
    sites = [backend._sites[layer.name] for layer in layers]
    wanted: dict[int, dict[int, int]] = {}
    modules: list[nn.Module] = []
    for slot, site in enumerate(sites):
        if id(site.module) not in wanted:
            wanted[id(site.module)] = {}
            modules.append(site.module)
        wanted[id(site.module)][site.call] = slot
    with Extraction(model, backend._lock, grad="enabled") as extraction:
        x = backend._input(batch, extraction.first)
        image_size = (int(x.shape[-2]), int(x.shape[-1]))

        def nchw(tensor: torch.Tensor, site: Any) -> torch.Tensor:
            return nchw_view(tensor, site.placement, len(index), image_size)

        tap = _Tap(
            wanted,
            len(layers),
            record_from_first=not want_input,
            stop_after_last=target is not None,
        )
        extraction.handles.extend(module.register_forward_hook(tap) for module in modules)
        # Recording starts at the input only if its gradient is wanted; else at the first tap.
        with torch.set_grad_enabled(want_input):
            if want_input:
                x = x.detach().requires_grad_(True)
            result = None
            with contextlib.suppress(StopForward):  # the tap's early stop
                result = model(x)
        if tap.bad is not None:
            raise LayoutError(
                f"Layer {layers[tap.bad].name!r} does not return one floating-point tensor, "
                "so featvis cannot differentiate with respect to it."
            )
        if tap.remaining:
            missing = [layer.name for layer, held in zip(layers, tap.held) if held is None]
            raise ModelError(
                f"Layer(s) {', '.join(map(repr, missing))} did not run in this forward pass; the "
                "model's control flow depends on its input. Ask for layers that always run."
            )
        n = len(index)
        if target is None:
            out = first_tensor(result)
            if out is None or out.is_complex():
                raise ModelError(
                    f"The model returns {type(result).__name__}, not a tensor of class scores."
                )
            if not out.requires_grad:
                raise ModelError(
                    "The model's output does not depend on the layers asked for (nothing was "
                    "recorded between them and the output)."
                )
            view = out.reshape(n, -1) if out.dim() > 1 else out.reshape(n, 1)
            output = as_scores(to_host(view.detach()), n, "The model")
        else:
            slot = [layer.name for layer in layers].index(target.name)
            held = tap.held[slot]
            assert held is not None
            view = nchw(held, sites[slot])
            output = to_host(view.detach())
        values, cotangent = objective.fn(output, index)
        values = np.asarray(values, dtype=np.float32).reshape(-1)
        cotangent = np.asarray(cotangent)
        if values.shape != (n,) or cotangent.shape != output.shape:
            raise ArgumentError(
                f"The objective returned values of shape {values.shape} and a cotangent of shape "
                f"{cotangent.shape} for an output of shape {output.shape}; it must return ({n},) "
                "values and a cotangent shaped like the output."
            )
        inputs = [t for t in tap.held if t is not None]
        if want_input:
            inputs.append(x)
        grad_out = torch.from_numpy(np.ascontiguousarray(cotangent, dtype=np.float32))
        grad_out = grad_out.to(device=view.device, dtype=view.dtype).reshape(view.shape)
        # The vector-Jacobian product as the gradient of one scalar, sum(view * cotangent): the
        # same numbers (the backward of the product hands back the cotangent itself), without
        # grad_outputs=, whose shape check imports sympy on the first call of a process (1 s
        # of CPU, 3-5 s of wall time on a busy machine: most of the demo's explanation step).
        found = torch.autograd.grad((view * grad_out).sum(), inputs, allow_unused=True)
        acts, grads = [], []
        for held, site, grad in zip(tap.held, sites, found):
            assert held is not None
            acts.append(to_host(nchw(held.detach(), site)))
            grads.append(
                np.zeros(acts[-1].shape, np.float32)
                if grad is None
                else to_host(nchw(grad.detach(), site))
            )
        inp = None
        if want_input:
            grad = found[-1]
            inp = np.zeros(tuple(x.shape), np.float32) if grad is None else to_host(grad.detach())
    return _Part(values, output, acts, grads, inp)
