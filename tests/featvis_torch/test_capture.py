"""What TorchBackend returns: exact values, calls of reused modules, and the NCHW rule."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import featvis
from featvis import Preprocess
from featvis.testing import BackendContract
from featvis_torch import TorchBackend

TINY_SIZE = (32, 32)


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


class TestTorchBackendContract(BackendContract):
    @pytest.fixture
    def backend(self, tiny_backend: TorchBackend) -> TorchBackend:
        return tiny_backend


def _eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).eval()


# -- exact capture ---------------------------------------------------------------------------


def test_alexnet_conv5_is_the_convolution_not_the_inplace_relu_after_it(
    alexnet_backend: TorchBackend, astronaut: np.ndarray
) -> None:
    assert alexnet_backend.layer("conv5").name == "features.10"
    assert isinstance(alexnet_backend.model.features[11], nn.ReLU)
    assert alexnet_backend.model.features[11].inplace
    out = alexnet_backend.activations(astronaut, ["conv5", "relu5"])
    assert (out["conv5"] < 0).any(), "conv5 must keep its negative values"
    assert not np.array_equal(out["conv5"], out["relu5"])
    np.testing.assert_array_equal(out["relu5"], np.maximum(out["conv5"], 0))


def test_conv5_alone_equals_conv5_asked_with_relu5(
    alexnet_backend: TorchBackend, astronaut: np.ndarray
) -> None:
    alone = alexnet_backend.activations(astronaut, "conv5")
    together = alexnet_backend.activations(astronaut, ["relu5", "conv5"])
    np.testing.assert_array_equal(alone, together["conv5"])


def test_resnet_bn1_is_taken_before_the_inplace_relu(
    resnet18_backend: TorchBackend, astronaut_224: torch.Tensor
) -> None:
    out = resnet18_backend.activations(astronaut_224, ["bn1", "relu"])
    assert (out["bn1"] < 0).any()
    np.testing.assert_array_equal(out["relu"], np.maximum(out["bn1"], 0))


class Reuse(nn.Module):
    """One in-place ReLU module called twice, one conv module called twice."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.head = nn.Conv2d(3, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.conv(x))
        x = self.act(self.conv(x) - 0.05)
        return self.head(x)


@pytest.fixture(scope="module")
def reuse() -> Reuse:
    return seeded(Reuse)  # type: ignore[return-value]


def test_a_reused_module_gives_one_layer_per_call(reuse: Reuse) -> None:
    backend = TorchBackend(reuse, preprocess=Preprocess(size=(8, 8)))
    layers = backend.layers()
    assert [(layer.name, layer.alias) for layer in layers] == [
        ("conv#1", "conv1"),
        ("act#1", "relu1"),
        ("conv#2", "conv2"),
        ("act#2", "relu2"),
        ("head", "conv3"),
    ]
    # The conv's weights are counted once, on its first call.
    assert [layer.params for layer in layers] == [84, 0, 0, 0, 16]
    assert sum(layer.params for layer in layers) == sum(p.numel() for p in reuse.parameters())
    assert layers[2].description.endswith("(weights of conv#1)")

    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    out = backend.activations(x, [layer.name for layer in layers])
    w, b = reuse.conv.weight.detach(), reuse.conv.bias.detach()
    with torch.inference_mode():
        conv1 = F.conv2d(x, w, b, padding=1)
        act1 = conv1.clamp(min=0)
        conv2 = F.conv2d(act1, w, b, padding=1)
        act2 = (conv2 - 0.05).clamp(min=0)
    for name, expected in [("conv#1", conv1), ("act#1", act1), ("conv#2", conv2), ("act#2", act2)]:
        np.testing.assert_allclose(out[name], expected.numpy(), rtol=1e-6, atol=1e-6, err_msg=name)
    assert (out["conv#1"] < 0).any() and (out["conv#2"] < 0).any()


def test_the_bare_name_of_a_reused_module_lists_its_calls(reuse: Reuse) -> None:
    backend = TorchBackend(reuse, preprocess=Preprocess(size=(8, 8)))
    with pytest.raises(featvis.AmbiguousLayerError) as info:
        backend.activations(torch.zeros(1, 3, 8, 8), "act")
    message = str(info.value)
    assert "'act' runs 2 times" in message
    assert "'act#1' (relu1)" in message and "'act#2' (relu2)" in message


