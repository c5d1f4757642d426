"""Run docs/tutorial.md's code blocks in order, as one script, and write its figures.

The blocks run in an empty folder exactly as a reader pastes them, so the page cannot rely on
anything this script prepares.

    python docs/make_figures.py            # figures into docs/figures/
    python docs/make_figures.py OUT_DIR    # figures into OUT_DIR/figures/ (the tests do this)

A ```text block right after a ```python block is the output that code must print; a mismatch
is an error, so the tutorial cannot drift from what featvis does.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
from pathlib import Path

TUTORIAL = Path(__file__).with_name("tutorial.md")
_BLOCK = re.compile(r"```(python|text)\n(.*?)```", re.S)
_FIGURE = re.compile(r"!\[[^\]]*\]\((figures/[^)]+)\)")


def blocks(text: str) -> list[tuple[str, str | None]]:
    """(code, expected output or None) for each python block, in order."""
    found = [(m.group(1), m.group(2), m.start(), m.end()) for m in _BLOCK.finditer(text)]
    result: list[tuple[str, str | None]] = []
    for i, (kind, body, _, end) in enumerate(found):
        if kind != "python":
            continue
        expected = None
        if i + 1 < len(found) and found[i + 1][0] == "text":
            between = text[end : found[i + 1][2]]
            if "```" not in between and not between.strip().startswith("#"):
                expected = found[i + 1][1]
        result.append((body, expected))
    return result


def _clean(output: str) -> str:
    return "\n".join(line.rstrip() for line in output.strip().splitlines())


def run(out_dir: Path) -> list[Path]:
    """Run the tutorial with ``out_dir`` as working folder; return the figures it names."""
    text = TUTORIAL.read_text(encoding="utf-8")
    out_dir.mkdir(parents=True, exist_ok=True)  # figures/ itself: the tutorial makes it
    namespace: dict[str, object] = {"__name__": "__tutorial__"}
    previous = Path.cwd()
    os.chdir(out_dir)
    try:
        for number, (code, expected) in enumerate(blocks(text), start=1):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"tutorial.md block {number}", "exec"), namespace)
            if expected is not None and _clean(printed.getvalue()) != _clean(expected):
                raise AssertionError(
                    f"tutorial.md block {number} printed:\n{printed.getvalue()}\n"
                    f"but the page shows:\n{expected}"
                )
    finally:
        os.chdir(previous)
    figures = [out_dir / name for name in _FIGURE.findall(text)]
    missing = [str(path) for path in figures if not path.exists()]
    if missing:
        raise AssertionError(f"tutorial.md shows figures its code did not write: {missing}")
    return figures


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else TUTORIAL.parent
    for figure in run(target):
        print(figure)
