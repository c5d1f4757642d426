"""Which tensors are layers, and what each layer says about itself."""

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import featvis
from featvis_onnx import OnnxBackend


@pytest.fixture(scope="module")
def zoo_backend(zoo: Path) -> OnnxBackend:
    return OnnxBackend(zoo, preprocess=featvis.Preprocess(size=(8, 8)))


def test_layers_are_the_float_activations_of_top_level_nodes(zoo_backend: OnnxBackend) -> None:
    layers = zoo_backend.layers()
    # Not layers: the Constant weight, MaxPool's int64 indices, Dropout's empty mask, the
    # shape plumbing (Shape, Gather, Unsqueeze, Concat), the sum over the whole batch (no batch
    # axis), the If's bool condition, and the tensors inside the If's branches.
    assert [(layer.name, layer.alias, layer.type) for layer in layers] == [
        ("c", "conv1", "Conv"),
        ("r", "relu1", "Relu"),
        ("p", "pool1", "MaxPool"),
        ("d", "drop1", "Dropout"),
        ("flat", "reshape1", "Reshape"),
        ("y", "other1", "If"),
    ]
    assert [layer.index for layer in layers] == list(range(len(layers)))


def test_layer_fields_come_from_the_graph(zoo_backend: OnnxBackend) -> None:
    conv, relu, pool, drop, flat, *_ = zoo_backend.layers()
    assert conv.output_shape == (None, 4, 8, 8)
    assert conv.params == 4 * 3 * 3 * 3  # the Constant node's weight
    assert conv.description == "4 3x3x3 convolutions with stride [1 1] and padding [1 1]"
    assert relu.description == "ReLU" and relu.params == 0
    assert pool.output_shape == (None, 4, 4, 4)
    assert pool.description == "2x2 max pooling with stride [2 2] and padding [0 0]"
    assert drop.description == "50% dropout"
    # (N, -1) with a symbolic N: shape inference cannot tell the 64; (N, C) shows as C x 1 x 1
    assert flat.output_shape == (None, None, 1, 1)
    assert all(layer.source is None for layer in zoo_backend.layers())  # not a torch export


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("then_out", ["inside the subgraph", "If", "top-level", "'y'"]),
        ("p_idx", ["INT64", "float activations"]),
        ("w", ["weights and constants only"]),
        ("n", ["shapes"]),
        ("x", ["model input"]),
        ("zero", ["initializer"]),
        ("total", ["no batch axis", "not one per image"]),
    ],
)
def test_tensors_that_are_not_layers_say_why(
    zoo_backend: OnnxBackend, name: str, words: list[str]
) -> None:
    with pytest.raises(featvis.UnknownLayerError) as info:
        zoo_backend.activations(np.zeros((1, 3, 8, 8), np.float32), name)
    for word in words:
        assert word in str(info.value), str(info.value)


def test_an_unknown_name_still_suggests_the_closest_layer(zoo_backend: OnnxBackend) -> None:
    with pytest.raises(featvis.UnknownLayerError, match="Did you mean 'relu1'"):
        zoo_backend.layer("relu1x")


def test_alexnet_layer_table_reads_like_matlab(alexnet: tuple[object, Path]) -> None:
    backend = featvis.load(alexnet[1])
    by_alias = {layer.alias: layer for layer in backend.layers()}
    assert by_alias["conv1"].description == (
        "64 11x11x3 convolutions with stride [4 4] and padding [2 2]"
    )
    assert by_alias["conv1"].output_shape == (None, 64, 55, 55)
    assert by_alias["conv1"].params == 64 * 3 * 11 * 11 + 64
    assert by_alias["pool1"].description == "3x3 max pooling with stride [2 2] and padding [0 0]"
    assert by_alias["fc1"].description == "4096 fully connected layer"
    assert by_alias["fc3"].output_shape == (None, 1000, 1, 1)
    assert by_alias["conv5"].source == "features.10"
    assert by_alias["relu5"].source == "features.11"
    # The table names each tensor and, for an export, the module it came from.
    lines = str(featvis.layer_table(backend)).splitlines()
    assert lines[0].split()[:5] == ["index", "name", "alias", "module", "type"]
    row = next(line.split() for line in lines if " conv5 " in line)
    assert row[1:5] == [by_alias["conv5"].name, "conv5", "features.10", "Conv"]


