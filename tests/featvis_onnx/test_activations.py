"""Activations: values checked against numpy and plain ONNX Runtime, sessions, inputs, layouts."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import featvis
from featvis_onnx import OnnxBackend
from featvis_onnx._session import submodel

RAW = featvis.Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def conv2d(x: np.ndarray, w: np.ndarray, pad: int) -> np.ndarray:
    """A plain numpy convolution (stride 1), the reference for ONNX Runtime's."""
    k = w.shape[-1]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows, w.astype(np.float64))


def initializer(path: Path, name: str) -> np.ndarray:
    """A weight as stored in the model file (read with onnx, not with featvis)."""
    model = onnx.load(path)
    for tensor in model.graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(name)


@pytest.fixture(scope="module")
def batch() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(3, 3, 8, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def zoo_backend(zoo: Path) -> OnnxBackend:
    return OnnxBackend(zoo, preprocess=RAW)


def test_values_match_a_numpy_reference(
    zoo: Path, zoo_backend: OnnxBackend, batch: np.ndarray
) -> None:
    outs = zoo_backend.activations(batch, ["c", "r", "p", "d", "flat", "y"])
    conv = conv2d(batch, initializer(zoo, "w"), 1)
    np.testing.assert_allclose(outs["c"], conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(outs["r"], np.maximum(conv, 0), rtol=1e-5, atol=1e-5)
    pooled = np.maximum(conv, 0).reshape(3, 4, 4, 2, 4, 2).max(axis=(3, 5))
    np.testing.assert_allclose(outs["p"], pooled, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs["d"], outs["p"])  # dropout is the identity here
    assert outs["flat"].shape == (3, 64, 1, 1)
    assert all(v.dtype == np.float32 and v.flags.c_contiguous for v in outs.values())
    # The If's branch ran: the sum of ReLU outputs is positive, so y = Relu(flat) = flat.
    np.testing.assert_array_equal(outs["y"], outs["flat"])


def test_a_conv_keeps_its_own_value_before_a_relu(
    zoo_backend: OnnxBackend, batch: np.ndarray
) -> None:
    together = zoo_backend.activations(batch, ["c", "r"])
    alone = zoo_backend.activations(batch, "c")
    assert (together["c"] < 0).any(), "the test needs negative convolution outputs"
    assert not np.array_equal(together["c"], together["r"])  # not fused into Conv+Relu
    np.testing.assert_array_equal(alone, together["c"])
    np.testing.assert_array_equal(together["r"], np.maximum(together["c"], 0))


@pytest.mark.parametrize("level", ["disabled", "basic", "extended", "all"])
def test_every_optimization_level_gives_the_same_values(
    zoo: Path, zoo_backend: OnnxBackend, batch: np.ndarray, level: str
) -> None:
    backend = OnnxBackend(zoo, preprocess=RAW, optimization=level)
    expected = zoo_backend.activations(batch, ["c", "r", "p"])
    got = backend.activations(batch, ["c", "r", "p"])
    for name in expected:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)


def test_sessions_are_cached_per_set_of_layers(zoo: Path, batch: np.ndarray) -> None:
    backend = OnnxBackend(zoo, preprocess=RAW)
    sessions = backend._sessions
    backend.activations(batch, ["c", "r"])
    backend.activations(batch, ["r", "c"])  # the same set, another order
    assert sessions.built == 1
    outs = backend.activations(batch, ["relu1", "c", "r", "conv1"])  # aliases and duplicates
    assert list(outs) == ["relu1", "c", "r", "conv1"]
    np.testing.assert_array_equal(outs["relu1"], outs["r"])
    np.testing.assert_array_equal(outs["conv1"], outs["c"])
    assert sessions.built == 1
    backend.activations(batch, "p")
    assert sessions.built == 2


def test_a_sub_model_keeps_only_what_the_layer_needs(alexnet: tuple[object, Path]) -> None:
    backend = OnnxBackend(alexnet[1])
    conv1 = backend.layer("conv1")
    model = submodel(backend._graph, [conv1.name])
    assert [node.op_type for node in model.graph.node] == ["Conv"]
    assert {t.name for t in model.graph.initializer} == {"features.0.weight", "features.0.bias"}
    assert [o.name for o in model.graph.output] == [conv1.name]


def test_nodes_after_the_layer_never_run(save: Callable[..., Path], batch: np.ndarray) -> None:
    weight = np.ones((2, 3, 1, 1), np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
            helper.make_node("Relu", ["c"], ["r"], name="relu"),
            helper.make_node("Explode", ["r"], ["y"], name="boom", domain="com.featvis.test"),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(weight, "w")],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.featvis.test", 1)]
    path = save(helper.make_model(graph, opset_imports=opsets), "explodes.onnx")
    backend = OnnxBackend(path, preprocess=RAW)
    # ONNX Runtime cannot even load the operator after the ReLU...
    with pytest.raises(Exception, match="Explode"):  # onnxruntime's own exception type
        ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # ...yet the ReLU's output comes back, because only the nodes it depends on are run.
    expected = np.maximum(batch.sum(axis=1, keepdims=True), 0).repeat(2, axis=1)
    np.testing.assert_allclose(backend.activations(batch, "r"), expected, rtol=1e-5, atol=1e-5)


# -- batches and inputs -----------------------------------------------------------------------


def test_a_fixed_batch_of_one_runs_image_by_image(two_inputs: Path, batch: np.ndarray) -> None:
    backend = OnnxBackend(two_inputs, preprocess=RAW, inputs={"scale": np.array([2.0])})
    assert backend.image_input.fixed(0) == 1
    together = backend.activations(batch, ["c", "y"])
    for i in range(len(batch)):
        np.testing.assert_array_equal(
            backend.activations(batch[i : i + 1], "y"), together["y"][i : i + 1]
        )
    weight = initializer(two_inputs, "W")
    np.testing.assert_allclose(together["c"], conv2d(batch, weight, 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(together["y"], 2 * together["c"], rtol=1e-6)


def test_other_inputs_must_be_given_by_name(two_inputs: Path) -> None:
    with pytest.raises(featvis.ArgumentError, match=r"'scale'.*inputs=\{'scale': array\}"):
        OnnxBackend(two_inputs)
    with pytest.raises(featvis.ArgumentError, match="no input 'sclae'.*'image', 'scale'"):
        OnnxBackend(two_inputs, inputs={"sclae": 1.0})


def test_a_weight_listed_as_an_input_is_never_overwritten(two_inputs: Path) -> None:
    backend = OnnxBackend(two_inputs, inputs={"scale": [1.0]})
    assert [spec.name for spec in backend.inputs] == ["image", "scale"]  # not W
    with pytest.raises(featvis.ArgumentError, match="'W' is a weight.*never overwrites"):
        OnnxBackend(two_inputs, inputs={"scale": [1.0], "W": np.zeros((2, 3, 1, 1))})


def _single_op_model(
    save: Callable[..., Path], name: str, elem: int, shape: list, op: str = "Relu", **attrs: object
) -> Path:
    out = TensorProto.FLOAT if op == "Cast" else elem
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name="op", **attrs)],
        "g",
        [helper.make_tensor_value_info("x", elem, shape)],
        [helper.make_tensor_value_info("y", out, None)],
    )
    return save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), name)


