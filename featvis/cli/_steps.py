"""Shared pieces of the commands: console output, and which layers the walkthrough shows."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from featvis._layers import Layer

__all__ = ["Console", "Walkthrough", "walkthrough"]


class Console:
    """Prints steps and progress bars, unless ``quiet``; results are printed regardless."""

    def __init__(self, *, quiet: bool = False) -> None:
        self.quiet = quiet

    def say(self, message: str = "", *, always: bool = False) -> None:
        if always or not self.quiet:
            print(message, flush=True)

    @contextlib.contextmanager
    def progress(self, total: int, unit: str) -> Iterator[Any]:
        """A tqdm bar on stderr; hidden when quiet, when stderr is no terminal, or for 1 step."""
        if self.quiet or total <= 1:
            yield None
            return
        from tqdm.auto import tqdm

        with tqdm(total=total, unit=unit, file=sys.stderr, disable=None, leave=False) as bar:
            yield bar


@dataclass(frozen=True)
class Walkthrough:
    """The layers the seed walkthrough looks at (AlexNet: conv1, conv5, relu5).

    ``relu`` is the first ReLU after the last conv, and ``before`` the layer that runs just
    before it, whose output the ReLU takes: the seed's "conv5 vs relu5" compares a layer with
    the activation that directly follows it. ``between`` lists what runs from ``deep`` to
    ``before`` (EfficientNet's BatchNorm after its last conv), empty for AlexNet.
    """

    first: Layer
    deep: Layer
    relu: Layer | None = None
    before: Layer | None = None
    between: tuple[Layer, ...] = ()

    @property
    def layers(self) -> list[Layer]:
        """Every layer to run, each once, in execution order."""
        found = [self.first, self.deep, self.before, self.relu]
        return sorted(
            dict.fromkeys(layer for layer in found if layer is not None),
            key=lambda layer: layer.index,
        )


def walkthrough(layers: Sequence[Layer]) -> Walkthrough:
    """The walkthrough's layers of a model (a model without convolutions: its first and last)."""
    convs = [layer for layer in layers if layer.kind == "conv"]
    if not convs:
        return Walkthrough(layers[0], layers[-1])
    first, deep = convs[0], convs[-1]
    relu = next((layer for layer in layers[deep.index + 1 :] if layer.kind == "relu"), None)
    if relu is None:
        return Walkthrough(first, deep)
    before = layers[relu.index - 1]
    return Walkthrough(first, deep, relu, before, tuple(layers[deep.index + 1 : before.index + 1]))
