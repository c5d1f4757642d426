"""The rest of an ONNX model after a layer (Patchable): a fixed-batch export runs many
replacements at once, and a rest that cannot is run one replacement at a time, never wrong."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import featvis
from featvis_onnx._patch import _rests

from .conftest import make_model, value

RNG = np.random.default_rng(11)
W_CONV = RNG.normal(0, 0.5, (6, 3, 1, 1)).astype(np.float32)
W_FC = RNG.normal(0, 0.5, (5, 6)).astype(np.float32)
B_FC = RNG.normal(0, 0.5, (5,)).astype(np.float32)


def _head(extra: list[onnx.NodeProto], into_gemm: str) -> onnx.ModelProto:
    """conv -> relu -> global average pool -> Reshape to [1, 6] (as torch.onnx exports
    ``flatten`` at a fixed batch of one) -> ``extra`` -> Gemm."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Reshape", ["p", "flat"], ["f"], name="flatten"),
        *extra,
        helper.make_node("Gemm", [into_gemm, "fc_w", "fc_b"], ["y"], name="fc", transB=1),
    ]
    return make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [value("y", TensorProto.FLOAT, [1, 5])],
        [W_CONV, W_FC, B_FC, np.array([1, 6], np.int64), np.array([0], np.int64)],
        names=["w", "fc_w", "fc_b", "flat", "zero"],
    )


@pytest.fixture(scope="module")
def fixed(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    return save(_head([], "f"), "fixed_batch_head.onnx")


@pytest.fixture(scope="module")
def reversing(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """The same, with the batch reversed before the Gemm: the identity at a batch of one, and
    two equal replacements score the same in either order, so only different ones show it."""
    reverse = helper.make_node(
        "Slice", ["f", "minus_one", "lowest", "zero", "minus_one"], ["fr"], name="reverse"
    )
    model = _head([reverse], "fr")
    for name, v in (("minus_one", [-1]), ("lowest", [-(2**62)])):
        model.graph.initializer.append(onnx.numpy_helper.from_array(np.array(v, np.int64), name))
    return save(model, "reversing_head.onnx")


def _replacements(backend: featvis.Backend, image: np.ndarray) -> np.ndarray:
    own = backend.activations(image, "r")
    rows = np.repeat(own, 7, axis=0)
    rows[1:] *= RNG.random((6, 6, 1, 1)).astype(np.float32)  # a different scale per channel
    return rows


def _one_at_a_time(backend: featvis.Backend, image: np.ndarray, rows: np.ndarray) -> np.ndarray:
    return np.concatenate([backend.patched_scores(image, "r", row[None]) for row in rows])


def test_a_fixed_batch_export_scores_all_replacements_in_one_run(fixed: Path) -> None:
    backend = featvis.load(fixed)
    image = RNG.random((8, 8, 3)).astype(np.float32)
    rows = _replacements(backend, image)
    got = backend.patched_scores(image, "r", rows)
    assert _rests[backend]["r"].batched  # the Reshape to [1, 6] now follows the batch
    np.testing.assert_allclose(got, _one_at_a_time(backend, image, rows), rtol=1e-6, atol=1e-6)
    # and each row is the model with the layer replaced: the head by hand
    pooled = rows.mean(axis=(2, 3))
    np.testing.assert_allclose(got, pooled @ W_FC.T + B_FC, rtol=1e-5, atol=1e-5)


def test_a_rest_that_mixes_the_batch_runs_one_replacement_at_a_time(reversing: Path) -> None:
    backend = featvis.load(reversing)
    image = RNG.random((8, 8, 3)).astype(np.float32)
    rows = _replacements(backend, image)
    got = backend.patched_scores(image, "r", rows)
    assert _rests[backend]["r"].batched is False
    pooled = rows.mean(axis=(2, 3))
    np.testing.assert_allclose(got, pooled @ W_FC.T + B_FC, rtol=1e-5, atol=1e-5)
