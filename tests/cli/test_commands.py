"""The featvis command in-process (``featvis.cli.main``), as a user runs it: results, figures,
and every bad argument as one line. The model is a tiny numpy CNN registered through the
plugin hook (see conftest.py); a few tests use the real EfficientNet-Lite0."""

from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis.cli import main
from featvis.cli._inputs import PLAIN_SAMPLES

from .conftest import TINY, TINY_CLASSES, Run, TinyModels


def _size(path: Path) -> tuple[int, int]:
    """(width, height) of a picture file."""
    with Image.open(path) as picture:
        return picture.size


# -- help and global options ----------------------------------------------------------------


def test_every_command_has_help(capsys: pytest.CaptureFixture[str]) -> None:
    for args in (["--help"], *([c, "--help"] for c in ("demo", "layers", "show", "report"))):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 0
    out = capsys.readouterr().out
    for command in ("demo", "layers", "show", "report", "backends", "models"):
        assert command in out
    for option in ("--channel", "--strongest", "--top", "--grid", "--mode", "--max-size"):
        assert option in out
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("featvis ")


def test_quiet_and_traceback_work_before_and_after_the_command(
    tiny: str, photo: Path, featvis_cli: Run
) -> None:
    for args in (["-q", "show", tiny, str(photo)], ["show", tiny, str(photo), "-q"]):
        out, err = featvis_cli(*args, "--layer", "conv1")
        assert out.startswith("conv1 (stem)") and err == ""
    featvis_cli.error("show", tiny, str(photo), "--layer", "nope")
    for args in (
        ["--traceback", "show", tiny, str(photo)],
        ["show", tiny, str(photo), "--traceback"],
    ):
        with pytest.raises(featvis.UnknownLayerError):
            main([*args, "--layer", "nope"])


# -- layers and models ----------------------------------------------------------------------


def test_layers_prints_the_table(tiny: str, featvis_cli: Run) -> None:
    out, _ = featvis_cli("layers", tiny)
    rows = out.splitlines()
    assert rows[0].split() == ["index", "name", "alias", "type", "output", "params", "description"]
    assert rows[2].split()[:5] == ["0", "stem", "conv1", "Conv", "8x32x32"]
    assert len(rows) == 2 + 8


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("no_such_model", "Unknown model 'no_such_model'. Pass an .onnx file, a model name"),
        ("missing.onnx", "No such ONNX file: 'missing.onnx'"),
        ("no.such.module:build", "Cannot import 'no.such.module' for model"),
        ("gone.py:build", "No such Python file 'gone.py'"),
    ],
)
def test_bad_models_are_one_line_errors(featvis_cli: Run, model: str, message: str) -> None:
    assert message in featvis_cli.error("layers", model)


def test_pickles_and_other_files_are_refused_with_the_reason(
    featvis_cli: Run, tmp_path: Path
) -> None:
    (tmp_path / "model.pt").write_bytes(b"\x80\x04not really")
    line = featvis_cli.error("layers", "model.pt")
    assert "does not open pickled model files" in line and "ONNX" in line
    (tmp_path / "model.h5").write_bytes(b"HDF")
    assert "model files must be ONNX (.onnx)" in featvis_cli.error("layers", "model.h5")


@pytest.fixture
def user_module(tmp_path: Path) -> str:
    """A module of the user's, mymodel.py in the working folder, building the tiny CNN."""
    name = "featvis_test_mymodel"
    (tmp_path / f"{name}.py").write_text(
        "from featvis.testing import tiny_cnn\n\ndef build():\n    return tiny_cnn()\n"
    )
    yield name
    sys.modules.pop(name, None)


def test_a_callable_is_found_in_the_working_folder_like_uvicorn(
    featvis_cli: Run, user_module: str
) -> None:
    before = list(sys.path)
    out, _ = featvis_cli("layers", f"{user_module}:build")
    assert "stem" in out and "conv1" in out
    assert sys.path == before  # the folder was on the path only while importing
    out, _ = featvis_cli("layers", f"{user_module}.py:build")
    assert "stem" in out
    assert "has no attribute 'nope'" in featvis_cli.error("layers", f"{user_module}:nope")


