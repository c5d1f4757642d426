"""`featvis evaluate`, in process on a tiny model registered through the plugin hook."""

from __future__ import annotations

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


class _TinyModels:
    @featvis.hookimpl
    def register_models(self, register: Any) -> None:
        def load(name: str) -> featvis.Backend:
            return tiny_cnn(seed=2, differentiable=True)

        register(featvis.ModelSpec("tiny-eval", load, "a differentiable tiny CNN"))


@pytest.fixture
def tiny_models() -> Iterator[None]:
    plugin = _TinyModels()
    pm.register(plugin, name="test-tiny-eval")
    try:
        yield
    finally:
        pm.unregister(plugin)


@pytest.fixture
def photos(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(2):
        path = tmp_path / f"photo{i}.png"
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), np.uint8)).save(path)
        paths.append(str(path))
    return paths


def test_evaluate_writes_the_table_the_curves_and_the_maps(
    tiny_models: None, photos: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.html"
    argv = ["evaluate", "tiny-eval", *photos, "--methods", "gradcam,eigencam"]
    argv += ["--metrics", "deletion,insertion,drop", "--steps", "5", "-o", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "gradcam" in said and "eigencam" in said and "deletion ↓" in said
    assert f"on 2 image(s) -> {out}" in said
    page = out.read_text(encoding="utf-8")
    assert page.count("<figure>") == 3  # the curves and each method's maps
    assert "Deletion and insertion curves" in page and "5 steps" in page
    assert "http" not in page.split("<body>")[1].split("featvis evaluate")[0]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--metrics", "nope"], "Unknown metric"),
        (["--methods", "nosuch"], "nosuch"),
        (["-o", "eval.png"], "must end in .html"),
    ],
)
def test_bad_input_is_one_clear_line(
    tiny_models: None,
    photos: list[str],
    extra: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["evaluate", "tiny-eval", *photos, *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("featvis: error:") and message in err


def test_names_separated_by_spaces_are_told_to_use_commas(
    tiny_models: None, photos: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["evaluate", "tiny-eval", *photos, "--methods", "gradcam", "eigencam"]
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--metrics", "deletion", "insertion"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.splitlines()[-1]
    assert err.startswith("featvis: error: unrecognized arguments: eigencam insertion")
    assert "separated by commas" in err and "--methods gradcam,scorecam" in err
    with pytest.raises(SystemExit):  # leftovers that are no method or metric: argparse's words
        main(["evaluate", "tiny-eval", *photos, "--steps", "5", "6"])
    err = capsys.readouterr().err.splitlines()[-1]
    assert err == "featvis: error: unrecognized arguments: 6"


def test_the_demo_report_evaluates_its_own_explanation(
    tiny_models: None, photos: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--model", "tiny-eval", "--image", photos[0], "--out", str(out)]
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "How faithful is gradcam's map? deletion" in said
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "Evaluation of gradcam&#x27;s explanation" in page or "Evaluation of gradcam's" in page
    assert "Deletion and insertion curves" in page
