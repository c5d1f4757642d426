"""Running the rest of a torch model from a layer output featvis gives (:class:`Patchable`),
and the weights of its fully connected head (:class:`LinearHead`).

A forward hook at the layer replaces the module's output (batch 1, for the one image) by a
batch of ``M`` replacements, and the rest of the model runs on that batch: the part before the
layer runs once per pass, at batch 1. A tensor computed before the layer and read after it (a
skip connection) still has batch 1, which broadcasts in elementwise operations to what
repeating the image would give. Whether that holds for a layer is checked once per backend
and layer, on two replacements, against the plain way (the image repeated ``M`` times, every
tensor at batch ``M``); where it does not (a concatenation, a reshape by the batch size), the
plain way is used, which is exact for any model in eval mode.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from featvis import ArgumentError, CapabilityError, Layer, ModelError
from featvis._capabilities import as_scores
from featvis_torch._capture import NCL, Extraction, first_tensor

if TYPE_CHECKING:
    from featvis_torch._backend import TorchBackend

__all__ = ["linear_head", "patched_scores"]

BROADCAST, REPEAT = "broadcast", "repeat"
# Per backend: layer name -> how to patch it.
_modes: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def _raw(replacement: np.ndarray, like: torch.Tensor, layout: str) -> torch.Tensor:
    """NCHW replacements in the shape and type of the module's own output ``like``."""
    m = len(replacement)
    ndim = like.dim()
    if ndim == 4:
        array = replacement
    elif ndim == 3:
        rows = replacement[:, :, 0, :]
        array = rows if layout == NCL else rows.transpose(0, 2, 1)
    else:
        array = replacement.reshape(m, *like.shape[1:])
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tuple(tensor.shape[1:]) != tuple(like.shape[1:]):
        raise ArgumentError(
            f"Replacements of shape {replacement.shape} do not fit the layer's output of shape "
            f"{tuple(like.shape)}."
        )
    return tensor.to(device=like.device, dtype=like.dtype)


def _run(backend: TorchBackend, batch: Any, site: Any, rows: np.ndarray, mode: str) -> np.ndarray:
    model = backend.model
    calls = [0]

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        calls[0] += 1
        if calls[0] != site.call:
            return None
        if not isinstance(output, torch.Tensor):
            raise CapabilityError(
                "This layer returns a tuple or another structure, not one tensor; featvis can "
                "replace only a layer's single output tensor."
            )
        return _raw(rows, output, site.layout)

    with Extraction(model, backend._lock, tree=backend._tree) as extraction:
        x = backend._input(batch, extraction.first)
        if mode == REPEAT:
            x = x.expand(len(rows), *x.shape[1:]).contiguous()
        extraction.handles.append(site.module.register_forward_hook(hook))
        out = first_tensor(model(x))
    if out is None or out.is_complex():
        raise ModelError("The model does not return a tensor of class scores.")
    return as_scores(out.detach().to("cpu", torch.float32).numpy(), len(rows), "The model")


def _mode(backend: TorchBackend, batch: Any, layer: Layer, site: Any, probe: np.ndarray) -> str:
    """Whether broadcasting the batch-1 prefix gives the scores the image repeated gives."""
    try:
        known = _modes.setdefault(backend, {})
    except TypeError:
        known = {}
    mode = known.get(layer.name)
    if mode is None:
        two = np.concatenate([probe, probe * np.float32(0.5)])
        exact = _run(backend, batch, site, two, REPEAT)
        try:
            fast = _run(backend, batch, site, two, BROADCAST)
            same = np.allclose(fast, exact, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(exact).max()))
        except (RuntimeError, ValueError, ModelError):  # shapes that do not broadcast
            same = False
        mode = known[layer.name] = BROADCAST if same else REPEAT
    return mode


def patched_scores(
    backend: TorchBackend,
    image: Any,
    layer: str | Layer,
    activations: np.ndarray,
    *,
    batch_size: int | None = None,
) -> np.ndarray:
    """:meth:`featvis.Patchable.patched_scores` for a :class:`TorchBackend`."""
    found = backend.layer(layer)
    site = backend._sites[found.name]
    batch = backend._prepare(image)
    if len(batch) != 1:
        raise ArgumentError(f"patched_scores takes one image, got a batch of {len(batch)}.")
    rows = np.asarray(activations, dtype=np.float32)
    if rows.ndim != 4 or len(rows) == 0:
        raise ArgumentError(
            f"Replacements are an (M, C, H, W) array as activations() returns, got shape "
            f"{rows.shape}."
        )
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    mode = _mode(backend, batch, found, site, rows[:1])
    size = batch_size or len(rows)
    parts = [
        _run(backend, batch, site, rows[start : start + size], mode)
        for start in range(0, len(rows), size)
    ]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def linear_head(backend: TorchBackend) -> tuple[np.ndarray, np.ndarray] | None:
    """The last ``nn.Linear`` that runs, if only modules without parameters run after it."""
    for layer in reversed(backend.layers()):
        module = backend._sites[layer.name].module
        if isinstance(module, nn.Linear):
            if layer.name.rpartition("#")[2].isdigit():
                return None  # a module called several times
            weight = module.weight.detach().to("cpu", torch.float32).numpy().copy()
            bias = (
                np.zeros(len(weight), np.float32)
                if module.bias is None
                else module.bias.detach().to("cpu", torch.float32).numpy().copy()
            )
            return weight, bias
        if any(True for _ in module.parameters(recurse=False)):
            return None
    return None
