"""The whole suite's options: ``--slow`` runs the tests marked slow too.

``python -m pytest`` skips every ``@pytest.mark.slow`` test (architecture zoos, ONNX exports,
real weights, subprocess runs of the ``featvis`` command: seconds each), so that a contributor's
run stays within a minute or two; ``python -m pytest --slow`` runs everything, as CI does.

``@pytest.mark.gpu`` tests need CUDA: where ``torch.cuda.is_available()`` is false they are
skipped with the reason "needs CUDA" (torch is imported only if such a test was collected).
``benchmarks/gpu.sh`` runs them on a GPU machine (``pytest -m gpu``).
"""

from __future__ import annotations

import pytest

SLOW_REASON = "slow: run with --slow"
GPU_REASON = "needs CUDA"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow (real architectures, ONNX exports, subprocesses)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    on_gpu = [item for item in items if item.get_closest_marker("gpu") is not None]
    if on_gpu:
        import torch

        if not torch.cuda.is_available():
            for item in on_gpu:
                item.add_marker(pytest.mark.skip(reason=GPU_REASON))
    if config.getoption("--slow"):
        return
    skip = pytest.mark.skip(reason=SLOW_REASON)
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
