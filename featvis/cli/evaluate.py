"""`featvis evaluate`: how faithful, stable and model-dependent maps are, as one page."""

from __future__ import annotations

import argparse
from typing import Any

from featvis._evaluate import METRICS, evaluate
from featvis._report import Report
from featvis.cli._inputs import IMAGE_HELP, open_image, open_model
from featvis.cli._outputs import check_output_file, writing
from featvis.cli._steps import Console
from featvis.cli.layers import add_model_arguments
from featvis.cli.report import command_line

__all__ = ["register", "run"]


def _names(text: str) -> list[str]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise argparse.ArgumentTypeError("give at least one name, comma-separated")
    return names


def _hint(extra: list[str]) -> str | None:
    """For ``--methods gradcam scorecam``: the names after the first were taken for images."""
    from featvis._explain import list_methods

    names = {m.name for m in list_methods()} | set(METRICS)
    if not any(word.strip(",") in names for word in extra):
        return None
    return (
        "--methods and --metrics take names separated by commas, with no spaces: "
        "--methods gradcam,scorecam --metrics deletion,insertion"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    out = check_output_file(args.output, "-o", (".html", ".htm"))
    backend = open_model(args.model, backend=args.backend)
    labelled = [open_image(spec) for spec in args.image]
    ev = evaluate(
        backend,
        [image for _, image in labelled],
        args.methods,
        metrics=args.metrics,
        steps=args.steps,
        layer=args.layer,
        seed=args.seed,
        progress=None if not console.quiet else False,
    )
    section = ev.section(f"Evaluation on {len(labelled)} image(s)", maps=args.maps)
    labels = ", ".join(label for label, _ in labelled)
    page = Report(
        f"featvis evaluate: {args.model}",
        backend,
        [section],
        {"model": args.model, "images": labels, "command": command_line(args)},
    )
    with writing(out):
        page.save(out)
    console.say(str(ev))
    console.say(f"Evaluated {', '.join(ev.methods)} on {len(ev)} image(s) -> {out}", always=True)
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "evaluate",
        parents=[common],
        help="score explanation methods: deletion, insertion, ROAD, sanity, stability...",
        description="Score how faithful, stable and model-dependent each method's maps are on "
        "the images, and write a self-contained HTML page: the table (mean ± standard error "
        "over the images), the deletion and insertion curves, and each method's maps. The "
        "score is the predicted class's probability. Metrics: "
        + "; ".join(
            f"{k} ({'higher' if up else 'lower'} is better): {what}"
            for k, (up, what) in METRICS.items()
        )
        + ". See docs/evaluation.md for each protocol.",
        epilog="examples:\n"
        "  featvis evaluate efficientnet_lite0 cat.jpg dog.jpg -o eval.html\n"
        "  featvis evaluate efficientnet_lite0 skimage:chelsea --methods gradcam,scorecam "
        "--metrics deletion,insertion,road\n"
        "  featvis evaluate model.onnx cat.jpg --methods scorecam,eigencam,occlusion",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(parser)
    parser.add_argument("image", metavar="IMAGE", nargs="+", help=IMAGE_HELP)
    parser.add_argument(
        "--methods",
        type=_names,
        default=["gradcam"],
        metavar="M1,M2",
        help="methods to compare, comma-separated (default gradcam; see featvis explain --help)",
    )
    parser.add_argument(
        "--metrics",
        type=_names,
        default=None,
        metavar="K1,K2",
        help=f"metrics, comma-separated (default: all the backend supports): {', '.join(METRICS)}",
    )
    parser.add_argument(
        "--steps", type=int, default=20, metavar="K", help="deletion/insertion steps (20)"
    )
    parser.add_argument(
        "--layer", metavar="L", help="the CAM methods' layer (default: the last with a grid)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (0)")
    parser.add_argument(
        "--maps", type=int, default=8, metavar="N", help="images whose maps the page shows (8)"
    )
    parser.add_argument(
        "-o", "--output", default="eval.html", metavar="OUT.html", help="the page (eval.html)"
    )
    parser.set_defaults(run=run, hint_unrecognized=_hint)
