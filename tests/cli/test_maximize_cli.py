"""`featvis maximize`, in process on a tiny model registered through the plugin hook."""

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
            return tiny_cnn(
                seed=2,
                differentiable=name.endswith("grad"),
                preprocess=featvis.Preprocess(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3),
            )

        register(featvis.ModelSpec("tiny-grad", load, "a differentiable tiny CNN"))
        register(featvis.ModelSpec("tiny-scores", load, "a tiny CNN with scores only"))


@pytest.fixture
def tiny_models() -> Iterator[None]:
    plugin = _TinyModels()
    pm.register(plugin, name="test-tiny-maximize-models")
    try:
        yield
    finally:
        pm.unregister(plugin)


FAST = ["--steps", "3", "--size", "12"]


def test_maximize_writes_one_labelled_image_per_channel(
    tiny_models: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "layer.png"
    argv = ["maximize", "tiny-grad", "--layer", "conv2", "--channels", "0-2,5", "--grid", "1x4"]
    assert main([*argv, *FAST, "--no-labels", "-o", str(out)]) == 0
    said = capsys.readouterr().out
    assert "channel of 'block.conv', 4 image(s), 3 steps" in said and str(out) in said
    with Image.open(out) as image:
        picture = np.asarray(image)
    assert picture.shape == (12 + 4, 4 * 14 + 2, 3)  # four 12-pixel tiles, 2 pixels apart
    # the tile of channel 5 is the image featvis.maximize gives for it
    backend = featvis.load_model("tiny-grad")
    alone = featvis.maximize(backend, "conv2", [0, 1, 2, 5], steps=3, size=12)
    np.testing.assert_array_equal(
        picture[2:14, 44:56], (alone.images[3] * 255 + 0.5).astype(np.uint8)
    )


def test_maximize_defaults_to_the_first_channels_with_labels(
    tiny_models: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "m.png"
    assert main(["maximize", "tiny-grad", "--layer", "conv1", *FAST, "-o", str(out)]) == 0
    assert "8 image(s)" in capsys.readouterr().out  # conv1 has 8 channels, fewer than 16
    with Image.open(out) as image:
        assert image.size[1] > 2 * 14  # rows of tiles with their labels


def test_maximize_a_class(
    tiny_models: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.png"
    argv = ["maximize", "tiny-grad", "--objective", "class", "--channels", "3", *FAST]
    assert main([*argv, "-o", str(out)]) == 0
    assert "class of the scores, 1 image(s)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["tiny-scores", "--layer", "conv2"], "needs gradients"),
        (["tiny-grad"], "--objective channel needs --layer"),
        (["tiny-grad", "--layer", "conv2", "--channels", "99"], "Channel 99 is out of range"),
    ],
)
def test_maximize_errors_say_what_to_do(
    tiny_models: None,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    assert main(["maximize", *argv, *FAST, "-o", str(tmp_path / "x.png")]) != 0
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_bad_channel_lists_are_refused_by_the_parser(
    tiny_models: None, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        main(["maximize", "tiny-grad", "--layer", "conv2", "--channels", "3-1"])
    assert "numbers and ranges" in capsys.readouterr().err
