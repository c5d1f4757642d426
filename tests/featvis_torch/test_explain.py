"""featvis.explain on PyTorch: every gradient method equals its formula on torch.autograd's
gradients, computed here by hand on a torchvision ResNet-18; CAM, Ablation-CAM across a skip
connection, and the model left as it was (the autouse hygiene fixture, conftest.py)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis import Preprocess
from featvis_torch import TorchBackend

from .conftest import seeded

LAYER = "layer4.1.relu#2"  # ResNet-18's last block output: the default layer


@pytest.fixture(scope="module")
def x112(astronaut_224: torch.Tensor) -> torch.Tensor:
    """The astronaut and its upside-down copy at 112 x 112 (a 4 x 4 grid at the last block)."""
    small = nn.functional.interpolate(astronaut_224, size=(112, 112), mode="area")
    return torch.cat([small, torch.flip(small, dims=[2])])


@pytest.fixture
def resnet(resnet18: nn.Module) -> TorchBackend:
    return TorchBackend(resnet18, preprocess=Preprocess(size=(112, 112)))


def _by_hand(model: nn.Module, x: torch.Tensor, classes: list[int]) -> tuple[torch.Tensor, ...]:
    """ResNet-18's last block output A and dy/dA, with the model's modules called by hand."""
    was = [m.training for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
            h = model.layer4[0](model.layer3(model.layer2(model.layer1(h))))
        a = model.layer4[1](h).detach().requires_grad_(True)
        y = model.fc(torch.flatten(model.avgpool(a), 1))
        (g,) = torch.autograd.grad(y[range(len(x)), classes].sum(), a)
    finally:
        for m, t in zip(model.modules(), was):
            m.training = t
    return a.detach().double(), g.double(), y.detach()


def _formula(method: str, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """The published formulas, in torch."""
    space = (2, 3)
    if method == "gradcam":
        cam = (g.mean(space, keepdim=True) * a).sum(1)
    elif method == "gradcampp":
        g2, g3 = g**2, g**3
        den = 2 * g2 + a.sum(space, keepdim=True) * g3
        alpha = torch.where((g != 0) & (den != 0), g2 / torch.where(den == 0, 1, den), 0)
        cam = ((alpha * torch.relu(g)).sum(space, keepdim=True) * a).sum(1)
    elif method == "xgradcam":
        total = a.sum(space, keepdim=True)
        share = torch.where(total != 0, a / torch.where(total == 0, 1, total), 0)
        cam = ((share * g).sum(space, keepdim=True) * a).sum(1)
    elif method == "layercam":
        cam = (torch.relu(g) * a).sum(1)
    elif method == "hirescam":
        cam = (g * a).sum(1)
    else:
        raise AssertionError(method)
    return torch.relu(cam)


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"])
def test_each_gradient_method_equals_its_formula_on_autograds_gradients(
    resnet: TorchBackend, resnet18: nn.Module, x112: torch.Tensor, method: str
) -> None:
    classes = [281, 817]
    e = featvis.explain(resnet, x112, method=method, target=classes)
    assert e.layer == LAYER and e.default_layer
    a, g, y = _by_hand(resnet18, x112, classes)
    expected = _formula(method, a, g).numpy()
    assert expected.max() > 0
    np.testing.assert_allclose(e.raw, expected, rtol=0, atol=1e-5 * expected.max())
    np.testing.assert_allclose(e.scores, y[[0, 1], classes].numpy(), rtol=1e-5)
    assert e.raw.shape == (2, 4, 4) and e.maps.shape == (2, 112, 112)


def test_cam_is_gradcam_for_a_pooled_linear_head(resnet: TorchBackend, x112: torch.Tensor) -> None:
    # With global average pooling and one linear layer, dy/dA = W[c] / (h w) everywhere.
    cam = featvis.explain(resnet, x112, method="cam", target=[3, 4])
    grad = featvis.explain(resnet, x112, method="gradcam", target=[3, 4])
    np.testing.assert_allclose(cam.raw / 16, grad.raw, rtol=1e-4, atol=1e-6 * grad.raw.max())
    np.testing.assert_allclose(cam.scores, grad.scores, rtol=1e-4)


def test_linear_head_is_read_only_and_never_stale(resnet18: nn.Module, x112: torch.Tensor) -> None:
    model = copy.deepcopy(resnet18)
    backend = TorchBackend(model, preprocess=Preprocess(size=(112, 112)))
    weight, bias = backend.linear_head()  # type: ignore[misc]
    np.testing.assert_array_equal(weight, model.fc.weight.detach().numpy())
    np.testing.assert_array_equal(bias, model.fc.bias.detach().numpy())
    assert not bias.flags.writeable
    kept = model.fc.weight.detach().clone()
    with pytest.raises(ValueError, match="read-only"):
        weight[0, 0] = 1e6  # the caller cannot write into the model through the head
    assert torch.equal(model.fc.weight, kept)
    before = featvis.explain(backend, x112, method="cam", target=[3, 4]).raw
    with torch.no_grad():
        model.fc.weight[3].mul_(2.0)  # trained in place, say
        model.fc.weight[4].mul_(2.0)
    after = featvis.explain(backend, x112, method="cam", target=[3, 4]).raw
    np.testing.assert_allclose(after, 2 * before, rtol=1e-5, atol=1e-6 * after.max())


def test_gradient_methods_leave_a_model_with_gradients_as_it_was(
    hygiene: object, images: list[np.ndarray]
) -> None:
    model = seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
            nn.Conv2d(8, 8, 3), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Dropout(), nn.Linear(8, 4),
        )
    )  # fmt: skip
    for p in model.parameters():
        p.grad = torch.rand_like(p)  # the user's accumulated gradients: kept
    hygiene.watch(model)  # type: ignore[attr-defined]
    backend = TorchBackend(model, preprocess=Preprocess(size=(32, 32)))
    for method in ("gradcam", "gradcampp", "layercam", "scorecam", "ablationcam"):
        e = featvis.explain(backend, images, method=method, noise=0.1, samples=2)
        assert e.raw.shape == (3, 28, 28)
    assert model.training


class _Concat(nn.Module):
    """A skip connection that a broadcast cannot cross: concatenates the input back in."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.mix = nn.Conv2d(7, 4, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.relu(self.conv(x)), x], dim=1)
        return self.fc(torch.flatten(self.pool(self.mix(h)), 1))


