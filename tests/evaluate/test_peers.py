"""featvis.evaluate on PyTorch and ONNX: pytorch-grad-cam's and torch-cam's metrics as the
oracle, the sanity check by randomization, and the same numbers from a model and its ONNX
export."""

from __future__ import annotations

import copy
from collections.abc import Callable
from contextlib import AbstractContextManager
from functools import partial
from typing import Any

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
from torchcam.methods import GradCAM
from torchcam.metrics import ClassificationMetric, DeletionInsertionMetric

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
def decisive() -> nn.Module:
    """The tiny model with its classifier scaled 30x: its top-1 probability (0.52 to 0.57 on
    the images) follows what is removed, where the plain one's stays near 1/5 and scores a
    map and the same map upside down within 1e-4 of each other."""
    model = _net()
    with torch.no_grad():
        model[7].weight.mul_(30.0)
    return model


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


class _Recorded:
    """A torch-cam CAM extractor that keeps every fused CAM it hands torch-cam's metrics, and,
    with ``rescale``, hands them instead that CAM resized to the input and scaled to exactly
    [0, 1] (featvis's convention for the confidence change)."""

    def __init__(self, extractor: Any, size: tuple[int, ...] | None = None) -> None:
        self.extractor = extractor
        self.model = extractor.model
        self.size = size
        self.cams: list[torch.Tensor] = []

    def __call__(self, *args: Any, **kwargs: Any) -> list[torch.Tensor]:
        return self.extractor(*args, **kwargs)

    def fuse_cams(self, cams: list[torch.Tensor]) -> torch.Tensor:
        cam = self.extractor.fuse_cams(cams)
        if self.size is not None:
            cam = _torchcam_resized(cam, self.size)
            low = cam.amin(dim=(1, 2), keepdim=True)
            cam = (cam - low) / (cam.amax(dim=(1, 2), keepdim=True) - low)
        self.cams.append(cam.detach().clone())
        return cam

    def _hooks_off(self) -> AbstractContextManager[None]:
        return self.extractor._hooks_off()


