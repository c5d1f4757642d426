"""`featvis demo`: the MATLAB "Visualize Activations of a Convolutional Neural Network" example.

The steps follow SEED.md: load a pretrained network, read an image, show the layers, look at
the first conv layer (montage, one channel, the strongest channel), the same for a deep conv
layer, then the first ReLU after it next to the layer it directly follows. Channels count from
0 here; the seed's MATLAB channel 32 is channel 31.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import OnnxExportable, Scorer
from featvis._compare import compare
from featvis._errors import ArgumentError
from featvis._explain._explanation import COLOURS
from featvis._explain._section import default_method, explain_section
from featvis._figures import MAX_SIZE, Figure, called, describe, for_display, montage_figure
from featvis._figures import strongest as strongest_channel
from featvis._images import image_size
from featvis._layers import layer_table
from featvis._predict import top_predictions
from featvis._report import Report, Section, predictions_html
from featvis.cli._inputs import IMAGE_HELP, add_max_size, open_image
from featvis.cli._outputs import check_output_folder, writing
from featvis.cli._steps import Console, walkthrough
from featvis.cli.report import command_line
from featvis.plugins import load, load_model
from featvis.render import Picture, pair

__all__ = ["register", "run"]

_TABLE_ROWS = 14  # rows of the layer table printed; the whole table goes to layers.txt
_DEFAULT_IMAGE = "skimage:astronaut"


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
    with writing(out / "model.onnx"):
        path = backend.to_onnx(out / "model.onnx")
    console.say(
        f"      Exported the PyTorch model to {path}: the same network and weights as an ONNX "
        "file, which ONNX Runtime runs from here on (it stays there: `featvis layers "
        f"{path}` or featvis.load({str(path)!r}) open it)"
    )
    # opened as the message says a user can: the file records the preprocessing and classes
    return load(path, backend="onnx")


def _explain_step(
    step: int,
    args: argparse.Namespace,
    backend: Backend,
    torch_backend: Backend,
    label: str,
    image: Any,
    console: Console,
    save: Any,
) -> Section | None:
    """Explain the prediction: Grad-CAM on PyTorch; with ``--backend onnx`` a gradient-free
    method (Ablation-CAM: one pass to the layer, then only the classifier per channel) on
    ONNX Runtime and on PyTorch side by side, with their difference. None for a backend that
    gives no class scores."""
    if not isinstance(backend, Scorer):
        return None
    onnx = args.backend == "onnx"
    method = default_method(backend)
    section, gaps = explain_section(
        backend,
        [(label, image)],
        method=method,
        against=torch_backend if onnx else None,
        names=("ONNX Runtime", "PyTorch"),
        max_size=args.max_size,
    )
    figure = section.figures[0]
    if onnx:
        console.say(
            f"[{step}] Explain the prediction: {method} on ONNX Runtime and on PyTorch (no "
            f"gradients needed), side by side; the maps differ by at most {gaps[0]:.1e} of "
            "their peak"
        )
    else:
        console.say(
            f"[{step}] Explain the prediction: {figure.caption.removesuffix(COLOURS).rstrip('.')} "
            "(--backend onnx: a gradient-free method, on both backends)"
        )
    save(f"explain_{method}", figure)
    return section


def _evaluation_section(backend: Backend, image: Any, say: Any, step: int) -> list[Section]:
    """A small evaluation of the demo's own explanation: the method the demo explained with
    (Grad-CAM; Ablation-CAM on a backend without gradients), deletion and insertion at 8 steps
    and the average drop: 19 forwards besides the map. Nothing when the backend cannot score
    classes."""
    from featvis._capabilities import Scorer
    from featvis._evaluate import evaluate

    if not isinstance(backend, Scorer):
        return []
    from featvis._images import read_image

    images = [read_image(image)]
    method = default_method(backend)
    ev = evaluate(
        backend,
        images,
        [method],
        metrics=["deletion", "insertion", "drop"],
        steps=8,
        progress=False,
    )
    row = ev[method]
    say(
        f"[{step}] How faithful is {method}'s map? deletion {row['deletion']:.3f} (lower is "
        f"better), insertion {row['insertion']:.3f} (higher), average drop {row['drop']:.1%} "
        f"(featvis evaluate for more methods and metrics)"
    )
    return [ev.section(f"Evaluation of {method}'s explanation", maps=1)]


def run(args: argparse.Namespace, console: Console) -> int:
    out = check_output_folder(args.out, "--out")
    label, image = open_image(args.image)  # before the model: a bad image fails fast
    clock = _Stopwatch()
    with writing(out):
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
        f"[1] Load a pretrained network: {args.model} through the {backend.name} backend, "
        f"{len(layers)} layers, {params / 1e6:.2f}M parameters"
    )
    clock.lap("load model")

    rgb = for_display(image, args.max_size)  # what the figures show; the model gets it whole
    figures: list[tuple[str, Figure]] = []

    def save(name: str, figure: Figure) -> None:
        path = out / f"{len(figures) + 1:02d}_{name}{figure.suffix}"
        with writing(path):
            figure.save(path)
        figures.append((path.name, figure))
        say(f"      -> {path}")

    height, width = image_size(image)
    say(f"[2] Read an image: {label}, {height}x{width} pixels")
    save("image", Figure(f"The image: {label}", Picture(rgb), f"{height}x{width} RGB", "jpeg"))

    table = layer_table(layers)
    with writing(out / "layers.txt"):
        (out / "layers.txt").write_text(str(table) + "\n", encoding="utf-8")
    steps = walkthrough(layers)
    first, deep = steps.first, steps.deep
    lines = str(table).splitlines()
    shown = min(_TABLE_ROWS - 2, len(layers))
    say(
        f"[3] The network's layers (the first {shown} of {len(layers)}; all of them in "
        f"{out / 'layers.txt'}):"
        if shown < len(layers)
        else f"[3] The network's {len(layers)} layers (also in {out / 'layers.txt'}):"
    )
    say("\n".join("      " + line for line in lines[:_TABLE_ROWS]))
    say(
        f"      The first convolution, {called(first)}, has "
        f"{first.output_shape[1] if first.output_shape else '?'} channels: {first.description}."
    )
    clock.lap("layer table")

    predictions = top_predictions(backend, image, k=5)[0]
    say("[4] Top-5 prediction: " + ", ".join(f"{name} {p:.1%}" for name, p in predictions))
    if args.image == _DEFAULT_IMAGE:
        say(
            "      (ImageNet's 1000 classes have no astronaut, or person: the model names the "
            "nearest things it knows, her helmet and suit among them.)"
        )
    outputs = backend.activations(image, [layer.name for layer in steps.layers])
    acts = {name: a[0] for name, a in outputs.items()}
    clock.lap("model")

    def montage_of(layer: Any) -> Figure:
        return montage_figure(layer, acts[layer.name], max_size=args.max_size)

    a1 = acts[first.name]
    say(f"[5] Activations of the first conv layer: {describe(first, a1)}")
    save(f"{first.alias}_montage", montage_of(first))
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
            "jpeg",
        ),
    )
    s1, why1 = strongest_channel(a1)
    say(f"[7] The strongest channel of {first.alias}: {s1} ({why1})")
    save(
        f"{first.alias}_strongest",
        Figure(
            f"{first.alias}, strongest channel {s1}",
            pair(rgb, a1[s1]),
            f"The strongest channel: {why1} (MATLAB's max(max(max(act))) finds the largest value).",
            "jpeg",
        ),
    )

    a5 = acts[deep.name]
    s5, why5 = strongest_channel(a5)
    say(f"[8] A deep layer: {describe(deep, a5)}; its strongest channel: {s5} ({why5})")
    save(f"{deep.alias}_montage", montage_of(deep))
    save(
        f"{deep.alias}_strongest",
        Figure(
            f"{deep.alias}, strongest channel {s5}",
            pair(rgb, a5[s5]),
            f"The deep layer's strongest channel ({why5}), resized to the image.",
            "jpeg",
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
                "jpeg",
            ),
        )

    if steps.relu is not None and steps.before is not None:
        relu, before = steps.relu, steps.before
        ar, ab = acts[relu.name], acts[before.name]
        if before is deep:
            lead = f"{relu.alias} directly follows {deep.alias}"
        else:
            path = " -> ".join(layer.alias for layer in (deep, *steps.between, relu))
            lead = (
                f"{relu.alias} follows {deep.alias} with {len(steps.between)} layer(s) between "
                f"({path}), so the ReLU is compared with its own input, {called(before)}"
            )
        say(
            f"[9] After the nonlinearity: {describe(relu, ar)}. {lead}; channel {s5} before and "
            "after it"
        )
        save(f"{relu.alias}_montage", montage_of(relu))
        save(
            f"{before.alias}_vs_{relu.alias}",
            Figure(
                f"{before.alias} vs {relu.alias}, channel {s5}",
                _beside(rgb, ab[s5], ar[s5]),
                f"The image, channel {s5} of {before.alias} (the input of {relu.alias}), and the "
                f"same channel after {relu.alias}: the ReLU keeps only the positive evidence, so "
                "what it localizes stands out.",
                "jpeg",
            ),
        )
    clock.lap("figures")

    sections = [
        Section("The walkthrough", [figure for _, figure in figures], predictions_html(predictions))
    ]
    step = 10
    if args.backend == "onnx":
        parity = compare(torch_backend, backend, image)
        summary = parity.summary()
        say(f"[{step}] Parity, PyTorch vs ONNX Runtime, layer by layer:")
        for line in [summary[0], *[s for s in summary if s.startswith("Largest")], summary[-1]]:
            say(f"      {line}")
        sections.append(Section("Parity: PyTorch vs ONNX Runtime", [], parity._repr_html_()))
        step += 1
        clock.lap("parity")
    explained = _explain_step(step, args, backend, torch_backend, label, image, console, save)
    if explained is not None:
        sections.append(explained)
        step += 1
    clock.lap("explain")
    sections.extend(_evaluation_section(backend, image, say, step))  # a small self-check
    clock.lap("evaluation")
    page = Report(
        f"featvis demo: {args.model} on {label}",
        backend,
        sections,
        {"model": args.model, "image": label, "command": command_line(args)},
    )
    with writing(out / "report.html"):
        report = page.save(out / "report.html")
    clock.lap("report")
    say(f"Time: {clock.summary()}")
    console.say(
        f"Done: {len(figures)} figures, layers.txt and {report.name} are in {out}/", always=True
    )
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="the MATLAB 'visualize activations' walkthrough on a pretrained network",
        description="Reproduce the MATLAB example 'Visualize Activations of a Convolutional "
        "Neural Network' step by step: the image, the layer table, the prediction, the first "
        "conv layer's channels, one channel and the strongest channel beside the image, the "
        "same for a deep conv layer, and the first ReLU after it next to the layer it directly "
        "follows. Writes numbered figures (JPEG photos, PNG maps) and report.html into DIR. "
        f"The model sees the full image; figures show it at most {MAX_SIZE} pixels on its "
        "longer side (--max-size).",
    )
    demo.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="run the model in PyTorch, or export it to DIR/model.onnx and run it in ONNX "
        "Runtime, then compare the two layer by layer (default: torch)",
    )
    demo.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="a model name (default: efficientnet_lite0, embedded ImageNet weights)",
    )
    demo.add_argument(
        "--image", default=_DEFAULT_IMAGE, help=IMAGE_HELP + f" (default: {_DEFAULT_IMAGE})"
    )
    demo.add_argument(
        "--out",
        default="featvis-demo",
        metavar="DIR",
        help="folder for the figures, created if needed (default: featvis-demo)",
    )
    add_max_size(demo)
    demo.set_defaults(run=run)
