"""TorchBackend.randomized: a deep copy of the model with its top weighted layers re-drawn."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from featvis._layers import CALL_SEPARATOR
from featvis._randomize import check_count, redraw

__all__ = ["randomized_model", "weighted_modules"]


def weighted_modules(model: nn.Module, layer_names: list[str]) -> list[str]:
    """Names of the modules with a weight of two or more axes (convolutions, linear layers),
    in the order the forward pass first runs them."""
    modules = dict(model.named_modules())
    found: list[str] = []
    for name in layer_names:
        base = name.split(CALL_SEPARATOR)[0]
        module = modules.get(base)
        weight = getattr(module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.ndim >= 2 and base not in found:
            found.append(base)
    return found


def randomized_model(model: nn.Module, names: list[str], layers: Any, seed: int) -> nn.Module:
    """A deep copy of ``model`` whose last ``layers`` of ``names`` have new weights and biases
    (:func:`featvis._randomize.redraw`); ``model`` itself is not touched."""
    count = check_count(layers, len(names))
    twin = copy.deepcopy(model)
    modules = dict(twin.named_modules())
    with torch.no_grad():
        for position, name in enumerate(reversed(names[-count:])):
            module = modules[name]
            weight = module.weight
            fan_in = weight[0].numel()
            weight.copy_(torch.from_numpy(redraw(tuple(weight.shape), fan_in, seed, position, 0)))
            bias = getattr(module, "bias", None)
            if isinstance(bias, torch.Tensor):
                bias.copy_(torch.from_numpy(redraw(tuple(bias.shape), fan_in, seed, position, 1)))
    return twin
