"""The "Explain the prediction" section of `featvis demo`, `featvis report` and
``featvis.report(..., sections=["explain"])``: in-process, on the tiny numpy CNN (gradient-free
methods) and its differentiable twin (Grad-CAM), registered through the plugin hook."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis._explain._section import difference, explain_section
from featvis.plugins import load_plugins, pm
from featvis.testing import tiny_cnn

from .conftest import TINY_CLASSES, Run

GRADIENTS = "tiny-cnn-gradients"


class DifferentiableTiny:
    """The tiny CNN with closed-form gradients, by name: what a PyTorch model offers."""

    @featvis.hookimpl
    def register_models(self, register: Callable[[featvis.ModelSpec], None]) -> None:
        register(featvis.ModelSpec(name=GRADIENTS, load=self.load, description="with gradients"))

    @staticmethod
    def load(name: str) -> featvis.Backend:
        backend = tiny_cnn(preprocess=featvis.Preprocess(size=(32, 32)), differentiable=True)
        backend.categories = list(TINY_CLASSES)
        return backend


@pytest.fixture
def gradients() -> Iterator[str]:
    load_plugins()
    plugin = DifferentiableTiny()
    pm.register(plugin, name="featvis-tests-tiny-gradients")
    try:
        yield GRADIENTS
    finally:
        pm.unregister(plugin)


def _section(html: str) -> str:
    """The HTML of the report's "Explain the prediction" section (to the next section)."""
    start = html.index("<h2>Explain the prediction</h2>")
    end = html.find("<h2>", start + 1)
    return html[start:] if end < 0 else html[start:end]


def _pictures(html: str) -> list[Image.Image]:
    return [
        Image.open(io.BytesIO(base64.b64decode(data)))
        for data in re.findall(r"data:image/(?:png|jpeg);base64,([A-Za-z0-9+/=]+)", html)
    ]


def _predicted(backend: featvis.Backend, image: object) -> str:
    scores = featvis.load(backend).scores(image)  # type: ignore[attr-defined]
    return TINY_CLASSES[int(np.argmax(scores[0]))]


# -- featvis demo ---------------------------------------------------------------------------


