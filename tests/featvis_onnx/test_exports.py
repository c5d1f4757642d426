"""PyTorch models exported as users export them: sequence models, NHWC inputs, wrappers,
dynamic quantization, and exports broken on purpose, which compare() must catch."""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from torch import nn

import featvis
from featvis_torch import TorchBackend

pytestmark = pytest.mark.slow  # every test here exports a model


def seeded(build: type[nn.Module]) -> nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build().eval()


@contextlib.contextmanager
def exporting() -> Iterator[None]:
    """torch.export warns about nn.LSTM's flattened weights and warns inside its own while
    loops (a FutureWarning it then fails on when warnings are errors); those warnings are the
    exporter's, silenced here (the suite turns warnings into errors)."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def export(model: nn.Module, x: torch.Tensor, path: Path, *, dynamic_batch: bool = False) -> Path:
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
    with exporting():
        torch.onnx.export(
            model, (x,), path, dynamo=True, optimize=False, dynamic_shapes=shapes,
            input_names=["x"],
        )  # fmt: skip
    return path


def image_i_is_image_i_alone(backend: featvis.Backend, batch: np.ndarray) -> None:
    names = [layer.name for layer in backend.layers()]
    together = backend.activations(batch, names)
    assert not together.missing, together.missing  # type: ignore[attr-defined]
    for i in range(len(batch)):
        alone = backend.activations(batch[i : i + 1], names)
        for name in names:
            peak = float(np.abs(alone[name]).max(initial=0.0))
            np.testing.assert_allclose(
                together[name][i : i + 1], alone[name], atol=1e-5 * peak + 1e-6, err_msg=name
            )


class CRNN(nn.Module):
    """An OCR model's shape: conv -> LSTM over the width (sequence first) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d((8, 2)))
        self.rnn = nn.LSTM(8, 6, bidirectional=True)
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.conv(x).squeeze(2).permute(2, 0, 1)  # (T, N, C)
        out, _ = self.rnn(seq)
        return self.fc(out)


@pytest.mark.parametrize("batch_size", [4, 3])  # T is 4: the batch equal to T, and not
def test_a_crnn_gives_each_image_its_own_sequence_on_both_backends(
    batch_size: int, tmp_path: Path
) -> None:
    model = seeded(CRNN)
    preprocess = featvis.Preprocess(size=(8, 8))
    torch_backend = TorchBackend(model, preprocess=preprocess)
    path = export(model, torch.zeros(2, 3, 8, 8), tmp_path / "crnn.onnx", dynamic_batch=True)
    onnx_backend = featvis.load(path, preprocess=preprocess)
    assert onnx_backend.image_input.shape[0] == "batch"  # runs the whole batch at once
    batch = np.random.default_rng(batch_size).normal(size=(batch_size, 3, 8, 8))
    batch = batch.astype(np.float32)
    for backend in (torch_backend, onnx_backend):
        image_i_is_image_i_alone(backend, batch)
    table = featvis.compare(torch_backend, onnx_backend, batch)
    assert table.ok, str(table)
    rows = {row.layer_a.name: row for row in table}
    assert rows["rnn"].layer_b.output_shape == torch_backend.layer("rnn").output_shape
    assert rows["rnn"].layer_a.layout == "LNC" and rows["fc"].passed


class NHWCNet(nn.Module):
    """A model whose input is NHWC, as converted TensorFlow models are."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.fc = nn.Linear(6, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # NHWC again
        return self.fc(self.norm(y)).mean(dim=(1, 2))


class FromNCHW(nn.Module):
    """What a user writes to give featvis's NCHW batch to an NHWC model: a wrapper."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 2, 3, 1))