@pytest.mark.parametrize("build", [_Concat, pytest.param(None, marks=pytest.mark.slow)])
def test_ablationcam_across_a_skip_connection_is_exact(
    build: type[nn.Module] | None, resnet18: nn.Module
) -> None:
    # ResNet's `out += identity` broadcasts the batch-1 identity; a concatenation does not,
    # and falls back to repeating the image. Either way: the map of zeroing each channel.
    # In float64, so that the score differences of single channels are exact enough to compare.
    if build is None:
        model = copy.deepcopy(resnet18).double()
        backend = TorchBackend(model, preprocess=Preprocess(size=(64, 64)))
        layer = "layer3.1.relu#1"  # inside a block: the identity crosses it
        x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    else:
        backend = TorchBackend(seeded(build).eval().double(), preprocess=Preprocess(size=(16, 16)))
        layer = "relu"
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    x = x.double()
    e = featvis.explain(backend, x, method="ablationcam", layer=layer, target=2)
    acts = backend.activations(x, layer)[0]
    site = backend.layer(layer)
    module = backend.model.get_submodule(site.name.split("#")[0])
    call = int(site.name.split("#")[1]) if "#" in site.name else 1

    live = [k for k in range(len(acts)) if acts[k].any()]
    rows = np.repeat(acts[None], 1 + len(live), axis=0)
    for j, k in enumerate(live):
        rows[1 + j, k] = 0
    seen = [0]

    def hook(m: nn.Module, args: object, out: torch.Tensor) -> torch.Tensor | None:
        # The plain way: the image repeated, every tensor at the batch of replacements.
        seen[0] += 1
        return torch.from_numpy(rows).double() if seen[0] == call else None

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            scores = backend.model(x.repeat(len(rows), 1, 1, 1))[:, 2].numpy()
    finally:
        handle.remove()
    weights = np.zeros(len(acts))
    weights[live] = (scores[0] - scores[1:]) / scores[0]
    expected = np.maximum(np.einsum("k,khw->hw", weights, acts.astype(np.float64)), 0)
    np.testing.assert_allclose(e.raw[0], expected, atol=1e-5 * expected.max())
    assert expected.max() > 0


def _batches_seen(module: nn.Module) -> tuple[list[int], object]:
    seen: list[int] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(len(args[0])))
    return seen, handle


def test_ablationcam_runs_the_model_to_the_layer_once_whatever_batch_size() -> None:
    # evaluate passes its perturbation batch (2) to every method: split into passes of 2
    # copies, each rerunning the model up to the layer, Lite0's map took 6.2 s, not 0.12 s.
    model = seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 40, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(40, 3),
        )
    ).eval()
    backend = TorchBackend(model, preprocess=Preprocess(size=(16, 16)))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    plain = featvis.explain(backend, x, method="ablationcam", layer="3", target=1)
    seen, handle = _batches_seen(model[0])
    try:
        split = featvis.explain(backend, x, method="ablationcam", layer="3", target=1, batch_size=2)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    assert seen == [1]  # one pass, at batch 1, for the image and all 41 copies
    np.testing.assert_allclose(split.raw, plain.raw, rtol=1e-6, atol=1e-7 * plain.raw.max())


class _WideConcat(_Concat):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 40, 3, padding=1)
        self.mix = nn.Conv2d(43, 4, 1)


def test_ablationcam_that_repeats_the_image_bounds_the_batch() -> None:
    # Where the batch-1 prefix cannot broadcast (a concatenation), every copy is a whole
    # forward pass of the image: 41 copies go in passes of at most 32 images, not all at once.
    from featvis._backend import DEFAULT_BATCH_SIZE

    model = seeded(_WideConcat).eval().double()
    backend = TorchBackend(model, preprocess=Preprocess(size=(16, 16)))
    x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).double()
    seen, handle = _batches_seen(model.conv)
    try:
        e = featvis.explain(backend, x, method="ablationcam", layer="relu", target=2)
    finally:
        handle.remove()  # type: ignore[attr-defined]
    assert max(seen) == DEFAULT_BATCH_SIZE and sum(seen) > 41  # the copies, split
    small = featvis.explain(backend, x, method="ablationcam", layer="relu", target=2, batch_size=5)
    np.testing.assert_allclose(small.raw, e.raw, rtol=1e-9, atol=1e-12)
    assert e.raw.max() > 0
