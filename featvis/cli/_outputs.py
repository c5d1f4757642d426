"""Where the commands write: checked before any work, so that a bad output path is a one-line
error in milliseconds, not a traceback after the model has run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from featvis._errors import ArgumentError

__all__ = ["PICTURE_SUFFIXES", "check_output_file", "check_output_folder", "writing"]

#: What ``featvis show -o`` writes (Pillow picks the format from the suffix).
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".bmp")


def _shown(path: Path) -> str:
    return repr(str(path))


def check_output_file(path: str | Path, option: str, suffixes: tuple[str, ...] = ()) -> Path:
    """``path`` as a file the command may write: its folder exists, it is not a folder, and
    (when ``suffixes`` are given) its suffix is one of them, else a picture format Pillow
    writes."""
    named_folder = str(path).endswith(("/", os.sep))  # "-o out/": a folder, even if missing
    path = Path(path)
    if path.is_dir() or named_folder:
        example = path / ("figure" + (suffixes[0] if suffixes else ".png"))
        raise ArgumentError(
            f"{option} {_shown(path)} is a folder; give a file name, e.g. {example}."
        )
    folder = path.parent
    if not folder.is_dir():
        what = "is a file, not a folder" if folder.exists() else "does not exist"
        raise ArgumentError(
            f"Cannot write {option} {_shown(path)}: the folder {_shown(folder)} {what}"
            + (f" (create it first: mkdir -p {folder})." if what == "does not exist" else ".")
        )
    suffix = path.suffix.lower()
    allowed = suffixes or PICTURE_SUFFIXES
    if suffix not in allowed:
        raise ArgumentError(
            f"{option} {_shown(path)} must end in "
            + (", ".join(allowed[:-1]) + " or " + allowed[-1] if len(allowed) > 1 else allowed[0])
            + (" (.png for maps and montages, .jpg for photos)." if not suffixes else ".")
        )
    return path


def check_output_folder(path: str | Path, option: str) -> Path:
    """``path`` as a folder the command may fill (it is created, with its parents, if needed)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ArgumentError(
            f"{option} {_shown(path)} is a file; the command writes a folder of figures there: "
            "give a folder name (it is created if needed)."
        )
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentError(
                    f"Cannot create {option} {_shown(path)}: {_shown(parent)} is a file."
                )
            break
    return path


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failure to write ``path`` (permissions, a full disk) into one-line error."""
    try:
        yield
    except OSError as exc:
        raise ArgumentError(f"Cannot write {str(path)!r}: {exc.strerror or exc}.") from None
