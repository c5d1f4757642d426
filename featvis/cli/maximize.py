"""`featvis maximize`: the image each channel of a layer wants to see, as one grid."""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from featvis._errors import ArgumentError
from featvis._maximize import OBJECTIVES, Transforms, maximize
from featvis.cli._inputs import open_model
from featvis.cli._outputs import check_output_file, writing
from featvis.cli._steps import Console
from featvis.cli.layers import add_model_arguments

__all__ = ["register"]

#: Channels drawn when --channels is not given (a whole layer costs steps per channel).
DEFAULT_CHANNELS = 16


def _channels(text: str) -> list[int]:
    """``0,3,5`` and ``0-7`` (inclusive ranges) and mixtures: ``0-3,9``."""
    chosen: list[int] = []
    for part in text.split(","):
        low, sep, high = part.strip().partition("-")
        try:
            if sep:
                first, last = int(low), int(high)
                if last < first:
                    raise ValueError
                chosen.extend(range(first, last + 1))
            else:
                chosen.append(int(low))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"channels are numbers and ranges, such as 0,3,5 or 0-15, not {text!r}"
            ) from None
    return chosen


def run(args: argparse.Namespace, console: Console) -> int:
    out = check_output_file(args.output or "maximize.png", "-o")
    backend = open_model(args.model, backend=args.backend)
    objective = args.objective
    if objective != "class" and args.layer is None:
        raise ArgumentError(
            f"--objective {objective} needs --layer (see `featvis layers {args.model}`)."
        )
    if objective == "layer":
        channels = None
    elif args.channels is not None:
        channels = args.channels
    else:
        channels = list(range(DEFAULT_CHANNELS))
        if objective != "class":
            found = backend.activations(_blank(backend), args.layer).shape[1]
            channels = channels[:found]
    result = maximize(
        backend,
        None if objective == "class" else args.layer,
        channels,
        objective=objective,
        size=args.size,
        steps=args.steps,
        seed=args.seed,
        parameterization=args.parameterization,
        transforms=None if args.no_transforms else Transforms(),
        count=args.count,
        progress=None if not console.quiet else False,
    )
    with writing(out):
        result.picture(labels=not args.no_labels, grid=args.grid).save(out)
    what = "the scores" if result.layer is None else repr(result.layer)
    values = ", ".join(f"{v:.3g}" for v in result.values[:8]) + (" ..." if len(result) > 8 else "")
    console.say(
        f"{objective} of {what}, {len(result)} image(s), {args.steps} steps: {values} -> {out}",
        always=True,
    )
    return 0


def _blank(backend: Any) -> np.ndarray:
    size = backend.preprocess.size or (224, 224)
    return np.zeros((1, backend.preprocess.channels, *size), np.float32)


def _grid(text: str) -> tuple[int | None, int | None]:
    rows, _, cols = text.lower().partition("x")
    try:
        return (int(rows) if rows else None, int(cols) if cols else None)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"a grid is ROWSxCOLS (4x8, or 4x or x8), not {text!r}"
        ) from None


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    objectives = "; ".join(f"{name}: {what}" for name, what in OBJECTIVES.items())
    parser = commands.add_parser(
        "maximize",
        parents=[common],
        help="the image each channel of a layer wants to see (feature visualization)",
        description="Optimize one image per channel of a layer until the channel fires as "
        "strongly as it can (Lucid's feature visualization, MATLAB's deepDreamImage), and "
        "tile them as one grid, each labelled with its channel. Needs gradients (PyTorch); "
        "for an ONNX model use `featvis survey`, which finds each channel's strongest "
        "dataset images.",
        epilog="examples:\n"
        "  featvis maximize efficientnet_lite0 --layer _blocks.6._expand_conv -o layer.png\n"
        "  featvis maximize efficientnet_lite0 --layer conv19 --channels 0-7 --steps 128\n"
        "  featvis maximize efficientnet_lite0 --objective class --channels 281,504",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("--layer", metavar="L", help="the layer, by name, alias or index")
    parser.add_argument(
        "--channels",
        type=_channels,
        metavar="C",
        help=f"channels (classes with --objective class), such as 0,3,5 or 0-15 "
        f"(default: the first {DEFAULT_CHANNELS})",
    )
    parser.add_argument(
        "--objective",
        default="channel",
        choices=list(OBJECTIVES),
        help=f"what each image maximizes (default channel): {objectives}",
    )
    parser.add_argument("--steps", type=int, default=256, metavar="N", help="Adam steps (256)")
    parser.add_argument(
        "--size", type=int, metavar="PX", help="image size in pixels (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the start and transforms (0)")
    parser.add_argument(
        "--count",
        type=int,
        metavar="N",
        help="images per channel (default 1; 4 with --objective diversity)",
    )
    parser.add_argument(
        "--parameterization",
        default="fourier",
        choices=["fourier", "pixels"],
        help="optimize a 1/f Fourier spectrum (default) or plain pixels",
    )
    parser.add_argument(
        "--no-transforms",
        action="store_true",
        help="no random jitter, scale and rotation at each step (noisier images)",
    )
    parser.add_argument(
        "--grid", type=_grid, metavar="RxC", help="grid, e.g. 4x8 (default: near square)"
    )
    parser.add_argument(
        "--no-labels", action="store_true", help="no channel numbers under the images"
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT.png", help="output file (default: maximize.png)"
    )
    parser.set_defaults(run=run)