def test_a_model_with_an_nhwc_input(tmp_path: Path) -> None:
    net = seeded(NHWCNet)
    path = export(net, torch.zeros(1, 16, 16, 3), tmp_path / "nhwc_input.onnx")
    onnx_backend = featvis.load(path)
    assert onnx_backend.image_input.layout == "NHWC"
    layouts = {layer.source: layer.layout for layer in onnx_backend.layers() if layer.source}
    assert layouts["conv"] == "NCHW" and layouts["norm"] == layouts["fc"] == "NHWC"
    batch = np.random.default_rng(0).normal(size=(2, 3, 16, 16)).astype(np.float32)
    image_i_is_image_i_alone(onnx_backend, batch)
    # The torch side takes featvis's NCHW batch through a wrapper; the export has no wrapper:
    # its module paths lack the "net." prefix, and compare sets it aside.
    torch_backend = TorchBackend(FromNCHW(net), preprocess=onnx_backend.preprocess)
    table = featvis.compare(torch_backend, onnx_backend, batch)
    assert table.ok and len(table) == 3, str(table)
    assert all("prefix 'net.'" in row.why for row in table)


def test_a_model_exported_through_a_wrapper_module(tmp_path: Path) -> None:
    inner = seeded(CRNN)
    wrapper = nn.Sequential(inner)  # the export's paths are "0.conv.0", "0.rnn"...
    path = export(wrapper, torch.zeros(1, 3, 8, 8), tmp_path / "wrapped.onnx")
    preprocess = featvis.Preprocess(size=(8, 8))
    table = featvis.compare(TorchBackend(inner, preprocess=preprocess), path, np.zeros((8, 8, 3)))
    assert table.ok, str(table)
    assert {row.layer_b.source for row in table} == {f"0.{row.layer_a.name}" for row in table}


def test_a_dynamically_quantized_export(tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = seeded(CRNN)
    preprocess = featvis.Preprocess(size=(8, 8))
    torch_backend = TorchBackend(model, preprocess=preprocess)
    with exporting():
        float_path = torch_backend.to_onnx(tmp_path / "crnn_float.onnx")
    path = tmp_path / "crnn_dynamic.onnx"
    quantize_dynamic(float_path, path, weight_type=QuantType.QUInt8)
    quantized = featvis.load(path, preprocess=preprocess)
    batch = np.random.default_rng(1).normal(size=(3, 3, 8, 8)).astype(np.float32)
    image_i_is_image_i_alone(quantized, batch)  # every listed layer, in one call
    names = {layer.name for layer in quantized.layers()}
    graph = onnx.load(path).graph
    scales = {  # each batch's scale and zero point, and their products with weight scales
        name
        for node in graph.node
        for name in (
            node.output[1:]
            if node.op_type == "DynamicQuantizeLinear"
            else node.output
            if node.op_type == "Mul" and "scales_mul" in node.output[0]
            else []
        )
    }
    assert len(scales) >= 3 and not scales & names, scales & names
    # Against the float export: paired by tensor name, within quantization error.
    float_backend = featvis.load(float_path, preprocess=preprocess)
    by_name = featvis.compare(float_backend, quantized, batch, rtol=0.2)
    assert by_name.passed and {row.how for row in by_name} == {"name"}, str(by_name)
    # Against PyTorch: only where the quantizer kept module paths, and never a look-alike.
    table = featvis.compare(torch_backend, quantized, batch, rtol=0.2)
    assert len(table) > 0 and table.passed, str(table)
    assert all(row.layer_b.source == row.layer_a.name for row in table if row.how == "source")


def _broken(path: Path, how: str) -> Path:
    model = onnx.load(path)
    graph = model.graph
    if how == "swapped weight":  # two output channels of the first convolution exchanged
        conv = next(node for node in graph.node if node.op_type == "Conv")
        weight = next(t for t in graph.initializer if t.name == conv.input[1])
        array = numpy_helper.to_array(weight).copy()
        array[[0, 1]] = array[[1, 0]]
        weight.CopyFrom(numpy_helper.from_array(array, weight.name))
    else:  # "wrong layout": the first ReLU's map transposed, H for W, before the next layer
        relu = next(node for node in graph.node if node.op_type == "Relu")
        for node in graph.node:
            node.input[:] = [
                f"{relu.output[0]}_t" if n == relu.output[0] else n for n in node.input
            ]
        index = list(graph.node).index(relu) + 1
        swap = helper.make_node("Transpose", [relu.output[0]], [f"{relu.output[0]}_t"])
        swap.attribute.append(helper.make_attribute("perm", [0, 1, 3, 2]))
        graph.node.insert(index, swap)
    broken = path.with_name(f"{path.stem}_{how.replace(' ', '_')}.onnx")
    onnx.save(model, broken)
    return broken


@pytest.mark.parametrize("how", ["swapped weight", "wrong layout"])
def test_compare_fails_on_a_broken_export(how: str, tmp_path: Path) -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
        ).eval()  # fmt: skip
    backend = TorchBackend(model, preprocess=featvis.Preprocess(size=(16, 16)))
    path = backend.to_onnx(tmp_path / "good.onnx")
    images = [np.random.default_rng(2).integers(0, 255, (16, 16, 3), dtype=np.uint8)]
    assert featvis.compare(backend, path, images).ok  # the export as it was: correct
    table = featvis.compare(backend, _broken(path, how), images)
    assert not table.passed and not table.ok, str(table)
    failed = [row.layer_a.name for row in table if not row.passed]
    first = "0" if how == "swapped weight" else "2"  # where the damage shows first
    assert failed and failed[0] == first, str(table)
    assert str(table).splitlines()[-1].startswith("Verdict: FAILED")


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.relu(self.conv(x))), 1))


