"""ONNX fixtures, built in temporary folders once per session: never committed.

Hand-built graphs cover what exporters rarely produce together (unnamed nodes, a Constant-node
weight, MaxPool indices, a Dropout mask left empty, an If, two inputs, quantization, NHWC,
external data); torchvision's AlexNet and ResNet-18 with seeded random weights are exported
with ``torch.onnx.export`` as a user would call it.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
RNG = np.random.default_rng(7)

W_ZOO = RNG.normal(0, 0.5, (4, 3, 3, 3)).astype(np.float32)
W_TWO = RNG.normal(0, 0.5, (2, 3, 1, 1)).astype(np.float32)
W_NHWC = RNG.normal(0, 0.5, (5, 3, 3, 3)).astype(np.float32)
B_NHWC = RNG.normal(0, 1.0, (5,)).astype(np.float32)
W_EXTERNAL = RNG.normal(0, 0.5, (16, 3, 3, 3)).astype(np.float32)


def make_model(
    nodes: list[onnx.NodeProto],
    inputs: list[onnx.ValueInfoProto],
    outputs: list[onnx.ValueInfoProto],
    initializers: list[np.ndarray | onnx.TensorProto] | None = None,
    *,
    names: list[str] | None = None,
    opset: int = OPSET,
) -> onnx.ModelProto:
    tensors = [
        t if isinstance(t, onnx.TensorProto) else numpy_helper.from_array(t, name)
        for t, name in zip(initializers or [], names or [])
    ]
    graph = helper.make_graph(nodes, "g", inputs, outputs, tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def value(name: str, elem: int, shape: list[int | str | None] | None) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def save(onnx_dir: Path) -> Callable[[onnx.ModelProto, str], Path]:
    def save(model: onnx.ModelProto, name: str) -> Path:
        path = onnx_dir / name
        onnx.save_model(model, path)
        return path

    return save


@pytest.fixture(scope="session")
def zoo(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """Unnamed nodes, a Constant-node weight, MaxPool with indices, Dropout with an empty mask,
    shape plumbing, and an If whose branches read an outer tensor. Dynamic batch."""
    weight = numpy_helper.from_array(W_ZOO, "w_value")
    then = helper.make_graph(
        [helper.make_node("Relu", ["flat"], ["then_out"], name="then_relu")],
        "then",
        [],
        [value("then_out", TensorProto.FLOAT, None)],
    )
    other = helper.make_graph(
        [helper.make_node("Neg", ["flat"], ["else_out"], name="else_neg")],
        "else",
        [],
        [value("else_out", TensorProto.FLOAT, None)],
    )
    nodes = [
        helper.make_node("Constant", [], ["w"], value=weight),  # unnamed, as every node here
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("MaxPool", ["r"], ["p", "p_idx"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Dropout", ["p"], ["d", ""]),
        helper.make_node("Shape", ["d"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["d", "target"], ["flat"]),
        helper.make_node("ReduceSum", ["flat"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero_f"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then, else_branch=other),
    ]
    model = make_model(
        nodes,
        [value("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [value("y", TensorProto.FLOAT, None), value("p_idx", TensorProto.INT64, None)],
        [np.array(0, np.int64), np.array([0], np.int64), np.array([-1], np.int64), np.float32(0)],
        names=["zero", "zero1", "minus_one", "zero_f"],
    )
    return save(model, "zoo.onnx")


@pytest.fixture(scope="session")
def two_inputs(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """An image and a scale input, and a weight old-style listed among the inputs (IR 3)."""
    nodes = [
        helper.make_node("Conv", ["image", "W"], ["c"], name="conv"),
        helper.make_node("Mul", ["c", "scale"], ["y"], name="scaled"),
    ]
    model = make_model(
        nodes,
        [
            value("image", TensorProto.FLOAT, [1, 3, 8, 8]),
            value("W", TensorProto.FLOAT, [2, 3, 1, 1]),
            value("scale", TensorProto.FLOAT, [1]),
        ],
        [value("y", TensorProto.FLOAT, [1, 2, 8, 8])],
        [W_TWO],
        names=["W"],
    )
    model.ir_version = 3
    return save(model, "two_inputs.onnx")


QDQ_SCALE, QDQ_ZERO = np.float32(0.02), np.uint8(128)


@pytest.fixture(scope="session")
def qdq(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """QDQ quantization as onnxruntime.quantization writes it: Q/DQ around a float Conv."""
    w_int = np.clip(np.round(W_ZOO / 0.01), -127, 127).astype(np.int8)
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "ws", "wzp"], ["w"], name="dq_w"),
        helper.make_node("Conv", ["xdq", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("QuantizeLinear", ["r", "s", "zp"], ["rq"], name="q_out"),
        helper.make_node("DequantizeLinear", ["rq", "s", "zp"], ["y"], name="dq_out"),
    ]
    model = make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [value("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [QDQ_SCALE, QDQ_ZERO, w_int, np.float32(0.01), np.int8(0)],
        names=["s", "zp", "w_q", "ws", "wzp"],
    )
    return save(model, "qdq.onnx")


@pytest.fixture(scope="session")
def qlinear(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """QOperator quantization: a QLinearConv whose uint8 output has its own scale."""
    w_int = np.clip(np.round(W_ZOO / 0.01), -127, 127).astype(np.int8)
    inputs = ["xq", "s", "zp", "w_q", "ws", "wzp", "ys", "yzp"]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q_in"),
        helper.make_node("QLinearConv", inputs, ["yq"], name="qconv", pads=[1, 1, 1, 1]),
    ]
    model = make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [value("yq", TensorProto.UINT8, [1, 4, 8, 8])],
        [QDQ_SCALE, QDQ_ZERO, w_int, np.float32(0.01), np.int8(0), np.float32(0.05), np.uint8(100)],
        names=["s", "zp", "w_q", "ws", "wzp", "ys", "yzp"],
    )
    return save(model, "qlinear.onnx")


@pytest.fixture(scope="session")
def nhwc(save: Callable[[onnx.ModelProto, str], Path]) -> Path:
    """tf2onnx style: an NHWC input, Transposes around an NCHW Conv, NHWC tensors after."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["x_nchw"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["x_nchw", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["r_nhwc"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("Add", ["r_nhwc", "bias"], ["a"], name="add_bias"),
        helper.make_node("Reshape", ["a", "shape"], ["folded"], name="fold"),
        helper.make_node("Relu", ["folded"], ["y"], name="relu_after_fold"),
    ]
    model = make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [1, 8, 8, 3])],
        [value("y", TensorProto.FLOAT, [1, 5, 8, 8])],
        [W_NHWC, B_NHWC, np.arange(5, dtype=np.float32), np.array([1, 5, 8, 8], np.int64)],
        names=["w", "b", "bias", "shape"],
    )
    return save(model, "nhwc.onnx")


