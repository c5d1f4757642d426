"""featvis.explain against the peers a user would compare it with, on the same model and input:
pytorch-grad-cam (Score-CAM, Ablation-CAM, EigenCAM, the Grad-CAM family) and captum
(Occlusion). The peers come from the ``bench`` extra. Each peer runs on its own copy of the
model (they call ``backward()`` into the parameters and replace modules); featvis runs on the
original, which the hygiene fixture checks afterwards.

pytorch-grad-cam returns maps normalized by its ``scale_cam_image`` and resized to the input;
featvis's ``.raw`` goes through that same post-processing before the comparison.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from captum.attr import Occlusion  # the peers: the test extra installs them (featvis[bench])
from pytorch_grad_cam import (
    AblationCAM,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    ScoreCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

import featvis
from featvis import Preprocess
from featvis._explain._activation import first_component
from featvis_torch import TorchBackend

pytestmark = pytest.mark.slow
SIZE = 96  # a 3 x 3 grid at ResNet-18's last block
CLASSES = [1, 300]


@pytest.fixture(scope="module")
def model(torchvision_model: object) -> nn.Module:
    built = torchvision_model("resnet18")  # type: ignore[operator]
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(1)
        for m in built.modules():  # batch-norm statistics that are not the identity
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
    return built


@pytest.fixture
def backend(model: nn.Module) -> TorchBackend:
    return TorchBackend(model, preprocess=Preprocess(size=(SIZE, SIZE)))


@pytest.fixture(scope="module")
def x(astronaut_224: torch.Tensor) -> torch.Tensor:
    small = nn.functional.interpolate(astronaut_224, size=(SIZE, SIZE), mode="area")
    return torch.cat([small, torch.flip(small, dims=[3])])


def _peer(cls: type, model: nn.Module, x: torch.Tensor, **options: object) -> np.ndarray:
    twin = copy.deepcopy(model)
    with cls(model=twin, target_layers=[twin.layer4], **options) as cam:
        return cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES])


def _scaled(raw: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's own post-processing (BaseCAM.forward for one target layer): scale
    and resize, then ReLU, the mean over layers (one here) and scale again."""
    return scale_cam_image(np.maximum(scale_cam_image(raw, (SIZE, SIZE)), 0))


@pytest.mark.parametrize("method", ["scorecam", "ablationcam"])
def test_score_and_ablation_cam_equal_pytorch_grad_cams(
    backend: TorchBackend, model: nn.Module, x: torch.Tensor, method: str
) -> None:
    peer = _peer({"scorecam": ScoreCAM, "ablationcam": AblationCAM}[method], model, x)
    ours = featvis.explain(backend, x, method=method, target=CLASSES)
    np.testing.assert_allclose(_scaled(ours.raw), peer, atol=1e-4)
    assert peer.max() > 0.99


@pytest.mark.parametrize(
    ("method", "peer"),
    [("gradcam", GradCAM), ("xgradcam", XGradCAM), ("layercam", LayerCAM), ("hirescam", HiResCAM)],
)
def test_the_grad_cam_family_equals_pytorch_grad_cams(
    backend: TorchBackend, model: nn.Module, x: torch.Tensor, method: str, peer: type
) -> None:
    theirs = _peer(peer, model, x)
    ours = featvis.explain(backend, x, method=method, target=CLASSES)
    np.testing.assert_allclose(_scaled(ours.raw), theirs, atol=1e-4)


def test_fused_layers_equal_pytorch_grad_cams_several_target_layers(
    backend: TorchBackend, model: nn.Module, x: torch.Tensor
) -> None:
    twin = copy.deepcopy(model)
    with GradCAM(model=twin, target_layers=[twin.layer4, twin.layer3, twin.layer2]) as cam:
        theirs = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(c) for c in CLASSES])
    layers = featvis.stage_layers(backend, 3)  # the outputs of layer4, layer3 and layer2
    assert [layer.name for layer in layers] == [
        "layer4.1.relu#2",
        "layer3.1.relu#2",
        "layer2.1.relu#2",
    ]
    ours = featvis.explain(backend, x, layer=layers, target=CLASSES)
    np.testing.assert_allclose(ours.maps, theirs, atol=1e-4)
    one = _peer(GradCAM, model, x)  # layer4 alone: the fusion changed the map
    assert np.abs(one - theirs).max() > 0.1


def test_gradcampp_differs_from_pytorch_grad_cam_only_by_its_epsilon(
    backend: TorchBackend, model: nn.Module, x: torch.Tensor
) -> None:
    # pytorch-grad-cam adds 1e-6 to the denominator of alpha, comparable to G^2 at a deep
    # layer; featvis divides exactly (paper eq. 19). The maps still agree closely.
    theirs = _peer(GradCAMPlusPlus, model, x)
    ours = _scaled(featvis.explain(backend, x, method="gradcampp", target=CLASSES).raw)
    for a, b in zip(ours, theirs):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.98


def test_eigencam_equals_pytorch_grad_cams_up_to_its_arbitrary_sign(
    backend: TorchBackend, model: nn.Module, x: torch.Tensor
) -> None:
    theirs = _peer(EigenCAM, model, x)
    ours = featvis.explain(backend, x, method="eigencam")
    acts = backend.activations(x, ours.layer)
    for n in range(len(x)):
        projection = first_component(acts[n])
        either = [
            _scaled(np.maximum(s * projection, 0)[None].astype(np.float32))[0] for s in (1, -1)
        ]
        assert min(np.abs(e - theirs[n]).max() for e in either) < 1e-4
    np.testing.assert_allclose(
        _scaled(ours.raw)[0], _scaled(np.maximum(first_component(acts[0]), 0)[None])[0], atol=1e-6
    )


@pytest.mark.parametrize(("window", "stride"), [(16, 16), (16, 8)])
def test_occlusion_equals_captums_with_the_same_windows(
    backend: TorchBackend, model: nn.Module, x: torch.Tensor, window: int, stride: int
) -> None:
    twin = copy.deepcopy(model).eval()
    theirs = Occlusion(twin).attribute(
        x.clone(),
        sliding_window_shapes=(3, window, window),
        strides=(3, stride, stride),
        baselines=0,
        target=CLASSES,
        perturbations_per_eval=16,
    )
    ours = featvis.explain(
        backend, x, method="occlusion", window=window, stride=stride, target=CLASSES
    )
    theirs = theirs.detach().numpy()
    np.testing.assert_array_equal(theirs[:, 0], theirs[:, 2])  # one value for all channels
    peak = np.abs(theirs).max()
    np.testing.assert_allclose(ours.maps, theirs[:, 0], atol=1e-4 * peak)
