"""``featvis report MODEL IMAGE...``: one self-contained HTML file, built by
:func:`featvis.report`."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from featvis._capabilities import Scorer
from featvis._errors import ArgumentError, ImageError
from featvis._explain._registry import get_method
from featvis._explain._section import default_method
from featvis._figures import MAX_SIZE
from featvis._report import default_layers, report
from featvis.cli._inputs import (
    IMAGE_HELP,
    add_max_size,
    layer_list,
    open_image,
    open_model,
)
from featvis.cli._outputs import check_output_file, writing
from featvis.cli._steps import Console
from featvis.cli.layers import add_model_arguments
from featvis.plugins import list_models

__all__ = ["command_line", "register"]


def command_line(args: argparse.Namespace) -> str:
    """The command as typed (for the report's provenance)."""
    return shlex.join(["featvis", *args.argv])


def _open_images(specs: list[str]) -> dict[str, Any]:
    """The images by label; an IMAGE that is a model name says the arguments are out of order."""
    images = {}
    models = {spec.name for spec in list_models()}
    for spec in specs:
        try:
            label, image = open_image(spec)
        except ImageError as exc:
            if spec in models or (":" in spec and not spec.startswith("skimage:")):
                raise ImageError(
                    f"{exc} {spec!r} looks like a model: MODEL comes first, then the images "
                    "(and --layers takes one comma-separated list: --layers conv1,relu5)."
                ) from None
            raise
        images[label] = image
    return images


def run(args: argparse.Namespace, console: Console) -> int:
    out = check_output_file(args.output, "-o", (".html", ".htm"))
    images = _open_images(args.images)  # before the model: a bad image fails fast
    backend = open_model(args.model, backend=args.backend)
    layers = (
        [backend.layer(key) for key in args.layers]
        if args.layers is not None
        else default_layers(backend.layers())
    )
    method = _explain_method(args, backend)
    with console.progress(len(images) * len(layers), "figures") as bar:
        page = report(
            backend,
            images,
            layers,
            sections=[] if method is None else [f"explain:{method}"],
            title=f"featvis report: {args.model}",
            scope=args.normalize,
            max_size=args.max_size,
            provenance={"model": args.model, "command": command_line(args)},
            progress=None if bar is None else bar.update,
        )
    with writing(out):
        page.save(out)
    console.say(f"{len(images)} image(s) x {len(layers)} layer(s) -> {out}", always=True)
    return 0


def _explain_method(args: argparse.Namespace, backend: Any) -> str | None:
    """The method of the "Explain the prediction" section, checked before any work; None for
    --no-explain, or when the backend gives no class scores (there is no prediction to
    explain; --explain M insists, and the error says what the backend lacks)."""
    if args.no_explain:
        if args.explain is not None:
            raise ArgumentError("--explain and --no-explain contradict each other: pick one.")
        return None
    if args.explain is not None:
        return get_method(args.explain).name
    return default_method(backend) if isinstance(backend, Scorer) else None


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "report",
        parents=[common],
        help="write one self-contained HTML report",
        description="Write an HTML file (figures inlined, opens offline) with the layer table "
        "and, for each image and layer, a montage and the strongest channel beside the image "
        f"(shown at most {MAX_SIZE} pixels on its longer side, --max-size; the model sees it "
        "whole), then the explanation of each image's predicted class (Grad-CAM with "
        "PyTorch, a gradient-free method on ONNX: --explain, --no-explain). Python: "
        "featvis.report(backend, images, layers, sections=['explain']).save(path).",
    )
    add_model_arguments(parser)
    parser.add_argument("images", nargs="+", metavar="IMAGE", help=IMAGE_HELP)
    parser.add_argument(
        "--layers",
        type=layer_list,
        metavar="L1,L2",
        help="layers to draw, separated by commas: names, aliases or indices (default: the "
        "first conv, the last conv and its ReLU)",
    )
    parser.add_argument(
        "--normalize",
        choices=["global", "channel"],
        default="global",
        help="montage normalization (default: global)",
    )
    parser.add_argument(
        "--explain",
        metavar="M",
        help="explain each image's predicted class with method M (default: gradcam on a "
        "backend with gradients, ablationcam or scorecam on the others; see featvis explain)",
    )
    parser.add_argument(
        "--no-explain",
        action="store_true",
        help="leave out the 'Explain the prediction' section",
    )
    add_max_size(parser)
    parser.add_argument(
        "-o",
        "--output",
        default="report.html",
        metavar="OUT.html",
        help="output file (default: report.html)",
    )
    parser.set_defaults(run=run)
