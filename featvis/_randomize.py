"""The weights :class:`featvis.Randomizable` backends draw: one rule for every framework."""

from __future__ import annotations

import math

import numpy as np

from featvis._errors import ArgumentError

__all__ = ["check_count", "redraw"]


def check_count(layers: object, available: int) -> int:
    """``layers`` checked: an integer from 1 to the number of weighted layers."""
    if (
        not isinstance(layers, (int, np.integer))
        or isinstance(layers, bool)
        or not (1 <= layers <= available)
    ):
        raise ArgumentError(
            f"layers must be an integer from 1 to {available} (the model's weighted layers: "
            f"convolutions and fully connected layers), got {layers!r}."
        )
    return int(layers)


def redraw(shape: tuple[int, ...], fan_in: int, seed: int, position: int, which: int) -> np.ndarray:
    """New float32 values uniform in ``+-1/sqrt(fan_in)`` (PyTorch's default initialization
    of ``Conv2d`` and ``Linear`` weights and biases), from a generator seeded with ``(seed,
    position, which)``: ``position`` counts the weighted layers from the output (0 is the
    last), ``which`` is 0 for the weight and 1 for the bias, so a torch model and its ONNX
    export get the same weights."""
    bound = 1.0 / math.sqrt(max(1, fan_in))
    rng = np.random.default_rng([seed, position, which])
    return rng.uniform(-bound, bound, size=shape).astype(np.float32)
