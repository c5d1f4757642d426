"""``featvis layers MODEL``: the layer table, like MATLAB's ``net.Layers``."""

from __future__ import annotations

import argparse
from typing import Any

from featvis._layers import layer_table
from featvis.cli._inputs import MODEL_HELP, open_model
from featvis.cli._steps import Console

__all__ = ["add_model_arguments", "register"]


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """MODEL and ``--backend``, as every command that opens a model takes them."""
    parser.add_argument("model", metavar="MODEL", help=MODEL_HELP)
    parser.add_argument(
        "--backend", help="use this backend instead of detecting one (see `featvis backends`)"
    )


def run(args: argparse.Namespace, console: Console) -> int:
    backend = open_model(args.model, backend=args.backend)
    print(layer_table(backend))
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    parser = commands.add_parser(
        "layers",
        parents=[common],
        help="print a model's layer table (MATLAB's net.Layers)",
        description="Print every layer: index, name, alias, type, output size, parameters "
        "and a description. Other commands name a layer by its name, its alias or its index.",
    )
    add_model_arguments(parser)
    parser.set_defaults(run=run)
