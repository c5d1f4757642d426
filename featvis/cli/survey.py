"""``featvis survey``: the atlas of a layer over a folder of images, in one process or on Dask."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from featvis._errors import ArgumentError, MissingDependencyError
from featvis._stream import as_collection
from featvis.cli._inputs import open_model, positive_int
from featvis.cli._steps import Console
from featvis.cli.layers import add_model_arguments

__all__ = ["register"]


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    survey = commands.add_parser(
        "survey",
        parents=[common],
        help="what each channel of a layer responds to across a folder of images (an atlas)",
        description="Survey every image under FOLDER (recursively): for each channel of each "
        "layer, the K images that excite it most, cut to the patch its peak sees, and its "
        "statistics (mean, max, fraction active, never-active channels). Writes an atlas into "
        "OUT: an HTML page per layer, the numbers as JSON lines, and state.npz, which "
        "--resume continues from after an interruption.",
    )
    add_model_arguments(survey)
    survey.add_argument(
        "folder", metavar="FOLDER", help="a folder of images (searched recursively)"
    )
    survey.add_argument(
        "--layer",
        action="append",
        required=True,
        metavar="L",
        help="layer name, alias or index in the layer table; repeat for several layers",
    )
    survey.add_argument(
        "--k", type=positive_int, default=9, help="images kept per channel (default: 9)"
    )
    survey.add_argument(
        "--by",
        choices=["max", "mean"],
        default="max",
        help="rank a channel's images by the peak of its map or by its mean (default: max)",
    )
    survey.add_argument(
        "--labels",
        choices=["folder"],
        help="folder: each image's label is the name of its folder, and the atlas shows which "
        "classes excite each channel most",
    )
    survey.add_argument(
        "--batch-size", type=positive_int, default=32, metavar="N", help="images per forward pass"
    )
    survey.add_argument(
        "--threads",
        type=positive_int,
        metavar="N",
        help="threads decoding images (default: up to 4)",
    )
    survey.add_argument(
        "--skip-errors",
        action="store_true",
        help="skip (and count) images that cannot be read, instead of stopping at the first",
    )
    where = survey.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=positive_int,
        metavar="N",
        help="run on a local Dask cluster of N worker processes (needs featvis[dask])",
    )
    where.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on the Dask cluster whose scheduler is at ADDRESS (tcp://host:8786); every "
        "worker must see FOLDER at the same path and be able to open MODEL",
    )
    survey.add_argument(
        "--resume",
        action="store_true",
        help="continue the interrupted survey saved in OUT/state.npz (one process only)",
    )
    survey.add_argument("-o", "--output", required=True, metavar="OUT", help="folder for the atlas")
    survey.set_defaults(run=run)


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Any]:
    if args.workers is None and args.scheduler is None:
        yield None
        return
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MissingDependencyError(
            "--workers and --scheduler need Dask: pip install 'featvis[dask]'"
        ) from None
    if args.scheduler is not None:
        with Client(args.scheduler) as client:
            yield client
        return
    if args.workers < 1:
        raise ArgumentError(f"--workers must be at least 1, got {args.workers}.")
    with (
        LocalCluster(
            n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        yield client


def run(args: argparse.Namespace, console: Console) -> int:
    from featvis._survey import survey

    folder = Path(args.folder)
    if not folder.is_dir():
        raise ArgumentError(f"No such folder: {args.folder!r}.")
    out = Path(args.output)
    state = out / "state.npz"
    distributed = args.workers is not None or args.scheduler is not None
    if args.resume and distributed:
        raise ArgumentError("--resume is for one process; Dask retries lost work by itself.")
    if args.resume and not state.is_file():
        raise ArgumentError(f"Nothing to resume: {state} does not exist.")
    collection = as_collection(folder)  # says now if the folder holds no images
    backend = open_model(args.model, backend=args.backend)
    layers = [backend.layer(name) for name in args.layer]  # unknown layers fail before work
    console.say(f"surveying {collection.length} images of {folder} for {len(layers)} layer(s)")
    options: dict[str, Any] = {
        "k": args.k,
        "by": args.by,
        "labels": args.labels,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "on_error": "skip" if args.skip_errors else "raise",
        "progress": False if console.quiet else None,
    }
    with _client(args) as client:
        if client is not None:
            result = survey(args.model, collection, args.layer, client=client, **options)
        else:
            if not args.resume and state.is_file():
                state.unlink()  # a new survey: the old state must not be resumed by accident
            result = survey(
                backend,
                collection,
                args.layer,
                checkpoint=state,
                resume=state if args.resume else None,
                **options,
            )
    index = result.save(out)
    skipped = f" ({result.skipped} skipped)" if result.skipped else ""
    for name in args.layer:
        stats = result.stats(name)
        console.say(f"{name}: {len(stats.mean)} channels, {len(stats.dead)} never active")
        tied = result.tied(name)
        if tied:
            console.say(
                f"  {len(tied)} channels have all {args.k} images tied at one value (a clipped "
                "activation such as ReLU6): survey the layer before it, or use --by mean"
            )
    console.say(f"{result.images} images{skipped} -> {index}", always=True)
    return 0
