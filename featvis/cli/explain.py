"""`featvis explain`: what in an image makes the model score a class, as a heat map."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from featvis._capabilities import Scorer
from featvis._errors import ArgumentError
from featvis._explain import explain
from featvis._figures import for_display
from featvis._predict import probabilities
from featvis.cli._inputs import IMAGE_HELP, add_max_size, open_image, open_model
from featvis.cli._outputs import check_output_file, writing
from featvis.cli._steps import Console
from featvis.cli.layers import add_model_arguments

__all__ = ["register"]

_BUILTIN = (
    "gradcam, gradcampp, xgradcam, layercam, hirescam (need gradients: PyTorch); cam, "
    "eigencam, scorecam, ablationcam, occlusion, rise (any backend, ONNX too)"
)


def _class(text: str) -> int | str:
    """``--target 281`` is a class index, ``--target "Egyptian cat"`` a class name."""
    return int(text) if text.strip().isdigit() else text


def _option(text: str) -> tuple[str, Any]:
    """``window=32`` -> ("window", 32); ``window=16,32`` -> ("window", (16, 32))."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"options are KEY=VALUE (window=32), not {text!r}")

    def number(part: str) -> Any:
        part = part.strip()
        for kind in (int, float):
            try:
                return kind(part)
            except ValueError:
                pass
        return part

    parts = value.split(",")
    return key.strip(), number(parts[0]) if len(parts) == 1 else tuple(map(number, parts))


def run(args: argparse.Namespace, console: Console) -> int:
    if args.output is not None:
        check_output_file(args.output, "-o")
    backend = open_model(args.model, backend=args.backend)
    label, image = open_image(args.image)
    target: Any = None if args.target is None else _class(args.target)
    if args.vs is not None:
        if target is None:  # the prediction, rather than --vs
            if not isinstance(backend, Scorer):
                raise ArgumentError("--vs needs --target with this backend.")
            target = int(probabilities(backend, image)[0].argmax())
        target = (target, _class(args.vs))
    options = dict(args.option or [])
    e = explain(
        backend,
        image,
        method=args.method,
        layer=args.layer[0] if args.layer and len(args.layer) == 1 else args.layer,
        target=target,
        noise=args.noise,
        samples=args.samples,
        seed=args.seed,
        progress=None if not console.quiet else False,
        **options,
    )
    out = Path(args.output) if args.output else check_output_file(f"{e.method}.png", "-o")
    with writing(out):
        e.figure([for_display(image, args.max_size)]).save(out)
    console.say(f"{label}: {e.describe(0)} -> {out}", always=True)
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "explain",
        parents=[common],
        help="a class activation map: what in the image makes the model score a class",
        description="Explain the model's score of a class for an image with a class "
        "activation map (Grad-CAM and friends, Score-CAM, occlusion...), drawn over the image "
        "beside it. Gradient methods need PyTorch; the gradient-free ones run on ONNX models "
        "too. By default the predicted class is explained, at the last layer whose output "
        "still has a spatial grid.",
        epilog="examples:\n"
        "  featvis explain efficientnet_lite0 cat.jpg -o cat.png\n"
        "  featvis explain efficientnet_lite0 cat.jpg --target 'Egyptian cat' --vs tabby\n"
        "  featvis explain model.onnx cat.jpg --method scorecam\n"
        "  featvis explain model.onnx cat.jpg --method occlusion --option window=32",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("image", metavar="IMAGE", help=IMAGE_HELP)
    parser.add_argument(
        "--method", default="gradcam", metavar="M", help=f"the method (default gradcam): {_BUILTIN}"
    )
    parser.add_argument(
        "--target",
        metavar="T",
        help="the class to explain, by index or name (default: the predicted class)",
    )
    parser.add_argument(
        "--vs",
        metavar="T2",
        help="explain --target rather than T2: the difference of their scores (fine-grained "
        "questions: 'Egyptian cat' --vs tabby)",
    )
    parser.add_argument(
        "--layer",
        metavar="L",
        action="append",
        help="the layer (default: the last with a spatial grid); repeated, the maps of those "
        "layers fused (each scaled to [0, 1], averaged: pytorch-grad-cam's target_layers)",
    )
    parser.add_argument(
        "--noise",
        type=float,
        default=0.0,
        metavar="S",
        help="average over noisy copies of the image (SmoothGrad-style), noise S times the "
        "image's range, e.g. 0.1 (default 0: off)",
    )
    parser.add_argument(
        "--samples", type=int, default=8, metavar="N", help="noisy copies with --noise (8)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and of RISE (0)")
    parser.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="a method option, repeatable: window=32, stride=16, refine=0.25 (occlusion); "
        "masks=4000 (rise); channels=256 (scorecam)",
    )
    parser.add_argument(
        "-o", "--output", metavar="OUT.png", help="output file (default: METHOD.png)"
    )
    add_max_size(parser)
    parser.set_defaults(run=run)
