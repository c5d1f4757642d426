"""The layer table of a torch model: names, order, kinds, aliases, shapes, params, descriptions."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import featvis
from featvis import Preprocess
from featvis_torch import TorchBackend
from featvis_torch._describe import describe, kind_of
from featvis_torch.models import Conv2dSame

ALEXNET = [
    # name, alias, type, output (C, H, W), params, description
    ("features.0", "conv1", "Conv2d", (64, 55, 55), 23_296,
     "64 11x11x3 convolutions with stride [4 4] and padding [2 2]"),
    ("features.1", "relu1", "ReLU", (64, 55, 55), 0, "ReLU"),
    ("features.2", "pool1", "MaxPool2d", (64, 27, 27), 0,
     "3x3 max pooling with stride [2 2] and padding [0 0]"),
    ("features.3", "conv2", "Conv2d", (192, 27, 27), 307_392,
     "192 5x5x64 convolutions with stride [1 1] and padding [2 2]"),
    ("features.4", "relu2", "ReLU", (192, 27, 27), 0, "ReLU"),
    ("features.5", "pool2", "MaxPool2d", (192, 13, 13), 0,
     "3x3 max pooling with stride [2 2] and padding [0 0]"),
    ("features.6", "conv3", "Conv2d", (384, 13, 13), 663_936,
     "384 3x3x192 convolutions with stride [1 1] and padding [1 1]"),
    ("features.7", "relu3", "ReLU", (384, 13, 13), 0, "ReLU"),
    ("features.8", "conv4", "Conv2d", (256, 13, 13), 884_992,
     "256 3x3x384 convolutions with stride [1 1] and padding [1 1]"),
    ("features.9", "relu4", "ReLU", (256, 13, 13), 0, "ReLU"),
    ("features.10", "conv5", "Conv2d", (256, 13, 13), 590_080,
     "256 3x3x256 convolutions with stride [1 1] and padding [1 1]"),
    ("features.11", "relu5", "ReLU", (256, 13, 13), 0, "ReLU"),
    ("features.12", "pool3", "MaxPool2d", (256, 6, 6), 0,
     "3x3 max pooling with stride [2 2] and padding [0 0]"),
    ("avgpool", "pool4", "AdaptiveAvgPool2d", (256, 6, 6), 0, "adaptive average pooling to 6x6"),
    ("classifier.0", "drop1", "Dropout", (9216, 1, 1), 0, "50% dropout"),
    ("classifier.1", "fc1", "Linear", (4096, 1, 1), 37_752_832, "4096 fully connected layer"),
    ("classifier.2", "relu6", "ReLU", (4096, 1, 1), 0, "ReLU"),
    ("classifier.3", "drop2", "Dropout", (4096, 1, 1), 0, "50% dropout"),
    ("classifier.4", "fc2", "Linear", (4096, 1, 1), 16_781_312, "4096 fully connected layer"),
    ("classifier.5", "relu7", "ReLU", (4096, 1, 1), 0, "ReLU"),
    ("classifier.6", "fc3", "Linear", (1000, 1, 1), 4_097_000, "1000 fully connected layer"),
]  # fmt: skip


def test_alexnet_layers_read_like_matlabs_net_layers(alexnet_backend: TorchBackend) -> None:
    rows = [
        (x.name, x.alias, x.type, x.output_shape[1:], x.params, x.description)
        for x in alexnet_backend.layers()
        if x.output_shape is not None
    ]
    assert rows == ALEXNET
    assert [layer.source for layer in alexnet_backend.layers()] == [row[0] for row in ALEXNET]
    table = str(featvis.layer_table(alexnet_backend))
    assert "64 11x11x3 convolutions" in table.splitlines()[2]  # conv1 has 64 channels


def test_layer_params_add_up_to_the_model(resnet18_backend: TorchBackend) -> None:
    layers = resnet18_backend.layers()
    assert sum(layer.params for layer in layers) == sum(
        p.numel() for p in resnet18_backend.model.parameters()
    )
    kinds = {layer.kind for layer in layers}
    assert kinds == {"conv", "bn", "relu", "pool", "fc"}
    bn1 = resnet18_backend.layer("bn1")
    assert (bn1.name, bn1.description, bn1.params) == (
        "bn1", "batch normalization with 64 channels", 128
    )  # fmt: skip


def test_without_a_preprocess_size_shapes_are_unknown(tiny: nn.Module) -> None:
    backend = TorchBackend(tiny, preprocess=Preprocess(size=None))
    layers = backend.layers()
    assert layers[0].alias == "conv1" and all(layer.output_shape is None for layer in layers)


@pytest.mark.parametrize(
    ("module", "kind", "description"),
    [
        (nn.Conv2d(3, 96, 11, stride=4), "conv",
         "96 11x11x3 convolutions with stride [4 4] and padding [0 0]"),
        (nn.Conv2d(32, 32, 3, padding=1, groups=32), "conv",
         "32 3x3x1 convolutions with stride [1 1] and padding [1 1] (32 groups)"),
        (nn.Conv2d(8, 16, 3, padding="same", dilation=2), "conv",
         "16 3x3x8 convolutions with stride [1 1] and padding 'same' and dilation [2 2]"),
        (nn.Conv2d(8, 16, 3, padding="valid"), "conv",
         "16 3x3x8 convolutions with stride [1 1] and padding [0 0]"),
        (Conv2dSame(3, 32, 3, stride=2), "conv",
         "32 3x3x3 convolutions with stride [2 2] and padding 'same'"),
        (nn.Conv1d(4, 8, 5), "conv", "8 5x4 convolutions with stride [1] and padding [0]"),
        (nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1), "conv",
         "8 4x4x8 transposed convolutions with stride [2 2] and cropping [1 1]"),
        (nn.ReLU(), "relu", "ReLU"),
        (nn.ReLU6(), "relu", "clipped ReLU (ceiling 6)"),
        (nn.Hardtanh(0.0, 4.0), "relu", "clipped ReLU (ceiling 4)"),
        (nn.Hardtanh(), "act", "hard tanh clipped to [-1, 1]"),
        (nn.LeakyReLU(0.2), "relu", "leaky ReLU with scale 0.2"),
        (nn.PReLU(8), "relu", "parametric ReLU with 8 slopes"),
        (nn.SiLU(), "act", "SiLU (swish)"),
        (nn.Hardswish(), "act", "hard swish"),
        (nn.GELU(), "act", "GELU"),
        (nn.Sigmoid(), "act", "sigmoid"),
        (nn.MaxPool2d(3, 2), "pool", "3x3 max pooling with stride [2 2] and padding [0 0]"),
        (nn.MaxPool2d(3, 2, 1, ceil_mode=True), "pool",
         "3x3 max pooling with stride [2 2] and padding [1 1] (ceil mode)"),
        (nn.AvgPool2d(2), "pool", "2x2 average pooling with stride [2 2] and padding [0 0]"),
        (nn.AdaptiveAvgPool2d(1), "pool", "global average pooling"),
        (nn.AdaptiveAvgPool2d((1, 1)), "pool", "global average pooling"),
        (nn.AdaptiveMaxPool2d(1), "pool", "global max pooling"),
        (nn.AdaptiveAvgPool2d((6, 6)), "pool", "adaptive average pooling to 6x6"),
        (nn.AdaptiveAvgPool2d((None, 7)), "pool", "adaptive average pooling to *x7"),
        (nn.MaxPool1d(2), "pool", "2 max pooling with stride [2] and padding [0]"),
        (nn.BatchNorm2d(64), "bn", "batch normalization with 64 channels"),
        (nn.BatchNorm1d(10), "bn", "batch normalization with 10 channels"),
        (nn.LocalResponseNorm(5), "norm",
         "cross channel normalization with 5 channels per element"),
        (nn.LayerNorm(768), "norm", "layer normalization over [768]"),
        (nn.GroupNorm(32, 256), "norm", "group normalization with 32 groups and 256 channels"),
        (nn.InstanceNorm2d(3), "norm", "instance normalization with 3 channels"),
        (nn.Linear(9216, 4096), "fc", "4096 fully connected layer"),
        (nn.Dropout(), "drop", "50% dropout"),
        (nn.Dropout(0.2), "drop", "20% dropout"),
        (nn.Dropout2d(0.1), "drop", "10% channel dropout"),
        (nn.Flatten(), "flatten", "flatten"),
        (nn.Softmax(dim=1), "prob", "softmax"),
        (nn.LogSoftmax(dim=1), "prob", "log softmax"),
        (nn.Upsample(scale_factor=2), "resize", "nearest upsampling by 2"),
        (nn.Upsample(size=(14, 14), mode="bilinear"), "resize", "resize to 14x14 (bilinear)"),
        (nn.ZeroPad2d(1), "pad", "zero padding [1 1 1 1]"),
        (nn.ReflectionPad2d((1, 2, 0, 0)), "pad", "reflection padding [1 2 0 0]"),
        (nn.PixelShuffle(2), "reshape", "pixel shuffle by 2"),
        (nn.Identity(), "identity", "identity"),
        (nn.Embedding(10, 3), "other", ""),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, nn.Module) else None,
)  # fmt: skip
def test_kinds_and_descriptions(module: nn.Module, kind: str, description: str) -> None:
    assert kind_of(module) == kind
    assert describe(module) == description
    assert kind in featvis.KINDS


def test_relu6_is_a_relu_so_aliases_agree_with_onnx(hygiene: Any) -> None:
    # ONNX exports ReLU6 as Clip(0, 6), which the ONNX backend also calls "relu".
    model = hygiene.watch(nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU6(), nn.Conv2d(4, 4, 1)))
    backend = TorchBackend(model, preprocess=Preprocess(size=(4, 4)))
    assert [layer.alias for layer in backend.layers()] == ["conv1", "relu1", "conv2"]


def test_a_reused_layer_keeps_its_description_on_every_call(hygiene: Any) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pool = nn.MaxPool2d(2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.pool(self.pool(x))

    backend = TorchBackend(hygiene.watch(Twice()), preprocess=Preprocess(size=(8, 8)))
    assert [(layer.name, layer.output_shape, layer.description) for layer in backend.layers()] == [
        ("pool#1", (None, 3, 4, 4), "2x2 max pooling with stride [2 2] and padding [0 0]"),
        ("pool#2", (None, 3, 2, 2), "2x2 max pooling with stride [2 2] and padding [0 0]"),
    ]
