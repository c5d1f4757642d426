"""The ``featvis`` command: layer tables, activation figures, HTML reports and the demo.

Each command is a module of this package with a ``register(commands, common)`` function that
adds its subparser (with ``parents=[common]``, so the global options work after it too) and
sets ``run(args, console) -> int`` as its default; :data:`COMMANDS` lists them.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from featvis._errors import FeatvisError
from featvis._version import __version__
from featvis.cli import demo, evaluate, explain, layers, listing, maximize, report, show, survey
from featvis.cli._steps import Console

__all__ = ["COMMANDS", "build_parser", "main"]

#: The command modules, in the order ``featvis --help`` lists them.
COMMANDS = [demo, layers, show, explain, maximize, evaluate, report, survey, listing]


def _global_options(parser: argparse.ArgumentParser, *, default: object) -> None:
    parser.add_argument(
        "-q", "--quiet", action="store_true", default=default, help="print only results and errors"
    )
    parser.add_argument(
        "--traceback",
        action="store_true",
        default=default,
        help="show the full traceback of an error",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="featvis",
        description="See what a convolutional network has learned: its layers, and the "
        "activations of any layer for an image. Channels count from 0 (MATLAB counts from 1).",
    )
    parser.add_argument("--version", action="version", version=f"featvis {__version__}")
    _global_options(parser, default=False)
    # The same options after the command: SUPPRESS leaves the value given before it alone.
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, default=argparse.SUPPRESS)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.register(commands, common)
    return parser


def _one_line(text: str) -> str:
    return " ".join(text.split())


#: OpenMP's wait policy for the command's process, unless the user set one. With the default,
#: PyTorch's OpenMP workers spin at every barrier, and beside a busy process one forward pass
#: of EfficientNet-Lite0 measured 25-60 times slower (seconds instead of 0.1 s: the "slow first
#: calls" that came and went with other jobs on the machine). PASSIVE workers sleep instead;
#: see docs/performance.md.
OMP_WAIT_POLICY = "PASSIVE"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 unexpected error, 2 bad input)."""
    # Read by OpenMP when PyTorch is first imported, which the commands do later, if at all.
    os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # argparse's own message, with the command's hint of what was meant
        hint = getattr(args, "hint_unrecognized", None)
        said = hint(extra) if hint is not None else None
        parser.error(f"unrecognized arguments: {' '.join(extra)}" + (f" ({said})" if said else ""))
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for the reports' provenance
    console = Console(quiet=args.quiet)
    try:
        return int(args.run(args, console))
    except FeatvisError as exc:
        if args.traceback:
            raise
        print(f"featvis: error: {_one_line(str(exc))}", file=sys.stderr)
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
            f"featvis: error: {type(exc).__name__}: {_one_line(str(exc))} "
            "(run with --traceback for details)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