def test_resnet18_names_each_call_of_its_shared_relus(resnet18_backend: TorchBackend) -> None:
    names = [layer.name for layer in resnet18_backend.layers()]
    assert names[:4] == ["conv1", "bn1", "relu", "maxpool"]  # the stem's relu runs once
    assert names[4:11] == [
        "layer1.0.conv1",
        "layer1.0.bn1",
        "layer1.0.relu#1",
        "layer1.0.conv2",
        "layer1.0.bn2",
        "layer1.0.relu#2",
        "layer1.1.conv1",
    ]
    assert "layer1.0.relu" not in names


def test_values_do_not_depend_on_what_else_is_asked(
    tiny_backend: TorchBackend, images: list[np.ndarray]
) -> None:
    names = [layer.name for layer in tiny_backend.layers()]
    everything = tiny_backend.activations(images, names)
    for name in names:
        np.testing.assert_array_equal(tiny_backend.activations(images, name), everything[name])


def test_extraction_runs_in_eval_mode(tiny: nn.Module, images: list[np.ndarray]) -> None:
    assert tiny.training and tiny.drop.training
    backend = TorchBackend(tiny, preprocess=Preprocess(size=TINY_SIZE))
    x = featvis.prepare_images(images, backend.preprocess)
    with torch.inference_mode():
        expected = _eval_copy(tiny)(torch.from_numpy(x)).numpy()
    got = backend.activations(images, "prob")
    np.testing.assert_allclose(got[:, :, 0, 0], expected, rtol=1e-6, atol=1e-7)


def _in_training(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if module.training]


@pytest.mark.parametrize(
    "change", ["swap a child of the model", "swap a module in a container", "give a leaf a child"]
)
def test_modules_added_after_an_extraction_also_run_in_eval_mode(
    tiny: nn.Module, images: list[np.ndarray], change: str
) -> None:
    # featvis remembers the module tree between calls; a change anywhere must be seen.
    model = copy.deepcopy(tiny).eval()
    model.drop = nn.Sequential(nn.Dropout(0.5)).eval()
    backend = TorchBackend(model, preprocess=Preprocess(size=TINY_SIZE))
    backend.activations(images, "prob")
    if change == "swap a child of the model":
        model.flatten = nn.Sequential(nn.Flatten(), nn.Dropout(0.5))  # new modules: training
    elif change == "swap a module in a container":
        model.drop[0] = nn.Dropout(0.5)
    else:
        model.relu2.add_module("unused", nn.Dropout(0.5))
    trained = _in_training(model)
    assert trained, "the change must bring modules in training mode"

    seen: list[list[str]] = []
    handle = model.prob.register_forward_pre_hook(lambda m, a: seen.append(_in_training(model)))
    try:
        got = backend.activations(images, "prob")
    finally:
        handle.remove()

    assert seen == [[]], "every module runs in eval mode"
    assert _in_training(model) == trained, "and gets its own flag back"
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    with torch.inference_mode():
        expected = _eval_copy(model)(x).numpy()
    np.testing.assert_allclose(got[:, :, 0, 0], expected, rtol=1e-6, atol=1e-7)


# -- the NCHW rule ---------------------------------------------------------------------------


class Outputs(nn.Module):
    """Leaf modules returning each kind of output the NCHW rule covers."""

    def __init__(self, fn: object) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> object:
        return self.fn(x)  # type: ignore[operator]


