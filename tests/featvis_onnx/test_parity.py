"""PyTorch (featvis_torch) against ONNX Runtime on exported torchvision models, random weights."""

from pathlib import Path

import numpy as np
import pytest

import featvis


@pytest.fixture(scope="module")
def photos(images: list[np.ndarray]) -> list[np.ndarray]:
    return images


def _check_every_conv_and_relu(table: featvis.ComparisonTable, torch_backend: object) -> None:
    assert table.all_matched, str(table)
    assert table.passed, str(table)
    compared = {row.layer_a.name for row in table}
    folded = {u.layer.name for u in table.unmatched_a if "folded" in u.reason}
    for layer in torch_backend.layers():  # type: ignore[attr-defined]
        if layer.kind in ("conv", "relu"):
            assert layer.name in compared or layer.name in folded, layer.name
    # The errors are real measurements, not comparisons of an array with itself.
    assert all(row.max_rel < featvis._compare.RTOL for row in table)
    assert any(row.max_abs > 0 for row in table)


def test_alexnet_matches_pytorch(alexnet: tuple[object, Path], photos: list[np.ndarray]) -> None:
    model, path = alexnet
    torch_backend = featvis.load(model)
    table = featvis.compare(torch_backend, path, photos)
    _check_every_conv_and_relu(table, torch_backend)
    # All 21 modules but the first dropout: the second returns the ReLU's output unchanged
    # (the same tensor), so it is paired with the ReLU's ONNX tensor; the first returns the
    # flatten's output, which no module computes.
    assert len(table) == 20
    assert [u.layer.name for u in table.unmatched_a] == ["classifier.0"]
    drop = next(row for row in table if row.layer_a.name == "classifier.3")
    assert drop.how == "same value" and "'classifier.2'" in drop.why
    assert all(row.why for row in table)


def test_conv5_differs_from_relu5_through_onnx_too(
    alexnet: tuple[object, Path], photos: list[np.ndarray]
) -> None:
    model, path = alexnet
    onnx_backend = featvis.load(path)
    outs = onnx_backend.activations(photos, ["conv5", "relu5"])
    assert (outs["conv5"] < 0).mean() > 0.2  # conv5's own output, not the ReLU's
    np.testing.assert_array_equal(outs["relu5"], np.maximum(outs["conv5"], 0))
    reference = featvis.load(model).activations(photos, "conv5")
    peak = np.abs(reference).max()
    assert np.abs(outs["conv5"] - reference).max() <= featvis._compare.RTOL * peak


def test_resnet18_matches_pytorch(resnet18: tuple[object, Path], photos: list[np.ndarray]) -> None:
    model, path = resnet18
    torch_backend = featvis.load(model)
    table = featvis.compare(torch_backend, path, photos)
    _check_every_conv_and_relu(table, torch_backend)
    # The exporter folded all 20 BatchNorms into their convolutions and named the Conv nodes
    # after the BatchNorm; each ReLU module that runs twice per block matches call by call.
    assert sum(1 for u in table.unmatched_a if "folded" in u.reason) == 20
    assert {row.layer_a.name for row in table} >= {"layer1.0.relu#1", "layer1.0.relu#2"}
    assert {row.layer_b.name for row in table if row.layer_a.name == "layer1.0.relu#2"} == {
        "relu_2"
    }


@pytest.mark.slow  # a second ResNet-18 export (the legacy exporter)
def test_resnet18_legacy_export_folds_batchnorm_into_the_conv_name(
    resnet18_legacy: tuple[object, Path], photos: list[np.ndarray]
) -> None:
    model, path = resnet18_legacy
    torch_backend = featvis.load(model)
    table = featvis.compare(torch_backend, path, photos)
    _check_every_conv_and_relu(table, torch_backend)
    folded = [row for row in table if row.how == "folded"]
    assert len(folded) == 20
    row = next(row for row in folded if row.layer_a.name == "bn1")
    assert row.layer_b.source == "conv1"  # the Conv tensor is named after the conv module...
    # ...but holds the BatchNorm's output: matching by name alone would compare it with conv1.
    onnx_conv = featvis.load(path).activations(photos, row.layer_b.name)
    torch_conv = torch_backend.activations(photos, "conv1")
    assert (
        np.abs(onnx_conv - torch_conv).max()
        > 100 * featvis._compare.RTOL * np.abs(torch_conv).max()
    )


