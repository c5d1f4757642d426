"""The core's backend contract, on a model exported by ``torch.onnx.export`` as a user would."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import featvis
from featvis.testing import BackendContract


@pytest.fixture(scope="module")
def tiny_export(onnx_dir: Path, export_onnx: Callable[..., Path]) -> Path:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
        nn.Softmax(dim=1),
    ).eval()
    return export_onnx(model, onnx_dir / "tiny.onnx", size=32)


class TestOnnxBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, tiny_export: Path) -> featvis.Backend:
        return featvis.load(tiny_export)

    @pytest.fixture
    def images(self) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        return [
            rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
            rng.integers(0, 256, (40, 30, 3), dtype=np.uint8),
            rng.integers(0, 256, (20, 20, 3), dtype=np.uint8),
        ]

    def test_the_exported_model_is_what_a_user_gets(self, backend: featvis.Backend) -> None:
        # The default exporter fixes the batch at 1 and folds the BatchNorm into the Conv;
        # the contract above still holds for batches of three.
        assert backend.image_input.fixed(0) == 1  # type: ignore[attr-defined]
        assert [layer.alias for layer in backend.layers()] == [
            "conv1",
            "relu1",
            "pool1",
            "conv2",
            "relu2",
            "pool2",
            "reshape1",
            "fc1",
            "prob1",
        ]
