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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from featvis import ArgumentError, CapabilityError, Layer, ModelError
from featvis._axes import Placement
from featvis._backend import DEFAULT_BATCH_SIZE
from featvis._capabilities import as_scores, patch_request
from featvis_torch._capture import Extraction, first_tensor, take

if TYPE_CHECKING:
    from featvis_torch._backend import TorchBackend

__all__ = ["linear_head", "patched_scores"]

BROADCAST, REPEAT = "broadcast", "repeat"
# Per backend: layer name -> how to patch it.
_modes: weakref.WeakKeyDictionary[Any, dict[str, str]] = weakref.WeakKeyDictionary()


def _raw(
    replacement: np.ndarray,
    like: torch.Tensor,
    placement: Placement,
    image_size: tuple[int, int],
    batch: int,
) -> torch.Tensor:
    """NCHW replacements in the layout, shape and type of the module's own output ``like``
    (of ``batch`` images)."""
    try:
        array = placement.native(replacement, tuple(like.shape), image_size, batch=batch)
    except ArgumentError as exc:
        raise ArgumentError(
            f"Replacements of shape {replacement.shape} do not fit the layer's output of shape "
            f"{tuple(like.shape)}: {exc}."
        ) from None
    return torch.from_numpy(array).to(device=like.device, dtype=like.dtype)


def _run(
    backend: TorchBackend,
    batch: Any,
    site: Any,
    rows: np.ndarray | Callable[[np.ndarray], np.ndarray],
    mode: str,
    size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One pass: the scores of the first ``size`` replacements (all by default), and all the
    replacements (built by ``rows`` from the layer's own output when it is a callable)."""
    model = backend.model
    calls = [0]
    built: list[np.ndarray] = [] if callable(rows) else [rows]

    def hook(module: nn.Module, args: Any, output: Any) -> Any:
        calls[0] += 1
        if calls[0] != site.call:
            return None
        if not isinstance(output, torch.Tensor):
            raise CapabilityError(
                "This layer returns a tuple or another structure, not one tensor; featvis can "
                "replace only a layer's single output tensor."
            )
        if callable(rows):
            own = take(output, site.placement, 1, image_size)
            built.append(_checked(rows(own), own.shape))
        part = built[0] if size is None else built[0][:size]
        held = 1 if mode == BROADCAST else len(part)  # the images the module's output holds
        return _raw(part, output, site.placement, image_size, held)

    with Extraction(model, backend._lock) as extraction:
        x = backend._input(batch, extraction.first)
        image_size = (int(x.shape[-2]), int(x.shape[-1]))
        if mode == REPEAT:
            if callable(rows):
                raise RuntimeError("the repeat mode needs the replacements first")
            x = x.expand(len(rows) if size is None else min(size, len(rows)), *x.shape[1:])
            x = x.contiguous()
        extraction.handles.append(site.module.register_forward_hook(hook))
        out = first_tensor(model(x))
    if out is None or out.is_complex():
        raise ModelError("The model does not return a tensor of class scores.")
    if not built:
        raise ModelError("The layer did not run in this forward pass.")
    n = len(built[0]) if size is None else min(size, len(built[0]))
    return as_scores(out.detach().to("cpu", torch.float32).numpy(), n, "The model"), built[0]


def _checked(rows: Any, shape: tuple[int, ...] | None = None) -> np.ndarray:
    array = np.asarray(rows, dtype=np.float32)
    if array.ndim != 4 or len(array) == 0 or (shape is not None and array.shape[1:] != shape[1:]):
        raise ArgumentError(
            f"Replacements are an (M, C, H, W) array as activations() returns"
            f"{'' if shape is None else f' ({shape[1:]} here)'}, got shape {array.shape}."
        )
    return array


def _mode(backend: TorchBackend, batch: Any, layer: Layer, site: Any) -> str:
    """Whether broadcasting the batch-1 prefix gives the scores the image repeated gives."""
    try:
        known = _modes.setdefault(backend, {})
    except TypeError:
        known = {}
    mode = known.get(layer.name)
    if mode is None:
        own = backend.activations(batch, layer)
        two = np.concatenate([own, own * np.float32(0.5)])
        exact, _ = _run(backend, batch, site, two, REPEAT)
        try:
            fast, _ = _run(backend, batch, site, two, BROADCAST)
            same = np.allclose(fast, exact, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(exact).max()))
        except (RuntimeError, ValueError, ModelError):  # shapes that do not broadcast
            same = False
        mode = known[layer.name] = BROADCAST if same else REPEAT
    return mode


def patched_scores(
    backend: TorchBackend,
    image: Any,
    layer: str | Layer,
    activations: np.ndarray | Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int | None = None,
) -> np.ndarray:
    """:meth:`featvis.Patchable.patched_scores` for a :class:`TorchBackend`."""
    found, batch = patch_request(backend, image, layer, batch_size)
    site = backend._sites[found.name]
    rows = activations if callable(activations) else _checked(activations)
    mode = _mode(backend, batch, found, site)
    if mode == REPEAT:
        if callable(rows):
            rows = _checked(rows(backend.activations(batch, found)))
        # Every replacement is a whole forward pass of the image here: bound them as
        # activations() bounds images (Ablation-CAM's 1,281 copies at once would be 1,281
        # images through the whole model)
        batch_size = batch_size or DEFAULT_BATCH_SIZE
    first, built = _run(backend, batch, site, rows, mode, batch_size)
    parts = [first]
    size = batch_size or len(built)
    for start in range(size, len(built), size):
        parts.append(_run(backend, batch, site, built[start : start + size], mode)[0])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def linear_head(backend: TorchBackend) -> tuple[np.ndarray, np.ndarray] | None:
    """The last ``nn.Linear`` that runs, if only modules without parameters run after it."""
    for layer in reversed(backend.layers()):
        site = backend._sites.get(layer.name)
        if site is None:
            return None  # a layer featvis cannot place: nothing is known of what it computes
        module = site.module
        if isinstance(module, nn.Linear):
            if layer.name.rpartition("#")[2].isdigit():
                return None  # a module called several times
            weight = _read_only(module.weight)
            bias = (
                np.zeros(len(weight), np.float32)
                if module.bias is None
                else _read_only(module.bias)
            )
            return weight, bias
        if any(True for _ in module.parameters(recurse=False)):
            return None
    return None


def _read_only(parameter: torch.Tensor) -> np.ndarray:
    """The parameter's current values as a read-only float32 array: a view of its memory where
    it already is a CPU float32 tensor (copying Lite0's 1000 x 1280 head cost 1.2 ms, most of
    CAM's overhead over a forward pass), else a copy. The caller cannot write into the model
    through it, and it always holds the weights as they are when it is read."""
    tensor = parameter.detach()
    if tensor.device.type == "cpu" and tensor.dtype == torch.float32 and tensor.is_contiguous():
        array = tensor.numpy()
    else:
        array = tensor.to("cpu", torch.float32).contiguous().numpy().copy()
    array.flags.writeable = False
    return array