def _torchcam_resized(cam: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """The CAM at the input size, resized as torch-cam's metrics resize it."""
    return nn.functional.interpolate(cam[:, None], size, mode="bilinear", align_corners=False)[:, 0]


def _torchcam_per_image(
    metric: Any, x: torch.Tensor, names: tuple[str, str]
) -> tuple[np.ndarray, np.ndarray]:
    """torch-cam's metric on each image alone: its two running sums after one image."""
    got: tuple[list[float], list[float]] = ([], [])
    for i in range(len(x)):
        metric.reset()
        metric.update(x[i : i + 1])
        assert metric.total == 1 and metric.nan_count == 0
        for out, name in zip(got, names):
            out.append(getattr(metric, name))
    return np.array(got[0]), np.array(got[1])


def _blur(t: torch.Tensor) -> torch.Tensor:
    """scikit-image's gaussian of each channel (sigma 5, mode nearest): featvis's ``blur``."""
    from skimage.filters import gaussian

    out = [gaussian(x.double().numpy(), sigma=5.0, channel_axis=0, mode="nearest") for x in t]
    return torch.from_numpy(np.stack(out)).to(t.dtype)


#: featvis's substrate and the torch-cam baseline equal to it.
_BASELINES: dict[str, Callable[[torch.Tensor], torch.Tensor] | None] = {
    "zeros": None,  # torch-cam's default
    "mean": lambda t: t.mean(dim=(2, 3), keepdim=True),
    "blur": _blur,
}
_SOFTMAX = partial(torch.softmax, dim=-1)


def _torchcam_deletion_insertion(
    model: nn.Module, layer: str, x: torch.Tensor, steps: int, substrate: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch-cam's deletion and insertion AUCs per image with its own Grad-CAM of ``layer``,
    and the CAMs it ranked, resized as it resized them, ``(N, H, W)``."""
    with GradCAM(model, layer) as extractor:
        recorded = _Recorded(extractor)
        metric = DeletionInsertionMetric(
            recorded, _SOFTMAX, steps=steps, baseline=_BASELINES[substrate]
        )
        deletion, insertion = _torchcam_per_image(metric, x, ("deletion", "insertion"))
    cams = _torchcam_resized(torch.cat(recorded.cams), tuple(x.shape[2:]))
    return deletion, insertion, cams.numpy()


@pytest.mark.parametrize(
    ("layer", "substrate"),
    [("0", "zeros"), ("3", "mean"), ("3", "blur")],
)
def test_deletion_and_insertion_equal_torchcams(
    decisive: nn.Module, images: list[np.ndarray], layer: str, substrate: str
) -> None:
    """torch-cam's DeletionInsertionMetric with its own Grad-CAM ("0": at the input's 32x32,
    "3": 16x16, resized), and featvis scoring the same map: 16 steps divide the 1,024 pixels,
    so both remove the same counts; the maps have ties (ReLU's zeros), ranked alike."""
    backend = _backend(decisive)
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    steps = 16
    deletion, insertion, cams = _torchcam_deletion_insertion(decisive, layer, x, steps, substrate)
    assert all(np.unique(c).size < c.size for c in cams)  # ties, which both break in raster order
    ev = featvis.evaluate(
        backend,
        images,
        {"torchcam": cams, "flipped": cams[:, ::-1, ::-1].copy()},
        metrics=["deletion", "insertion"],
        steps=steps,
        deletion=substrate,
        insertion=substrate,
    )
    for metric, theirs in (("deletion", deletion), ("insertion", insertion)):
        np.testing.assert_allclose(ev.values["torchcam"][metric], theirs, rtol=0, atol=1e-6)
        # 1e-6 tells maps apart: the same map upside down is 5e-4 to 0.06 away.
        assert (np.abs(ev.values["flipped"][metric] - theirs) > 1e-4).all()
    with torch.no_grad():
        top1 = decisive(x).argmax(dim=1).numpy()
    np.testing.assert_array_equal(ev.targets, top1)


def _torchcam_confidence(
    model: nn.Module, layer: str, x: torch.Tensor, rescale: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch-cam's ClassificationMetric per image (drop, increase) and the maps it multiplied
    the input by, at the input size."""
    size = tuple(x.shape[2:])
    with GradCAM(model, layer) as extractor:
        recorded = _Recorded(extractor, size if rescale else None)
        metric = ClassificationMetric(recorded, _SOFTMAX)
        drop, increase = _torchcam_per_image(metric, x, ("drop", "increase"))
    cams = _torchcam_resized(torch.cat(recorded.cams), size)
    return drop, increase, cams.numpy()


@pytest.mark.parametrize(
    ("layer", "rescale", "atol"),
    [("0", False, 1e-5), ("3", True, 1e-6)],
)
def test_drop_and_increase_equal_torchcams(
    decisive: nn.Module, images: list[np.ndarray], layer: str, rescale: bool, atol: float
) -> None:
    """torch-cam's ClassificationMetric multiplies the input by its CAM min-max normalized at
    the layer's resolution (divided by max + 1e-8) and then resized; featvis multiplies by the
    map it is given scaled to exactly [0, 1] at the input size. They coincide for a CAM at
    the input's resolution ("0"; up to torch-cam's 1e-8, its CAM's maximum being 0.999995:
    measured 7e-7), and when torch-cam is handed the map already scaled at the input size
    ("rescale", the only way for the 16x16 layer "3": measured 3e-7)."""
    backend = _backend(decisive)
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    drop, increase, cams = _torchcam_confidence(decisive, layer, x, rescale)
    ev = featvis.evaluate(backend, images, {"torchcam": cams}, metrics=["drop", "increase"])
    assert (ev.values["torchcam"]["drop"] > 0.01).all()  # not a trivial zero
    np.testing.assert_allclose(ev.values["torchcam"]["drop"], drop, rtol=0, atol=atol)
    np.testing.assert_array_equal(ev.values["torchcam"]["increase"], increase)


def test_a_resized_cam_scores_its_own_drop_in_featvis(
    decisive: nn.Module, images: list[np.ndarray]
) -> None:
    """Where the two conventions part: torch-cam's 16x16 CAM resized to 32x32 peaks below 1
    (bilinear interpolation averages the peak with its neighbours), which featvis scales back
    to 1 before multiplying: featvis keeps more of the image, and the drops differ."""
    images = images[:1]
    backend = _backend(decisive)
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    drop, _, cams = _torchcam_confidence(decisive, "3", x, rescale=False)
    assert cams.max() < 0.8
    ev = featvis.evaluate(backend, images, {"torchcam": cams}, metrics=["drop"])
    assert abs(ev.values["torchcam"]["drop"][0] - drop[0]) > 5e-3  # 0.842 against 0.853


@pytest.mark.slow
def test_deletion_insertion_and_drop_equal_torchcams_on_efficientnet_lite0() -> None:
    """The real weights, two scikit-image photographs, torch-cam's Grad-CAM of the last
    convolution (7x7, resized to 224x224), 8 steps (they divide 224 * 224)."""
    from skimage import data

    backend = featvis.load_model("efficientnet_lite0")
    model = backend.model  # type: ignore[attr-defined]
    before = copy.deepcopy(model.state_dict())
    images = [data.chelsea(), data.coffee()]
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    steps = 8
    deletion, insertion, cams = _torchcam_deletion_insertion(model, "_conv_head", x, steps, "zeros")
    drop, increase, scaled = _torchcam_confidence(model, "_conv_head", x, rescale=True)
    ev = featvis.evaluate(
        backend,
        images,
        {"torchcam": cams, "scaled": scaled},
        metrics=["deletion", "insertion", "drop", "increase"],
        steps=steps,
        deletion="zeros",
        insertion="zeros",
        batch_size=18,
    )
    got = ev.values["torchcam"]
    np.testing.assert_allclose(got["deletion"], deletion, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got["insertion"], insertion, rtol=0, atol=1e-5)
    np.testing.assert_allclose(ev.values["scaled"]["drop"], drop, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(ev.values["scaled"]["increase"], increase)
    assert (got["insertion"] - got["deletion"] > 0.05).all()  # a real map, not noise
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.slow
def test_road_on_lite0_does_not_jump_when_a_map_moves_by_float_rounding() -> None:
    """A model and its ONNX export compute a map 1e-7 of its peak apart; on a smooth map
    (an upsampled CAM) that moves a few pixels across ROAD's percentile cuts. ROAD must move
    by those pixels' worth (well under the 1e-3 the backends promise), not redraw its noise."""
    from skimage import data

    backend = featvis.load_model("efficientnet_lite0")
    images = [data.chelsea(), data.coffee(), data.astronaut()]
    maps = featvis.explain(backend, images, method="cam").maps
    rng = np.random.default_rng(0)
    rounded = (maps * (1 + 1e-6 * rng.standard_normal(maps.shape))).astype(np.float32)
    cuts = (10, 20, 30, 40, 50, 60, 70, 80, 90)

    def removed(m: np.ndarray) -> np.ndarray:
        return np.stack([m >= np.percentile(m, p) for p in cuts])

    moved = [int((removed(a) != removed(b)).sum()) for a, b in zip(maps, rounded)]
    assert min(moved) > 0, moved  # every image has pixels that cross a cut
    ev = featvis.evaluate(backend, images, {"cam": maps, "rounded": rounded}, metrics=["road"])
    road = ev.values["cam"]["road"]
    np.testing.assert_allclose(ev.values["rounded"]["road"], road, rtol=0, atol=1e-3)
    assert (road > 0).all() and road.max() > 0.05  # real maps of a real model


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