@pytest.mark.parametrize(
    ("elem", "dtype"),
    [(TensorProto.DOUBLE, np.float64), (TensorProto.FLOAT16, np.float16)],
)
def test_float_inputs_are_converted_and_outputs_come_back_float32(
    save: Callable[..., Path], batch: np.ndarray, elem: int, dtype: type
) -> None:
    path = _single_op_model(save, f"relu_{np.dtype(dtype).name}.onnx", elem, ["N", 3, 8, 8])
    out = OnnxBackend(path, preprocess=RAW).activations(batch, "y")
    assert out.dtype == np.float32
    expected = np.maximum(batch.astype(dtype), 0).astype(np.float32)
    np.testing.assert_array_equal(out, expected)


def test_uint8_pixels_go_in_as_they_are(save: Callable[..., Path]) -> None:
    path = _single_op_model(
        save, "cast_uint8.onnx", TensorProto.UINT8, [1, 6, 5, 3], op="Cast", to=TensorProto.FLOAT
    )
    backend = OnnxBackend(path)
    assert backend.image_input.layout == "NHWC" and backend.preprocess.size == (6, 5)
    image = np.random.default_rng(1).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    out = backend.activations(image, "y")  # an NHWC float tensor, returned NCHW
    np.testing.assert_array_equal(out[0], image.transpose(2, 0, 1).astype(np.float32))
    with pytest.raises(featvis.ImageError, match=r"uint8 pixels in \[0, 255\]"):
        OnnxBackend(path, preprocess=featvis.Preprocess(size=(6, 5))).activations(image, "y")