def test_listing_backends_and_models(tiny: str, featvis_cli: Run) -> None:
    backends, _ = featvis_cli("backends")
    assert "torch (torch.nn.Module; ready)" in backends and "onnx (" in backends
    models, _ = featvis_cli("models")
    assert "efficientnet_lite0" in models and "torchvision:NAME" in models and tiny in models


# -- show -----------------------------------------------------------------------------------


def test_show_writes_a_montage(tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path) -> None:
    out, _ = featvis_cli(
        "show", tiny, str(photo), "--layer", "conv1", "--grid", "2x4", "-o", "m.png"
    )
    assert out.strip() == "conv1 (stem): 8 channels of 32x32: all channels -> m.png"
    # 32x32 tiles are enlarged to the readable size (32 px): drawn as they are
    assert _size(tmp_path / "m.png") == (4 * 33 + 1, 2 * 33 + 1)


def test_a_layer_is_named_by_its_index(tiny: str, photo: Path, featvis_cli: Run) -> None:
    out, _ = featvis_cli("show", tiny, str(photo), "--layer", "3")
    assert out.startswith("conv2 (block.conv): 16 channels of 16x16: all channels")
    assert "index 99 is out of range" in featvis_cli.error(
        "show", tiny, str(photo), "--layer", "99"
    )


def test_small_maps_are_enlarged_to_be_read(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli("show", tiny, str(photo), "--layer", "relu2", "-o", "r.png")
    assert "each value drawn as 2x2 pixels" in out
    assert _size(tmp_path / "r.png") == (4 * 33 + 1, 4 * 33 + 1)  # 16 tiles of 16x16, doubled
    featvis_cli("show", tiny, str(photo), "--layer", "relu2", "--max-size", "100", "-o", "s.png")
    assert _size(tmp_path / "s.png") == (4 * 17 + 1, 4 * 17 + 1)  # doubled would pass 100 px


def test_show_pairs_one_channel_with_the_image(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli(
        "show", tiny, str(photo), "--layer", "stem", "--channel", "7", "-o", "p.png"
    )
    assert out.strip() == "conv1 (stem): 8 channels of 32x32: channel 7 beside the image -> p.png"
    assert _size(tmp_path / "p.png") == (128, 48)  # the image and the resized channel
    wording = {
        "overlay": "as a heat map over the image",
        "blend": "blended with the image (in gray)",
        "falsecolor": "in magenta over the image in green (false color)",
    }
    for mode, placed in wording.items():
        out, _ = featvis_cli(
            "show", tiny, str(photo), "--layer", "conv1", "--strongest", "--mode", mode
        )
        assert f"), {placed} -> conv1.png" in out
        assert "channel 1, the strongest (the layer's largest single value, 5.673)," in out
        assert _size(tmp_path / "conv1.png") == (64, 48)


def test_cmap_is_honored_or_refused_per_mode(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    def drawn(*extra: str) -> np.ndarray:
        featvis_cli("show", tiny, str(photo), "--layer", "conv1", *extra, "-o", "c.png")
        return np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))

    gray_overlay = drawn("--channel", "2", "--mode", "overlay", "--cmap", "gray")
    jet_overlay = drawn("--channel", "2", "--mode", "overlay")
    assert not np.array_equal(gray_overlay, jet_overlay)  # --cmap gray is not replaced by jet
    heat = np.asarray(
        featvis.overlay(photo, TinyModels.load(TINY).activations(photo, 0)[0, 2], cmap="gray")
    )
    np.testing.assert_array_equal(gray_overlay, heat)
    paired = drawn("--channel", "2", "--cmap", "viridis")
    assert (paired[:, 64:, 0] != paired[:, 64:, 1]).any()  # the map in color, not gray
    for mode in ("blend", "falsecolor"):
        line = featvis_cli.error(
            "show", tiny, str(photo), "--layer", "conv1", "--channel", "2", "--mode", mode,
            "--cmap", "jet",
        )  # fmt: skip
        assert f"--cmap does not apply to --mode {mode}" in line


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--layer", "conv9"), "Unknown layer 'conv9'. Did you mean 'conv2' (block.conv)"),
        (("--layer", "conv1", "--channel", "8"), "--channel 8 is out of range: conv1 (stem): 8 "
         "channels of 32x32, numbered 0 to 7; featvis counts from 0, so MATLAB's channel 8 is 7."),
        (("--layer", "conv1", "--channel", "-1"), "--channel -1 is out of range: conv1 (stem): 8 "
         "channels of 32x32, numbered 0 to 7."),
        (("--layer", "conv1", "--mode", "blend"), "--mode pairs one channel"),
        (("--layer", "conv1", "--channel", "1", "--strongest"), "Choose one of --channel"),
        (("--layer", "conv1", "--grid", "2x3"), "--grid: A 2x3 grid holds 6 tiles, but there "
         "are 8 channels: give a bigger grid, or none to have one chosen."),
        (("--layer", "conv1", "--grid", "100x100"), "--grid: A 100x100 grid for 8 channels leaves "
         "whole rows or columns empty; 1x8 holds them all."),
        (("--layer", "conv1", "--channel", "1", "--grid", "2x4"), "--grid arranges a montage"),
    ],
)  # fmt: skip
def test_show_rejects_bad_arguments(
    tiny: str, photo: Path, featvis_cli: Run, extra: tuple[str, ...], message: str
) -> None:
    line = featvis_cli.error("show", tiny, str(photo), *extra)
    assert message in line
    assert "grid=" not in line and "None" not in line  # the command line's words, not Python's


