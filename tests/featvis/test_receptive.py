"""Receptive fields measured through the backend, checked against the architecture's formula
and by perturbing inputs; image boxes checked against what Pillow's resize really mixes."""

from __future__ import annotations

import numpy as np
import pytest

import featvis
from featvis import Preprocess, receptive_field
from featvis._receptive import image_box
from featvis.testing import tiny_cnn


def _conv_fields(n: int, layers: list[tuple[int, int, int]]) -> np.ndarray:
    """The theoretical field of each output, written out: for a chain of (kernel, stride,
    padding), output o of a layer reads inputs o * stride - padding ... + kernel - 1."""
    lo = np.arange(n)
    hi = np.arange(n)
    size = n
    for kernel, stride, pad in layers:
        size = (size + 2 * pad - kernel) // stride + 1
        out = np.arange(size)
        first = np.clip(out * stride - pad, 0, len(lo) - 1)
        last = np.clip(out * stride - pad + kernel - 1, 0, len(lo) - 1)
        lo, hi = lo[first], hi[last]
    return np.stack([lo, hi + 1], axis=1)


@pytest.mark.parametrize(
    ("layer", "chain"),
    [
        ("conv1", [(3, 1, 1)]),
        ("relu1", [(3, 1, 1)]),
        ("pool1", [(3, 1, 1), (2, 2, 0)]),
        ("conv2", [(3, 1, 1), (2, 2, 0), (3, 1, 1)]),
        ("relu2", [(3, 1, 1), (2, 2, 0), (3, 1, 1)]),
    ],
)
def test_fields_of_the_tiny_cnn_are_its_theoretical_fields(layer: str, chain: list) -> None:
    field = receptive_field(tiny_cnn(), layer)
    expected = _conv_fields(32, chain)
    np.testing.assert_array_equal(field.rows, expected)
    np.testing.assert_array_equal(field.cols, expected)


def test_a_global_pool_sees_the_whole_input_and_results_are_cached() -> None:
    backend = tiny_cnn()
    field = receptive_field(backend, "gap")
    assert field.box(0, 0) == (0, 0, 32, 32)
    assert receptive_field(backend, "gap") is field
    assert receptive_field(backend, "gap", seed=1) is not field


def test_perturbing_outside_the_field_never_changes_the_output() -> None:
    backend = tiny_cnn(preprocess=Preprocess(size=(24, 28), mean=(0.5,) * 3, std=(0.5,) * 3))
    field = receptive_field(backend, "relu2")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 3, 24, 28)).astype(np.float32)
    base = backend.activations(x, "relu2")[0]
    for y, xx in [(0, 0), (5, 7), (11, 13), (6, 0)]:
        top, left, bottom, right = field.box(y, xx)
        outside = x.copy()
        mask = np.ones((24, 28), bool)
        mask[top:bottom, left:right] = False
        outside[0][:, mask] = rng.normal(size=(3, int(mask.sum())))
        np.testing.assert_array_equal(
            backend.activations(outside, "conv2")[0][:, y, xx],
            backend.activations(x, "conv2")[0][:, y, xx],
        )
        inside = x.copy()
        inside[0, :, top:bottom, left:right] += 5.0
        assert not np.array_equal(
            backend.activations(inside, "conv2")[0][:, y, xx],
            backend.activations(x, "conv2")[0][:, y, xx],
        )
        assert base.shape[1:] == (12, 14)


@pytest.mark.parametrize(("image", "model"), [(100, 32), (32, 100), (64, 32), (33, 32), (32, 32)])
def test_image_boxes_hold_every_image_row_that_reaches_an_input_row(image: int, model: int) -> None:
    """Perturb each row of an image, resize it as Preprocess does, and see which input rows
    change: they must be exactly those whose box holds the row (give or take a row whose
    filter weight is zero)."""
    pre = Preprocess(size=(model, 8), mean=(0.0,) * 3, std=(1.0,) * 3)
    rng = np.random.default_rng(0)
    base = rng.random((image, 8, 3)).astype(np.float32) * 0.5
    before = pre(base)[0]
    reaches = np.zeros((model, image), bool)  # input row i <- image row r
    for r in range(image):
        changed = base.copy()
        changed[r] += 0.5
        reaches[:, r] = (pre(changed)[0] != before).any(axis=(0, 2))
    for i in range(model):
        top, _, bottom, _ = image_box((i, 0, i + 1, 8), (image, 8), (model, 8))
        rows = np.flatnonzero(reaches[i])
        assert rows.min() >= top and rows.max() < bottom, (i, rows, top, bottom)
        assert rows.min() - top <= 1 and bottom - 1 - rows.max() <= 1, (i, rows, top, bottom)


def test_the_field_is_shown_in_the_layer_repr() -> None:
    field = featvis.receptive_field(tiny_cnn(), "conv2")
    assert "fields up to 8x8 pixels" in repr(field)
    assert field.size == (8, 8) and field.output_size == (16, 16)