def test_dynamic_height_and_width_take_the_image_size(save: Callable[..., Path]) -> None:
    path = _single_op_model(save, "relu_dynamic.onnx", TensorProto.FLOAT, ["N", 3, "H", "W"])
    assert OnnxBackend(path).preprocess.size == (224, 224)  # the default for dynamic sizes
    backend = OnnxBackend(path, preprocess=featvis.Preprocess(size=None))
    out = backend.activations(np.zeros((21, 34, 3), np.uint8), "y")
    assert out.shape == (1, 3, 21, 34)
    assert backend.layers()[0].output_shape == (None, 3, None, None)


def test_a_fixed_size_is_what_images_are_resized_to(zoo: Path) -> None:
    backend = OnnxBackend(zoo, preprocess=featvis.Preprocess(size=(32, 32)))
    assert backend.preprocess.size == (8, 8)  # the model's; the Preprocess's mean/std stay
    assert backend.activations(np.zeros((50, 70, 3), np.uint8), "c").shape == (1, 4, 8, 8)
    with pytest.raises(featvis.ImageError, match="takes 8x8 images; got 9x9"):
        backend.activations(np.zeros((1, 3, 9, 9), np.float32), "c")
    with pytest.raises(featvis.ArgumentError, match="takes 3 channels"):
        OnnxBackend(zoo, preprocess=featvis.Preprocess(mean=(0.5,), std=(0.5,)))


# -- quantization and layouts ----------------------------------------------------------------


def test_qdq_tensors_are_dequantized(qdq: Path, batch: np.ndarray) -> None:
    backend = OnnxBackend(qdq, preprocess=RAW)
    layers = backend.layers()
    assert [(layer.name, layer.type) for layer in layers] == [
        ("xq", "QuantizeLinear"),
        ("c", "Conv"),
        ("r", "Relu"),
        ("rq", "QuantizeLinear"),
    ]  # the DequantizeLinear outputs repeat the quantized values: not listed
    assert layers[0].description == "quantize to uint8 (scale 0.02, zero point 128)"
    assert layers[1].params == 4 * 3 * 3 * 3  # the int8 weight, through its DequantizeLinear
    outs = backend.activations(batch, ["xq", "c", "rq"])
    expected = (np.clip(np.round(batch / 0.02) + 128, 0, 255) - 128) * 0.02
    np.testing.assert_allclose(outs["xq"], expected, atol=1e-6)
    assert np.unique(np.round(outs["rq"] / 0.02, 3)).size > 10  # real steps, not raw bytes
    np.testing.assert_allclose(outs["rq"], np.clip(np.maximum(outs["c"], 0), 0, 2.54), atol=0.0101)
    with pytest.raises(featvis.UnknownLayerError, match="listed dequantized"):
        backend.layer("xdq")