@pytest.fixture(scope="session")
def external(onnx_dir: Path) -> Path:
    """A model whose weight lives in an external data file next to it."""
    folder = onnx_dir / "external"
    folder.mkdir()
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"], name="relu"),
    ]
    model = make_model(
        nodes,
        [value("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [value("y", TensorProto.FLOAT, [1, 16, 8, 8])],
        [W_EXTERNAL],
        names=["w"],
    )
    path = folder / "model.onnx"
    onnx.save_model(
        model, path, save_as_external_data=True, location="weights.bin", size_threshold=0
    )
    return path


# -- exported PyTorch models -----------------------------------------------------------------


def export(model: object, path: Path, *, dynamo: bool = True, size: int = 224) -> Path:
    """``torch.onnx.export(model, (x,), path)`` as a user calls it (the exporter prints)."""
    import torch

    x = torch.zeros(1, 3, size, size)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        if not dynamo:
            # The TorchScript exporter is deprecated since PyTorch 2.9 and says so through
            # several of its functions, and warns about its own constant folding; it is
            # exercised here on purpose, and its warnings are silenced in this call only.
            warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), path, dynamo=dynamo)  # type: ignore[arg-type]
    return path


def randomized(model: object) -> object:
    """Seeded random BatchNorm statistics and affine weights: with torchvision's defaults a
    BatchNorm is nearly the identity, and folding it at export could not be told apart."""
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in model.modules():  # type: ignore[attr-defined]
            if isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.randn(n, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(n, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(n, generator=generator) * 0.2)
    return model


def torchvision_model(arch: str) -> object:
    import torch
    import torchvision

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval()
    return randomized(model)


@pytest.fixture(scope="session")
def export_onnx() -> Callable[..., Path]:
    """``export(model, path, dynamo=True, size=224)``, for tests that export their own model."""
    return export


@pytest.fixture(scope="session")
def alexnet(onnx_dir: Path) -> tuple[object, Path]:
    model = torchvision_model("alexnet")
    return model, export(model, onnx_dir / "alexnet.onnx")


@pytest.fixture(scope="session")
def resnet18(onnx_dir: Path) -> tuple[object, Path]:
    model = torchvision_model("resnet18")
    return model, export(model, onnx_dir / "resnet18.onnx")


@pytest.fixture(scope="session")
def resnet18_legacy(onnx_dir: Path, resnet18: tuple[object, Path]) -> tuple[object, Path]:
    model = resnet18[0]
    return model, export(model, onnx_dir / "resnet18_legacy.onnx", dynamo=False)


@pytest.fixture(scope="session")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [
        rng.integers(0, 256, (224, 224, 3), dtype=np.uint8),
        rng.integers(0, 256, (180, 240, 3), dtype=np.uint8),
    ]
