"""What capture does differently on a CUDA device: copies to the host that do not wait.

The plain path (:func:`featvis_torch._capture.take`, also the reference the tests compare
with) copies each output into fresh numpy memory with a blocking ``copy_``: from a GPU, every
layer then waits for the device to finish all the work queued so far, so the host stops
queueing the next layers' kernels, and pageable memory is copied through a staging buffer.

On CUDA, :func:`take_pinned` instead queues the conversion to float32 (on the device, when
the model is half precision) and the transfer into page-locked ("pinned") host memory, which
the DMA engine writes directly, and returns at once; the array it returns is that memory.
The copy is queued on the current stream, in order with the model's kernels, so an in-place
operation that follows (``ReLU(inplace=True)``) runs after the copy has read the output.
Nothing may read the arrays before :func:`synchronize` has waited for the device once, after
the forward pass: :meth:`featvis_torch._capture.Capture.wait` does that.

The arrays stay page-locked while they live (PyTorch's caching host allocator reuses the
memory once they are freed). If page-locked memory cannot be had, the copy falls back to the
plain, blocking one.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["synchronize", "take_pinned"]


def take_pinned(view: torch.Tensor, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` that a queued copy of the CUDA tensor ``view`` fills.

    ``view`` and ``shape`` are what :func:`featvis_torch._capture.copy_source` gives: the
    array, C-contiguous, viewed as ``view.shape``, receives ``view``. Read the array only after
    :func:`synchronize`.
    """
    try:
        host = torch.empty(shape, dtype=torch.float32, pin_memory=True)
    except RuntimeError:  # no page-locked memory left: the plain copy, which waits
        from featvis_torch._capture import copy_into_new  # (it imports this module)

        return copy_into_new(view, shape)
    host.view(view.shape).copy_(view, non_blocking=True)
    return host.numpy()


def synchronize(device: torch.device) -> None:
    """Wait for the work queued on ``device``'s current stream (the copies among it)."""
    torch.cuda.current_stream(device).synchronize()
