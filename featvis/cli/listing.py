"""``featvis backends`` and ``featvis models``: what is installed."""

from __future__ import annotations

import argparse
from typing import Any

from featvis.cli._steps import Console
from featvis.plugins import list_backends, list_models

__all__ = ["register"]


def _backends(args: argparse.Namespace, console: Console) -> int:
    for spec in list_backends():
        print(spec.summary())
    return 0


def _models(args: argparse.Namespace, console: Console) -> int:
    for spec in list_models():
        print(f"{spec.name + ('NAME' if spec.prefix else ''):<24} {spec.description}")
    return 0


def register(commands: Any, common: argparse.ArgumentParser) -> None:
    backends = commands.add_parser("backends", parents=[common], help="list the installed backends")
    backends.set_defaults(run=_backends)
    models = commands.add_parser(
        "models", parents=[common], help="list the models that can be named"
    )
    models.set_defaults(run=_models)
