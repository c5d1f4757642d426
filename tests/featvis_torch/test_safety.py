"""The model is never harmed, the forward pass stops early, threads get their own results.

The autouse ``hygiene`` fixture (conftest.py) checks after every test that each model used is
exactly as it was: training flags, parameters, buffers and hooks.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis import Preprocess
from featvis_torch import TorchBackend


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


@contextmanager
def count_calls(*modules: nn.Module) -> Iterator[list[int]]:
    """Count how many times each module's forward starts, with pre-hooks removed afterwards."""
    counts = [0] * len(modules)

    def counter(i: int) -> Callable[..., None]:
        def hook(*_: Any) -> None:
            counts[i] += 1

        return hook

    handles = [m.register_forward_pre_hook(counter(i)) for i, m in enumerate(modules)]
    try:
        yield counts
    finally:
        for handle in handles:
            handle.remove()


class Raises(nn.Module):
    """Passes its input through, but raises ``error`` for a batch of ``when`` images."""

    def __init__(self, error: type[BaseException], when: int = 3) -> None:
        super().__init__()
        self.error = error
        self.when = when

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] == self.when:
            raise self.error("raised by the model")
        return x


def _raising(error: type[BaseException]) -> nn.Module:
    """conv, BN, ReLU, then a module that raises, then dropout and a conv; in training mode."""
    return seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 4, 3),
            nn.BatchNorm2d(4),
            nn.ReLU(inplace=True),
            Raises(error),
            nn.Dropout(),
            nn.Conv2d(4, 2, 1),
        )
    )


# -- early stop ------------------------------------------------------------------------------


def test_asking_for_alexnet_conv1_runs_nothing_after_it(
    alexnet_backend: TorchBackend, astronaut: np.ndarray
) -> None:
    model = alexnet_backend.model
    alexnet_backend.layers()
    with count_calls(model.features[0], model.features[1], model.classifier) as counts:
        out = alexnet_backend.activations(astronaut, "conv1")
    assert counts == [1, 0, 0]
    assert out.shape == (1, 64, 55, 55)


def test_several_layers_come_from_one_forward_pass(
    alexnet_backend: TorchBackend, astronaut: np.ndarray
) -> None:
    model = alexnet_backend.model
    alexnet_backend.layers()
    with count_calls(model.features[0], model.features[12], model.classifier) as counts:
        alexnet_backend.activations([astronaut] * 3, ["conv1", "relu5", "conv3"], batch_size=8)
    assert counts == [1, 0, 0]  # stopped right after relu5 (features.11)


def test_a_model_catching_exception_cannot_swallow_the_stop(hygiene: Any) -> None:
    class Careless(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)
            self.after = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            try:
                y = self.conv(x)
            except Exception:  # a model may do this; featvis' stop is not an Exception
                y = torch.zeros(1)
            return self.after(y)

    model = hygiene.watch(seeded(Careless))
    backend = TorchBackend(model, preprocess=Preprocess(size=(4, 4)))
    x = torch.randn(1, 3, 4, 4)
    backend.layers()
    with count_calls(model.after) as counts:
        got = backend.activations(x, "conv")
    assert counts == [0]
    with torch.inference_mode():
        np.testing.assert_array_equal(got, model.conv(x).numpy())