def test_qlinear_outputs_are_dequantized_with_their_own_scale(
    qlinear: Path, batch: np.ndarray
) -> None:
    backend = OnnxBackend(qlinear, preprocess=RAW)
    layer = backend.layer("yq")
    assert (layer.kind, layer.type) == ("conv", "QLinearConv")
    session = ort.InferenceSession(str(qlinear), providers=["CPUExecutionProvider"])
    raw = np.concatenate([session.run(["yq"], {"x": batch[i : i + 1]})[0] for i in range(3)])
    assert raw.dtype == np.uint8
    np.testing.assert_allclose(backend.activations(batch, "yq"), (raw - 100.0) * 0.05, atol=1e-6)


def test_nhwc_graphs_come_back_nchw(nhwc: Path, batch: np.ndarray) -> None:
    backend = OnnxBackend(nhwc, preprocess=RAW)
    assert backend.image_input.layout == "NHWC"
    shapes = {layer.name: layer.output_shape for layer in backend.layers()}
    assert shapes["x_nchw"] == (None, 3, 8, 8)
    assert shapes["r_nhwc"] == (None, 5, 8, 8) and shapes["a"] == (None, 5, 8, 8)
    outs = backend.activations(batch, ["x_nchw", "c", "r", "r_nhwc", "a"])
    np.testing.assert_array_equal(outs["x_nchw"], batch)  # fed NHWC, transposed back by the graph
    conv = conv2d(batch, initializer(nhwc, "w"), 1) + initializer(nhwc, "b")[:, None, None]
    np.testing.assert_allclose(outs["c"], conv, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(outs["r_nhwc"], outs["r"])
    bias = np.arange(5, dtype=np.float32)[:, None, None]
    np.testing.assert_allclose(outs["a"], outs["r"] + bias, rtol=1e-6)


@pytest.mark.parametrize("name", ["folded", "y"])
def test_an_undeterminable_layout_is_an_error(nhwc: Path, batch: np.ndarray, name: str) -> None:
    backend = OnnxBackend(nhwc, preprocess=RAW)
    # A Reshape of the NHWC (1, 8, 8, 5) to (1, 5, 8, 8): the pixels no longer line up.
    assert "reshapes its input" in (backend.layer(name).unavailable or "")
    with pytest.raises(featvis.LayoutError, match=f"'{name}' .*cannot be returned: the model res"):
        backend.activations(batch, name)
    assert backend._sessions.built == 0  # refused before anything ran
    with pytest.warns(featvis.LayerWarning, match=f"'{name}'"):
        partial = backend.activations(batch, ["a", name])
    assert list(partial) == ["a"] and isinstance(partial.missing[name], featvis.LayoutError)
    with pytest.raises(featvis.LayoutError, match="cannot be returned"):
        partial[name]  # asking the result for it says why


# -- execution options -----------------------------------------------------------------------


def test_providers_pass_through(zoo: Path, batch: np.ndarray) -> None:
    backend = OnnxBackend(zoo, preprocess=RAW, providers=["CPUExecutionProvider"], threads=1)
    assert backend.activations(batch, "c").shape == (3, 4, 8, 8)
    assert backend.provenance["providers"] == "CPUExecutionProvider"
    missing = [p for p in ["CUDAExecutionProvider"] if p not in ort.get_available_providers()]
    if missing:  # on a machine without CUDA, asking for it says what to install
        with pytest.raises(featvis.ArgumentError, match="CUDAExecutionProvider.*onnxruntime-gpu"):
            OnnxBackend(zoo, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    else:
        cuda = OnnxBackend(zoo, preprocess=RAW, providers=["CUDAExecutionProvider"])
        np.testing.assert_allclose(
            cuda.activations(batch, "c"), backend.activations(batch, "c"), atol=1e-4
        )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"optimization": "max"}, "optimization must be one of 'all'"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"providers": []}, "is not available"),
    ],
)
def test_bad_options_are_refused(zoo: Path, options: dict, message: str) -> None:
    with pytest.raises(featvis.ArgumentError, match=message):
        OnnxBackend(zoo, **options)
