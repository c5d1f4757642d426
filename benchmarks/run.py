"""Run the benchmarks and print a table of ratios.

    python benchmarks/run.py            # every bench_*.py
    python benchmarks/run.py render     # only bench_render.py
    python benchmarks/run.py --quick    # fewer sizes and rounds, for a smoke test

Each row's ratio compares a featvis operation with a reference measured in the same run
(see harness.py); the target column is the bound the issue set. Exit status 1 if a row with a
target is over it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from harness import Row, format_rows  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("only", nargs="*", help="benchmark modules to run (bench_NAME.py)")
    parser.add_argument("--quick", action="store_true", help="fewer cases and rounds")
    args = parser.parse_args(argv)
    names = args.only or sorted(p.stem[len("bench_") :] for p in HERE.glob("bench_*.py"))
    print(
        f"# featvis benchmarks on {platform.machine()}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}\n"
    )
    rows: list[Row] = []
    for name in names:
        module = importlib.import_module(f"bench_{name}")
        for row in module.rows(args.quick):
            rows.append(row)
            print(
                f"  {row.group}: {row.case} {row.ratio:.2f}x {row.verdict}",
                file=sys.stderr,
                flush=True,
            )
    print(format_rows(rows))
    return 1 if any(row.verdict == "OVER" for row in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
