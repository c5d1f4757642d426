"""Listing a model's layers: which leaf modules return a tensor, and where its axes are.

The model runs in eval mode, without gradients (so that tensors keep their version counters),
with a forward hook on every leaf module, on seeded random input:

1. ``single``: one image at the listing size. Every leaf call that returns a tensor is a
   candidate layer, in execution order. This run also notes, by tensor identity, which outputs
   are another layer's output unchanged (the same tensor object, its version counter
   unchanged: an ``nn.Identity``, an empty ``nn.Sequential``; an in-place ReLU changes the
   counter) and which module received another layer's output of the same shape (an activation
   after a ``Linear`` works on the ``Linear``'s layout).
2. ``resized``: one image of another size (half the listing size, or 16 pixels more for small
   images, which keeps this run cheap). The axes whose size changes are spatial (a token
   sequence when both sizes give a token grid); the others are channels. For the calls this
   run did not reach (a model of a fixed height, as OCR models are), one image of another width
   only says which axes follow the width.
3. ``pair``: two copies of that image, at that size. The axis whose size doubles is the batch
   (moved first whatever its position: an LSTM's ``(T, N, H)``); an axis of ``k > 1`` rows that
   doubles holds the batch merged with another axis, and comparing its two halves with its
   interleaved rows says in which order (both images are the same, so the copy of image 0 is
   found where image 1 is).

A model that runs at one size only fails the second run; the pair then runs at the listing
size. A run that fails still counts up to the module that raised; where no run says, the
rule (:func:`featvis._axes.place`) falls back to what the module's type says
(:func:`featvis_torch._describe.channel_axis`), shared along chains of same-shaped outputs, and
to the NCHW convention. The rule itself is :mod:`featvis._axes`, shared with every backend.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from featvis._axes import Placement, Refusal, place
from featvis._roles import roles_from_traces
from featvis_torch._capture import Extraction, first_tensor
from featvis_torch._describe import channel_axis

__all__ = ["Call", "Listing", "list_calls", "resized_size"]


def resized_size(size: tuple[int, int]) -> tuple[int, int]:
    """The image size of the second run: half the listing size, or 16 pixels more for an image
    under 64 pixels a side (which half would shrink below what small networks take)."""
    height, width = size
    if min(height, width) >= 64:
        return height // 2, width // 2
    return height + 16, width + 16


#: (module, call): one call of one leaf module.
Key = tuple[nn.Module, int]


@dataclass
class Call:
    """One call of a leaf module in the ``single`` run, and what the runs say of its output."""

    module: nn.Module
    call: int
    shape: tuple[int, ...] | None = None  # None: no tensor, or a complex one
    dtype: torch.dtype | None = None
    same_as: Key | None = None  # returns that call's output, the same tensor, unchanged
    passthrough: bool = False  # returns its own input, the same tensor, unchanged
    follows: Key | None = None  # received that call's output, and returns its shape
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # per other run
    batch_major: list[bool | None] | None = None
    placement: Placement | Refusal | None = None


@dataclass
class Listing:
    """The calls of a model's leaf modules in execution order, each with its placement."""

    calls: list[Call]
    counts: dict[nn.Module, int]
    failed: dict[str, str]  # run -> why it failed

    def __iter__(self) -> Iterator[Call]:
        return iter(self.calls)


