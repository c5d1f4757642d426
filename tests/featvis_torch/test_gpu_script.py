"""benchmarks/gpu.sh works end to end: its dry run does every step on the CPU (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_gpu_script_runs_every_step_and_writes_its_figures(tmp_path: Path) -> None:
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    env.pop("PYTHONPATH", None)  # the script puts the checkout there itself
    done = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = (tmp_path / "gpu-results.txt").read_text()
    assert "DRY RUN on the CPU" in results
    for case in ("every leaf", "layer4.2.relu#3, batch", "Grad-CAM at", "survey of layer2.3"):
        assert f"| gpu | ResNet-50 {case}" in results or f"| gpu | {case}" in results, case
    tests = (tmp_path / "gpu-tests.txt").read_text()
    assert "needs CUDA" in tests  # the gpu tests were collected, and skipped with the reason
    assert " passed" in tests and " failed" not in tests and "pytest exit status: 0" in tests
