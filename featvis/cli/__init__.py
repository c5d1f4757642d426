"""The ``featvis`` command: layer tables, activation figures, HTML reports and the demo."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from featvis._errors import ArgumentError, FeatvisError
from featvis._layers import layer_table
from featvis._version import __version__
from featvis.cli._inputs import (
    DISPLAY_SIZE,
    IMAGE_HELP,
    MODEL_HELP,
    open_image,
    open_model,
    parse_grid,
)
from featvis.cli._report import describe, layer_sections, write_report
from featvis.cli._steps import Console, walkthrough_layers
from featvis.cli._survey import add_survey_parser
from featvis.plugins import list_backends, list_models
from featvis.render import COLORMAPS, montage, normalize, pair, strongest_channel, top_channels

__all__ = ["main"]


def _add_model(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument(
        "--backend", help="use this backend instead of detecting one (see `featvis backends`)"
    )


def _cmd_layers(args: argparse.Namespace, console: Console) -> int:
    backend = open_model(args.model, backend=args.backend)
    print(layer_table(backend))
    return 0


def _cmd_show(args: argparse.Namespace, console: Console) -> int:
    picked = sum(x is not None and x is not False for x in (args.channel, args.strongest, args.top))
    if picked > 1:
        raise ArgumentError("Choose one of --channel, --strongest and --top.")
    pairing = args.channel is not None or args.strongest
    if args.mode is not None and not pairing:
        raise ArgumentError(
            "--mode pairs one channel with the image: add --channel K or --strongest."
        )
    backend = open_model(args.model, backend=args.backend)
    _, image = open_image(args.image)
    layer = backend.layer(args.layer)
    acts = backend.activations(image, layer)
    channels = acts.shape[1]
    info = describe(layer, acts)
    out = Path(args.output or f"{layer.alias}.png")
    if pairing:
        k = strongest_channel(acts[0], by=args.by) if args.strongest else args.channel
        if not 0 <= k < channels:
            raise ArgumentError(
                f"--channel {k} is out of range: {info} (channels count from 0; MATLAB's "
                f"channel {k} is featvis's {k - 1})."
            )
        values = acts[0, k]
        how = args.normalize or "channel"
        if how == "global":  # on the layer's range, so channels compare
            values = normalize(acts[0])[k]
        picture = pair(
            image,
            values,
            mode=args.mode or "montage",
            normalize=None if how == "global" else "global",
            cmap=args.cmap or "gray",
        )
        what = f"channel {k}{' (strongest)' if args.strongest else ''} beside the image"
    elif args.top:
        chosen = top_channels(acts[0], args.top, by=args.by)
        picture = montage(
            acts[0, chosen],
            grid=args.grid,
            normalize=args.normalize or "global",
            cmap=args.cmap or "gray",
        )
        what = f"the {len(chosen)} strongest channels ({', '.join(map(str, chosen))})"
    else:
        picture = montage(
            acts[0], grid=args.grid, normalize=args.normalize or "global", cmap=args.cmap or "gray"
        )
        what = "all channels"
    picture.save(out)
    console.say(f"{info}: {what} -> {out}", always=True)
    return 0


def _cmd_report(args: argparse.Namespace, console: Console) -> int:
    backend = open_model(args.model, backend=args.backend)
    images = [open_image(spec) for spec in args.images]
    layers = (
        [backend.layer(name) for name in args.layers]
        if args.layers
        else walkthrough_layers(backend.layers())
    )
    with console.progress(len(images) * len(layers), "figures") as bar:
        sections = layer_sections(backend, images, layers, normalize=args.normalize, progress=bar)
    out = write_report(
        args.output,
        title=f"featvis report: {args.model}",
        backend=backend,
        sections=sections,
        provenance={"model": args.model},
    )
    console.say(f"{len(images)} image(s) x {len(layers)} layer(s) -> {out}", always=True)
    return 0


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    from featvis.cli._demo import run_demo

    return run_demo(args, console)


def _cmd_backends(args: argparse.Namespace, console: Console) -> int:
    for spec in list_backends():
        print(spec.summary())
    return 0


def _cmd_models(args: argparse.Namespace, console: Console) -> int:
    for spec in list_models():
        print(f"{spec.name + ('NAME' if spec.prefix else ''):<24} {spec.description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featvis",
        description="See what a convolutional network has learned: its layers, and the "
        "activations of any layer for an image. Channels count from 0 (MATLAB counts from 1).",
    )
    parser.add_argument("--version", action="version", version=f"featvis {__version__}")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    parser.add_argument(
        "--traceback", action="store_true", help="show the full traceback of an error"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = commands.add_parser(
        "demo",
        help="the MATLAB 'visualize activations' walkthrough on a pretrained network",
        description="Reproduce the MATLAB example 'Visualize Activations of a Convolutional "
        "Neural Network' step by step: the image, the layer table, the prediction, the first "
        "conv layer's channels, one channel and the strongest channel beside the image, the "
        "same for a deep conv layer, and that layer next to its ReLU. Writes numbered PNGs and "
        "report.html into DIR. The model sees the full image; figures show it at most "
        f"{DISPLAY_SIZE} pixels on its longer side.",
    )
    demo.add_argument(
        "--backend",
        choices=["torch", "onnx"],
        default="torch",
        help="run the model in PyTorch, or export it to ONNX and run it in ONNX "
        "Runtime (default: torch)",
    )
    demo.add_argument(
        "--model",
        default="efficientnet_lite0",
        help="a model name (default: efficientnet_lite0, embedded ImageNet weights)",
    )
    demo.add_argument(
        "--image", default="skimage:astronaut", help=IMAGE_HELP + " (default: skimage:astronaut)"
    )
    demo.add_argument(
        "--out", default="featvis-demo", help="folder for the figures (default: featvis-demo)"
    )
    demo.set_defaults(run=_cmd_demo)

    layers = commands.add_parser(
        "layers",
        help="print a model's layer table (MATLAB's net.Layers)",
        description="Print every layer: index, name, alias, type, output size, parameters "
        "and a description.",
    )
    _add_model(layers)
    layers.set_defaults(run=_cmd_layers)

    show = commands.add_parser(
        "show",
        help="draw one layer's activations for an image",
        description="Draw a montage of every channel of a layer, or one channel resized and "
        "paired with the image (--channel, --strongest).",
    )
    _add_model(show)
    show.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
    show.add_argument("--layer", required=True, help="layer name or alias (conv1, features.0 ...)")
    choice = show.add_argument_group("what to draw (default: a montage of all channels)")
    choice.add_argument(
        "--channel", type=int, metavar="K", help="channel K (from 0) beside the image"
    )
    choice.add_argument(
        "--strongest", action="store_true", help="the strongest channel beside the image"
    )
    choice.add_argument(
        "--top", type=int, metavar="K", help="a montage of the K strongest channels"
    )
    show.add_argument(
        "--by",
        choices=["max", "mean", "l2"],
        default="max",
        help="how 'strongest' is measured (default: max, as MATLAB's max(max(max()))); "
        "after a clipped ReLU (ReLU6) many channels tie at the ceiling: mean or l2 tell them "
        "apart",
    )
    show.add_argument(
        "--normalize",
        choices=["global", "channel"],
        help="montage: over all channels (default) or each alone; a single "
        "channel: alone (default) or on the layer's range",
    )
    show.add_argument("--grid", type=parse_grid, metavar="RxC", help="montage grid, e.g. 8x12")
    show.add_argument(
        "--mode",
        choices=["montage", "blend", "falsecolor", "overlay"],
        help="how a channel is paired with the image (default: montage, side by side)",
    )
    show.add_argument("--cmap", choices=COLORMAPS, help="colormap (default gray; jet for overlay)")
    show.add_argument("-o", "--output", metavar="OUT.png", help="output file (default: ALIAS.png)")
    show.set_defaults(run=_cmd_show)

    report = commands.add_parser(
        "report",
        help="write one self-contained HTML report",
        description="Write an HTML file (figures inlined, opens offline) with the layer table "
        "and, for each image and layer, a montage and the strongest channel beside the image "
        f"(shown at most {DISPLAY_SIZE} pixels on its longer side; the model sees it whole).",
    )
    _add_model(report)
    report.add_argument("images", nargs="+", metavar="IMAGE", help=IMAGE_HELP)
    report.add_argument(
        "--layers",
        nargs="+",
        metavar="LAYER",
        help="layers to draw (default: the first conv, the last conv and its ReLU)",
    )
    report.add_argument(
        "--normalize",
        choices=["global", "channel"],
        default="global",
        help="montage normalization (default: global)",
    )
    report.add_argument(
        "-o",
        "--output",
        default="report.html",
        metavar="OUT.html",
        help="output file (default: report.html)",
    )
    report.set_defaults(run=_cmd_report)

    add_survey_parser(commands)

    backends = commands.add_parser("backends", help="list the installed backends")
    backends.set_defaults(run=_cmd_backends)
    models = commands.add_parser("models", help="list the models that can be named")
    models.set_defaults(run=_cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 unexpected error, 2 bad input)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    console = Console(quiet=args.quiet)
    try:
        return int(args.run(args, console))
    except FeatvisError as exc:
        if args.traceback:
            raise
        print(f"featvis: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("featvis: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `featvis layers M | head`
        return 0
    except Exception as exc:
        if args.traceback:
            raise
        print(
            f"featvis: error: {type(exc).__name__}: {' '.join(str(exc).split())} "
            "(run with --traceback for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