def test_demo_explains_the_prediction_with_gradcam_when_the_backend_has_gradients(
    gradients: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli("demo", "--model", gradients, "--image", str(photo), "--out", "out")
    folder = tmp_path / "out"
    expected = _predicted(DifferentiableTiny.load(GRADIENTS), str(photo))
    assert (
        f"[10] Explain the prediction: gradcam of {expected} (score " in out
        and "at layer block.relu (relu2), the last layer with a spatial grid, 16x16 (--backend "
        "onnx: a gradient-free method, on both backends)"
        in out
    ), out
    figure = folder / "11_explain_gradcam.jpg"
    with Image.open(figure) as picture:
        assert picture.format == "JPEG" and picture.size == (2 * 64, 48)  # the photo, the map
    section = _section((folder / "report.html").read_text())
    assert f"gradcam: {expected}" in section
    assert len(_pictures(section)) == 1


def test_demo_explains_without_gradients_by_ablation(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli("demo", "--model", tiny, "--image", str(photo), "--out", "out")
    expected = _predicted(tiny_cnn(preprocess=featvis.Preprocess(size=(32, 32))), str(photo))
    assert f"[10] Explain the prediction: ablationcam of {expected} (score " in out
    assert (tmp_path / "out" / "11_explain_ablationcam.jpg").is_file()
    assert "Explain the prediction" in (tmp_path / "out" / "report.html").read_text()


# -- featvis report -------------------------------------------------------------------------


def test_report_explains_each_image_and_the_method_can_be_chosen_or_left_out(
    gradients: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    featvis_cli("report", gradients, str(photo), "skimage:coffee", "--layers", "conv1")
    section = _section((tmp_path / "report.html").read_text())
    titles = re.findall(r"<b>([^<]+)</b>", section)
    assert [t.split(": ")[:2] for t in titles] == [
        ["photo.png", "gradcam"],
        ["scikit-image coffee", "gradcam"],
    ]
    assert [p.format for p in _pictures(section)] == ["JPEG", "JPEG"]
    # a photo beside its map, at display size (the coffee sample is 600x400)
    assert [p.size for p in _pictures(section)] == [(2 * 64, 48), (2 * 600, 400)]

    featvis_cli("report", gradients, str(photo), "--explain", "score-cam", "-o", "s.html")
    titles = re.findall(r"<b>([^<]+)</b>", _section((tmp_path / "s.html").read_text()))
    assert titles[0].startswith("photo.png: scorecam: ")

    featvis_cli("report", gradients, str(photo), "--no-explain", "-o", "n.html")
    assert "Explain the prediction" not in (tmp_path / "n.html").read_text()


def test_report_explain_errors_are_one_line(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    line = featvis_cli.error("report", tiny, str(photo), "--explain", "gradcom")
    assert "Did you mean 'gradcam'" in line
    line = featvis_cli.error("report", tiny, str(photo), "--explain", "gradcam")
    # the numpy model has no gradients: the message names the methods that do work
    assert "gradient" in line.lower() and "ablationcam" in line, line
    line = featvis_cli.error("report", tiny, str(photo), "--explain", "rise", "--no-explain")
    assert line == ("featvis: error: --explain and --no-explain contradict each other: pick one.")
    assert not (tmp_path / "report.html").exists()


# -- featvis.report(..., sections=["explain"]) and the side-by-side view --------------------


def test_python_report_takes_the_explain_section_by_name() -> None:
    backend = tiny_cnn(differentiable=True)
    backend.categories = list(TINY_CLASSES)
    rng = np.random.default_rng(3)
    images = {"a": rng.integers(0, 256, (32, 32, 3), np.uint8),
              "b": rng.integers(0, 256, (40, 24, 3), np.uint8)}  # fmt: skip
    page = featvis.report(backend, images, ["conv1"], sections=["explain", "explain:layercam"])
    assert [s.title for s in page.sections] == [
        "Image: a",
        "Image: b",
        "Explain the prediction",
        "Explain the prediction",
    ]
    grad, layer = page.sections[2], page.sections[3]
    for label, figure in zip("ab", grad.figures):
        assert figure.title == f"{label}: gradcam: {_predicted(backend, images[label])}"
        assert figure.format == "jpeg"
        height, width = images[label].shape[:2]
        assert np.asarray(figure.picture).shape == (height, 2 * width, 3)
    assert layer.figures[0].title.startswith("a: layercam: ")
    with pytest.raises(featvis.ArgumentError, match="Unknown report section 'explian'"):
        featvis.report(backend, images, ["conv1"], sections=["explian"])


def test_side_by_side_shows_both_maps_and_the_difference_relative_to_the_peak() -> None:
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    same = tiny_cnn(differentiable=True), tiny_cnn()  # one model, two backends
    section, gaps = explain_section(
        same[0], [("x", image)], method="ablationcam", against=same[1], names=("A", "B")
    )
    assert gaps == [0.0]
    (figure,) = section.figures
    pixels = np.asarray(figure.picture)
    assert pixels.shape == (32, 4 * 32, 3)  # the image, A's map, B's map, the difference
    np.testing.assert_array_equal(pixels[:, 32:64], pixels[:, 64:96])
    assert "Largest difference: 0.00e+00 of the peak" in figure.caption
    # two different models: the number is max |a - b| / max(|a|, |b|), written out here
    other = tiny_cnn(seed=1)
    _, gaps = explain_section(same[0], [("x", image)], method="ablationcam", against=other)
    a = featvis.explain(same[0], image, method="ablationcam").maps
    target = int(featvis.explain(same[0], image, method="ablationcam").targets[0])
    b = featvis.explain(other, image, method="ablationcam", target=target).maps
    expected = np.abs(a - b).max() / max(np.abs(a).max(), np.abs(b).max())
    assert expected > 0.01
    assert gaps[0] == pytest.approx(float(expected), rel=1e-6)
    e_a = featvis.explain(same[0], image, method="ablationcam")
    e_b = featvis.explain(other, image, method="ablationcam", target=target)
    assert difference(e_a, e_b) == pytest.approx(float(expected), rel=1e-6)
