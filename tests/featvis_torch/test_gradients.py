"""TorchBackend.gradients: exact gradients, and a model left exactly as it was.

Every expected gradient is computed here by hand with ``torch.autograd.grad`` on the model's own
modules called one by one. The autouse ``hygiene`` fixture (conftest.py) checks after every test
that each model used is as it was: parameters, their ``requires_grad`` and ``.grad``, hooks,
training flags, the grad mode.
"""

from __future__ import annotations

import gc
import resource

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis import Objective, Preprocess
from featvis_torch import TorchBackend

from .conftest import seeded


def _resnet_prefix(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ResNet up to (not including) its last block, by hand."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    x = model.layer3(model.layer2(model.layer1(x)))
    return model.layer4[0](x)


def _resnet_head(model: nn.Module, a: torch.Tensor) -> torch.Tensor:
    return model.fc(torch.flatten(model.avgpool(a), 1))


@pytest.fixture(scope="module")
def x224(astronaut_224: torch.Tensor) -> torch.Tensor:
    flipped = torch.flip(astronaut_224, dims=[3])
    return torch.cat([astronaut_224, flipped])


def _class_objective(classes: list[int], k: int = 1000) -> Objective:
    return Objective.linear(np.eye(k, dtype=np.float32)[classes])


def test_gradient_of_a_class_score_at_a_block_output_is_autograd_s(
    resnet18_backend: TorchBackend, resnet18: nn.Module, x224: torch.Tensor
) -> None:
    classes = [3, 500]
    g = resnet18_backend.gradients(x224, ["layer4.1.relu#2"], _class_objective(classes))
    with torch.no_grad():
        before = _resnet_prefix(resnet18, x224)
    a = resnet18.layer4[1](before).detach().requires_grad_(True)
    y = _resnet_head(resnet18, a)
    (expected,) = torch.autograd.grad(y[[0, 1], classes].sum(), a)
    np.testing.assert_allclose(g.activations["layer4.1.relu#2"], a.detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(g.gradients["layer4.1.relu#2"], expected.numpy(), atol=1e-7)
    np.testing.assert_allclose(g.output, y.detach().numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g.values, y.detach().numpy()[[0, 1], classes], rtol=1e-5)


def test_in_place_add_and_relu_after_the_layer_change_neither_value_nor_gradient(
    resnet18_backend: TorchBackend, resnet18: nn.Module, x224: torch.Tensor
) -> None:
    # layer4.1.bn2's output is modified in place twice: `out += identity`, then ReLU(inplace).
    block = resnet18.layer4[1]
    g = resnet18_backend.gradients(x224, ["layer4.1.bn2"], _class_objective([7, 7]))
    with torch.no_grad():
        identity = _resnet_prefix(resnet18, x224)
        inner = block.conv2(block.relu(block.bn1(block.conv1(identity))))
    b = block.bn2(inner).detach().requires_grad_(True)
    y = _resnet_head(resnet18, torch.relu(b + identity))
    (expected,) = torch.autograd.grad(y[:, 7].sum(), b)
    np.testing.assert_allclose(
        g.activations["layer4.1.bn2"], b.detach().numpy(), rtol=1e-5, atol=1e-5
    )
    assert (g.activations["layer4.1.bn2"] < 0).any(), "the value before the in-place ReLU"
    np.testing.assert_allclose(g.gradients["layer4.1.bn2"], expected.numpy(), atol=1e-7)


def test_two_layers_and_the_input_in_one_pass(
    resnet18_backend: TorchBackend, resnet18: nn.Module, x224: torch.Tensor
) -> None:
    g = resnet18_backend.gradients(
        x224, ["layer4.0.relu#2", "layer4.1.relu#2"], _class_objective([1, 2]), input=True
    )
    x = x224.clone().requires_grad_(True)
    mid = _resnet_prefix(resnet18, x)
    out = resnet18.layer4[1](mid)
    y = _resnet_head(resnet18, out)
    ex_mid, ex_out, ex_x = torch.autograd.grad(y[[0, 1], [1, 2]].sum(), [mid, out, x])
    np.testing.assert_allclose(g.gradients["layer4.0.relu#2"], ex_mid.numpy(), atol=1e-7)
    np.testing.assert_allclose(g.gradients["layer4.1.relu#2"], ex_out.numpy(), atol=1e-7)
    assert g.input is not None
    np.testing.assert_allclose(g.input, ex_x.numpy(), atol=1e-7)


def test_a_nonlinear_objective_on_a_layer_with_the_input_gradient(
    tiny_backend: TorchBackend, tiny: nn.Module
) -> None:
    # What feature visualization asks: d mean(a**2) / d input, with the forward pass stopped.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 3, 32, 32)).astype(np.float32)

    def energy(a: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values = (a[:, 2] ** 2).mean(axis=(1, 2))
        cotangent = np.zeros_like(a)
        cotangent[:, 2] = 2 * a[:, 2] / a[0, 2].size
        return values, cotangent

    g = tiny_backend.gradients(x, [], Objective(energy, "conv2"), input=True)
    was = [m.training for m in tiny.modules()]
    tiny.eval()
    try:
        xt = torch.from_numpy(x).requires_grad_(True)
        a = tiny.conv2(tiny.norm1(tiny.pool1(tiny.relu1(tiny.bn1(tiny.conv1(xt.clone()))))))
        value = (a[:, 2] ** 2).mean(dim=(1, 2))
        (expected,) = torch.autograd.grad(value.sum(), xt)
    finally:
        for m, t in zip(tiny.modules(), was):
            m.training = t
    np.testing.assert_allclose(g.values, value.detach().numpy(), rtol=1e-5)
    assert g.output.shape == (3, 16, 16, 16)
    assert g.input is not None
    np.testing.assert_allclose(g.input, expected.numpy(), rtol=1e-4, atol=1e-6)


def test_an_objective_that_couples_the_images_of_a_batch(tiny_backend: TorchBackend) -> None:
    # A diversity term: each image's value depends on the others', so one pass sees them all.
    x = np.random.default_rng(1).normal(size=(4, 3, 32, 32)).astype(np.float32)

    def diversity(a: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        flat = a.reshape(len(a), -1)
        total = flat.sum(axis=0, keepdims=True)
        values = (flat * (total - flat)).sum(axis=1)
        cotangent = 2 * (total - flat)  # d/dflat_i of sum_i flat_i . (total - flat_i)
        return values, cotangent.reshape(a.shape)

    g = tiny_backend.gradients(x, ["conv1"], Objective(diversity, "conv1"))
    a = g.activations["conv1"].reshape(4, -1).astype(np.float64)
    np.testing.assert_allclose(g.values, (a * (a.sum(0) - a)).sum(1), rtol=1e-4)
    np.testing.assert_allclose(
        g.gradients["conv1"].reshape(4, -1), 2 * (a.sum(0) - a), rtol=1e-5, atol=1e-5
    )


def test_batch_size_does_not_change_results(tiny_backend: TorchBackend, images: list) -> None:
    objective = _class_objective([0, 3, 9], k=10)
    whole = tiny_backend.gradients(images, ["conv2", "relu1"], objective, input=True)
    parts = tiny_backend.gradients(images, ["conv2", "relu1"], objective, input=True, batch_size=2)
    for name in ("conv2", "relu1"):
        np.testing.assert_allclose(parts.gradients[name], whole.gradients[name], atol=1e-7)
        np.testing.assert_allclose(parts.activations[name], whole.activations[name], atol=1e-6)
    np.testing.assert_allclose(parts.input, whole.input, atol=1e-7)
    np.testing.assert_allclose(parts.values, whole.values, rtol=1e-6)


def test_aliases_and_names_give_the_same_gradients(
    tiny_backend: TorchBackend, images: list
) -> None:
    g = tiny_backend.gradients(images, ["conv2", "conv2"], _class_objective([1, 1, 1], k=10))
    assert list(g.gradients) == ["conv2"]
    layer = tiny_backend.layer("conv2")
    by_name = tiny_backend.gradients(images, [layer.name], _class_objective([1, 1, 1], k=10))
    np.testing.assert_array_equal(by_name.gradients[layer.name], g.gradients["conv2"])


def test_accumulated_gradients_and_frozen_parameters_stay_as_they_were(
    hygiene: object, images: list
) -> None:
    model = seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 30 * 30, 5)
        )
    )
    model[0].weight.requires_grad_(False)
    model[3].weight.grad = torch.full_like(model[3].weight, 0.5)  # the user's, to keep
    hygiene.watch(model)  # type: ignore[attr-defined]
    backend = TorchBackend(model, preprocess=Preprocess(size=(32, 32)))
    backend.gradients(images, ["0"], _class_objective([0, 1, 2], k=5), input=True)
    backend.gradients(images, ["1"], _class_objective([0, 1, 2], k=5))
    assert model[0].weight.grad is None and model[3].bias.grad is None


class _Boom(torch.autograd.Function):
    @staticmethod
    def forward(ctx: object, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: object, grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("raised in backward")


class _RaisesInBackward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _Boom.apply(x)


class _RaisesInForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) == 3:  # not when the layers are listed (one image)
            raise ValueError("raised in forward")
        return x


@pytest.mark.parametrize("where", ["forward", "backward", "objective"])
def test_the_model_is_restored_when_something_raises(
    hygiene: object, images: list, where: str
) -> None:
    raiser = {"forward": _RaisesInForward, "backward": _RaisesInBackward}.get(where, nn.Identity)
    model = seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            raiser(),
            nn.Dropout(),
            nn.Flatten(),
            nn.Linear(4 * 30 * 30, 3),
        )
    )  # in training mode, as a fresh model is
    model[0].weight.grad = torch.ones_like(model[0].weight)
    hygiene.watch(model)  # type: ignore[attr-defined]
    backend = TorchBackend(model, preprocess=Preprocess(size=(32, 32)))

    def bad(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise KeyError("raised by the objective")

    objective = Objective(bad) if where == "objective" else _class_objective([0, 1, 2], k=3)
    error = {"forward": ValueError, "backward": RuntimeError, "objective": KeyError}[where]
    with pytest.raises(error, match="raised"):
        backend.gradients(images, ["0"], objective, input=True)
    with pytest.raises(error, match="raised"):
        backend.gradients(images, ["1"], objective)  # recording starts at the layer
    assert model.training and model[1].training, "training flags are put back"
    assert torch.is_grad_enabled()
    assert len(backend.activations(images, "1")) == 3 or where == "forward"


def test_bad_arguments_are_refused_before_any_work(tiny_backend: TorchBackend) -> None:
    x = np.zeros((32, 32, 3), np.uint8)
    with pytest.raises(featvis.ArgumentError, match="Objective"):
        tiny_backend.gradients(x, ["conv1"], lambda a, i: (a, a))  # type: ignore[arg-type]
    with pytest.raises(featvis.ArgumentError, match="list of layer names"):
        tiny_backend.gradients(x, "conv1", _class_objective([0], k=10))  # type: ignore[arg-type]
    with pytest.raises(featvis.UnknownLayerError):
        tiny_backend.gradients(x, ["conv9"], _class_objective([0], k=10))
    with pytest.raises(featvis.ArgumentError, match="Nothing to differentiate"):
        tiny_backend.gradients(x, [], _class_objective([0], k=10))
    wrong = Objective(lambda a, i: (a.sum(1), a[:, :1]))
    with pytest.raises(featvis.ArgumentError, match="cotangent"):
        tiny_backend.gradients(x, ["conv1"], wrong)


def test_the_backend_is_differentiable(tiny_backend: TorchBackend) -> None:
    assert isinstance(tiny_backend, featvis.Differentiable)
    assert isinstance(tiny_backend, featvis.Scorer)


@pytest.mark.slow
def test_densenet_functional_in_place_relu_after_the_last_norm(
    torchvision_model: object,
) -> None:
    # DenseNet's forward applies F.relu(features, inplace=True) to features.norm5's output: the
    # bug class that breaks pytorch-grad-cam and torch-cam's backward hooks.
    model = torchvision_model("densenet121")  # type: ignore[operator]
    backend = TorchBackend(model, preprocess=Preprocess(size=(64, 64)))
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 3, 64, 64)).astype(np.float32))
    g = backend.gradients(x, ["features.norm5"], _class_objective([5, 6]))
    with torch.no_grad():
        norm5 = model.features(x)
    a = norm5.detach().requires_grad_(True)
    y = model.classifier(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(a), 1), 1))
    (expected,) = torch.autograd.grad(y[[0, 1], [5, 6]].sum(), a)
    np.testing.assert_allclose(g.activations["features.norm5"], a.detach().numpy(), atol=1e-5)
    assert (g.activations["features.norm5"] < 0).any()
    np.testing.assert_allclose(g.gradients["features.norm5"], expected.numpy(), atol=1e-7)


def _live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) in (torch.Tensor, nn.Parameter))


@pytest.mark.slow
def test_memory_stays_flat_over_a_thousand_calls(tiny_backend: TorchBackend) -> None:
    x = np.random.default_rng(0).normal(size=(2, 3, 32, 32)).astype(np.float32)
    objective = _class_objective([1, 2], k=10)
    for _ in range(50):
        tiny_backend.gradients(x, ["conv2"], objective, input=True)
    tensors = _live_tensors()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(1000):
        tiny_backend.gradients(x, ["conv2"], objective, input=True)
    assert _live_tensors() == tensors
    grown_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss
    assert grown_kb < 20_000, f"peak memory grew by {grown_kb} kB over 1000 calls"
