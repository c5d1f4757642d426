"""The atlas a survey saves: pages, patches, numbers, state; and `featvis survey` in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis import ArgumentError, Survey
from featvis.cli import main
from featvis.samples import SampleImages, write_samples
from featvis.testing import ArrayBackend, Step, tiny_cnn


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("collection")
    write_samples(root, 40, size=(48, 40), by_sample=True)
    return root


@pytest.fixture(scope="module")
def surveyed(folder: Path) -> Survey:
    return featvis.survey(
        tiny_cnn(), folder, ["relu1", "relu2"], k=4, labels="folder", progress=False
    )


@pytest.fixture(scope="module")
def atlas(surveyed: Survey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("atlas")
    surveyed.save(out)
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_atlas_has_a_page_per_layer_with_every_patch(atlas: Path, surveyed: Survey) -> None:
    index = (atlas / "index.html").read_text()
    assert 'href="relu1/index.html"' in index and 'href="relu2/index.html"' in index
    page = (atlas / "relu2" / "index.html").read_text()
    thumbs = re.findall(r'<img loading="lazy" src="(patches/[^"]+)"', page)
    assert len(thumbs) == 16 * 4
    assert all((atlas / "relu2" / t).is_file() for t in thumbs)
    assert "data:image" not in page and "<script src" not in page  # nothing to fetch
    assert (atlas / "view.html").is_file() and Survey.load(atlas).equal(surveyed)


def test_the_numbers_are_the_surveys(atlas: Path, surveyed: Survey) -> None:
    stats = _jsonl(atlas / "relu2" / "stats.jsonl")
    assert [row["mean"] for row in stats] == surveyed.stats("relu2").mean.tolist()
    assert stats[0]["top_classes"][0]["label"] == surveyed.top_classes("relu2", 0)[0].label
    top = _jsonl(atlas / "relu2" / "top.jsonl")
    first = surveyed.top("relu2", 3)[0]
    row = next(r for r in top if r["channel"] == 3 and r["rank"] == 0)
    assert (row["position"], row["value"], row["box"]) == (
        first.position,
        first.value,
        list(first.box),
    )
    # a file's link is the file itself, relative to the atlas
    assert (atlas / row["image"]).resolve() == Path(first.path).resolve()


def test_a_patch_is_the_part_of_the_image_its_peak_sees(atlas: Path, surveyed: Survey) -> None:
    entry = surveyed.top("relu2", 5)[0]
    top, left, bottom, right = entry.box
    crop = featvis.read_image(entry.path)[top:bottom, left:right]
    thumb = Image.open(atlas / "relu2" / "patches" / "c0005_0.jpg")
    assert max(thumb.size) == 96
    assert abs(thumb.width / thumb.height - crop.shape[1] / crop.shape[0]) < 0.1
    small = np.asarray(Image.fromarray(crop).resize(thumb.size, Image.Resampling.LANCZOS), float)
    assert np.abs(np.asarray(thumb, float) - small).mean() < 12  # JPEG: close, not equal


def test_images_that_were_not_files_are_copied(tmp_path: Path) -> None:
    images = SampleImages(12, size=(40, 40))
    result = featvis.survey(tiny_cnn(), images, "relu2", k=2, progress=False)
    result.save(tmp_path / "a")
    copies = sorted((tmp_path / "a" / "images").iterdir())
    assert copies and {int(p.stem) for p in copies} == set(result.infos)
    generated = featvis.survey(tiny_cnn(), iter(images), "relu2", k=2, progress=False)
    with pytest.raises(ArgumentError, match="save\\(folder, images=...\\)"):
        generated.save(tmp_path / "b")
    generated.save(tmp_path / "b", images=images)
    assert (tmp_path / "b" / "relu2" / "index.html").is_file()


@pytest.mark.slow  # 11,520 thumbnails
def test_a_page_of_1280_channels_stays_small_and_lazy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(1280, 3)).astype(np.float32)
    wide = ArrayBackend(
        [Step("wide", lambda x: np.einsum("oc,nchw->nohw", weight, x), "conv")],
        preprocess=featvis.Preprocess(size=(8, 8), mean=(0.5,) * 3, std=(0.5,) * 3),
    )
    result = featvis.survey(wide, SampleImages(30, size=(16, 16)), "wide", progress=False)
    result.save(tmp_path)
    page = tmp_path / "wide" / "index.html"
    assert page.stat().st_size < 4_000_000  # 3.2 MB when written
    assert page.read_text().count('loading="lazy"') == 1280 * 9


def test_a_layer_that_sees_no_pixel_shows_whole_images(tmp_path: Path) -> None:
    constant = ArrayBackend([Step("bias", lambda x: np.ones((len(x), 2, 4, 4), np.float32))])
    result = featvis.survey(constant, SampleImages(3, size=(32, 32)), "bias", k=2, progress=False)
    assert result.top("bias", 0)[0].input_box == (0, 0, 0, 0)
    assert result.tied("bias") == [0, 1]
    result.save(tmp_path)
    with Image.open(tmp_path / "bias" / "patches" / "c0000_0.jpg") as patch:
        assert patch.size == (96, 96)


def _tiny_folder(tmp_path: Path) -> Path:
    write_samples(tmp_path / "images", 20, size=(40, 40))
    return tmp_path / "images"


def test_the_command_writes_an_atlas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = _tiny_folder(tmp_path)
    out = tmp_path / "atlas"
    code = main(
        [
            "survey",
            "featvis.testing:tiny_cnn",
            str(images),
            "--layer",
            "relu2",
            "--layer",
            "conv1",
            "--k",
            "3",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "20 images ->" in printed and "relu2: 16 channels" in printed
    assert (out / "relu2" / "index.html").is_file() and (out / "conv1" / "index.html").is_file()
    state = Survey.load(out)
    assert state.k == 3 and state.images == 20
    assert (
        main(
            [
                "survey",
                "featvis.testing:tiny_cnn",
                str(images),
                "--layer",
                "relu2",
                "--layer",
                "conv1",
                "--k",
                "3",
                "--resume",
                "-o",
                str(out),
            ]
        )
        == 0
    )
    assert Survey.load(out).equal(state)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--layer", "conv9"], "Unknown layer 'conv9'"),
        (["--layer", "conv1", "--resume"], "Nothing to resume"),
        (["--layer", "conv1", "--k", "0"], "argument --k: takes a whole number of at least 1"),
    ],
)
def test_the_command_explains_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    images = _tiny_folder(tmp_path)
    try:
        code = main(
            ["survey", "featvis.testing:tiny_cnn", str(images), *extra, "-o", str(tmp_path / "out")]
        )
    except SystemExit as exit:  # argparse's own check of an option's value
        code = exit.code  # type: ignore[assignment]
    assert code == 2
    assert message in capsys.readouterr().err


def test_the_command_needs_a_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        [
            "survey",
            "featvis.testing:tiny_cnn",
            str(tmp_path / "none"),
            "--layer",
            "conv1",
            "-o",
            str(tmp_path / "out"),
        ]
    )
    assert code == 2 and "No such folder" in capsys.readouterr().err


# -- optimized images beside the dataset images (featvis.maximize) -----------------------------


def test_the_atlas_shows_each_channels_optimized_image_first(
    surveyed: Survey, tmp_path: Path
) -> None:
    backend = tiny_cnn(differentiable=True)  # the surveyed model, with gradients
    options = {"steps": 3, "size": 16}
    surveyed.save(tmp_path, maximize=backend, maximize_options=options)
    page = (tmp_path / "relu2" / "index.html").read_text()
    cards = page.split('<div class="ch" ')[1:]
    assert len(cards) == 16
    for channel, card in enumerate(cards):
        first = re.search(r'<img[^>]*src="([^"]+)"', card)
        assert first is not None and first.group(1) == f"optimized/c{channel:04d}.jpg"
    expected = featvis.maximize(backend, "relu2", list(range(16)), **options).images[5]
    with Image.open(tmp_path / "relu2" / "optimized" / "c0005.jpg") as image:
        shown = np.asarray(image.resize((16, 16)), np.float32) / 255.0
    assert np.abs(shown - expected).mean() < 0.05  # the same image, through a JPEG thumbnail
    assert "optimized image" in page


def test_an_atlas_without_gradients_says_why_there_are_no_optimized_images(
    surveyed: Survey, tmp_path: Path
) -> None:
    surveyed.save(tmp_path, maximize=tiny_cnn())
    page = (tmp_path / "relu1" / "index.html").read_text()
    assert "No optimized images: featvis.maximize needs gradients" in page
    assert "featvis.survey" in page and not (tmp_path / "relu1" / "optimized").exists()
