"""Shared pieces of the commands: console output, and which layers the walkthrough shows."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from featvis._layers import Layer

__all__ = ["Console", "walkthrough_layers"]


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


def walkthrough_layers(layers: Sequence[Layer]) -> list[Layer]:
    """The layers the seed walkthrough looks at: the first conv, the last conv, and the first
    ReLU after the last conv (AlexNet: conv1, conv5, relu5). A network without convolutions
    gives its first and last layers."""
    convs = [layer for layer in layers if layer.kind == "conv"]
    if not convs:
        return list(dict.fromkeys([layers[0], layers[-1]]))
    chosen = [convs[0], convs[-1]]
    after = [layer for layer in layers[convs[-1].index + 1 :] if layer.kind == "relu"]
    if after:
        chosen.append(after[0])
    return list(dict.fromkeys(chosen))
