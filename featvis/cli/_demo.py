"""`featvis demo`: the MATLAB "Visualize Activations of a Convolutional Neural Network" example.

The steps follow SEED.md: load a pretrained network, read an image, show the layers, look at
the first conv layer (montage, one channel, the strongest channel), the same for a deep conv
layer, then that layer after its ReLU. Channels count from 0 here; the seed's MATLAB channel 32
is channel 31.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import OnnxExportable
from featvis._compare import compare
from featvis._errors import ArgumentError
from featvis._images import image_size
from featvis._layers import Layer, layer_table
from featvis._predict import top_predictions
from featvis.cli._inputs import for_display, open_image
from featvis.cli._report import (
    Figure,
    Section,
    called,
    describe,
    montage_figure,
    predictions_html,
    write_report,
)
from featvis.cli._steps import Console, walkthrough_layers
from featvis.plugins import load, load_model
from featvis.render import Picture, pair, strongest_channel

__all__ = ["run_demo"]

_TABLE_ROWS = 14  # rows of the layer table printed; the whole table goes to layers.txt


class _Stopwatch:
    """Wall time per stage, so the demo can say where its time goes."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self._start = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.stages[stage] = self.stages.get(stage, 0.0) + now - self._start
        self._start = now

    def summary(self) -> str:
        total = sum(self.stages.values())
        parts = ", ".join(f"{name} {seconds:.2f} s" for name, seconds in self.stages.items())
        return f"{total:.1f} s ({parts})"


def _channel(k: int, channels: int) -> int:
    """The seed's 1-based MATLAB channel ``k`` as a 0-based index, kept inside the layer."""
    return min(k - 1, channels - 1)


def _beside(image: np.ndarray, *maps: np.ndarray) -> Picture:
    """The RGB image followed by each map, every map normalized alone and resized to it."""
    width = image.shape[1]
    panels = [np.asarray(pair(image, maps[0]))]
    panels += [np.asarray(pair(image, m))[:, width:] for m in maps[1:]]
    return Picture(np.concatenate(panels, axis=1))


def _onnx_twin(backend: Backend, out: Path, console: Console) -> Backend:
    """Export the torch model to ONNX in ``out`` and open it with the ONNX backend."""
    if not isinstance(backend, OnnxExportable):
        raise ArgumentError(f"--backend onnx needs a PyTorch model to export; {backend!r} is not.")
    path = backend.to_onnx(out / "model.onnx")
    console.say(f"      exported to ONNX: {path}")
    twin = load(path, backend="onnx", preprocess=backend.preprocess)
    twin.categories = backend.categories
    return twin


