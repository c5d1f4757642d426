"""Axes followed through hand-built graphs: NHWC inputs and blocks, sequences, tokens, scales.

Every expected array comes from running the graph with plain ONNX Runtime and moving the axes
by hand (numpy transposes written out here), never from featvis's own placement.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import featvis
from featvis_onnx import OnnxBackend


def value(name: str, elem: int, shape: list[int | str] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[np.ndarray],
    *,
    names: list[str],
    opset: int = 17,
) -> onnx.ModelProto:
    tensors = [onnx.numpy_helper.from_array(t, name) for t, name in zip(initializers, names)]
    graph = helper.make_graph(nodes, "g", inputs, outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


RNG = np.random.default_rng(11)
F = TensorProto.FLOAT
RAW = featvis.Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def run(path: Path, names: list[str], x: np.ndarray) -> dict[str, np.ndarray]:
    """The raw values of ``names``, from plain ONNX Runtime on the whole graph."""
    model = onnx.load(path)
    have = {o.name for o in model.graph.output}
    for name in names:
        if name not in have:
            model.graph.output.append(helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def every_layer_at_once(backend: OnnxBackend, batch: np.ndarray) -> dict[str, np.ndarray]:
    """All layers in one call (no warning allowed), and image i of it equal to image i alone."""
    names = [layer.name for layer in backend.layers()]
    assert all(layer.unavailable is None for layer in backend.layers())
    together = backend.activations(batch, names)
    assert list(together) == names and not together.missing
    for i in range(len(batch)):
        alone = backend.activations(batch[i : i + 1], names)
        for name in names:
            np.testing.assert_allclose(together[name][i : i + 1], alone[name], atol=1e-5)
    return dict(together)


# -- NHWC ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nhwc_block(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """An NHWC input (tf2onnx style), and a ConvNeXt-like NHWC block with operators the old
    layout tracker gave up on: LayerNormalization, MatMul, Erf, LpNormalization, ReduceMean."""
    w = RNG.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)
    fc = RNG.normal(0, 0.5, (6, 4)).astype(np.float32)
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Transpose", ["c"], ["c_nhwc"], perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["c_nhwc", "gamma", "beta"], ["ln"], axis=-1),
        helper.make_node("MatMul", ["ln", "fc"], ["mm"]),
        helper.make_node("Erf", ["mm"], ["erf"]),
        helper.make_node("LpNormalization", ["erf"], ["lp"], axis=-1),
        helper.make_node("ReduceMean", ["lp", "axes"], ["pooled"], keepdims=1),
    ]
    model = make_model(
        nodes,
        [value("x", F, ["N", 8, 8, 3])],
        [value("pooled", F, None)],
        [w, np.ones(6, np.float32), np.zeros(6, np.float32), fc, np.array([1, 2], np.int64)],
        names=["w", "gamma", "beta", "fc", "axes"],
        opset=18,
    )
    return save(model, "nhwc_block.onnx")


def test_nhwc_tensors_anywhere_come_back_nchw(nhwc_block: Path) -> None:
    backend = OnnxBackend(nhwc_block, preprocess=RAW)
    assert backend.image_input.layout == "NHWC"
    layouts = {layer.name: (layer.layout, layer.output_shape) for layer in backend.layers()}
    assert layouts == {
        "x_nchw": ("NCHW", (None, 3, 8, 8)),
        "c": ("NCHW", (None, 6, 8, 8)),
        "c_nhwc": ("NHWC", (None, 6, 8, 8)),
        "ln": ("NHWC", (None, 6, 8, 8)),
        "mm": ("NHWC", (None, 4, 8, 8)),
        "erf": ("NHWC", (None, 4, 8, 8)),
        "lp": ("NHWC", (None, 4, 8, 8)),
        "pooled": ("NHWC", (None, 4, 1, 1)),
    }
    batch = RNG.normal(size=(3, 3, 8, 8)).astype(np.float32)
    out = every_layer_at_once(backend, batch)
    raw = run(nhwc_block, ["c", "lp", "pooled"], batch.transpose(0, 2, 3, 1))
    np.testing.assert_allclose(out["c"], raw["c"], atol=1e-5)
    np.testing.assert_allclose(out["lp"], raw["lp"].transpose(0, 3, 1, 2), atol=1e-6)
    np.testing.assert_allclose(out["pooled"], raw["pooled"].transpose(0, 3, 1, 2), atol=1e-6)


# -- sequences -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lstm(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """(N, 3, 1, T) -> (T, N, 3) -> a bidirectional LSTM -> (T, 2, N, 4) and (T, N, 8)."""
    hidden, inputs = 4, 3
    w = RNG.normal(0, 0.5, (2, 4 * hidden, inputs)).astype(np.float32)
    r = RNG.normal(0, 0.5, (2, 4 * hidden, hidden)).astype(np.float32)
    nodes = [
        helper.make_node("Squeeze", ["x", "two"], ["seq_nct"]),
        helper.make_node("Transpose", ["seq_nct"], ["seq"], perm=[2, 0, 1]),
        helper.make_node(
            "LSTM", ["seq", "W", "R"], ["y", "y_h"], hidden_size=hidden, direction="bidirectional"
        ),
        helper.make_node("Transpose", ["y"], ["y_tn"], perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["y_tn", "target"], ["out"]),  # (T, N, 2 * hidden)
        helper.make_node("Relu", ["out"], ["relu"]),
    ]
    model = make_model(
        nodes,
        [value("x", F, ["N", 3, 1, 4])],
        [value("relu", F, None)],
        [np.array([2], np.int64), w, r, np.array([0, 0, -1], np.int64)],
        names=["two", "W", "R", "target"],
    )
    return save(model, "lstm.onnx")


@pytest.mark.parametrize("batch_size", [4, 3])  # T is 4: the batch equal to T, and not
def test_a_sequence_first_lstm_keeps_each_image_to_itself(lstm: Path, batch_size: int) -> None:
    backend = OnnxBackend(lstm, preprocess=featvis.Preprocess(size=(1, 4)))
    layers = {layer.name: layer for layer in backend.layers()}
    assert layers["y"].layout == "LCNC" and layers["y"].output_shape == (None, 8, 1, 4)
    assert layers["relu"].layout == "LNC" and layers["relu"].output_shape == (None, 8, 1, 4)
    # (dirs, N, hidden): the final states, the directions side by side as a sequence
    assert layers["y_h"].layout == "LNC" and layers["y_h"].output_shape == (None, 4, 1, 2)
    batch = RNG.normal(size=(batch_size, 3, 1, 4)).astype(np.float32)
    out = every_layer_at_once(backend, batch)
    raw = run(lstm, ["y", "relu"], batch)
    # (T, dirs, N, H) -> (N, dirs * H, 1, T); (T, N, C) -> (N, C, 1, T)
    y = raw["y"].transpose(2, 1, 3, 0).reshape(batch_size, 8, 1, 4)
    np.testing.assert_allclose(out["y"], y, atol=1e-6)
    np.testing.assert_allclose(out["relu"], raw["relu"].transpose(1, 2, 0)[:, :, None], atol=1e-6)


# -- tokens ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokens(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """2x2 patches -> (N, 16, C) tokens with a class token -> LayerNormalization."""
    w = RNG.normal(0, 0.5, (5, 3, 2, 2)).astype(np.float32)
    cls = RNG.normal(size=(1, 1, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["patches"], strides=[2, 2]),
        helper.make_node("Flatten", ["patches"], ["flat"], axis=2),  # (N*5, 16): N and C merged
        helper.make_node("Reshape", ["patches", "nc_l"], ["ncl"]),  # (N, 5, 16)
        helper.make_node("Transpose", ["ncl"], ["nlc"], perm=[0, 2, 1]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Concat", ["n", "one_five"], ["cls_shape"], axis=0),
        helper.make_node("Expand", ["cls", "cls_shape"], ["cls_n"]),
        helper.make_node("Concat", ["cls_n", "nlc"], ["with_cls"], axis=1),
        helper.make_node("LayerNormalization", ["with_cls", "g", "b"], ["ln"], axis=-1),
    ]
    model = make_model(
        nodes,
        [value("x", F, ["N", 3, 8, 8])],
        [value("ln", F, None), value("flat", F, None)],
        [
            w,
            np.array([0, 5, 16], np.int64),
            cls,
            np.array([0], np.int64),
            np.array([1, 5], np.int64),
            np.ones(5, np.float32),
            np.zeros(5, np.float32),
        ],
        names=["w", "nc_l", "cls", "zero", "one_five", "g", "b"],
        opset=18,
    )
    return save(model, "tokens.onnx")


def test_tokens_come_back_as_their_grid(tokens: Path) -> None:
    backend = OnnxBackend(tokens, preprocess=RAW)
    layers = {layer.name: layer for layer in backend.layers()}
    assert layers["ln"].layout == "NLC" and layers["ln"].output_shape == (None, 5, 4, 4)
    assert layers["ncl"].output_shape == layers["nlc"].output_shape == (None, 5, 4, 4)
    batch = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    out = every_layer_at_once(backend, batch)
    raw = run(tokens, ["patches", "ln"], batch)
    np.testing.assert_allclose(out["nlc"], raw["patches"], atol=1e-6)  # the patch grid again
    grid = raw["ln"][:, 1:].transpose(0, 2, 1).reshape(2, 5, 4, 4)  # the class token aside
    np.testing.assert_allclose(out["ln"], grid, atol=1e-6)


# -- dynamic quantization ------------------------------------------------------------------------


def test_dynamic_quantization_scales_are_not_layers(save: Callable[..., Path]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    w = RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
    fc = RNG.normal(0, 0.5, (4 * 8 * 8, 5)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["flat"]),
        helper.make_node("MatMul", ["flat", "fc"], ["logits"]),
    ]
    model = make_model(
        nodes, [value("x", F, [1, 3, 8, 8])], [value("logits", F, [1, 5])], [w, fc],
        names=["w", "fc"],
    )  # fmt: skip
    float_path = save(model, "dynamic_float.onnx")
    path = float_path.with_name("dynamic_quantized.onnx")
    quantize_dynamic(float_path, path, weight_type=QuantType.QUInt8)
    backend = OnnxBackend(path, preprocess=RAW)
    quantized = onnx.load(path)
    scales = [
        name
        for node in quantized.graph.node
        if node.op_type in ("DynamicQuantizeLinear", "Mul")
        for name in node.output
        if "scale" in name
    ]
    assert scales, "quantize_dynamic made no scale tensors"
    names = [layer.name for layer in backend.layers()]
    assert not set(scales) & set(names)
    with pytest.raises(featvis.UnknownLayerError, match="no batch axis"):
        backend.layer(scales[0])
    batch = RNG.normal(size=(2, 3, 8, 8)).astype(np.float32)
    every_layer_at_once(backend, batch)
    # What the float and the quantized model share by tensor name is compared by name.
    table = featvis.compare(OnnxBackend(float_path, preprocess=RAW), backend, batch, rtol=0.1)
    assert {row.how for row in table} == {"name"} and table.passed, str(table)
    assert {row.layer_a.name for row in table} >= {"r", "flat", "logits"}


# -- what data flow cannot follow ----------------------------------------------------------------


def test_a_reshape_that_scrambles_known_axes_is_listed_and_refused(nhwc: Path) -> None:
    backend = OnnxBackend(nhwc, preprocess=RAW)
    refused = {layer.name for layer in backend.layers() if layer.unavailable}
    assert refused == {"folded", "y"}  # the rest of the graph is fine
    with pytest.raises(featvis.LayoutError, match="'folded'"):
        backend.activations(np.zeros((1, 3, 8, 8), np.float32), "folded")
