"""Print the zoo table of docs/onnx.md: each timm model of tests/featvis_onnx/test_zoo.py
against its own ONNX export.

    python docs/make_zoo_table.py            # every model (a few minutes: the exports)
    python docs/make_zoo_table.py dla46_c    # some of them
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import sys
import tempfile
import warnings
from pathlib import Path

import featvis
from featvis_torch import TorchBackend

ROOT = Path(__file__).resolve().parent.parent


def _zoo() -> object:
    spec = importlib.util.spec_from_file_location(
        "featvis_zoo", ROOT / "tests" / "featvis_onnx" / "test_zoo.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(names: list[str]) -> None:
    zoo = _zoo()
    print(
        "| model | input | PyTorch layers | ONNX layers | pairs | failed | worst relative error |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory() as folder:
        for name in names or list(zoo.ZOO):  # type: ignore[attr-defined]
            model, size = zoo.build(name)  # type: ignore[attr-defined]
            backend = TorchBackend(model, preprocess=featvis.Preprocess(size=(size, size)))
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                path = backend.to_onnx(Path(folder) / f"{name}.onnx")
            row = zoo.zoo_row(name, backend, featvis.load(path), size)  # type: ignore[attr-defined]
            print(
                f"| {name} | {size}x{size} | {row['torch layers']} | {row['onnx layers']} | "
                f"{row['rows']} | {row['failed']} | {row['worst']:.1e} |",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1:])