def test_a_model_swallowing_the_stop_still_gets_exact_values(hygiene: Any) -> None:
    class Keeper(nn.Module):  # keeps a reference to its output, which is later changed in place
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            self.kept = x * 2
            return self.kept

    class Swallower(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.keep = Keeper()
            self.after = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with contextlib.suppress(BaseException):  # what a model must not do
                self.keep(x)
            return self.after(self.keep.kept.mul_(-1))

    model = hygiene.watch(Swallower())
    backend = TorchBackend(model, preprocess=Preprocess(size=(2, 2)))
    x = torch.randn(2, 3, 2, 2)
    np.testing.assert_array_equal(backend.activations(x, "keep"), (x * 2).numpy())


# -- the model is untouched ------------------------------------------------------------------


def test_a_bad_layer_name_fails_before_any_forward_pass(
    alexnet_backend: TorchBackend, astronaut: np.ndarray
) -> None:
    alexnet_backend.layers()
    with count_calls(alexnet_backend.model) as counts:
        with pytest.raises(featvis.UnknownLayerError, match="Did you mean 'conv5'"):
            alexnet_backend.activations(astronaut, ["conv1", "conv5_"])
        with pytest.raises(featvis.UnknownLayerError, match="Did you mean 'features.10'"):
            alexnet_backend.activations(astronaut, "features.100")
    assert counts == [0]


@pytest.mark.parametrize(
    "bad",
    [
        "no/such/file.png",
        np.zeros((3, 20, 20), np.uint8),  # channels first
        np.zeros((1, 3, 20, 20), np.uint8),  # a 4-D array must be a float model input
        torch.zeros(3, 224, 224),  # a tensor without its batch dimension
        torch.zeros(1, 3, 8, 8, dtype=torch.uint8),
        [torch.zeros(3, 8, 8), torch.zeros(3, 8, 8)],
    ],
    ids=["missing-file", "chw-array", "uint8-nchw", "chw-tensor", "uint8-tensor", "tensor-list"],
)
def test_a_bad_image_fails_before_any_forward_pass(alexnet_backend: TorchBackend, bad: Any) -> None:
    alexnet_backend.layers()
    with count_calls(alexnet_backend.model) as counts, pytest.raises(featvis.ImageError):
        alexnet_backend.activations(bad, "conv1")
    assert counts == [0]


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_a_model_that_raises_is_left_untouched(
    error: type[BaseException], hygiene: Any, images: list[np.ndarray]
) -> None:
    model = hygiene.watch(_raising(error))
    assert model.training
    backend = TorchBackend(model, preprocess=Preprocess(size=(8, 8)))
    # Raises returns its input untouched when it does not raise: an identity.
    assert [layer.alias for layer in backend.layers()][2:4] == ["relu1", "identity1"]
    with pytest.raises(error, match="raised by the model"):  # the model's own exception
        backend.activations(images, "conv2")
    with pytest.raises(error, match="raised by the model"):
        backend.activations(images, "conv2", batch_size=3)
    # relu1 comes before the module that raises: the forward pass stops before it.
    relu1 = backend.activations(images, "relu1")
    np.testing.assert_array_equal(relu1[:2], backend.activations(images[:2], "relu1"))
    np.testing.assert_array_equal(  # and a batch of 2 gets through the whole model
        backend.activations(images, "conv2", batch_size=2)[:2],
        backend.activations(images[:2], "conv2"),
    )


def test_a_model_that_fails_on_the_listing_input_says_how_to_fix_it(hygiene: Any) -> None:
    model = hygiene.watch(seeded(lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())))
    backend = TorchBackend(model)
    with pytest.raises(featvis.ModelError, match=r"images of shape \(1, 3, 224, 224\)") as info:
        backend.layers()
    assert "Preprocess(size=(H, W), mean=..., std=...)" in str(info.value)
    assert isinstance(info.value.__cause__, RuntimeError)
    gray = TorchBackend(model, preprocess=Preprocess(size=(8, 8), mean=(0.5,), std=(0.5,)))
    assert [layer.alias for layer in gray.layers()] == ["conv1", "relu1"]


# -- threads ---------------------------------------------------------------------------------


