"""The survey on PyTorch: Datasets and DataLoaders as collections, a torch model against the
brute-force survey, and receptive-field patches of the embedded EfficientNet-Lite0."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis import ArgumentError, Preprocess
from featvis.samples import SampleImages

_spec = importlib.util.spec_from_file_location(
    "survey_oracle", Path(__file__).parents[1] / "featvis" / "test_survey.py"
)
assert _spec is not None and _spec.loader is not None
oracle = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(oracle)


def small_cnn(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 12, 5, stride=2, padding=2),
        nn.ReLU(),
    )
    with torch.no_grad():  # BatchNorm statistics that are not the identity
        model[1].running_mean.uniform_(-0.5, 0.5)
        model[1].running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def backend() -> Any:
    return featvis.load(small_cnn(), preprocess=Preprocess(size=(40, 40)))


class Pictures(torch.utils.data.Dataset):
    """A Dataset as torchvision builds them: (normalized CHW tensor, class index) items."""

    classes = ("even", "odd")

    def __init__(self, n: int, preprocess: Preprocess) -> None:
        self.images = SampleImages(n, size=(40, 40))
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(self.preprocess(self.images[i])[0]), i % 2


def test_a_torch_model_is_surveyed_as_brute_force_says(backend: Any) -> None:
    """PyTorch's CPU convolution gives an image values that depend, in the last bits, on the
    batch it is in (7e-7 here between batch 1 and 50); the survey's batches are those of a
    plain activations() call with the same batch size, so the results are equal bit for bit."""
    images = list(SampleImages(50, size=(40, 40)))
    for batch_size in (1, 7, 32):
        result = featvis.survey(
            backend, images, ["relu1", "relu2"], k=4, batch_size=batch_size, progress=False
        )
        for layer in ("relu1", "relu2"):
            expected = oracle.brute_force(backend, images, layer, 4, "max", batch_size=batch_size)
            oracle.check(result, expected, layer)


def test_datasets_and_loaders_are_collections(backend: Any) -> None:
    dataset = Pictures(30, backend.preprocess)
    from_dataset = featvis.survey(backend, dataset, "relu2", k=3, progress=False)
    prepared = torch.stack([dataset[i][0] for i in range(30)]).numpy()
    labels = [["even", "odd"][i % 2] for i in range(30)]
    from_array = featvis.survey(backend, prepared, "relu2", k=3, labels=labels, progress=False)
    assert from_dataset.equal(from_array)
    assert from_dataset.top("relu2", 0)[0].label in ("even", "odd")
    assert [s.label for s in from_dataset.top_classes("relu2", 0)] != []
    loader = torch.utils.data.DataLoader(dataset, batch_size=8)
    from_loader = featvis.survey(backend, loader, "relu2", k=3, progress=False)
    assert from_loader.equal(from_dataset)
    with pytest.raises(ArgumentError, match="shuffle=False"):
        featvis.survey(backend, torch.utils.data.DataLoader(dataset, shuffle=True), "relu2")


@pytest.mark.slow
def test_a_patch_holds_every_pixel_that_moves_the_peak() -> None:
    """On the embedded EfficientNet-Lite0, a middle layer, images in their own sizes: noise
    outside the patch leaves the peak activation exactly as it was; inside, it changes it."""
    backend = featvis.load_model("efficientnet_lite0")
    layer = "_blocks.5._relu1"
    images = SampleImages(12, size=None, seed=3)
    result = featvis.survey(backend, images, layer, k=2, progress=False)
    rng = np.random.default_rng(0)
    checked = 0
    for channel in (0, 17, 101, 230):
        for entry in result.top(layer, channel):
            image = images[entry.position]
            assert image.shape[:2] == entry.size
            top, left, bottom, right = entry.box
            assert (bottom - top) < image.shape[0] or (right - left) < image.shape[1]
            y, x = entry.peak

            def peak(pixels: np.ndarray, c: int = channel, at: tuple = (y, x)) -> float:
                return float(backend.activations(pixels, layer)[0, c, at[0], at[1]])

            assert peak(image) == pytest.approx(entry.value, rel=1e-6)
            outside = rng.integers(0, 256, image.shape, dtype=np.uint8)
            outside[top:bottom, left:right] = image[top:bottom, left:right]
            assert peak(outside) == peak(image)
            inside = image.copy()
            inside[top:bottom, left:right] = rng.integers(0, 256, (bottom - top, right - left, 3))
            assert peak(inside) != peak(image)
            checked += 1
    assert checked == 8
