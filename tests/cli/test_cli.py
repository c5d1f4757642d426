"""The featvis command, end to end, as a user runs it: in a subprocess, bad arguments included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


#: The installed console script, as a user runs it (python -m featvis.cli where there is none).
_SCRIPT = Path(sys.executable).with_name("featvis")
COMMAND = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "featvis.cli"]


def featvis(*args: str, cwd: Path | None = None, ok: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "error::DeprecationWarning:featvis"}
    done = subprocess.run(
        [*COMMAND, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=300,
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


def test_every_command_has_help() -> None:
    top = featvis("--help").stdout
    for command in ("demo", "layers", "show", "report", "backends", "models"):
        assert command in top
        assert "usage: featvis " + command in featvis(command, "--help").stdout
    show = featvis("show", "--help").stdout
    for option in ("--channel", "--strongest", "--top", "--normalize", "--grid", "--mode", "-o"):
        assert option in show
    assert featvis("--version").stdout.startswith("featvis ")


def test_layers_prints_the_table_like_net_layers() -> None:
    out = featvis("layers", "torchvision:alexnet:random").stdout
    conv1 = next(line for line in out.splitlines() if " conv1 " in line)
    assert "features.0" in conv1 and "64x55x55" in conv1
    assert conv1.endswith("64 11x11x3 convolutions with stride [4 4] and padding [2 2]")
    assert any("relu5" in line and "features.11" in line for line in out.splitlines())


def test_layers_of_the_embedded_model_and_a_callable() -> None:
    lite = featvis("layers", "efficientnet_lite0").stdout
    assert "_conv_stem" in lite and "32x112x112" in lite and "clipped ReLU (ceiling 6)" in lite
    made = featvis("layers", "torchvision.models:squeezenet1_1").stdout
    assert "features.0" in made and "conv1" in made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("layers", "no_such_model"), "Unknown model 'no_such_model'"),
        (("layers", "torchvision:alexnet"), "torchvision:alexnet:random"),
        (("layers", "torchvision:not_a_net:random"), "no classification model 'not_a_net'"),
        (("layers", "missing.onnx"), "No such ONNX file"),
        (("layers", "no.such.module:build"), "Cannot import 'no.such.module'"),
        (("layers", "efficientnet_lite0", "--backend", "onnx"), "opens with the 'torch' backend"),
    ],
)
def test_bad_models_are_one_line_errors(args: tuple[str, ...], message: str) -> None:
    assert message in error_line(featvis(*args, ok=False))


def test_pickled_models_are_refused(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    line = error_line(featvis("layers", "model.pt", cwd=tmp_path, ok=False))
    assert "does not open pickled model files" in line and "ONNX" in line


def test_show_writes_a_montage(tmp_path: Path) -> None:
    done = featvis(
        "show",
        "efficientnet_lite0",
        "skimage:astronaut",
        "--layer",
        "conv1",
        "--grid",
        "4x8",
        "-o",
        "m.png",
        cwd=tmp_path,
    )
    assert "conv1 (_conv_stem): 32 channels of 112x112: all channels -> m.png" in done.stdout
    with Image.open(tmp_path / "m.png") as picture:
        assert picture.size == (8 * 113 + 1, 4 * 113 + 1)


def test_show_pairs_one_channel_with_the_image(tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 3), np.uint8)).save(image)
    featvis(
        "show",
        "efficientnet_lite0",
        str(image),
        "--layer",
        "_conv_stem",
        "--channel",
        "31",
        "-o",
        "pair.png",
        cwd=tmp_path,
    )
    with Image.open(tmp_path / "pair.png") as picture:
        assert picture.size == (240, 90)  # the image and the resized channel side by side
    strongest = featvis(
        "show",
        "efficientnet_lite0",
        str(image),
        "--layer",
        "conv1",
        "--strongest",
        "--mode",
        "overlay",
        cwd=tmp_path,
    )
    assert "(strongest) beside the image -> conv1.png" in strongest.stdout
    with Image.open(tmp_path / "conv1.png") as picture:
        assert picture.size == (120, 90)
    top = featvis(
        "show",
        "efficientnet_lite0",
        str(image),
        "--layer",
        "conv1",
        "--top",
        "4",
        "-o",
        "top.png",
        cwd=tmp_path,
    )
    assert "the 4 strongest channels" in top.stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--layer", "conv99"), "Unknown layer 'conv99'. Did you mean"),
        (("--layer", "conv1", "--channel", "32"), "--channel 32 is out of range"),
        (("--layer", "conv1", "--mode", "blend"), "--mode pairs one channel"),
        (("--layer", "conv1", "--channel", "1", "--strongest"), "Choose one of"),
    ],
)
def test_show_rejects_bad_arguments(tmp_path: Path, extra: tuple[str, ...], message: str) -> None:
    done = featvis(
        "show", "efficientnet_lite0", "skimage:astronaut", *extra, cwd=tmp_path, ok=False
    )
    assert message in error_line(done)


def test_bad_images_and_grids(tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    line = error_line(
        featvis(
            "show", "efficientnet_lite0", "notes.png", "--layer", "conv1", cwd=tmp_path, ok=False
        )
    )
    assert "notes.png" in line and "not an image" in line
    assert "No such image file" in error_line(
        featvis(
            "show", "efficientnet_lite0", "gone.jpg", "--layer", "conv1", cwd=tmp_path, ok=False
        )
    )
    done = featvis(
        "show",
        "efficientnet_lite0",
        "skimage:astronaut",
        "--layer",
        "conv1",
        "--grid",
        "eight",
        ok=False,
    )
    assert done.returncode == 2 and "--grid" in done.stderr  # argparse's usage error


def test_report_is_one_self_contained_file(tmp_path: Path) -> None:
    done = featvis(
        "report",
        "efficientnet_lite0",
        "skimage:chelsea",
        "skimage:coffee",
        "-o",
        "r.html",
        cwd=tmp_path,
    )
    assert "2 image(s) x 3 layer(s) -> r.html" in done.stdout
    html = (tmp_path / "r.html").read_text()
    assert html.count("data:image/png;base64,") == 2 * 3 * 2  # a montage and a pair per layer
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "espresso" in html and "Egyptian cat" in html
    assert "mat2gray" in html  # the normalization is written under each figure
    for field in ("featvis", "torch", "weights_sha256", "date"):
        assert f"<td>{field}</td>" in html


def test_a_large_photo_is_shown_at_display_size(tmp_path: Path) -> None:
    import base64
    import io
    import re

    from skimage import data

    big = Image.fromarray(data.chelsea()).resize((3000, 2000))  # a 6-megapixel photo
    big.save(tmp_path / "photo.jpg", quality=90)
    featvis("report", "efficientnet_lite0", "photo.jpg", "--layers", "conv1", cwd=tmp_path)
    html = (tmp_path / "report.html").read_text()
    pictures = [
        Image.open(io.BytesIO(base64.b64decode(encoded)))
        for encoded in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html)
    ]
    assert len(pictures) == 2  # conv1: its montage, and its strongest channel beside the photo
    paired = pictures[1]
    assert paired.size == (2 * 1024, 683)  # the photo at 1024x683, its channel as large
    assert len(html) < 8_000_000


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
    assert _stderr_on_a_terminal("--quiet", *args, cwd=tmp_path).strip() == ""


def test_backends_and_models_are_listed() -> None:
    backends = featvis("backends").stdout
    assert "torch (torch.nn.Module; ready)" in backends and "onnx (" in backends
    models = featvis("models").stdout
    assert "efficientnet_lite0" in models and "torchvision:NAME" in models


def test_demo_walks_through_the_seed(tmp_path: Path) -> None:
    done = featvis("demo", "--out", "out", cwd=tmp_path)
    out = tmp_path / "out"
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == [
        "01_image.png",
        "02_conv1_montage.png",
        "03_conv1_channel31.png",
        "04_conv1_strongest.png",
        "05_conv49_montage.png",
        "06_conv49_strongest.png",
        "07_conv49_channel2.png",
        "08_conv49_channel4.png",
        "09_relu33_montage.png",
        "10_conv49_vs_relu33.png",
    ]
    assert (out / "report.html").stat().st_size > 100_000
    assert "_conv_stem" in (out / "layers.txt").read_text()
    for step in (
        "[1] Load a pretrained network",
        "[3] The network's layers",
        "[4] Top-5",
        "has 32 channels",
        "[9] After the nonlinearity",
    ):
        assert step in done.stdout
    assert done.stdout.strip().splitlines()[-1] == (
        "Done: 10 figures, layers.txt and report.html are in out/"
    )
    quiet = featvis("--quiet", "demo", "--out", "q", cwd=tmp_path)
    assert quiet.stdout.strip().splitlines() == [
        "Done: 10 figures, layers.txt and report.html are in q/"
    ]


def test_demo_through_onnx_keeps_the_aliases_and_checks_parity(tmp_path: Path) -> None:
    done = featvis("demo", "--backend", "onnx", "--out", "out", cwd=tmp_path)
    out = tmp_path / "out"
    assert (out / "model.onnx").exists()
    assert "02_conv1_montage.png" in {p.name for p in out.glob("*.png")}
    assert "through the onnx backend" in done.stdout
    html = (out / "report.html").read_text()
    assert "Parity: PyTorch vs ONNX Runtime" in html
    layers = featvis("layers", str(out / "model.onnx")).stdout
    assert " conv1 " in layers and " relu1 " in layers
    # --layer is resolved by the backend: an exported layer by its module path, and a tensor
    # that is no layer with the backend's reason.
    model = str(out / "model.onnx")
    shown = featvis("show", model, "skimage:chelsea", "--layer", "_conv_head", cwd=tmp_path)
    assert "conv49 (" in shown.stdout and (tmp_path / "conv49.png").is_file()
    weight = featvis("show", model, "skimage:chelsea", "--layer", "_conv_stem.weight", ok=False)
    assert "is a weight of the model" in error_line(weight)
