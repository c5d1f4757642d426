"""`featvis explain`, in process on a tiny model registered through the plugin hook, and once
as a new user types it, in a subprocess, on the embedded EfficientNet-Lite0."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis.cli import main
from featvis.plugins import pm
from featvis.testing import tiny_cnn

CLASSES = [f"class {i}" for i in range(10)]


class _TinyModels:
    @featvis.hookimpl
    def register_models(self, register: Any) -> None:
        def load(name: str) -> featvis.Backend:
            backend = tiny_cnn(seed=2, differentiable=name.endswith("grad"))
            backend.categories = list(CLASSES)
            return backend

        register(featvis.ModelSpec("tiny-grad", load, "a differentiable tiny CNN"))
        register(featvis.ModelSpec("tiny-scores", load, "a tiny CNN with scores only"))


@pytest.fixture
def tiny_models() -> Iterator[None]:
    plugin = _TinyModels()
    pm.register(plugin, name="test-tiny-models")
    try:
        yield
    finally:
        pm.unregister(plugin)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "photo.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), np.uint8)).save(path)
    return path


def test_explain_draws_the_image_beside_its_map(
    tiny_models: None, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    assert main(["explain", "tiny-grad", str(photo), "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "gradcam of class" in said and "block.relu (relu2)" in said and str(out) in said
    with Image.open(out) as picture:
        assert picture.size == (128, 48)  # the image and the overlay, at the image's size


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--target", "3"], "gradcam of class 3"),
        (["--target", "class 3", "--vs", "class 4"], "class 3 rather than class 4"),
        (["--vs", "class 4"], "rather than class 4"),
        (["--method", "layercam", "--layer", "conv2"], "layercam of class"),
        (["--layer", "relu2", "--layer", "relu1"], "fused over layers block.relu (relu2), stem"),
        (["--method", "occlusion", "--option", "window=8", "--option", "stride=4"], "occlusion"),
        (["--noise", "0.1", "--samples", "2"], "averaged over 2 noisy copies"),
    ],
)
def test_explain_options(
    tiny_models: None,
    photo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    args: list[str],
    expected: str,
) -> None:
    out = tmp_path / "out.png"
    assert main(["explain", "tiny-grad", str(photo), *args, "-o", str(out)]) == 0
    assert expected in capsys.readouterr().out
    assert out.stat().st_size > 1000


@pytest.mark.parametrize(
    ("model", "args", "message"),
    [
        ("tiny-scores", [], "needs gradients"),
        ("tiny-grad", ["--target", "class 33"], "Did you mean"),
        ("tiny-grad", ["--method", "gradcma"], "Did you mean 'gradcam'"),
        ("tiny-grad", ["--layer", "conv9"], "conv9"),
        ("tiny-grad", ["--method", "rise", "--option", "window=3"], "no option 'window'"),
    ],
)
def test_explain_errors_are_one_line_with_the_fix(
    tiny_models: None,
    photo: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    model: str,
    args: list[str],
    message: str,
) -> None:
    assert main(["explain", model, str(photo), *args, "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("featvis: error: ") and message in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_a_gradient_free_method_on_a_backend_without_gradients(
    tiny_models: None, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "s.png"
    assert main(["explain", "tiny-scores", str(photo), "--method", "scorecam", "-o", str(out)]) == 0
    assert "scorecam of class" in capsys.readouterr().out


def test_a_bad_option_is_a_usage_error(
    tiny_models: None, photo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["explain", "tiny-grad", str(photo), "--option", "window"])
    assert info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err


@pytest.mark.slow
def test_a_new_user_explains_the_cat(tmp_path: Path) -> None:
    script = Path(sys.executable).with_name("featvis")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "featvis.cli"]
    done = subprocess.run(
        [*command, "explain", "efficientnet_lite0", "skimage:chelsea", "--target",
         "Egyptian cat", "--vs", "tabby", "-o", "cat.png"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "gradcam of Egyptian cat rather than tabby" in done.stdout
    assert "_relu1" in done.stdout
    with Image.open(tmp_path / "cat.png") as picture:
        assert picture.size == (902, 300)  # chelsea is 451 x 300, twice side by side
    helped = subprocess.run([*command, "explain", "--help"], capture_output=True, text=True)
    assert "--vs" in helped.stdout and "scorecam" in helped.stdout
