"""NumPy's BLAS kept to one thread while featvis interleaves its own arithmetic with a model.

OpenBLAS (NumPy's and SciPy's BLAS) runs a product over its own threads, which then spin for
work for a while (``GOTO_THREAD_TIMEOUT``: about 0.1 s) before they sleep. A method that does
a small product between two model runs (CAM's head, EigenCAM's 49 x 49 eigenproblem, a
metric's statistics) leaves those threads spinning on the cores the next forward pass needs:
on two cores, the torch backend's CAM took 89 ms where its forward takes 18 ms, and 33 ms with
OpenBLAS held to one thread (EigenCAM 73 ms -> 20 ms). featvis's products are small (RISE's
largest, 2,000 masks, costs milliseconds on one thread), so :func:`one_blas_thread` holds the
BLAS to one thread for the length of an :func:`featvis.explain` or :func:`featvis.evaluate`
call and restores the user's setting afterwards. The model's own threads (PyTorch's, ONNX
Runtime's) are not BLAS threads of NumPy's and are left alone.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = ["available_cpus", "one_blas_thread", "with_one_blas_thread"]

F = TypeVar("F", bound=Callable[..., Any])

_controller: Any = None
_modules_seen = -1


def available_cpus() -> int:
    """CPUs this process may run on (the affinity mask, not the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _blas() -> Any:
    """threadpoolctl's view of the loaded BLAS libraries, found again after new imports (a
    search of the loaded libraries costs 1 ms, a limit through the cached view 10 us)."""
    global _controller, _modules_seen
    if _controller is None or len(sys.modules) != _modules_seen:
        from threadpoolctl import ThreadpoolController

        _controller, _modules_seen = ThreadpoolController(), len(sys.modules)
    return _controller


@contextmanager
def one_blas_thread() -> Iterator[None]:
    """Hold NumPy's and SciPy's BLAS to one thread inside the block."""
    with _blas().limit(limits=1, user_api="blas"):
        yield


def with_one_blas_thread(fn: F) -> F:
    """``fn`` run under :func:`one_blas_thread`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with one_blas_thread():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