def test_to_onnx_records_the_preprocessing_and_class_names(tmp_path: Path) -> None:
    # A model trained on [-1, 1] pixels: opened without the record, the ONNX file would get
    # ImageNet's normalization, and every map and score would silently be of other input.
    preprocess = featvis.Preprocess(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3)
    torch_backend = featvis.load(seeded(_Small), preprocess=preprocess)
    torch_backend.categories = ["cat", "cup", "spoon"]
    with exporting():
        path = torch_backend.to_onnx(tmp_path / "small.onnx")  # type: ignore[attr-defined]
    onnx_backend = featvis.load(path)
    assert onnx_backend.preprocess == preprocess
    assert onnx_backend.categories == ["cat", "cup", "spoon"]
    image = np.random.default_rng(0).integers(0, 256, (20, 24, 3), np.uint8)
    np.testing.assert_allclose(
        onnx_backend.scores(image), torch_backend.scores(image), rtol=1e-5, atol=1e-5
    )
    # what the caller says wins
    imagenet = featvis.Preprocess(size=(16, 16))
    assert featvis.load(path, preprocess=imagenet).preprocess == imagenet


@pytest.mark.parametrize(
    ("key", "text", "words"),
    [
        ("featvis.preprocess", "{not json", "preprocess=featvis.Preprocess"),
        ("featvis.preprocess", '{"size": [16, 16], "mean": [0.5, 0.5], "std": [1]}', "per channel"),
        ("featvis.categories", '["cat", 3]', "list of strings"),
    ],
)
def test_a_record_that_is_not_featvis_own_is_refused(
    key: str, text: str, words: str, tmp_path: Path
) -> None:
    torch_backend = featvis.load(seeded(_Small), preprocess=featvis.Preprocess(size=(16, 16)))
    torch_backend.categories = ["cat", "cup", "spoon"]
    with exporting():
        path = torch_backend.to_onnx(tmp_path / "small.onnx")  # type: ignore[attr-defined]
    model = onnx.load(path)
    assert key in {prop.key for prop in model.metadata_props}
    for prop in model.metadata_props:
        if prop.key == key:
            prop.value = text
    onnx.save_model(model, path)
    with pytest.raises(featvis.ModelError, match=words):
        featvis.load(path)