def test_descriptions_match_featvis_torch(alexnet: tuple[object, Path]) -> None:
    model, path = alexnet
    onnx_layers = {layer.source: layer for layer in featvis.load(path).layers()}
    compared = 0
    for layer in featvis.load(model).layers():
        twin = onnx_layers.get(layer.name)
        same_op = layer.kind in ("conv", "relu", "fc") or layer.type == "MaxPool2d"
        if twin is not None and same_op:
            assert twin.description == layer.description, layer.name
            assert twin.kind == layer.kind
            compared += 1
    assert compared == 5 + 7 + 3 + 3  # convolutions, ReLUs, fully connected, max pooling


def test_dynamo_export_sources_name_modules_and_calls(resnet18: tuple[object, Path]) -> None:
    layers = featvis.load(resnet18[1]).layers()
    sources = [layer.source for layer in layers]
    # BatchNorm is folded into the convolution: the Conv's tensor is the BatchNorm's output.
    conv = layers[0]
    assert (conv.type, conv.source) == ("Conv", "bn1")
    # layer1.0.relu runs twice in BasicBlock.forward: two calls, numbered from 1.
    assert sources.count("layer1.0.relu#1") == 1 and sources.count("layer1.0.relu#2") == 1
    assert "layer1.0.relu" not in sources
    # The residual additions happen inside BasicBlock.forward, in no module of their own.
    assert all(layer.source is None for layer in layers if layer.type == "Add")
    assert sources[-3:] == ["avgpool", None, "fc"]  # torch.flatten is no module
    named = [s for s in sources if s]
    assert len(named) == len(set(named)), "a source names one tensor"


def test_legacy_export_sources_come_from_node_names(
    resnet18_legacy: tuple[object, Path],
) -> None:
    backend = featvis.load(resnet18_legacy[1])
    by_source = {layer.source: layer for layer in backend.layers() if layer.source}
    assert by_source["conv1"].name == "/conv1/Conv_output_0"  # BatchNorm folded, name kept
    assert by_source["layer1.0.relu#2"].name == "/layer1/layer1.0/relu_1/Relu_output_0"
    downsample = by_source["layer2.0.downsample.0"]  # its node scope says 'downsample.0'
    assert downsample.name == "/layer2/layer2.0/downsample/downsample.0/Conv_output_0"
    # A layer can be asked for by its module path too.
    assert backend.layer("layer1.0.relu#2") is by_source["layer1.0.relu#2"]


@pytest.mark.parametrize("dynamo", [True, False])
def test_a_module_of_several_nodes_maps_to_its_last(
    onnx_dir: Path, export_onnx: Callable[..., Path], dynamo: bool
) -> None:
    import torch
    from torch import nn
    from torch.nn import functional

    class PadConv(nn.Module):  # a leaf module of two ONNX nodes: Pad, then Conv
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(4, 3, 3, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return functional.conv2d(functional.pad(x, (0, 1, 0, 1)), self.weight, stride=2)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = PadConv()
            self.act = nn.ReLU6()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.stem(x))

    torch.manual_seed(0)
    model = Net().eval()
    path = export_onnx(model, onnx_dir / f"same_{dynamo}.onnx", dynamo=dynamo, size=15)
    layers = featvis.load(path).layers()
    stem = [layer for layer in layers if layer.source == "stem"]
    assert [layer.type for layer in stem] == ["Conv"]
    pads = [layer for layer in layers if layer.type == "Pad"]
    assert len(pads) == (0 if dynamo else 1)  # the new exporter folds the Pad into the Conv
    assert all(layer.source is None for layer in pads)
    act = [layer for layer in layers if layer.source == "act"]
    assert [(layer.type, layer.kind, layer.description) for layer in act] == [
        ("Clip", "relu", "clipped ReLU (ceiling 6)")  # ReLU6, a relu for featvis_torch too
    ]
    reference = featvis.load(model, preprocess=featvis.Preprocess(size=(15, 15)))
    image = np.random.default_rng(0).integers(0, 256, (15, 15, 3), dtype=np.uint8)
    table = featvis.compare(reference, path, image)
    assert table.all_matched and table.passed, str(table)


