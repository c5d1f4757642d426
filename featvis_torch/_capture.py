"""Capturing module outputs: one copy at capture, into NCHW, and a model left as it was.

A module's output is turned into an ``(N, C, H, W)`` float32 array by the rule of
:mod:`featvis._axes` (which axis is the batch, which the channels: found by
:mod:`featvis_torch._trace` when the layers are listed), applied to the tensor the output
stands for: the output itself, or for a tuple, list or dict the first tensor found depth-first.

The permutation, the reshape and the conversion to float32 on the CPU are done by one copy,
straight from the module's tensor (on any device, with any strides) into fresh C-contiguous
numpy memory, at the moment the module returns, so an in-place operation that follows
(``ReLU(inplace=True)``) cannot change what was taken.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from featvis import ArgumentError, Layer, LayoutError
from featvis._axes import Placement
from featvis_torch._cuda import synchronize, take_pinned

__all__ = [
    "Capture",
    "Extraction",
    "Plan",
    "StopForward",
    "Take",
    "copy_source",
    "first_tensor",
    "first_weight",
    "lock_for",
    "nchw_view",
    "take",
    "to_host",
]


class StopForward(BaseException):
    """Raised by a hook once the last requested layer has run, to end the forward pass.

    A BaseException, so that a model's ``except Exception:`` cannot swallow it.
    """


def first_tensor(output: Any) -> torch.Tensor | None:
    """The tensor a module output stands for: itself, or the first one found depth-first."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = output.values()
    elif not isinstance(output, (tuple, list)):
        return None
    for item in output:
        found = first_tensor(item)
        if found is not None:
            return found
    return None


def first_weight(model: nn.Module) -> torch.Tensor | None:
    """The model's first parameter, else its first buffer: what the input's device and
    floating dtype follow."""
    return next(itertools.chain(model.parameters(), model.buffers()), None)


def nchw_view(
    tensor: torch.Tensor, placement: Placement, batch: int, image_size: tuple[int, int]
) -> torch.Tensor:
    """``tensor`` (holding ``batch`` images) as NCHW by reshapes, a permutation and a slice:
    autograd follows it, so the gradients of a layer are taken in the same form as its
    activations.

    Raises
    ------
    ArgumentError
        If the tensor's rank or batch is not what the placement was made for.
    """
    view, nchw = _permuted(tensor, placement, batch, image_size)
    return view.reshape(nchw)


def take(
    tensor: torch.Tensor, placement: Placement, batch: int, image_size: tuple[int, int]
) -> np.ndarray:
    """One copy of ``tensor`` (holding ``batch`` images) into a new NCHW float32 array.

    This is the plain path, and the reference: a CUDA tensor is taken by
    :func:`featvis_torch._cuda.take_pinned` instead, which does not wait for the copy.

    Raises
    ------
    ArgumentError
        If the tensor's rank or batch is not what the placement was made for.
    """
    return copy_into_new(*copy_source(tensor, placement, batch, image_size))


