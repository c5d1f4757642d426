"""featvis.explain and featvis.evaluate hold NumPy's BLAS to one thread, and only meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import featvis
from featvis.plugins import pm
from featvis.testing import tiny_cnn


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


class _Recording:
    """A method that notes the BLAS's threads while it runs, and fails when asked to."""

    def __init__(self) -> None:
        self.seen: list[list[int]] = []

    @featvis.hookimpl
    def register_methods(self, register: Any) -> None:
        def recorded(req: featvis.MethodRequest) -> featvis.MethodResult:
            self.seen.append(_blas_threads())
            if req.options.get("fail"):
                raise RuntimeError("the method failed")
            targets = req.resolve()
            raw = req.batch.mean(axis=1)
            return featvis.MethodResult(raw, targets, targets.values(req.backend.scores(req.batch)))

        register(
            featvis.Method(
                "recorded", recorded, description="notes the BLAS", uses_layer=False,
                options=("fail",),
            )
        )  # fmt: skip


@pytest.fixture
def recording() -> Iterator[_Recording]:
    plugin = _Recording()
    pm.register(plugin, name="test-recorded")
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


@pytest.fixture
def two_blas_threads() -> Iterator[None]:
    if not _blas_threads():
        pytest.fail("NumPy reports no BLAS library to threadpoolctl")
    with threadpool_limits(limits=2, user_api="blas"):
        yield


def test_explain_and_evaluate_hold_the_blas_to_one_thread_and_restore_it(
    recording: _Recording, two_blas_threads: None
) -> None:
    backend = tiny_cnn(seed=2)
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(2)]
    featvis.explain(backend, images, method="recorded")
    featvis.evaluate(backend, images, ["recorded"], metrics=["deletion"])
    assert recording.seen and all(threads == [1] * len(threads) for threads in recording.seen)
    assert set(_blas_threads()) == {2}
    with pytest.raises(RuntimeError, match="the method failed"):
        featvis.explain(backend, images, method="recorded", fail=True)
    assert set(_blas_threads()) == {2}