def test_descriptions_of_other_operators_match_featvis_torch(
    onnx_dir: Path, export_onnx: Callable[..., Path]
) -> None:
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.ZeroPad2d((1, 1, 2, 2)),
        nn.Conv2d(3, 8, 3, dilation=2),
        nn.PReLU(8),
        nn.ELU(0.5),
        nn.MaxPool2d(3, 2, ceil_mode=True),
        nn.Upsample(scale_factor=2, mode="bilinear"),
        nn.ConvTranspose2d(8, 4, 2, stride=2),
        nn.PixelShuffle(2),
        nn.AvgPool2d(2),
        nn.Conv2d(1, 4, 3, padding=1),
        nn.Hardsigmoid(),
        nn.LogSoftmax(dim=1),
    ).eval()
    path = export_onnx(model, onnx_dir / "operators.onnx", size=20)
    reference = featvis.load(model, preprocess=featvis.Preprocess(size=(20, 20)))
    table = featvis.compare(reference, path, np.full((20, 20, 3), 50, np.uint8))
    assert table.all_matched and table.passed, str(table)
    differ = {
        row.layer_a.name: row.layer_b.description
        for row in table
        if row.layer_a.description != row.layer_b.description
    }
    # The exporter folded the ZeroPad2d into the convolution's padding: [2 1] is honest.
    assert differ == {
        "1": "8 3x3x3 convolutions with stride [1 1] and padding [2 1] and dilation [2 2]"
    }
    assert len(table) == 11
    assert [(u.layer.name, u.explained) for u in table.unmatched_a] == [("0", True)]


def test_constants_cast_like_an_activation_are_not_layers() -> None:
    # How torch.onnx.export(..., optimize=False) writes ReLU6 and a global average pool: the
    # clip bounds are constants cast with CastLike to the activation's type, the pool's axes a
    # reshaped constant, and a broadcast constant is expanded to Shape(x).
    nodes = [
        helper.make_node("Constant", [], ["low"], value_float=0.0),
        helper.make_node("Constant", [], ["high"], value_float=6.0),
        helper.make_node("CastLike", ["low", "x"], ["low_cast"]),
        helper.make_node("CastLike", ["high", "x"], ["high_cast"]),
        helper.make_node("Clip", ["x", "low_cast", "high_cast"], ["clipped"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Expand", ["high_cast", "shape"], ["sixes"]),
        helper.make_node("Add", ["sixes", "clipped"], ["headroom"]),
        helper.make_node("Constant", [], ["axes_flat"], value_ints=[2, 3]),
        helper.make_node("Constant", [], ["axes_shape"], value_ints=[2]),
        helper.make_node("Reshape", ["axes_flat", "axes_shape"], ["axes"]),
        helper.make_node("ReduceMean", ["headroom", "axes"], ["mean"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("mean", TensorProto.FLOAT, [1, 3, 1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    backend = OnnxBackend(model, preprocess=featvis.Preprocess(size=(8, 8)))
    assert [(layer.name, layer.alias, layer.description) for layer in backend.layers()] == [
        ("clipped", "relu1", "clipped ReLU (ceiling 6)"),
        ("headroom", "add1", "element-wise addition of 2 inputs"),
        ("mean", "pool1", "global average pooling"),
    ]
    x = np.random.default_rng(0).normal(0, 4, (1, 3, 8, 8)).astype(np.float32)
    outs = backend.activations(x, ["relu1", "pool1"])
    np.testing.assert_allclose(outs["relu1"], np.clip(x, 0, 6))
    expected = (6 + np.clip(x, 0, 6)).mean(axis=(2, 3), keepdims=True)
    np.testing.assert_allclose(outs["pool1"], expected, rtol=1e-6)
    with pytest.raises(KeyError, match="shapes"):
        backend.activations(x, "sixes")
