"""Thread pools quiet and beside a busy process: what featvis chose for them, against the defaults.

Each row runs in child processes (a pool's policy is fixed when it starts), once with the
machine as it is ("quiet": this benchmark starts nothing else) and once beside a process that
keeps one core busy, as another user's job would. Rows:

- ONNX: ``activations(x, "conv1")`` of AlexNet at batch 1 against a default ONNX Runtime session
  on the same sub-model, each in its own child, alternately, three times (the issue's target:
  1.15x, in every run and beside a busy process). featvis's sessions spin 20 us at most and
  stop spinning after a run (``featvis_onnx._session.thread_options``).
- PyTorch: EfficientNet-Lite0 ``activations`` of its last ReLU at batch 1 with
  ``OMP_WAIT_POLICY=PASSIVE`` (what the featvis command sets) against OpenMP's default policy,
  whose workers spin at every barrier; each in its own child, alternately.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness import Row

HERE = Path(__file__).resolve().parent


@contextmanager
def _situation(busy: bool) -> Iterator[None]:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if hog is not None:
            time.sleep(0.3)
        yield
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def _child(*args: str, wait_policy: str | None = None) -> dict[str, float]:
    """Run this file with ``args`` in a child; ``wait_policy`` sets OMP_WAIT_POLICY (None:
    unset, OpenMP's default)."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if wait_policy is not None:
        env["OMP_WAIT_POLICY"] = wait_policy
    done = subprocess.run(
        [sys.executable, __file__, *args],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- children ---------------------------------------------------------------------------------


def _onnx_child(path: str, rounds: int, who: str) -> None:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from harness import median_alone

    from featvis_onnx import OnnxBackend

    backend = OnnxBackend(path)
    conv1 = backend.layer("conv1").name
    inputs = [backend.image_input.name]
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    if who == "featvis":
        run = lambda: backend.activations(x, "conv1")  # noqa: E731
    else:
        sub = onnx.utils.Extractor(onnx.load(path)).extract_model(inputs, [conv1])
        default = ort.InferenceSession(sub.SerializeToString(), providers=["CPUExecutionProvider"])
        run = lambda: default.run([conv1], {inputs[0]: x})  # noqa: E731
    for _ in range(20):  # the session's first runs allocate its buffers
        run()
    print(json.dumps({"later": median_alone(run, rounds)}))


def _torch_child(rounds: int) -> None:
    import numpy as np
    from harness import median_alone

    import featvis

    backend = featvis.load_model("efficientnet_lite0")
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), np.uint8)
    start = time.perf_counter()
    backend.activations(image, "_relu1")
    first = time.perf_counter() - start
    later = median_alone(lambda: backend.activations(image, "_relu1"), rounds)
    print(json.dumps({"first": first, "later": later}))


# -- rows ---------------------------------------------------------------------------------


def rows(quick: bool) -> Iterator[Row]:
    from bench_onnx import _export

    rounds = 5 if quick else 25
    path = str(_export("alexnet"))
    for busy in (False, True):
        # Each in its own child, alternately: a default session's workers spin on after its
        # runs, so timed in one process beside featvis's they take the cores featvis's run
        # needs next (1.6x in loops alternated in one process, 1.0x apart).
        where = "beside a busy process" if busy else "quiet"
        ours, theirs = [], []
        with _situation(busy):
            for _ in range(1 if quick else 3):
                ours.append(_child("onnx", path, str(rounds * 8), "featvis")["later"])
                theirs.append(_child("onnx", path, str(rounds * 8), "default")["later"])
        yield Row(
            "busy",
            f"onnx AlexNet conv1 b1, {where}",
            "a default ORT session on the sub-model",
            statistics.median(ours),
            statistics.median(theirs),
            1.15,
        )
    for busy in (False, True):
        where = "beside a busy process" if busy else "quiet"
        passive, default = [], []
        with _situation(busy):
            for _ in range(1 if quick else 3):
                passive.append(_child("torch", str(rounds), wait_policy="PASSIVE"))
                default.append(_child("torch", str(rounds)))
        for key, what in (("later", "later calls"), ("first", "first call")):
            yield Row(
                "busy",
                f"torch Lite0 last ReLU b1, OMP_WAIT_POLICY=PASSIVE, {what}, {where}",
                "OpenMP's default wait policy",
                statistics.median(r[key] for r in passive),
                statistics.median(r[key] for r in default),
            )


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    kind, *rest = sys.argv[1:]
    if kind == "onnx":
        _onnx_child(rest[0], int(rest[1]), rest[2])
    else:
        _torch_child(int(rest[0]))
