"""featvis.evaluate on PyTorch and ONNX: pytorch-grad-cam's metrics as the oracle, the sanity
check by randomization, and the same numbers from a model and its ONNX export."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pytorch_grad_cam.metrics.cam_mult_image import CamMultImageConfidenceChange
from pytorch_grad_cam.metrics.perturbation_confidence import (
    PerturbationConfidenceMetric,
    RemoveLeastRelevantFirst,
    RemoveMostRelevantFirst,
)
from pytorch_grad_cam.metrics.road import NoisyLinearImputer
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

import featvis
from featvis._evaluate._road import impute

SIZE = 32

# pytorch-grad-cam's imputer calls np.argwhere on torch tensors, which NumPy 2 warns about.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array_wrap__ must accept context:DeprecationWarning"
)


def _net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(16, 5),
        )
        bn = model[1]
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope="module")
def net() -> nn.Module:
    return _net()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (SIZE, SIZE, 3), np.uint8) for _ in range(3)]


def _backend(net: nn.Module) -> featvis.Backend:
    return featvis.load(net, preprocess=featvis.Preprocess(size=(SIZE, SIZE)))


def test_noisy_linear_imputation_equals_the_road_authors_code() -> None:
    rng = np.random.default_rng(0)
    image = rng.standard_normal((3, 24, 20)).astype(np.float32)
    removed = rng.random((24, 20)) < 0.6
    ours = impute(image, removed, noise=0.0, rng=rng)
    theirs = NoisyLinearImputer(noise=0.0)(
        torch.from_numpy(image), torch.from_numpy((~removed).astype(np.float32))
    )
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-5)
    np.testing.assert_array_equal(ours[:, ~removed], image[:, ~removed])


def _pgc_average(
    metric: type,
    x: torch.Tensor,
    cams: np.ndarray,
    targets: list,
    model: nn.Module,
    percentiles: list[int],
) -> np.ndarray:
    scores = [
        PerturbationConfidenceMetric(metric(p, NoisyLinearImputer(noise=0.0)))(
            x, cams, targets, model, return_diff=True
        )
        for p in percentiles
    ]
    return np.mean(np.float32(scores), axis=0)


def test_road_and_confidence_change_equal_pytorch_grad_cams(
    net: nn.Module, images: list[np.ndarray]
) -> None:
    backend = _backend(net)
    e = featvis.explain(backend, images, method="gradcam")
    cams = np.stack([(m - m.min()) / np.ptp(m) for m in e.maps]).astype(np.float32)
    percentiles = [20, 50, 80]
    ev = featvis.evaluate(
        backend,
        images,
        {"gradcam": cams},
        metrics=["road", "drop", "increase"],
        percentiles=percentiles,
        road_noise=0.0,
    )
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    targets = [ClassifierOutputSoftmaxTarget(int(t)) for t in ev.targets]
    morf = _pgc_average(RemoveMostRelevantFirst, x, cams, targets, net, percentiles)
    lerf = _pgc_average(RemoveLeastRelevantFirst, x, cams, targets, net, percentiles)
    np.testing.assert_allclose(ev.values["gradcam"]["road"], (lerf - morf) / 2, atol=1e-5)
    change = CamMultImageConfidenceChange()(x, cams, targets, net)  # O - Y
    y = ev.scores
    np.testing.assert_allclose(ev.values["gradcam"]["drop"], np.maximum(0, -change) / y, atol=1e-5)
    np.testing.assert_array_equal(ev.values["gradcam"]["increase"], (change > 0).astype(float))


def _edges(backend: object, x: np.ndarray, t: np.ndarray) -> np.ndarray:
    gray = x.mean(axis=1)
    return np.abs(np.diff(gray, axis=1, prepend=gray[:, :1])) + np.abs(
        np.diff(gray, axis=2, prepend=gray[:, :, :1])
    )


def _resnet() -> nn.Module:
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=20)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.slow
def test_randomizing_the_top_changes_gradcam_not_an_edge_map_and_not_the_model(
    images: list[np.ndarray],
) -> None:
    model = _resnet()
    before = copy.deepcopy(model.state_dict())
    backend = featvis.load(model, preprocess=featvis.Preprocess(size=(128, 128)))
    ev = featvis.evaluate(
        backend,
        images,
        {
            "gradcam": "gradcam",
            "edges": _edges,
            "edges array": _edges(None, featvis.prepare_images(images, backend.preprocess), None),
        },
        metrics=["sanity"],
        randomize=2,
    )
    assert ev["gradcam"]["sanity"] < 0.5
    assert ev["edges"]["sanity"] == 1.0 and ev["edges array"]["sanity"] == 1.0
    assert ev.curves["gradcam"]["sanity"].shape == (3, 2)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_randomized_torch_backend_is_new_and_the_original_untouched(net: nn.Module) -> None:
    backend = _backend(net)
    before = copy.deepcopy(net.state_dict())
    twin = backend.randomized(1, seed=3)
    assert twin is not backend and twin.model is not net
    assert not torch.equal(twin.model[7].weight, net[7].weight)
    assert torch.equal(twin.model[3].weight, net[3].weight)  # only the top layer
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    again = backend.randomized(1, seed=3)
    assert torch.equal(again.model[7].weight, twin.model[7].weight)
    with pytest.raises(featvis.ArgumentError, match="from 1 to 3"):
        backend.randomized(4)


@pytest.mark.slow
def test_torch_and_its_onnx_export_give_the_same_numbers(
    net: nn.Module, images: list[np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> None:
    import onnx

    backend = _backend(net)
    path = backend.to_onnx(tmp_path_factory.mktemp("eval") / "net.onnx")
    onnx_backend = featvis.load(path, preprocess=backend.preprocess)
    proto_before = onnx.load(path).SerializeToString()
    backend_proto = onnx_backend.model.SerializeToString()
    cams = featvis.explain(backend, images, method="scorecam").maps
    settings = {"steps": 10, "percentiles": (30, 70), "randomize": 2}
    methods = {"scorecam": "scorecam", "fixed": cams}
    ours = featvis.evaluate(backend, images, methods, **settings)
    theirs = featvis.evaluate(onnx_backend, images, methods, **settings)
    assert ours.metrics == theirs.metrics and "sanity" in ours.metrics
    for method in methods:
        for metric in ours.metrics:
            np.testing.assert_allclose(
                theirs.values[method][metric],
                ours.values[method][metric],
                atol=1e-3,
                err_msg=f"{method} {metric}",
            )
    assert onnx.load(path).SerializeToString() == proto_before
    assert onnx_backend.model.SerializeToString() == backend_proto