def _input(shape: tuple[int, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=generator).to(device=device, dtype=dtype)


class _Run:
    """A forward hook that records, per leaf call, the shape of its output tensor."""

    def __init__(self, name: str, reference: dict[Key, tuple[int, ...]] | None = None) -> None:
        self.name = name
        #: For a pair run: each call's shape with one image at the same size.
        self.reference = reference
        self.counts: dict[nn.Module, int] = {}
        self.order: list[Key] = []
        self.shapes: dict[Key, tuple[int, ...] | None] = {}
        self.dtypes: dict[Key, torch.dtype] = {}
        self.owner = threading.get_ident()
        # Identity tracking (single run): id(tensor) -> (weakref, version, key)
        self.produced: dict[int, tuple[weakref.ref[torch.Tensor], int, Key]] = {}
        self.same_as: dict[Key, Key] = {}
        self.passthrough: set[Key] = set()
        self.versions: dict[nn.Module, int] = {}  # the input's version when a call began
        self.follows: dict[Key, Key] = {}
        self.batch_major: dict[Key, list[bool | None]] = {}

    def before(self, module: nn.Module, args: Any) -> None:
        """Forward pre-hook (single run): the input's version counter as the call begins."""
        if threading.get_ident() != self.owner:
            return
        source = first_tensor(args)
        if source is not None:
            self.versions[module] = source._version

    def __call__(self, module: nn.Module, args: Any, output: Any) -> None:
        if threading.get_ident() != self.owner:
            return
        call = self.counts[module] = self.counts.get(module, 0) + 1
        key = (module, call)
        tensor = first_tensor(output)
        if tensor is None or tensor.is_complex():
            self.shapes[key] = None
            self.order.append(key)
            return
        self.shapes[key] = tuple(tensor.shape)
        self.dtypes[key] = tensor.dtype
        self.order.append(key)
        if self.name == "single":
            self._track(key, tensor, first_tensor(args))
        elif self.reference is not None and key in self.reference:
            self._order_of_merged_batch(key, tensor)

    def _track(self, key: Key, tensor: torch.Tensor, source: torch.Tensor | None) -> None:
        before = self.versions.pop(key[0], None)
        if tensor is source and before == tensor._version:
            self.passthrough.add(key)  # its own input, not even changed in place
        entry = self.produced.get(id(tensor))
        if entry is not None and entry[0]() is tensor and entry[1] == tensor._version:
            self.same_as[key] = entry[2]
            return  # the same value: the earlier layer stays its producer
        if source is not None and source.shape == tensor.shape:
            entry = self.produced.get(id(source))
            if entry is not None and entry[0]() is source:
                self.follows[key] = entry[2]
        self.produced[id(tensor)] = (weakref.ref(tensor), tensor._version, key)

    def _order_of_merged_batch(self, key: Key, tensor: torch.Tensor) -> None:
        """For each axis of ``k > 1`` rows that doubled: are image 1's rows the second half
        (batch major), every other row (batch minor), or can it not be told?"""
        assert self.reference is not None
        single = self.reference[key]
        if len(single) != tensor.dim():
            return
        flags: list[bool | None] = [None] * tensor.dim()
        for axis, size in enumerate(single):
            if size <= 1 or tensor.shape[axis] != 2 * size:
                continue
            t = tensor.detach().float()
            first, second = t.narrow(axis, 0, size), t.narrow(axis, size, size)
            pairs = t.unflatten(axis, (size, 2))
            even, odd = pairs.select(axis + 1, 0), pairs.select(axis + 1, 1)
            major = bool(torch.allclose(first, second, rtol=1e-4, atol=1e-5))
            minor = bool(torch.allclose(even, odd, rtol=1e-4, atol=1e-5))
            flags[axis] = major if major != minor else None
        self.batch_major[key] = flags


def _run(
    model: nn.Module,
    leaves: list[nn.Module],
    x: torch.Tensor,
    name: str,
    lock: Any,
    reference: dict[Key, tuple[int, ...]] | None = None,
) -> tuple[_Run, BaseException | None]:
    run = _Run(name, reference)
    error: BaseException | None = None
    with Extraction(model, lock, grad="no_grad") as extraction:
        extraction.handles.extend(leaf.register_forward_hook(run) for leaf in leaves)
        if name == "single":
            extraction.handles.extend(leaf.register_forward_pre_hook(run.before) for leaf in leaves)
        try:
            model(x)
        except Exception as exc:  # a model that takes one size or one image only
            error = exc
    return run, error


def list_calls(
    model: nn.Module,
    leaves: list[nn.Module],
    *,
    channels: int,
    size: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
    lock: Any,
) -> Listing:
    """Run the four runs (see the module docstring) and place every leaf call's output.

    Raises
    ------
    Exception
        Whatever the model raised on the ``single`` run: the caller explains it.
    """
    first, error = _run(model, leaves, _input((1, channels, *size), device, dtype), "single", lock)
    if error is not None:
        raise error
    calls = {
        key: Call(
            key[0],
            key[1],
            shape=first.shapes[key],
            dtype=first.dtypes.get(key),
            same_as=first.same_as.get(key),
            passthrough=key in first.passthrough,
            follows=first.follows.get(key),
        )
        for key in first.order
    }
    failed: dict[str, str] = {}
    other = resized_size(size)
    one = _input((1, channels, *other), device, dtype)
    resized, error = _run(model, leaves, one, "resized", lock)
    if error is not None:
        failed["resized"] = f"{type(error).__name__}: {error}"
    shapes = {key: shape for key, shape in resized.shapes.items() if shape is not None}
    pair, error = _run(model, leaves, one.expand(2, -1, -1, -1).contiguous(), "pair", lock, shapes)
    if error is not None:
        failed["pair"] = f"{type(error).__name__}: {error}"
    for key, call in calls.items():
        if key in shapes:
            call.shapes["resized"] = shapes[key]
        if key in shapes and pair.shapes.get(key) is not None:
            call.shapes["one"], call.shapes["two"] = shapes[key], pair.shapes[key]  # type: ignore[assignment]
            call.batch_major = pair.batch_major.get(key)
    lost = [key for key, call in calls.items() if call.shape and "resized" not in call.shapes]
    if lost:  # a model of a fixed height (an OCR model): another width only
        width = size[1] // 2 if size[1] >= 64 else size[1] + 16
        x = _input((1, channels, size[0], width), device, dtype)
        widened, error = _run(model, leaves, x, "widened", lock)
        if error is not None:
            failed["widened"] = f"{type(error).__name__}: {error}"
        for key in lost:
            if widened.shapes.get(key) is not None:
                calls[key].shapes["widened"] = widened.shapes[key]  # type: ignore[assignment]
    unknown = [key for key, call in calls.items() if call.shape and "two" not in call.shapes]
    if unknown:  # a model that runs at its own size only: the pair at that size
        listed = {key: call.shape for key, call in calls.items() if call.shape is not None}
        x = _input((1, channels, *size), device, dtype).expand(2, -1, -1, -1).contiguous()
        pair, error = _run(model, leaves, x, "pair at the listing size", lock, listed)
        if error is not None:
            failed["pair at the listing size"] = f"{type(error).__name__}: {error}"
        for key in unknown:
            call = calls[key]
            if pair.shapes.get(key) is not None and call.shape is not None:
                call.shapes["one"], call.shapes["two"] = call.shape, pair.shapes[key]  # type: ignore[assignment]
                call.batch_major = pair.batch_major.get(key)
    ordered = [calls[key] for key in first.order]
    _place_all(ordered, calls, size, other)
    return Listing(ordered, dict(first.counts), failed)


def _hints(ordered: list[Call], calls: dict[Key, Call]) -> dict[int, int | None]:
    """The channel axis each call's module type gives, shared along chains of calls that pass
    a tensor of one shape on (a Dropout before a LayerNorm takes the LayerNorm's word)."""
    parent = {id(call): id(call) for call in ordered}

    def find(key: int) -> int:
        while parent[key] != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for call in ordered:
        origin = call.same_as or call.follows
        producer = calls.get(origin) if origin is not None else None
        if producer is not None and producer.shape == call.shape:
            parent[find(id(call))] = find(id(producer))
    shared: dict[int, int | None] = {}
    for call in ordered:
        own = channel_axis(call.module)
        if own is not None:
            shared.setdefault(find(id(call)), own)
    return {
        id(call): channel_axis(call.module)
        if channel_axis(call.module) is not None
        else shared.get(find(id(call)))
        for call in ordered
    }


def _place_all(
    ordered: list[Call], calls: dict[Key, Call], size: tuple[int, int], other: tuple[int, int]
) -> None:
    hints = _hints(ordered, calls)
    for call in ordered:
        if call.shape is None:
            continue
        roles = roles_from_traces(
            call.shape,
            image_size=size,
            resized=call.shapes.get("resized"),
            resized_image=other,
            widened=call.shapes.get("widened"),
            one=call.shapes.get("one"),
            two=call.shapes.get("two"),
            batch_major=call.batch_major,
        )
        call.placement = place(
            call.shape, roles, image_size=size, channel_axis=hints[id(call)], batch=1
        )
