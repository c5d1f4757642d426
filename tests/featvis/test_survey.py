"""featvis.survey against a brute-force survey of all activations held in memory, and merging,
resuming, skipping, labels, and any backend through the protocol alone."""

from __future__ import annotations

import itertools
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis import ArgumentError, ImageError, ModelError, Survey
from featvis._reduce import LayerState, summarize
from featvis.testing import Step, tiny_cnn

N_IMAGES = 45


def _images(n: int = N_IMAGES, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(n)]
    images[7] = images[3].copy()  # a duplicate: ties, broken by position
    images[11] = np.zeros((32, 32, 3), np.uint8)
    return images


@pytest.fixture(scope="module")
def backend() -> featvis.BackendBase:
    return tiny_cnn()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    return _images()


def brute_force(
    backend: Any,
    images: Any,
    layer: str,
    k: int,
    by: str,
    labels: list[Any] | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """The survey written out plainly: every activation in memory, sorted with Python.

    ``batch_size``: for a backend whose values depend on the batch an image is in (PyTorch's
    CPU convolutions do, in the last bits), the activations are taken in the same batches."""
    acts = backend.activations(images, layer, batch_size=batch_size)
    n, channels, height, width = acts.shape
    top, means, maxima, positive, classes = [], [], [], [], []
    for c in range(channels):
        maps = acts[:, c].reshape(n, height * width)
        sums = [np.ascontiguousarray(maps[i], np.float64).sum() for i in range(n)]
        value = (
            maps.max(axis=1).astype(np.float64) if by == "max" else np.array(sums) / maps.shape[1]
        )
        order = sorted(range(n), key=lambda i: (-value[i], i))[:k]
        top.append([(i, float(value[i]), divmod(int(maps[i].argmax()), width)) for i in order])
        means.append(float(sum(map(Fraction, sums)) / (n * height * width)))
        maxima.append(float(maps.max()))
        positive.append(int((maps > 0).sum()) / (n * height * width))
        if labels is not None:
            per_class = {}
            for label in sorted(set(labels)):
                rows = [i for i in range(n) if labels[i] == label]
                per_class[label] = float(sum(Fraction(float(value[i])) for i in rows) / len(rows))
            classes.append(per_class)
    return {"top": top, "mean": means, "max": maxima, "positive": positive, "classes": classes}


def check(result: Survey, expected: dict[str, Any], layer: str) -> None:
    stats = result.stats(layer)
    for c, want in enumerate(expected["top"]):
        got = [(t.position, t.value, t.peak) for t in result.top(layer, c)]
        assert got == want, c
    assert stats.mean.tolist() == expected["mean"]
    assert stats.max.tolist() == expected["max"]
    assert stats.positive.tolist() == expected["positive"]
    assert stats.never_active.tolist() == [p == 0 for p in expected["positive"]]


@pytest.mark.parametrize("batch_size", [1, 7, 32])
@pytest.mark.parametrize("by", ["max", "mean"])
def test_the_survey_equals_brute_force(backend: Any, images: Any, batch_size: int, by: str) -> None:
    result = featvis.survey(
        backend, images, ["relu1", "conv2"], k=5, by=by, batch_size=batch_size, progress=False
    )
    assert result.images == N_IMAGES and result.layers == ["relu1", "conv2"]
    for layer in ("relu1", "conv2"):
        check(result, brute_force(backend, images, layer, 5, by), layer)


def test_boxes_are_the_fields_of_the_peaks(backend: Any, images: Any) -> None:
    result = featvis.survey(backend, images, "conv2", k=3, progress=False)
    field = featvis.receptive_field(backend, "conv2")
    for c in range(16):
        for entry in result.top("conv2", c):
            y, x = entry.peak
            # a 3x3 conv after a 2x2 pool after a 3x3 conv: rows 2y-3 ... 2y+4, clipped
            expected = (
                max(2 * y - 3, 0),
                max(2 * x - 3, 0),
                min(2 * y + 5, 32),
                min(2 * x + 5, 32),
            )
            assert entry.input_box == expected == field.box(y, x)
            assert entry.box == expected  # the images are 32x32: no resizing
            assert entry.size == (32, 32) and entry.path is None


def test_ties_go_to_the_earlier_image(backend: Any, images: Any) -> None:
    result = featvis.survey(backend, images, "conv1", k=45, progress=False)
    for c in range(8):
        positions = [t.position for t in result.top("conv1", c)]
        assert positions.index(3) < positions.index(7)  # image 7 is a copy of image 3
        values = [t.value for t in result.top("conv1", c)]
        assert values[positions.index(3)] == values[positions.index(7)]


def test_parts_surveyed_in_any_order_merge_into_the_whole(backend: Any, images: Any) -> None:
    whole = featvis.survey(backend, images, ["relu1", "relu2"], k=4, progress=False)
    rng = np.random.default_rng(1)
    cuts = [0, 5, 6, 19, 33, N_IMAGES]
    parts = [
        featvis.survey(
            backend,
            images[a:b],
            ["relu1", "relu2"],
            k=4,
            start=a,
            batch_size=int(bs),
            progress=False,
        )
        for (a, b), bs in zip(itertools.pairwise(cuts), rng.integers(1, 9, 5))
    ]
    order = rng.permutation(len(parts))
    merged = parts[order[0]]
    for i in order[1:]:
        merged = merged.merge(parts[i])
    assert merged.equal(whole)
    halves = featvis.survey(backend, images[:20], ["relu1", "relu2"], k=4, progress=False)
    rest = featvis.survey(backend, images[20:], ["relu1", "relu2"], k=4, start=20, progress=False)
    assert halves.merge(rest).equal(whole) and rest.merge(halves).equal(whole)


def test_batches_folded_in_any_order_of_arrival_give_the_same_state(
    backend: Any, images: Any
) -> None:
    acts = backend.activations(images, "relu2")
    reference = LayerState("relu2", 16, (16, 16), 6, "max")
    reference.update(summarize(acts), np.arange(N_IMAGES))
    shuffled = LayerState("relu2", 16, (16, 16), 6, "max")
    for i in np.random.default_rng(2).permutation(N_IMAGES):
        shuffled.update(summarize(acts[i : i + 1]), np.array([i]))
    assert shuffled.equal(reference)


def test_overlapping_parts_are_refused(backend: Any, images: Any) -> None:
    a = featvis.survey(backend, images[:10], "conv1", progress=False)
    b = featvis.survey(backend, images[5:15], "conv1", start=5, progress=False)
    with pytest.raises(ArgumentError, match="counted twice"):
        a.merge(b)
    c = featvis.survey(backend, images[:10], "conv1", k=3, progress=False)
    with pytest.raises(ArgumentError, match="different layers or settings"):
        c.merge(featvis.survey(backend, images[10:], "conv1", start=10, progress=False))


class Interrupting:
    """The images, but the first time image ``at`` is read, the run is interrupted."""

    def __init__(self, images: list[np.ndarray], at: int | None) -> None:
        self.images, self.at = images, at

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        if i == self.at:
            self.at = None
            raise KeyboardInterrupt
        return self.images[i]


def test_an_interrupted_run_resumes_to_the_uninterrupted_result(
    backend: Any, images: Any, tmp_path: Path
) -> None:
    whole = featvis.survey(
        backend, Interrupting(images, None), ["relu1", "conv2"], k=4, progress=False
    )
    state = tmp_path / "state.npz"
    with pytest.raises(KeyboardInterrupt):
        featvis.survey(
            backend,
            Interrupting(images, 30),
            ["relu1", "conv2"],
            k=4,
            batch_size=4,
            checkpoint=state,
            checkpoint_every=8,
            threads=1,
            progress=False,
        )
    saved = Survey.load(state)
    assert 0 < saved.images < 30 and saved.coverage.intervals == [(0, saved.images)]
    resumed = featvis.survey(
        backend, Interrupting(images, None), ["relu1", "conv2"], k=4, resume=state, progress=False
    )
    assert resumed.equal(whole)
    with pytest.raises(ArgumentError, match="another collection"):
        featvis.survey(backend, images[:30], ["relu1", "conv2"], k=4, resume=state, progress=False)


def test_unreadable_files_stop_the_survey_or_are_skipped_and_counted(
    backend: Any, images: Any, tmp_path: Path
) -> None:
    for i, image in enumerate(images[:10]):
        Image.fromarray(image).save(tmp_path / f"{i:02d}.png")
    (tmp_path / "04.png").write_bytes(b"truncated")
    with pytest.raises(ImageError, match="04.png"):
        featvis.survey(backend, tmp_path, "conv1", progress=False)
    result = featvis.survey(backend, tmp_path, "conv1", on_error="skip", progress=False)
    assert (result.images, result.skipped) == (9, 1)
    assert Path(result.skipped_details[0].name).name == "04.png"
    assert result.coverage.intervals == [(0, 10)]  # read or skipped: nothing silently missing
    readable = [image for i, image in enumerate(images[:10]) if i != 4]
    expected = brute_force(backend, readable, "conv1", 9, "max")
    assert result.stats("conv1").mean.tolist() == expected["mean"]
    assert "skipped" in repr(result)


def test_labels_say_which_classes_excite_a_channel(backend: Any, images: Any) -> None:
    labels = [["cat", "dog", "eel"][i % 3] for i in range(N_IMAGES)]
    result = featvis.survey(backend, images, "relu2", k=3, labels=labels, progress=False)
    expected = brute_force(backend, images, "relu2", 3, "max", labels)
    for c in range(16):
        scores = result.top_classes("relu2", c)
        want = sorted(expected["classes"][c].items(), key=lambda kv: (-kv[1], kv[0]))
        assert [(s.label, s.mean) for s in scores] == want
        assert [s.images for s in scores] == [15, 15, 15]
        assert all(t.label == labels[t.position] for t in result.top("relu2", c))


def test_a_nan_activation_is_an_error() -> None:
    nan = featvis.testing.ArrayBackend([Step("bad", lambda x: x * np.nan, "conv")])
    with pytest.raises(ModelError, match="NaN"):
        featvis.survey(nan, _images()[:3], "bad", receptive_fields=False, progress=False)


class ProtocolOnly:
    """A third-party backend that implements the Backend protocol and nothing more."""

    name = "protocol-only"

    def __init__(self) -> None:
        self.inner = tiny_cnn()
        self.preprocess = self.inner.preprocess
        self.categories = None
        self.provenance = {"backend": self.name}

    def layers(self) -> list[featvis.Layer]:
        return self.inner.layers()

    def layer(self, key: Any) -> featvis.Layer:
        return self.inner.layer(key)

    def activations(self, images: Any, layers: Any, *, batch_size: int | None = None) -> Any:
        return self.inner.activations(images, layers, batch_size=batch_size)


def test_any_backend_can_be_surveyed_through_the_protocol(backend: Any, images: Any) -> None:
    other = ProtocolOnly()
    assert isinstance(other, featvis.Backend) and not isinstance(other, featvis.BackendBase)
    mine = featvis.survey(other, images, "relu2", k=4, progress=False)
    assert mine.equal(featvis.survey(backend, images, "relu2", k=4, progress=False))
    assert mine.provenance == {"backend": "protocol-only"}


def test_bad_arguments_are_refused_before_any_work(backend: Any, images: Any) -> None:
    with pytest.raises(ArgumentError, match="k must be"):
        featvis.survey(backend, images, "conv1", k=0)
    with pytest.raises(ArgumentError, match="by must be one of"):
        featvis.survey(backend, images, "conv1", by="median")  # type: ignore[arg-type]
    with pytest.raises(featvis.UnknownLayerError):
        featvis.survey(backend, images, "conv9")
    result = featvis.survey(backend, images[:4], "conv1", progress=False)
    with pytest.raises(ArgumentError, match="out of range"):
        result.top("conv1", 8)
    with pytest.raises(ArgumentError, match="no layer 'conv2'"):
        result.stats("conv2")
    with pytest.raises(ArgumentError, match="pass a picklable description"):
        featvis.survey(backend, images, "conv1", client=object())


def test_the_state_round_trips_bit_for_bit(backend: Any, images: Any, tmp_path: Path) -> None:
    labels = [i % 4 for i in range(N_IMAGES)]
    result = featvis.survey(
        backend, images, ["conv1", "relu2", "stem"], k=3, labels=labels, by="mean", progress=False
    )
    loaded = Survey.load(result.save_state(tmp_path / "s.npz"))
    assert loaded.equal(result)
    assert loaded.top("stem", 2) == result.top("stem", 2)
    assert loaded.top_classes("relu2", 5) == result.top_classes("relu2", 5)
    with pytest.raises(ArgumentError, match="not a survey state"):
        (tmp_path / "x.npz").write_bytes(b"nope")
        Survey.load(tmp_path / "x.npz")


def test_surveying_imports_no_framework() -> None:
    import subprocess
    import sys

    code = (
        "import sys, numpy as np, featvis; from featvis.testing import tiny_cnn\n"
        "images = [np.zeros((32, 32, 3), np.uint8)] * 3\n"
        "featvis.survey(tiny_cnn(), images, 'relu2', progress=False)\n"
        "print(sorted(m for m in ('torch', 'onnxruntime', 'dask', 'distributed') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_channels_whose_best_images_all_tie_are_named(backend: Any, images: Any) -> None:
    clipped = featvis.testing.ArrayBackend(
        [Step("relu6", lambda x: np.clip(x * 10.0, 0.0, 6.0), "relu")]
    )
    result = featvis.survey(clipped, images, "relu6", k=4, receptive_fields=False, progress=False)
    assert result.tied("relu6") == [0, 1, 2]  # every channel saturates in many images
    assert [t.position for t in result.top("relu6", 0)] == [0, 1, 2, 3]  # only the tie-break
    assert featvis.survey(backend, images, "relu2", k=4, progress=False).tied("relu2") == []