def run_demo(args: argparse.Namespace, console: Console) -> int:
    clock = _Stopwatch()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    say = console.say
    say("featvis demo: MATLAB's 'Visualize Activations of a Convolutional Neural Network'")

    torch_backend = load_model(args.model)
    backend = torch_backend
    if args.backend == "onnx":
        backend = _onnx_twin(torch_backend, out, console)
    layers = backend.layers()
    params = sum(layer.params for layer in layers)
    say(
        f"[1] Load a pretrained network: {args.model} through the {args.backend} backend, "
        f"{len(layers)} layers, {params / 1e6:.2f}M parameters"
    )
    clock.lap("load model")

    label, image = open_image(args.image)
    rgb = for_display(image)  # what the figures show; the model gets the full image
    figures: list[tuple[str, Figure]] = []

    def save(name: str, figure: Figure) -> None:
        path = out / f"{len(figures) + 1:02d}_{name}.png"
        figure.picture.save(path)
        figures.append((path.name, figure))
        say(f"      -> {path}")

    height, width = image_size(image)
    say(f"[2] Read an image: {label}, {height}x{width} pixels")
    save("image", Figure(f"The image: {label}", Picture(rgb), f"{height}x{width} RGB"))

    table = layer_table(layers)
    (out / "layers.txt").write_text(str(table) + "\n", encoding="utf-8")
    first, deep, *rest = walkthrough_layers(layers)
    relu: Layer | None = rest[0] if rest else None
    lines = str(table).splitlines()
    say(
        f"[3] The network's layers (the first {_TABLE_ROWS - 2} of {len(layers)}; all of them in "
        f"{out / 'layers.txt'}):"
    )
    say("\n".join("      " + line for line in lines[:_TABLE_ROWS]))
    say(
        f"      The first convolution, {called(first)}, has "
        f"{first.output_shape[1] if first.output_shape else '?'} channels: {first.description}."
    )
    clock.lap("layer table")

    predictions = top_predictions(backend, image, k=5)[0]
    say("[4] Top-5 prediction: " + ", ".join(f"{name} {p:.1%}" for name, p in predictions))
    wanted = [layer for layer in (first, deep, relu) if layer is not None]
    outputs = backend.activations(image, [layer.name for layer in wanted])
    acts = {name: a[0] for name, a in outputs.items()}
    clock.lap("model")

    a1 = acts[first.name]
    say(f"[5] Activations of the first conv layer: {describe(first, a1[None])}")
    save(f"{first.alias}_montage", montage_figure(first, a1))
    k = _channel(32, len(a1))
    say(
        f"[6] One channel: {k} (MATLAB's channel {k + 1}), normalized alone, resized, "
        "beside the image"
    )
    save(
        f"{first.alias}_channel{k}",
        Figure(
            f"{first.alias}, channel {k}",
            pair(rgb, a1[k]),
            f"Channel {k} (MATLAB's {k + 1}): mat2gray of this channel alone, resized to "
            "the image.",
        ),
    )
    s1 = strongest_channel(a1)
    say(f"[7] The strongest channel of {first.alias}: {s1} (it holds the largest activation)")
    save(
        f"{first.alias}_strongest",
        Figure(
            f"{first.alias}, strongest channel {s1}",
            pair(rgb, a1[s1]),
            f"Channel {s1} holds the layer's largest value (MATLAB's max(max(max(act)))).",
        ),
    )

    a5 = acts[deep.name]
    say(f"[8] A deep layer: {describe(deep, a5[None])}")
    save(f"{deep.alias}_montage", montage_figure(deep, a5))
    s5 = strongest_channel(a5)
    save(
        f"{deep.alias}_strongest",
        Figure(
            f"{deep.alias}, strongest channel {s5}",
            pair(rgb, a5[s5]),
            "The deep layer's strongest channel, resized to the image.",
        ),
    )
    for matlab in (3, 5):
        c = _channel(matlab, len(a5))
        save(
            f"{deep.alias}_channel{c}",
            Figure(
                f"{deep.alias}, channel {c}",
                pair(rgb, a5[c]),
                f"Channel {c} (MATLAB's {c + 1}) of the deep layer.",
            ),
        )

    if relu is not None:
        ar = acts[relu.name]
        say(
            f"[9] After the nonlinearity: {describe(relu, ar[None])}; channel {s5} of "
            f"{deep.alias} before and after it"
        )
        save(f"{relu.alias}_montage", montage_figure(relu, ar))
        save(
            f"{deep.alias}_vs_{relu.alias}",
            Figure(
                f"{deep.alias} vs {relu.alias}, channel {s5}",
                _beside(rgb, a5[s5], ar[s5]),
                f"The image, channel {s5} of {deep.alias}, and the same channel after "
                f"{relu.alias}: the ReLU keeps only the positive evidence, so what it "
                "localizes stands out.",
            ),
        )
    clock.lap("figures")

    sections = [
        Section("The walkthrough", [figure for _, figure in figures], predictions_html(predictions))
    ]
    if args.backend == "onnx":
        sections.append(_parity_section(torch_backend, backend, image))
    report = write_report(
        out / "report.html",
        title=f"featvis demo: {args.model} on {label}",
        backend=backend,
        sections=sections,
        provenance={"model": args.model, "image": label},
    )
    clock.lap("report")
    say(f"Time: {clock.summary()}")
    console.say(
        f"Done: {len(figures)} figures, layers.txt and {report.name} are in {out}/", always=True
    )
    return 0


def _parity_section(torch_backend: Backend, onnx_backend: Backend, image: Any) -> Section:
    table = compare(torch_backend, onnx_backend, image)
    return Section("Parity: PyTorch vs ONNX Runtime", [], table._repr_html_())
