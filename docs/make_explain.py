"""Run docs/explain.md's code blocks in order, as one script, and write its figures.

    python docs/make_explain.py             # figures into docs/figures/
    python docs/make_explain.py OUT_DIR     # into OUT_DIR/figures/ (the tests do this)
    python docs/make_explain.py --measure   # the faster options' table (minutes)

As docs/make_figures.py does for the tutorial: a ```text block right after a ```python block
is what that code must print.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path

PAGE = Path(__file__).with_name("explain.md")
_FIGURE = re.compile(r"!\[[^\]]*\]\((figures/[^)]+)\)")


def _tutorial_tools():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("make_figures", PAGE.with_name("make_figures.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(out_dir: Path) -> list[Path]:
    """Run the page with ``out_dir`` as working folder; return the figures it shows."""
    tools = _tutorial_tools()
    text = PAGE.read_text(encoding="utf-8")
    (out_dir / "figures").mkdir(parents=True, exist_ok=True)
    namespace: dict[str, object] = {"__name__": "__explain__"}
    previous = Path.cwd()
    os.chdir(out_dir)
    try:
        for number, (code, expected) in enumerate(tools.blocks(text), start=1):
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, f"explain.md block {number}", "exec"), namespace)
            if expected is not None and tools._clean(printed.getvalue()) != tools._clean(expected):
                raise AssertionError(
                    f"explain.md block {number} printed:\n{printed.getvalue()}\n"
                    f"but the page shows:\n{expected}"
                )
    finally:
        os.chdir(previous)
    figures = [out_dir / name for name in _FIGURE.findall(text)]
    missing = [str(path) for path in figures if not path.exists()]
    if missing:
        raise AssertionError(f"explain.md shows figures its code did not write: {missing}")
    return figures


# -- the faster options' table -----------------------------------------------------------------


def _deletion_insertion(backend, x, saliency, cls, steps=20):  # type: ignore[no-untyped-def]
    """Deletion and insertion areas (see the protocol under the table in explain.md)."""
    import numpy as np
    from skimage.filters import gaussian

    from featvis._predict import softmax

    h, w = saliency.shape
    order = np.argsort(-saliency.ravel(), kind="stable")
    per = math.ceil(h * w / steps)
    blurred = np.stack([gaussian(c, sigma=10, preserve_range=True) for c in x[0]])[None]
    deleted, inserted = [], []
    for k in range(steps + 1):
        mask = np.zeros(h * w, np.float32)
        mask[order[: k * per]] = 1.0
        mask = mask.reshape(1, 1, h, w)
        deleted.append(x * (1 - mask))
        inserted.append(blurred * (1 - mask) + x * mask)
    batch = np.concatenate(deleted + inserted).astype(np.float32)
    probs = softmax(backend.scores(batch))[:, cls]
    return (np.trapezoid(probs[: steps + 1], dx=1 / steps),
            np.trapezoid(probs[steps + 1 :], dx=1 / steps))  # fmt: skip


def measure() -> str:
    """The faster options against the exact methods on 8 samples, as a Markdown table."""
    import tempfile

    import numpy as np
    from skimage import data

    import featvis

    names = ["chelsea", "coffee", "astronaut", "rocket", "immunohistochemistry",
             "hubble_deep_field", "retina", "colorwheel"]  # fmt: skip
    torch_backend = featvis.load_model("efficientnet_lite0")
    # kept until the end: the sessions read the weights from lite0.onnx.data when they start
    folder = tempfile.mkdtemp(prefix="featvis-measure-")
    with contextlib.redirect_stdout(io.StringIO()):
        backend = featvis.load(torch_backend.to_onnx(Path(folder) / "lite0.onnx"))
    images = featvis.prepare_images([getattr(data, n)() for n in names], backend.preprocess)
    variants = [
        ("Score-CAM, all varying channels", "scorecam", {}),
        ("Score-CAM, channels=256", "scorecam", {"channels": 256}),
        ("Score-CAM, channels=64", "scorecam", {"channels": 64}),
        ("occlusion 14x14", "occlusion", {}),
        ("occlusion 14x14, refine=0.25", "occlusion", {"refine": 0.25}),
    ]
    results = {}
    for label, method, options in variants:
        maps, seconds, dels, ins = [], 0.0, [], []
        for i in range(len(images)):
            x = images[i : i + 1]
            start = time.perf_counter()
            e = featvis.explain(backend, x, method=method, **options)
            seconds += time.perf_counter() - start
            maps.append(e.maps[0])
            d, s = _deletion_insertion(backend, x, e.maps[0], int(e.targets[0]))
            dels.append(d)
            ins.append(s)
        results[label] = (method, maps, seconds, float(np.mean(dels)), float(np.mean(ins)))
        print(f"  {label}: {seconds:.1f} s", file=sys.stderr)
    lines = ["| variant | time (ratio to exact) | map error 1 - r | deletion (lower better) |"
             " insertion (higher better) |", "| --- | ---: | ---: | ---: | ---: |"]  # fmt: skip
    exact = {"scorecam": results[variants[0][0]], "occlusion": results[variants[3][0]]}
    for label, (method, maps, seconds, d, s) in results.items():
        reference = exact[method]
        r = np.mean([np.corrcoef(a.ravel(), b.ravel())[0, 1] for a, b in zip(maps, reference[1])])
        lines.append(
            f"| {label} | {seconds / len(images):.1f} s ({seconds / reference[2]:.2f}x) | "
            f"{1 - r:.3f} | {d:.3f} | {s:.3f} |"
        )
    shutil.rmtree(folder, ignore_errors=True)
    return "\n".join(lines)


if __name__ == "__main__":
    if "--measure" in sys.argv:
        print(measure())
    else:
        target = Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE.parent
        for figure in run(target):
            print(figure)
