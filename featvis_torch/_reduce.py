"""The survey's reduction where the activations are (:class:`featvis.Summarizing`).

A survey keeps of each image only ``(C,)`` numbers per layer. Here they are computed by torch
on the tensor the layer returns, at the moment it returns (so an in-place operation after it
cannot change them), on its device: from a GPU, only the ``(n, C)`` numbers cross to the host,
in one synchronization after the forward pass. They are the numbers numpy's
:func:`featvis._reduce.summarize` computes from the float32 activations, bit for bit:

- peak, minimum and the count of values > 0 are exact whatever the dtype (a half-precision
  value converts to float32 exactly, and the conversion keeps the order);
- ``argmax`` gives the first occurrence of the peak, as numpy's does;
- the sums are taken in float64 in the order :func:`featvis._reduce.map_sums` writes out (the
  same function, applied to a torch tensor): each step is one IEEE 754 addition, rounded the
  same way on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from featvis import BatchSummary, FeatvisError, Layer, ModelError
from featvis._axes import Placement
from featvis._backend_base import _unavailable
from featvis._reduce import map_sums
from featvis_torch._capture import nchw_view

if TYPE_CHECKING:
    from featvis_torch._backend import TorchBackend

__all__ = ["reduce_maps", "summaries"]

#: The float64 copy a sum is taken on is made for this many bytes of maps at a time.
CHUNK_BYTES = 256 << 20


def reduce_maps(
    tensor: torch.Tensor, placement: Placement, batch: int, image_size: tuple[int, int]
) -> tuple[tuple[torch.Tensor, ...], tuple[int, int]]:
    """The summary of one layer's output, as tensors on its device (queued, not waited for):
    ``(peak, where, sums, positive, low)``, each ``(n, C)``, and ``(H, W)``."""
    view = nchw_view(tensor.detach(), placement, batch, image_size)
    n, channels, height, width = view.shape
    flat = view.reshape(n, channels, height * width)
    where = flat.argmax(dim=2)
    peak = flat.gather(2, where[:, :, None])[:, :, 0].to(torch.float32)
    low = flat.amin(dim=2).to(torch.float32)
    positive = (flat > 0).sum(dim=2, dtype=torch.int64)
    sums = torch.empty((n, channels), dtype=torch.float64, device=flat.device)
    step = max(1, CHUNK_BYTES // max(1, channels * height * width * 8))
    for start in range(0, n, step):
        sums[start : start + step] = map_sums(flat[start : start + step].to(torch.float64))
    return (peak, where, sums, positive, low), (int(height), int(width))


def _host(tensor: torch.Tensor) -> torch.Tensor:
    """Queue ``tensor``'s copy to the host: into page-locked memory from a GPU (read it after
    the device is synchronized), itself on the CPU."""
    return tensor.to("cpu", non_blocking=True) if tensor.is_cuda else tensor


def summaries(
    backend: TorchBackend, images: Any, layers: Sequence[str | Layer]
) -> list[BatchSummary]:
    """:meth:`featvis.Summarizing.summaries` for a :class:`TorchBackend`."""
    resolved = [backend.layer(key) for key in layers]
    for layer in resolved:
        if layer.unavailable is not None:
            raise _unavailable(layer)
    distinct = list({layer.name: layer for layer in resolved}.values())

    def reduce(
        tensor: torch.Tensor, placement: Placement, batch: int, image_size: tuple[int, int]
    ) -> Any:
        parts, spatial = reduce_maps(tensor, placement, batch, image_size)
        return [_host(part) for part in parts], spatial

    outputs = backend._forward(backend._prepare(images), distinct, reduce)
    by_name = {}
    for layer, out in zip(distinct, outputs):
        if isinstance(out, FeatvisError):
            raise out  # a survey has no partial results: every layer or none
        (peak, where, sums, positive, low), spatial = out
        summary = BatchSummary(
            peak.numpy(), where.numpy(), sums.numpy(), positive.numpy(), low.numpy(), spatial
        )
        if not (np.isfinite(summary.peak).all() and np.isfinite(summary.low).all()):
            raise ModelError(
                "The layer's activations contain NaN or infinite values; a survey of them would "
                "be meaningless. Check the model and its input."
            )
        by_name[layer.name] = summary
    return [by_name[layer.name] for layer in resolved]
