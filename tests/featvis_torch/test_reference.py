"""Every leaf output of real architectures equals a reference taken the careful way.

The reference runs a deep copy of the model with plain forward hooks on every leaf module that
clone each output as it is produced (so in-place operations that follow cannot change it),
numbering the calls of a module that runs several times. featvis must agree exactly, asked for
all layers at once and asked for a few alone.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from featvis_torch import TorchBackend

ARCHITECTURES = ["alexnet", "resnet18", "vgg11", "squeezenet1_1", "mobilenet_v3_small"]


def _reference(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """name (or name#k) -> the leaf module's output, cloned in its hook, as (N, C, H, W)."""
    twin = copy.deepcopy(model).eval()
    leaves = {m: n for n, m in twin.named_modules() if not list(m.children())}
    outputs: list[tuple[str, torch.Tensor]] = []

    def hook(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        outputs.append((leaves[module], output.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            twin(x)
    finally:
        for handle in handles:
            handle.remove()
    calls: dict[str, int] = {}
    for name, _ in outputs:
        calls[name] = calls.get(name, 0) + 1
    seen: dict[str, int] = {}
    result = {}
    for name, out in outputs:
        seen[name] = seen.get(name, 0) + 1
        key = f"{name}#{seen[name]}" if calls[name] > 1 else name
        result[key] = (out if out.dim() == 4 else out[:, :, None, None]).numpy()
    return result


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_leaf_output_equals_the_reference(
    arch: str,
    torchvision_model: Callable[[str], nn.Module],
    astronaut_224: torch.Tensor,
    hygiene: Any,
) -> None:
    model = hygiene.watch(torchvision_model(arch))
    expected = _reference(model, astronaut_224)
    backend = TorchBackend(model)
    names = [layer.name for layer in backend.layers()]
    assert names == list(expected), "layers must be every leaf call, in execution order"
    got = backend.activations(astronaut_224, names)
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{arch} {name}")
    for name in (names[0], names[len(names) // 2], names[-1]):
        np.testing.assert_array_equal(
            backend.activations(astronaut_224, name), expected[name], err_msg=f"{arch} {name}"
        )
    # The table's shapes are the shapes the layers really have.
    for layer in backend.layers():
        assert layer.output_shape == (None, *expected[layer.name].shape[1:]), layer.name
