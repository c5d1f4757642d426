"""Fixtures for the PyTorch backend: seeded models, and a model-hygiene check after every test.

Every ``nn.Module`` (or TorchBackend) a test receives from a fixture is snapshotted before the
test and compared after it: every module's ``training`` flag, every parameter and buffer (same
object, device, dtype, ``requires_grad``, values), every parameter's ``.grad`` (same object and
values, or still None), every hook dict of every module, torch's global hooks, and the grad
mode. A model a test builds itself is checked the same way once passed to
``hygiene.watch(model)``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.modules.module as torch_module
import torchvision
from torch import nn

from featvis import Preprocess, prepare_images
from featvis_torch import TorchBackend

_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_backward_pre_hooks",
    "_backward_hooks",
)
_GLOBAL_HOOK_DICTS = (
    "_global_forward_pre_hooks",
    "_global_forward_hooks",
    "_global_forward_hooks_with_kwargs",
    "_global_forward_hooks_always_called",
    "_global_backward_pre_hooks",
    "_global_backward_hooks",
)


def _hooks(model: nn.Module) -> list[tuple[str, str, list[tuple[Any, Any]]]]:
    return [
        (name, attr, list(getattr(module, attr).items()))
        for name, module in model.named_modules(remove_duplicate=False)
        for attr in _HOOK_DICTS
    ]


def _global_hooks() -> dict[str, list[tuple[Any, Any]]]:
    return {attr: list(getattr(torch_module, attr).items()) for attr in _GLOBAL_HOOK_DICTS}


def _values(t: torch.Tensor) -> torch.Tensor | None:
    """A copy of the values (None for a lazy module's parameter, which has none yet)."""
    if isinstance(t, nn.parameter.UninitializedTensorMixin):
        return None
    return t.detach().clone()


def _same_values(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return torch.equal(a, b)


def _grad(t: torch.Tensor) -> tuple[int, torch.Tensor] | None:
    """A parameter's accumulated gradient: its identity and a copy of its values."""
    return None if t.grad is None else (id(t.grad), t.grad.detach().clone())


class Snapshot:
    """Everything about a model that featvis promises not to change."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.modules = [(n, id(m)) for n, m in model.named_modules(remove_duplicate=False)]
        self.training = [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)]
        self.hooks = _hooks(model)
        self.tensors = {
            name: (id(t), t.device, t.dtype, t.requires_grad, _values(t))
            for name, t in [*model.named_parameters(), *model.named_buffers()]
        }
        self.grads = {name: _grad(t) for name, t in model.named_parameters()}

    def check(self) -> None:
        model = self.model
        now = [(n, id(m)) for n, m in model.named_modules(remove_duplicate=False)]
        assert now == self.modules, "the module tree changed"
        training = [(n, m.training) for n, m in model.named_modules(remove_duplicate=False)]
        assert training == self.training, "a training flag changed"
        assert _hooks(model) == self.hooks, "the registered hooks changed"
        tensors = dict([*model.named_parameters(), *model.named_buffers()])
        assert tensors.keys() == self.tensors.keys(), "parameters or buffers were added/removed"
        for name, (ident, device, dtype, grad, values) in self.tensors.items():
            t = tensors[name]
            assert (id(t), t.device, t.dtype, t.requires_grad) == (ident, device, dtype, grad), name
            assert _same_values(_values(t), values), f"{name} changed"
        for name, t in model.named_parameters():
            before, now = self.grads[name], _grad(t)
            assert (before is None) == (now is None), f"{name}.grad appeared or vanished"
            if before is not None and now is not None:
                assert before[0] == now[0] and torch.equal(before[1], now[1]), (
                    f"{name}.grad changed"
                )


class Hygiene:
    """Snapshots models before a test; :meth:`check` asserts they are untouched after it."""

    def __init__(self) -> None:
        self.snapshots: dict[int, Snapshot] = {}
        self.global_hooks = _global_hooks()
        self.modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())

    def watch(self, model: Any) -> Any:
        """Watch ``model`` (a module or a TorchBackend) from now on; returns it."""
        module = model.model if isinstance(model, TorchBackend) else model
        if isinstance(module, nn.Module) and id(module) not in self.snapshots:
            self.snapshots[id(module)] = Snapshot(module)
        return model

    def check(self) -> None:
        assert _global_hooks() == self.global_hooks, "torch's global hooks changed"
        modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
        assert modes == self.modes, "the grad mode or inference mode changed"
        for snapshot in self.snapshots.values():
            snapshot.check()


@pytest.fixture(autouse=True)
def hygiene(request: pytest.FixtureRequest) -> Iterator[Hygiene]:
    """After every test: every model the test used is exactly as it was before."""
    watcher = Hygiene()
    for name in request.fixturenames:
        if name in ("hygiene", "request") or name.startswith("_"):
            continue
        watcher.watch(request.getfixturevalue(name))
    yield watcher
    watcher.check()


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


class TinyNet(nn.Module):
    """A small CNN with every common layer type; its ReLUs work in place."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(2)
        self.norm1 = nn.LocalResponseNorm(5)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, groups=2)
        self.relu2 = nn.ReLU6(inplace=True)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(16, 10)
        self.prob = nn.Softmax(dim=1)
        with torch.no_grad():  # batch-norm statistics that are not the identity
            self.bn1.running_mean.uniform_(-0.5, 0.5)
            self.bn1.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu1(self.bn1(self.conv1(x)))))
        x = self.flatten(self.gap(self.relu2(self.conv2(x))))
        return self.prob(self.fc(self.drop(x)))


TINY_SIZE = (32, 32)


@pytest.fixture(scope="session")
def tiny() -> TinyNet:
    """In training mode (as a model fresh from its class is), with one submodule in eval."""
    model = seeded(TinyNet)
    model.pool1.eval()
    return model  # type: ignore[return-value]


@pytest.fixture
def tiny_backend(tiny: TinyNet) -> TorchBackend:
    return TorchBackend(tiny, preprocess=Preprocess(size=TINY_SIZE))


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (40, 48, 3), np.uint8),
        rng.integers(0, 256, (30, 20, 3), np.uint8),
        rng.integers(0, 256, (32, 32, 3), np.uint8),
    ]


@pytest.fixture(scope="session")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="session")
def astronaut_224(astronaut: np.ndarray) -> torch.Tensor:
    """The astronaut prepared by featvis' default preprocessing, as a (1, 3, 224, 224) tensor."""
    return torch.from_numpy(prepare_images(astronaut, Preprocess()))


def _torchvision(arch: str) -> nn.Module:
    return seeded(lambda: getattr(torchvision.models, arch)(weights=None).eval())


@pytest.fixture(scope="session")
def alexnet() -> nn.Module:
    return _torchvision("alexnet")


@pytest.fixture(scope="session")
def resnet18() -> nn.Module:
    return _torchvision("resnet18")


@pytest.fixture(scope="session")
def alexnet_backend(alexnet: nn.Module) -> TorchBackend:
    return TorchBackend(alexnet)


@pytest.fixture(scope="session")
def resnet18_backend(resnet18: nn.Module) -> TorchBackend:
    return TorchBackend(resnet18)


@pytest.fixture(scope="session")
def torchvision_model() -> Callable[[str], nn.Module]:
    """Builds a seeded torchvision architecture with random weights."""
    return _torchvision