def test_the_unknown_layer_message_puts_the_suggestions_first(featvis_cli: Run) -> None:
    line = featvis_cli.error("show", "efficientnet_lite0", "skimage:astronaut", "--layer", "conv99")
    assert line.startswith("featvis: error: Unknown layer 'conv99'. Did you mean 'conv9'")
    assert line.endswith("All 135 layers: featvis.layer_table(backend) in Python, `featvis "
                         "layers MODEL` in a shell.")  # fmt: skip
    assert len(line) < 300


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--grid", "abc", "argument --grid: takes ROWSxCOLS, e.g. 8x12"),
        ("--grid", "0x4", "argument --grid: needs at least one row and one column"),
        ("--top", "0", "argument --top: takes a whole number of at least 1, not '0'"),
        ("--channel", "one", "argument --channel: takes a channel number (from 0), not 'one'"),
        ("--max-size", "10", "argument --max-size: takes a number of pixels (at least 64)"),
    ],
)
def test_option_values_are_checked_in_the_command_lines_words(
    tiny: str,
    photo: Path,
    capsys: pytest.CaptureFixture[str],
    option: str,
    value: str,
    message: str,
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["show", tiny, str(photo), "--layer", "conv1", option, value])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "invalid" not in err


def test_top_k_montage(tiny: str, photo: Path, featvis_cli: Run) -> None:
    out, _ = featvis_cli("show", tiny, str(photo), "--layer", "conv1", "--top", "3")
    acts = TinyModels.load(TINY).activations(photo, "conv1")
    chosen = ", ".join(map(str, featvis.top_channels(acts, 3)))
    assert f"the 3 strongest channels by max ({chosen}) -> conv1.png" in out
    out, _ = featvis_cli("show", tiny, str(photo), "--layer", "conv1", "--top", "20")
    assert "the 8 strongest channels by max" in out and "the layer has only 8" in out


@pytest.mark.slow  # real weights; the rule itself is tested on a made-up ReLU6 in test_render
def test_a_tie_for_the_strongest_channel_is_said_and_broken_by_the_mean(featvis_cli: Run) -> None:
    from skimage import data

    out, _ = featvis_cli(
        "show", "efficientnet_lite0", "skimage:astronaut", "--layer", "relu33", "--strongest"
    )
    match = re.search(
        r"channel (\d+), the strongest \(the largest mean of the (\d+) channels that tie for the "
        r"layer's largest single value, 6\), beside the image",
        out,
    )
    assert match, out
    relu = featvis.load_model("efficientnet_lite0").activations(data.astronaut(), "relu33")[0]
    peaks = relu.reshape(len(relu), -1).max(axis=1)
    means = relu.reshape(len(relu), -1).mean(axis=1)
    tied = np.flatnonzero(peaks == 6.0)  # ReLU6's ceiling
    assert int(match[2]) == len(tied) > 1
    assert int(match[1]) == tied[np.argmax(means[tied])]