def test_the_table_reads_in_text_and_html(
    resnet18: tuple[object, Path], photos: list[np.ndarray]
) -> None:
    model, path = resnet18
    table = featvis.compare(featvis.load(model), path, photos[:1], layers=["bn1", "relu1"])
    text = str(table)
    assert text.splitlines()[0].split() == [
        "alias",
        "torch",
        "layer",
        "onnx",
        "layer",
        "match",
        "max",
        "abs",
        "max",
        "rel",
        "cosine",
        "ok",
        "why",
        "paired",
    ]
    assert "bn1  " in text and "getitem" in text and "Verdict: OK" in text
    assert "the same module path 'bn1'" in text
    html = table._repr_html_()
    assert html.count("<tr") == 3 and "<td>bn1</td>" in html


@pytest.mark.slow  # a third ResNet-18 export (TorchBackend.to_onnx)
def test_to_onnx_keeps_every_module_so_aliases_name_the_same_values(
    resnet18: tuple[object, Path], photos: list[np.ndarray], onnx_dir: Path
) -> None:
    model, _ = resnet18
    torch_backend = featvis.load(model)
    path = torch_backend.to_onnx(onnx_dir / "resnet18_unfolded.onnx")  # type: ignore[attr-defined]
    onnx_backend = featvis.load(path)
    table = featvis.compare(torch_backend, onnx_backend, photos[:1])
    assert table.ok, str(table)
    # Nothing folded: every PyTorch layer but none has its own ONNX tensor, matched by module
    # path, and both backends give it the same alias.
    assert {row.how for row in table} == {"source"}
    assert len(table) == len(torch_backend.layers())
    assert all(row.layer_a.alias == row.layer_b.alias for row in table), str(table)
    # The additions that end each residual block (block outputs) and the torch.flatten in
    # ResNet.forward have no module torch lists as a layer: explained, not a mismatch.
    assert {u.layer.kind for u in table.unmatched_b} == {"add", "reshape"}
    assert sum(u.layer.kind == "add" for u in table.unmatched_b) == 8
    assert all(u.explained and "module's forward" in u.reason for u in table.unmatched_b)
    conv1 = onnx_backend.activations(photos[:1], "conv1")  # the conv, not conv + bn
    reference = torch_backend.activations(photos[:1], "conv1")
    assert np.abs(conv1 - reference).max() <= featvis._compare.RTOL * np.abs(reference).max()


def test_scores_are_the_model_output_on_both_backends(
    resnet18: tuple[object, Path], photos: list[np.ndarray]
) -> None:
    import torch

    model, path = resnet18
    torch_backend, onnx_backend = featvis.load(model), featvis.load(path)
    assert isinstance(torch_backend, featvis.Scorer) and isinstance(onnx_backend, featvis.Scorer)
    assert torch_backend.score_kind == onnx_backend.score_kind == "logits"
    batch = featvis.prepare_images(photos, torch_backend.preprocess)
    with torch.inference_mode():
        expected = model(torch.from_numpy(batch)).numpy()  # type: ignore[operator]
    for backend in (torch_backend, onnx_backend):
        scores = backend.scores(photos)
        assert scores.shape == (2, 1000) and scores.dtype == np.float32
        peak = np.abs(expected).max()
        assert np.abs(scores - expected).max() <= 1e-4 * peak, backend.name
        np.testing.assert_allclose(backend.scores(photos, batch_size=1), scores, atol=1e-5 * peak)