def _in_threads(jobs: list[Callable[[], None]]) -> None:
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def run(job: Callable[[], None]) -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_two_threads_extracting_from_one_model_get_their_own_results(
    tiny: nn.Module,
) -> None:
    backends = [TorchBackend(tiny, preprocess=Preprocess(size=(32, 32))) for _ in range(2)]
    generator = torch.Generator().manual_seed(0)
    inputs = [torch.randn(n, 3, 32, 32, generator=generator) for n in (2, 3)]
    asked = [["conv1", "relu2"], ["bn1", "fc"]]
    expected = [b.activations(x, names) for b, x, names in zip(backends, inputs, asked)]

    def job(i: int) -> Callable[[], None]:
        def work() -> None:
            for _ in range(25):
                got = backends[i].activations(inputs[i], asked[i])
                for name in asked[i]:
                    np.testing.assert_array_equal(got[name], expected[i][name])

        return work

    _in_threads([job(0), job(1)])


def test_a_plain_forward_in_another_thread_is_not_captured(hygiene: Any) -> None:
    model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(inplace=True))).eval()
    hygiene.watch(model)
    backend = TorchBackend(model, preprocess=Preprocess(size=(16, 16)))
    mine = torch.randn(1, 3, 16, 16)
    other = torch.randn(1, 3, 16, 16) * 10
    expected = backend.activations(mine, "conv1")

    def extract() -> None:
        for _ in range(200):
            np.testing.assert_array_equal(backend.activations(mine, "conv1"), expected)

    def plain() -> None:
        with torch.inference_mode():
            for _ in range(200):
                model(other)

    _in_threads([extract, plain])


# -- models featvis cannot use as they are ---------------------------------------------------


def test_a_compiled_model_is_inspected_through_its_original_module(tiny: nn.Module) -> None:
    compiled = torch.compile(tiny)
    backend = featvis.load(compiled, preprocess=Preprocess(size=(32, 32)))
    assert isinstance(backend, TorchBackend) and backend.model is tiny
    assert backend.layer("conv1").name == "conv1"


def test_a_data_parallel_model_is_inspected_through_the_module_it_wraps(tiny: nn.Module) -> None:
    backend = TorchBackend(nn.DataParallel(tiny), preprocess=Preprocess(size=(32, 32)))
    assert backend.model is tiny and backend.layer("conv1").name == "conv1"


@pytest.mark.filterwarnings(
    # torch 2.9+ deprecates TorchScript; we script only to check the error for scripted models.
    "ignore:`torch.jit.script` is deprecated:FutureWarning"
)
def test_a_torchscript_module_is_refused_with_what_to_pass_instead(hygiene: Any) -> None:
    model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 2, 3), nn.ReLU()))
    scripted = hygiene.watch(torch.jit.script(model))
    with pytest.raises(featvis.ModelError, match="TorchScript") as info:
        featvis.load(scripted)
    assert "load_state_dict(scripted.state_dict())" in str(info.value)
    wrapper = hygiene.watch(nn.Sequential(scripted, nn.Flatten()))
    with pytest.raises(featvis.ModelError, match="Submodule '0' is TorchScript"):
        TorchBackend(wrapper).layers()


def test_an_uninitialized_lazy_module_is_refused_not_materialized(hygiene: Any) -> None:
    model = hygiene.watch(nn.Sequential(nn.LazyConv2d(4, 3), nn.ReLU()))
    with pytest.raises(featvis.ModelError, match=r"Submodule '0' \(LazyConv2d\).*model\(x\)"):
        TorchBackend(model).layers()


def test_a_model_on_the_meta_device_is_refused() -> None:
    with torch.device("meta"):
        model = nn.Conv2d(3, 2, 1)
    with pytest.raises(featvis.ModelError, match="'meta' device"):
        TorchBackend(model)


def test_featvis_never_moves_the_model(tiny: nn.Module) -> None:
    assert TorchBackend(tiny, device="cpu").layer("conv1")
    with pytest.raises(featvis.ArgumentError, match=r"model.to\('cuda'\)"):
        TorchBackend(tiny, device="cuda")
    with pytest.raises(featvis.ArgumentError, match="torch device such as"):
        TorchBackend(tiny, device="graphics card")
