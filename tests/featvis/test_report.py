"""featvis.report: the HTML report as a public function, with room for other sections."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis.testing import tiny_cnn


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (40, 60, 3), np.uint8) for _ in range(2)]


def _embedded(html: str) -> list[tuple[str, Image.Image]]:
    return [
        (kind, Image.open(io.BytesIO(base64.b64decode(data))))
        for kind, data in re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", html)
    ]


def test_a_report_has_per_image_sections_and_takes_more(
    images: list[np.ndarray], tmp_path: Path
) -> None:
    backend = tiny_cnn()
    backend.categories = [f"class {i}" for i in range(10)]
    extra = featvis.Section(
        "An evaluation",
        [featvis.Figure("a map", featvis.montage(np.zeros((2, 3, 3))), "nothing to see")],
        "<p>added by other code</p>",
    )
    page = featvis.report(backend, {"left": images[0], "right": images[1]}, sections=[extra])
    assert [s.title for s in page.sections] == ["Image: left", "Image: right", "An evaluation"]
    first = page.sections[0]
    assert "Top-5 prediction" in first.html and "class " in first.html
    # the default layers: the first conv, the last conv, and the ReLU after it
    titles = [figure.title for figure in first.figures]
    assert titles[0::2] == [
        "conv1: all 8 channels",
        "conv2: all 16 channels",
        "relu2: all 16 channels",
    ]
    page.sections.append(featvis.Section("Appended later", html="<p>late</p>"))
    path = page.save(tmp_path / "r.html")
    html = path.read_text()
    assert html.index("An evaluation") < html.index("added by other code") < html.index("<p>late")
    kinds = [kind for kind, _ in _embedded(html)]
    assert kinds == ["png", "jpeg"] * 6 + ["png"]  # maps exact, photos small
    assert "<td>backend</td><td>array</td>" in html and "net.Layers" in html


def test_report_strongest_captions_say_the_reason(images: list[np.ndarray]) -> None:
    page = featvis.report(tiny_cnn(), images[0], ["conv1"])
    pair = page.sections[0].figures[1]
    acts = tiny_cnn().activations(images[0], "conv1")[0]
    k = featvis.strongest_channel(acts)
    assert pair.title == f"conv1: strongest channel {k}"
    assert pair.caption.startswith(
        f"Channel {k} (MATLAB's {k + 1}) is the strongest: the layer's largest single value, "
    )
    assert pair.format == "jpeg" and pair.picture.size == (40, 120)


def test_report_photos_respect_max_size(tmp_path: Path) -> None:
    photo = tmp_path / "big.jpg"
    Image.new("RGB", (2000, 1000), (10, 200, 30)).save(photo)
    page = featvis.report(tiny_cnn(), [photo], ["conv1"], max_size=500)
    assert page.sections[0].title == "Image: big.jpg"
    assert page.sections[0].figures[1].picture.size == (250, 1000)
    whole = featvis.report(tiny_cnn(), [photo], ["conv1"], max_size=None)
    assert whole.sections[0].figures[1].picture.size == (1000, 4000)


def test_report_refuses_what_it_cannot_draw(images: list[np.ndarray]) -> None:
    with pytest.raises(featvis.ArgumentError, match="at least one image"):
        featvis.report(tiny_cnn(), [])
    with pytest.raises(featvis.UnknownLayerError):
        featvis.report(tiny_cnn(), images, ["conv9"])
    with pytest.raises(featvis.ArgumentError, match="max_size must be a positive number"):
        featvis.report(tiny_cnn(), images, max_size=0)


def test_progress_is_called_per_image_and_layer(images: list[np.ndarray]) -> None:
    calls: list[int] = []
    featvis.report(tiny_cnn(), images, ["conv1", 3], progress=calls.append)
    assert calls == [1, 1, 1, 1]


def test_picture_jpeg_is_smaller_than_png_for_a_photo() -> None:
    from skimage import data

    photo = featvis.Picture(data.astronaut())
    assert Image.open(io.BytesIO(photo.jpeg())).format == "JPEG"
    assert len(photo.jpeg()) * 3 < len(photo.png())


def test_a_report_can_show_optimized_images_or_say_why_not() -> None:
    from featvis.testing import tiny_cnn

    image = np.zeros((32, 32, 3), np.uint8)
    shown = featvis.maximize_section(
        tiny_cnn(differentiable=True), "conv2", [0, 2], steps=2, size=12
    )
    refused = featvis.maximize_section(tiny_cnn(), "conv2", [0, 2], steps=2, size=12)
    page = featvis.report(tiny_cnn(), [image], ["conv2"], sections=[shown, refused]).to_html()
    assert "Optimized images: conv2" in page and "the image each channel wants to see" in page
    assert len(shown.figures) == 1 and np.asarray(shown.figures[0].picture).shape[1] == 2 * 14 + 2
    assert not refused.figures and "needs gradients" in refused.html and "eigencam" in refused.html