def copy_into_new(view: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """``view`` copied into a new C-contiguous float32 array of ``shape`` (viewed as
    ``view.shape``)."""
    out = np.empty(shape, np.float32)
    # copy_ converts the dtype, gathers any strides and, from a GPU, waits for the transfer
    # (non_blocking=False) before returning, so the array is complete when it is read.
    torch.from_numpy(out).view(view.shape).copy_(view, non_blocking=False)
    return out


def copy_source(
    tensor: torch.Tensor, placement: Placement, batch: int, image_size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``(view, nchw)``: ``tensor`` detached, reshaped and permuted so that copying it into
    C-contiguous memory of shape ``nchw`` (viewed as ``view.shape``) lays it out as NCHW: one
    copy, whatever its strides (the final reshape of :func:`nchw_view` could copy again)."""
    return _permuted(tensor.detach(), placement, batch, image_size)


def _permuted(
    tensor: torch.Tensor, placement: Placement, batch: int, image_size: tuple[int, int]
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """The placement's reshape, permutation and slice of ``tensor``, and the NCHW shape
    they lay out in C order."""
    if placement.identity and tensor.dim() == 4 and tensor.shape[0] == batch:
        return tensor, tuple(tensor.shape)
    expanded, order, prefix, nchw = placement.steps(tuple(tensor.shape), batch, image_size)
    view = tensor if expanded is None else tensor.reshape(expanded)
    view = view.permute(order)
    if prefix:
        view = view.narrow(-1, prefix, view.shape[-1] - prefix)
    return view, nchw


def to_host(tensor: torch.Tensor) -> np.ndarray:
    """A float32 numpy copy of ``tensor`` (any device, dtype and strides), detached."""
    out = np.empty(tuple(tensor.shape), np.float32)
    torch.from_numpy(out).copy_(tensor.detach(), non_blocking=False)
    return out


# -- the model's state: locks, training flags, hooks ---------------------------------------------

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def lock_for(model: nn.Module) -> threading.RLock:
    """The lock that serializes extractions from ``model`` (one per root module)."""
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


#: How gradients are recorded inside an :class:`Extraction`.
_GRAD_MODES = {
    "inference": torch.inference_mode,  # activations and scores: the fastest
    "no_grad": torch.no_grad,  # listing: tensors keep version counters (in-place detection)
    "enabled": contextlib.nullcontext,  # exporting: the exporter decides
}


class Extraction:
    """``with Extraction(model) as extraction:`` runs a block with ``model`` in eval mode,
    alone, under ``torch.inference_mode`` (``grad="no_grad"`` or ``"enabled"`` otherwise).

    Entering switches every module in training mode to eval and finds :attr:`first`, the
    tensor whose device and dtype the input takes (:func:`first_weight`). The caller appends
    hook handles to :attr:`handles`. On the way out, whatever happened (an exception in
    forward, ``KeyboardInterrupt``), every handle is removed and every module's own
    ``training`` flag is put back as it was; ``model.train()`` is never called, so a module
    that overrides it sees nothing. Extractions from one model are serialized by a lock.
    """

    def __init__(
        self, model: nn.Module, lock: threading.RLock | None = None, *, grad: str = "inference"
    ) -> None:
        self.model = model
        self.lock = lock or lock_for(model)
        self.handles: list[Any] = []
        self.switched: list[nn.Module] = []
        self.first: torch.Tensor | None = None
        self._mode: Any = _GRAD_MODES[grad]()

    def __enter__(self) -> Extraction:
        self.lock.acquire()
        try:
            self.switched = [module for module in self.model.modules() if module.training]
            for module in self.switched:
                module.training = False
            self.first = first_weight(self.model)
            self._mode.__enter__()
        except BaseException:
            self._restore()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._mode.__exit__(*exc)
        finally:
            self._restore()

    def _restore(self) -> None:
        try:
            for handle in self.handles:
                handle.remove()
            for module in self.switched:
                module.training = True
        finally:
            self.lock.release()


class Plan:
    """What one request takes: the ``call``-th call (from 1) of each module, in result order.

    Built once per distinct request and reused; :class:`Capture` holds the per-run state.

    Parameters
    ----------
    sites : list of (module, call, placement, layer)
        Per result: the module, which of its calls, how its output becomes NCHW, the layer.
    """

    def __init__(self, sites: list[tuple[nn.Module, int, Placement, Layer]]) -> None:
        self.size = len(sites)
        #: id(module) -> {call: (slot, placement)}
        self.wanted: dict[int, dict[int, tuple[int, Placement]]] = {}
        self.modules: list[nn.Module] = []
        self.layers = [layer for _, _, _, layer in sites]
        for slot, (module, call, placement, _) in enumerate(sites):
            if id(module) not in self.wanted:
                self.wanted[id(module)] = {}
                self.modules.append(module)
            self.wanted[id(module)][call] = (slot, placement)


#: What a :class:`Capture` does with an output: ``(tensor, placement, batch, image_size)``.
Take = Callable[[torch.Tensor, Placement, int, tuple[int, int]], Any]


class Capture:
    """The forward hook of one extraction: takes the outputs of a :class:`Plan` as they come,
    and stops the forward pass after the last one.

    By default an output is copied to the host as a float32 array (:func:`take`; a CUDA
    tensor by :func:`featvis_torch._cuda.take_pinned`, whose copy is only complete after
    :meth:`wait`); ``take`` replaces that (the survey's reduction). An output that breaks what
    was listed (another rank, another batch size, no tensor) is a :class:`LayoutError` in its
    slot: the other layers are taken all the same.
    """

    def __init__(
        self, plan: Plan, batch: int, image_size: tuple[int, int], take: Take | None = None
    ) -> None:
        self.plan = plan
        self.take = take
        #: CUDA devices with work queued for this capture: :meth:`wait` synchronizes them.
        self.devices: set[torch.device] = set()
        self.calls = dict.fromkeys(plan.wanted, 0)
        self.results: list[np.ndarray | LayoutError | None] = [None] * plan.size
        self.remaining = plan.size
        self.batch = batch
        self.image_size = image_size
        self.owner = threading.get_ident()

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self.owner:
            return  # another thread running the same module: not ours to take
        key = id(module)
        call = self.calls[key] = self.calls[key] + 1
        found = self.plan.wanted[key].get(call)
        if found is None or self.remaining == 0:
            return
        slot, placement = found
        self.results[slot] = self._take(first_tensor(output), placement, slot)
        self.remaining -= 1
        if self.remaining == 0:
            raise StopForward

    def _take(
        self, tensor: torch.Tensor | None, placement: Placement, slot: int
    ) -> np.ndarray | LayoutError:
        layer = self.plan.layers[slot]
        if tensor is None or tensor.is_complex():
            got = "no tensor" if tensor is None else f"a complex tensor {tuple(tensor.shape)}"
            return _layout_error(layer, f"returned {got}", self.batch)
        try:
            if tensor.is_cuda:
                self.devices.add(tensor.device)
                if self.take is None:
                    return take_pinned(*copy_source(tensor, placement, self.batch, self.image_size))
            return (self.take or take)(tensor, placement, self.batch, self.image_size)
        except ArgumentError as exc:
            what = f"returned a tensor of shape {tuple(tensor.shape)} ({exc})"
            return _layout_error(layer, what, self.batch)

    def wait(self) -> None:
        """Wait until what was queued on a GPU is done: one synchronization per device, before
        any result is read."""
        for device in self.devices:
            synchronize(device)


def _layout_error(layer: Layer, what: str, batch: int) -> LayoutError:
    return LayoutError(
        f"Layer {layer.name!r} ({layer.alias}) {what} for a batch of {batch}; when the layers "
        f"were listed it was {layer.layout or 'another shape'} "
        f"{layer.output_shape if layer.output_shape else ''}. Its output depends on the input "
        "in a way featvis cannot follow (the rule is in featvis._axes)."
    )
