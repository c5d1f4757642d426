"""The installed ``featvis`` command, run as a user runs it: a handful of subprocess smoke tests
(slow: each starts Python and most import torch). Everything else about the commands is tested
in-process in test_commands.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

pytestmark = pytest.mark.slow

#: The installed console script, as a user runs it (python -m featvis.cli where there is none).
_SCRIPT = Path(sys.executable).with_name("featvis")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "featvis.cli"]


def featvis(*args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:featvis"}
    done = subprocess.run(
        [*COMMAND, *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=300
    )
    if ok:
        assert done.returncode == 0, done.stderr
    return done


def error_line(done: subprocess.CompletedProcess) -> str:
    """A failed command prints exactly one readable line and no traceback."""
    assert done.returncode == 2, (done.returncode, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("featvis: error: "), done.stderr
    return lines[0]


def test_help_and_version_need_no_framework() -> None:
    assert "usage: featvis" in featvis("--help").stdout
    assert featvis("--version").stdout.startswith("featvis ")


def test_layers_of_the_embedded_model_and_a_one_line_error(tmp_path: Path) -> None:
    lite = featvis("layers", "efficientnet_lite0").stdout
    assert "_conv_stem" in lite and "32x112x112" in lite and "clipped ReLU (ceiling 6)" in lite
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    assert "does not open pickled" in error_line(
        featvis("layers", "model.pt", cwd=tmp_path, ok=False)
    )


def test_a_model_of_the_users_is_found_in_the_working_folder(tmp_path: Path) -> None:
    (tmp_path / "mymodel.py").write_text(
        "import torch\n\ndef build():\n"
        "    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU()).eval()\n"
    )
    out = featvis("layers", "mymodel:build", cwd=tmp_path).stdout
    assert "4 3x3x3 convolutions" in out


def test_demo_walks_through_the_seed(tmp_path: Path) -> None:
    done = featvis("demo", "--out", "out", cwd=tmp_path)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == [
        "01_image.jpg",
        "02_conv1_montage.png",
        "03_conv1_channel31.jpg",
        "04_conv1_strongest.jpg",
        "05_conv49_montage.png",
        "06_conv49_strongest.jpg",
        "07_conv49_channel2.jpg",
        "08_conv49_channel4.jpg",
        "09_relu33_montage.png",
        "10_bn49_vs_relu33.jpg",
        "11_explain_gradcam.jpg",
        "layers.txt",
        "report.html",
    ]
    assert 100_000 < (out / "report.html").stat().st_size < 2_000_000
    for step in (
        "[1] Load a pretrained network: efficientnet_lite0 through the torch backend",
        "has 32 channels",
        "ImageNet's 1000 classes have no astronaut",
        "relu33 follows conv49 with 1 layer(s) between (conv49 -> bn49 -> relu33)",
        "[10] Explain the prediction: gradcam of ",
        "Time: ",
    ):
        assert step in done.stdout
    assert done.stdout.strip().splitlines()[-1] == (
        "Done: 11 figures, layers.txt and report.html are in out/"
    )


def test_demo_through_onnx_says_its_parity_and_what_model_onnx_is(tmp_path: Path) -> None:
    done = featvis("demo", "--backend", "onnx", "--out", "out", cwd=tmp_path)
    model = tmp_path / "out" / "model.onnx"
    assert model.exists()
    assert "through the onnx backend" in done.stdout
    assert (
        f"Exported the PyTorch model to {Path('out') / 'model.onnx'}: the same network"
        in done.stdout
    )
    assert "[10] Parity, PyTorch vs ONNX Runtime, layer by layer:" in done.stdout
    assert "Verdict:" in done.stdout
    assert "Parity: PyTorch vs ONNX Runtime" in (tmp_path / "out" / "report.html").read_text()
    # the same gradient-free method on both backends, side by side, and how far apart they are
    explained = re.search(
        r"\[11\] Explain the prediction: ablationcam on ONNX Runtime and on PyTorch \(no "
        r"gradients needed\), side by side; the maps differ by at most ([0-9.e+-]+) of their peak",
        done.stdout,
    )
    assert explained and float(explained.group(1)) < 1e-4, done.stdout
    with Image.open(tmp_path / "out" / "11_explain_ablationcam.jpg") as picture:
        assert picture.size == (4 * 512, 512)  # image, ONNX map, PyTorch map, difference
    layers = featvis("layers", str(model)).stdout
    assert " conv1 " in layers and " relu1 " in layers
    # --layer is resolved by the backend: an exported layer by its module path, and a tensor
    # that is no layer with the backend's reason.
    shown = featvis("show", str(model), "skimage:chelsea", "--layer", "_conv_head", cwd=tmp_path)
    assert "conv49 (" in shown.stdout and (tmp_path / "conv49.png").is_file()
    weight = featvis(
        "show", str(model), "skimage:chelsea", "--layer", "_conv_stem.weight", ok=False
    )
    assert "is a weight of the model" in error_line(weight)


def _stderr_on_a_terminal(*args: str, cwd: Path) -> str:
    """What the command writes to stderr when stderr is a terminal (a pseudo-terminal here)."""
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    # 30 rows of 100 columns: a terminal without a size has no room for a bar.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    with subprocess.Popen(
        [*COMMAND, *args], cwd=cwd, stdout=subprocess.DEVNULL, stderr=follower
    ) as process:
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not chunk:
                break
            chunks.append(chunk)
        assert process.wait(timeout=300) == 0
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_long_runs_show_progress_and_quiet_silences_it(tmp_path: Path) -> None:
    args = ("report", "efficientnet_lite0", "skimage:chelsea", "skimage:coffee")
    shown = _stderr_on_a_terminal(*args, cwd=tmp_path)
    assert "figures" in shown and "0/6" in shown  # a tqdm bar over 2 images x 3 layers
    assert _stderr_on_a_terminal(*args, "--quiet", cwd=tmp_path).strip() == ""