class Zoo(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pair = Outputs(lambda x: (x * 2, x))
        self.nested = Outputs(lambda x: [None, {"a": x + 1, "b": x}])
        self.tokens = Outputs(lambda x: x.flatten(2).transpose(1, 2))  # (N, L, C)
        self.ln = nn.LayerNorm(4)
        self.five = Outputs(lambda x: x.reshape(x.shape[0], 2, 2, *x.shape[2:]))  # (N,2,2,H,W)
        self.flag = Outputs(lambda x: x > 0)
        self.count = Outputs(lambda x: (x * 10).to(torch.int32))
        self.nothing = Outputs(lambda x: None)
        self.spectrum = Outputs(lambda x: torch.fft.fft2(x))
        self.mean = Outputs(lambda x: x.mean(dim=(1, 2, 3)))  # (N,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        a, _ = self.pair(x)
        b = self.nested(a)[1]["a"]
        tokens = self.tokens(b)
        self.ln(tokens)
        self.five(b)
        self.flag(b)
        self.count(b)
        self.nothing(b)
        self.spectrum(b)
        return self.mean(b)


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return seeded(Zoo).eval()  # type: ignore[return-value]


def test_every_kind_of_output_follows_the_nchw_rule(zoo: Zoo) -> None:
    backend = TorchBackend(zoo, preprocess=Preprocess(size=(4, 6)))
    layers = {layer.name: layer for layer in backend.layers()}
    # No tensor, or a complex one: not a layer.
    assert list(layers) == [
        "conv",
        "pair",
        "nested",
        "tokens",
        "ln",
        "five",
        "flag",
        "count",
        "mean",
    ]
    x = torch.randn(2, 3, 4, 6, generator=torch.Generator().manual_seed(0))
    out = backend.activations(x, list(layers))
    with torch.inference_mode():
        conv = zoo.conv(x)
        a = conv * 2
        b = a + 1
        tokens = b.flatten(2).transpose(1, 2)
        expected = {
            "conv": conv,
            "pair": a,  # the first element of a tuple
            "nested": b,  # the first tensor, depth-first, of a list holding a dict
            # (N, L, C) whose L is the image's pixels: a token grid, back to (N, C, H, W)
            "tokens": b,
            "ln": zoo.ln(tokens).transpose(1, 2).reshape(b.shape),
            "five": b,  # (N, 2, 2, H, W): two channel axes fold into C, (N, 4, H, W)
            "flag": (b > 0).float(),
            "count": (b * 10).to(torch.int32).float(),
            "mean": b.mean(dim=(1, 2, 3))[:, None, None, None],
        }
    for name, tensor in expected.items():
        want = tensor.reshape(out[name].shape).numpy()
        assert out[name].dtype == np.float32 and out[name].flags.c_contiguous, name
        np.testing.assert_allclose(out[name], want, rtol=1e-6, atol=1e-6, err_msg=name)
    assert out["tokens"].shape == out["ln"].shape == (2, 4, 4, 6)
    assert out["five"].shape == (2, 4, 4, 6)
    assert out["mean"].shape == (2, 1, 1, 1)
    for name, layer in layers.items():
        assert layer.output_shape == (None, *out[name].shape[1:]), name
    assert layers["ln"].layout == "NLC" and layers["five"].layout == "NCCHW"


class Signal(nn.Module):
    """A 1-d network over the image's columns: (N, C, W) then (N, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 5, 3, padding=1)
        self.relu = nn.ReLU()
        self.bn = nn.BatchNorm1d(5)
        self.proj = nn.Linear(5, 7)  # on (N, W, C): a sequence, channels last

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.relu(self.conv(x.mean(dim=2))))  # (N, 3, W)
        return self.proj(x.transpose(1, 2))


def test_sequences_keep_their_channels_wherever_they_are() -> None:
    model = seeded(Signal).eval()
    backend = TorchBackend(model, preprocess=Preprocess(size=(2, 10)))
    shapes = {layer.name: layer.output_shape for layer in backend.layers()}
    assert shapes == {
        "conv": (None, 5, 1, 10),
        "relu": (None, 5, 1, 10),
        "bn": (None, 5, 1, 10),
        "proj": (None, 7, 1, 10),
    }
    assert [layer.layout for layer in backend.layers()] == ["NCL", "NCL", "NCL", "NLC"]
    x = torch.randn(2, 3, 2, 10)
    out = backend.activations(x, ["relu", "proj"])
    with torch.inference_mode():
        relu = model.relu(model.conv(x.mean(dim=2)))
        proj = model.proj(model.bn(relu).transpose(1, 2))
    np.testing.assert_allclose(out["relu"][:, :, 0, :], relu.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        out["proj"][:, :, 0, :], proj.transpose(1, 2).numpy(), rtol=1e-6, atol=1e-6
    )


def _small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 10),
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_float_dtypes_come_back_as_float32(
    images: list[np.ndarray], dtype: torch.dtype, hygiene: Any
) -> None:
    model = hygiene.watch(seeded(_small_cnn).eval().to(dtype))
    backend = TorchBackend(model, preprocess=Preprocess(size=TINY_SIZE))
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess)).to(dtype)
    out = backend.activations(images, ["conv1", "bn1", "fc1"])
    with torch.inference_mode():
        conv = model[0](x)
        bn = model[1](conv)
        fc = model(x)
    for name, expected in [("conv1", conv), ("bn1", bn), ("fc1", fc)]:
        assert out[name].dtype == np.float32, name
        want = expected.float().numpy().reshape(out[name].shape)
        np.testing.assert_array_equal(out[name], want, err_msg=name)
    assert (out["bn1"] < 0).any()  # taken before the in-place ReLU
    # A float32 tensor is converted to the model's dtype, as images are.
    x32 = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    np.testing.assert_array_equal(backend.activations(x32, "conv1"), out["conv1"])


def test_a_channels_last_model_gives_nchw(
    tiny: nn.Module, images: list[np.ndarray], hygiene: Any
) -> None:
    model = hygiene.watch(_eval_copy(tiny).to(memory_format=torch.channels_last))
    backend = TorchBackend(model, preprocess=Preprocess(size=TINY_SIZE))
    x = torch.from_numpy(featvis.prepare_images(images, backend.preprocess))
    x_last = x.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        conv1 = model.conv1(x_last)
    assert not conv1.is_contiguous()  # really channels_last
    got = backend.activations(x_last, "conv1")
    assert got.flags.c_contiguous
    np.testing.assert_array_equal(got, conv1.contiguous().numpy())


def test_a_tensor_input_is_used_as_it_is(
    tiny_backend: TorchBackend, images: list[np.ndarray]
) -> None:
    x = featvis.prepare_images(images, tiny_backend.preprocess)
    as_tensor = torch.from_numpy(x.copy())
    before = as_tensor.clone()
    np.testing.assert_array_equal(
        tiny_backend.activations(as_tensor, "conv1"), tiny_backend.activations(x, "conv1")
    )
    assert torch.equal(as_tensor, before)


def test_a_module_without_parameters_runs_on_the_cpu() -> None:
    backend = TorchBackend(nn.Sequential(nn.ReLU(), nn.Flatten()), device="cpu")
    out = backend.activations(torch.full((1, 2, 3, 3), -1.0), ["0", "1"])
    assert out["0"].shape == (1, 2, 3, 3) and not out["0"].any()
    assert out["1"].shape == (1, 18, 1, 1)


def test_a_leaf_model_is_its_own_single_layer() -> None:
    conv = seeded(lambda: nn.Conv2d(3, 2, 1))
    backend = TorchBackend(conv, preprocess=Preprocess(size=(4, 4)))
    assert [(layer.name, layer.alias) for layer in backend.layers()] == [("Conv2d", "conv1")]
    x = torch.randn(1, 3, 4, 4)
    with torch.inference_mode():
        expected = conv(x).numpy()
    np.testing.assert_array_equal(backend.activations(x, "conv1"), expected)


class Keeps(nn.Module):
    """Keeps its output in an attribute, as some models cache activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.kept = x * 2
        return self.kept


def test_what_the_caller_gets_shares_no_memory_with_the_model_or_the_input(
    hygiene: Any,
) -> None:
    model = hygiene.watch(nn.Sequential(nn.Identity(), Keeps(), nn.ReLU()))
    backend = TorchBackend(model, preprocess=Preprocess(size=(2, 2)))
    x = torch.randn(1, 3, 2, 2)
    before = x.clone()
    for name in ("0", "1"):  # each one the last layer asked for: taken without a forced copy
        out = backend.activations(x, name)
        out += 100.0
    assert torch.equal(x, before), "the caller's input changed"
    assert torch.equal(model[1].kept, before * 2), "the model's kept tensor changed"


class Moody(nn.Module):
    """``first`` keeps image 0 whatever the batch (no batch axis: not a layer), ``extra`` runs
    for one image only."""

    def __init__(self) -> None:
        super().__init__()
        self.first = Outputs(lambda x: x[:1])
        self.extra = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.first(x)
        return self.extra(x) if len(x) == 1 else x


def test_layers_whose_outputs_change_with_the_input_are_explained(hygiene: Any) -> None:
    backend = TorchBackend(hygiene.watch(Moody()), preprocess=Preprocess(size=(2, 2)))
    assert [layer.name for layer in backend.layers()] == ["extra"]
    two = torch.zeros(2, 3, 2, 2)
    with pytest.raises(featvis.UnknownLayerError, match=r"'first' .*no axis .* follows the batch"):
        backend.activations(two, "first")
    with pytest.raises(featvis.ModelError, match="'extra' did not run"):
        backend.activations(two, "extra")
    assert backend.activations(two[:1], ["extra"])["extra"].shape == (1, 3, 2, 2)