# -- images and outputs ---------------------------------------------------------------------


def test_bad_images_fail_before_the_model_is_opened(featvis_cli: Run, tmp_path: Path) -> None:
    (tmp_path / "notes.png").write_text("hello")
    # The model does not exist either: the image is opened first, so its error is the one shown.
    line = featvis_cli.error("show", "no_such_model", "notes.png", "--layer", "conv1")
    assert "notes.png" in line and "not an image" in line
    assert "No such image file" in featvis_cli.error(
        "show", "no_such_model", "gone.jpg", "--layer", "x"
    )
    assert "is a folder, not an image file" in featvis_cli.error(
        "show", "no_such_model", str(tmp_path), "--layer", "x"
    )
    Image.new("RGB", (1, 1)).save(tmp_path / "dot.png")
    line = featvis_cli.error("show", "no_such_model", "dot.png", "--layer", "x")
    assert "dot.png is 1x1 pixels: too small" in line
    assert "no sample image 'nope'" in featvis_cli.error(
        "show", "m", "skimage:nope", "--layer", "x"
    )


def test_output_problems_are_one_line_errors(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    show = ("show", tiny, str(photo), "--layer", "conv1")
    assert "the folder 'nowhere' does not exist (create it first" in featvis_cli.error(
        *show, "-o", "nowhere/x.png"
    )
    (tmp_path / "figures").mkdir()
    assert "-o 'figures' is a folder; give a file name" in featvis_cli.error(*show, "-o", "figures")
    assert "-o 'new' is a folder; give a file name, e.g. new/figure.png" in featvis_cli.error(
        *show, "-o", "new/"
    )
    assert "must end in .png" in featvis_cli.error(*show, "-o", "conv1.txt")
    (tmp_path / "taken").write_text("")
    assert "--out 'taken' is a file" in featvis_cli.error("demo", "--model", tiny, "--out", "taken")
    assert "-o 'figures' is a folder" in featvis_cli.error(
        "report", tiny, str(photo), "-o", "figures"
    )
    assert "must end in .html or .htm" in featvis_cli.error(
        "report", tiny, str(photo), "-o", "r.png"
    )


def test_a_write_that_fails_is_one_line(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(featvis.Picture, "save", full)
    line = featvis_cli.error("show", tiny, str(photo), "--layer", "conv1")
    assert line == "featvis: error: Cannot write 'conv1.png': No space left on device."


def test_a_large_photo_is_shown_at_the_size_limit(
    tiny: str, featvis_cli: Run, tmp_path: Path
) -> None:
    Image.new("RGB", (3000, 2000), (200, 100, 50)).save(tmp_path / "big.jpg")
    featvis_cli("show", tiny, "big.jpg", "--layer", "conv1", "--channel", "0", "-o", "a.jpg")
    assert _size(tmp_path / "a.jpg") == (2 * 1024, 683)
    featvis_cli("show", tiny, "big.jpg", "--layer", "conv1", "--channel", "0", "-o", "b.png",
                "--max-size", "300")  # fmt: skip
    assert _size(tmp_path / "b.png") == (2 * 300, 200)
    featvis_cli("show", tiny, "big.jpg", "--layer", "conv1", "--channel", "0", "-o", "c.png",
                "--max-size", "0")  # fmt: skip
    assert _size(tmp_path / "c.png") == (6000, 2000)  # the full size, when asked


# -- report ---------------------------------------------------------------------------------


def _pictures(html: str) -> list[tuple[str, Image.Image]]:
    import io

    return [
        (kind, Image.open(io.BytesIO(base64.b64decode(data))))
        for kind, data in re.findall(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", html)
    ]


def test_report_is_one_self_contained_file(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli("report", tiny, str(photo), "skimage:coffee", "-o", "r.html")
    assert out.strip() == "2 image(s) x 3 layer(s) -> r.html"
    html = (tmp_path / "r.html").read_text()
    pictures = _pictures(html)
    # per image and layer: a montage (PNG, exact) and the strongest channel with the photo
    # (JPEG); then per image its explanation over the photo (JPEG)
    assert [kind for kind, _ in pictures] == ["png", "jpeg"] * 6 + ["jpeg"] * 2
    assert "http://" not in html and "https://" not in html  # nothing to fetch
    assert "Top-5 prediction" in html and TINY_CLASSES[0] in html
    assert "mat2gray" in html  # the normalization is written under each figure
    for field in ("featvis", "backend", "command", "date"):
        assert f"<td>{field}</td>" in html
    assert "featvis report tiny-cnn" in html  # the command as typed


def test_report_layers_are_a_comma_list_that_leaves_the_positionals_alone(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli("report", "--layers", "conv1,2", tiny, str(photo))
    assert out.strip() == "1 image(s) x 2 layer(s) -> report.html"
    titles = re.findall(r"<b>([^<]+)</b>", (tmp_path / "report.html").read_text())
    assert titles[0] == "conv1: all 8 channels" and titles[2] == "pool1: all 8 channels"
    # The old spelling, --layers a b MODEL IMAGE: 'b' is now the MODEL, and MODEL an image.
    line = featvis_cli.error("report", "--layers", "conv1", "relu2", tiny, str(photo))
    assert line == (
        "featvis: error: No such image file: 'tiny-cnn'. 'tiny-cnn' looks like a model: MODEL "
        "comes first, then the images (and --layers takes one comma-separated list: --layers "
        "conv1,relu5)."
    )


def test_report_photos_are_jpeg_at_display_size(
    tiny: str, featvis_cli: Run, tmp_path: Path
) -> None:
    from skimage import data

    Image.fromarray(data.chelsea()).resize((3000, 2000)).save(tmp_path / "cat.jpg", quality=90)
    featvis_cli("report", tiny, "cat.jpg", "--layers", "conv1")
    html = (tmp_path / "report.html").read_text()
    (_, montage), (_, paired), (_, explained) = _pictures(html)
    assert paired.format == "JPEG" and paired.size == (2 * 1024, 683)
    assert explained.format == "JPEG" and explained.size == (2 * 1024, 683)
    assert montage.format == "PNG"
    assert len(html) < 1_000_000  # 5.9 MB when photos were PNG


# -- demo -----------------------------------------------------------------------------------


def test_demo_walks_through_the_seed(
    tiny: str, photo: Path, featvis_cli: Run, tmp_path: Path
) -> None:
    out, _ = featvis_cli("demo", "--model", tiny, "--image", str(photo), "--out", "out")
    folder = tmp_path / "out"
    assert sorted(p.name for p in folder.iterdir()) == [
        "01_image.jpg",
        "02_conv1_montage.png",
        "03_conv1_channel7.jpg",
        "04_conv1_strongest.jpg",
        "05_conv2_montage.png",
        "06_conv2_strongest.jpg",
        "07_conv2_channel2.jpg",
        "08_conv2_channel4.jpg",
        "09_relu2_montage.png",
        "10_conv2_vs_relu2.jpg",
        "11_explain_ablationcam.jpg",
        "layers.txt",
        "report.html",
    ]
    for step in (
        "[1] Load a pretrained network: tiny-cnn through the array backend, 8 layers",
        "[3] The network's 8 layers",
        "[4] Top-5 prediction: class ",
        "has 8 channels",
        "[9] After the nonlinearity: relu2 (block.relu): 16 channels of 16x16. relu2 directly "
        "follows conv2",
    ):
        assert step in out
    assert "ImageNet" not in out  # the astronaut's note is for the astronaut
    assert (
        out.strip().splitlines()[-1] == "Done: 11 figures, layers.txt and report.html are in out/"
    )
    quiet, _ = featvis_cli("--quiet", "demo", "--model", tiny, "--image", str(photo), "--out", "q")
    assert quiet.strip().splitlines() == ["Done: 11 figures, layers.txt and report.html are in q/"]


@pytest.mark.parametrize("name", sorted(PLAIN_SAMPLES))
def test_samples_read_plainly_equal_scikit_images_loaders(name: str) -> None:
    import skimage.data

    from featvis.cli._inputs import open_image

    label, image = open_image(f"skimage:{name}")
    assert label == f"scikit-image {name}"
    expected = getattr(skimage.data, name)()
    assert image.dtype == expected.dtype
    np.testing.assert_array_equal(image, expected)
