"""featvis.explain on framework-free backends: every method's formula, written out here.

The backend is featvis.testing's tiny CNN; ``tiny_cnn(differentiable=True)`` has closed-form
gradients (checked against torch.autograd in tests/featvis_torch). Each expected map is
computed in the test from the method's paper, from the activations and gradients the backend
gives, or by brute force (every channel, every window, without featvis's shortcuts).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import featvis
from featvis import Objective
from featvis._explain._common import upsample
from featvis._explain._occlusion import rise_masks
from featvis.plugins import pm
from featvis.testing import ArrayBackend, Step, tiny_cnn

CLASSES = [f"class {i}" for i in range(10)]


@pytest.fixture
def backend() -> ArrayBackend:
    b = tiny_cnn(seed=2, differentiable=True)
    b.categories = list(CLASSES)
    return b


@pytest.fixture
def plain() -> ArrayBackend:
    return tiny_cnn(seed=2)


@pytest.fixture
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [rng.integers(0, 256, (32, 32, 3), np.uint8) for _ in range(3)]


def _prepared(backend: ArrayBackend, images: list[np.ndarray]) -> np.ndarray:
    return featvis.prepare_images(images, backend.preprocess)


def _grads(backend: Any, images: Any, classes: list[int], layer: str = "block.relu") -> Any:
    weights = np.eye(10, dtype=np.float32)[classes]
    return backend.gradients(images, [layer], Objective.linear(weights))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def _reference(method: str, a: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Each method's published formula, written out independently of featvis."""
    a = a.astype(np.float64)
    g = g.astype(np.float64)
    if method == "gradcam":  # Selvaraju et al. 2017, eq. 1-2
        w = g.mean(axis=(2, 3))
        return _relu((w[:, :, None, None] * a).sum(1))
    if method == "gradcampp":  # Chattopadhyay et al. 2018, eq. 19 with Y = exp(S)
        out = np.zeros(a.shape[0:1] + a.shape[2:])
        for n in range(len(a)):
            for k in range(a.shape[1]):
                total = a[n, k].sum()
                alpha = np.zeros(a.shape[2:])
                for i, j in np.ndindex(*a.shape[2:]):
                    d = g[n, k, i, j]
                    den = 2 * d**2 + total * d**3
                    alpha[i, j] = d**2 / den if d != 0 and den != 0 else 0.0
                w = (alpha * _relu(g[n, k])).sum()
                out[n] += w * a[n, k]
        return _relu(out)
    if method == "xgradcam":  # Fu et al. 2020, eq. 8
        total = a.sum(axis=(2, 3), keepdims=True)
        w = (np.where(total != 0, a / np.where(total == 0, 1, total), 0) * g).sum(axis=(2, 3))
        return _relu((w[:, :, None, None] * a).sum(1))
    if method == "layercam":  # Jiang et al. 2021, eq. 6
        return _relu((_relu(g) * a).sum(1))
    if method == "hirescam":  # Draelos & Carin 2020
        return _relu((g * a).sum(1))
    raise AssertionError(method)


GRADIENT_METHODS = ["gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"]


@pytest.mark.parametrize("method", GRADIENT_METHODS)
def test_each_gradient_method_is_its_papers_formula(
    backend: ArrayBackend, images: list[np.ndarray], method: str
) -> None:
    e = featvis.explain(backend, images, method=method, target=[1, 4, 7])
    g = _grads(backend, images, [1, 4, 7])
    expected = _reference(method, g.activations["block.relu"], g.gradients["block.relu"])
    assert e.raw.shape == expected.shape == (3, 16, 16)
    np.testing.assert_allclose(e.raw, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert np.abs(expected).max() > 0
    np.testing.assert_array_equal(e.targets, [1, 4, 7])
    np.testing.assert_allclose(e.scores, g.values, rtol=1e-6)
    assert e.maps.shape == (3, 32, 32) and e.maps.dtype == np.float32


def test_the_explanation_keeps_the_images_as_the_model_saw_them() -> None:
    pictures = np.random.default_rng(3).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    mean, std = (0.2, 0.5, 0.7), (0.3, 0.2, 0.25)  # a different normalization per channel
    backend = tiny_cnn(preprocess=featvis.Preprocess(size=(32, 32), mean=mean, std=std))
    e = featvis.explain(backend, list(pictures), method="eigencam")
    assert e.images is not None and e.images.shape == (2, 32, 32, 3)
    assert e.images.dtype == np.uint8 and e.images.flags.c_contiguous
    assert np.abs(e.images.astype(int) - pictures).max() <= 1
    assert e[1].images is not None and (e[1].images == e.images[1:]).all()
    gray = ArrayBackend(
        [Step("score", lambda x: x.mean(axis=(2, 3)))],
        preprocess=featvis.Preprocess(size=(32, 32), mean=(0.4,), std=(0.3,)),
    )
    e = featvis.explain(gray, pictures[0, :, :, 0], method="occlusion", window=8)
    assert e.images is not None and e.images.shape == (1, 32, 32, 3)
    assert np.abs(e.images[0].astype(int) - pictures[0, :, :, :1]).max() <= 1  # each channel


def test_the_default_target_is_the_predicted_class(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    predicted = backend.scores(images).argmax(axis=1)
    e = featvis.explain(backend, images)
    np.testing.assert_array_equal(e.targets, predicted)
    np.testing.assert_allclose(e.scores, backend.scores(images).max(axis=1), rtol=1e-6)
    explicit = featvis.explain(backend, images, target=list(predicted))
    np.testing.assert_array_equal(e.raw, explicit.raw)


def test_a_contrast_explains_the_difference_of_two_scores(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    e = featvis.explain(backend, images, target=("class 3", "class 8"))
    weights = np.zeros((3, 10), np.float32)
    weights[:, 3], weights[:, 8] = 1, -1
    g = backend.gradients(images, ["block.relu"], Objective.linear(weights))
    expected = _reference("gradcam", g.activations["block.relu"], g.gradients["block.relu"])
    np.testing.assert_allclose(e.raw, expected, atol=1e-6 * np.abs(expected).max())
    scores = backend.scores(images)
    np.testing.assert_allclose(e.scores, scores[:, 3] - scores[:, 8], rtol=1e-5)
    np.testing.assert_array_equal(e.targets, [3, 3, 3])
    np.testing.assert_array_equal(e.contrast, [8, 8, 8])
    assert e.target_names()[0] == "class 3 rather than class 8"


def test_targets_by_name_index_and_one_per_image(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    by_name = featvis.explain(backend, images, target="Class 5")  # case does not matter
    by_index = featvis.explain(backend, images, target=5)
    np.testing.assert_array_equal(by_name.raw, by_index.raw)
    mixed = featvis.explain(backend, images, target=[None, "class 2", ("class 1", 0)])
    assert mixed.targets[1:].tolist() == [2, 1]
    assert mixed.contrast is not None and mixed.contrast.tolist() == [-1, -1, 0]


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("class 55", "Did you mean"),
        (10, "out of range"),
        ([1, 2], "one per image"),
        (True, "index or a class name"),
        (("class 1",), "pair of classes"),
        (("class 1", 1), "itself"),
        (1.5, "index or a class name"),
    ],
)
def test_bad_targets_are_refused_with_the_fix(
    backend: ArrayBackend, images: list[np.ndarray], target: Any, message: str
) -> None:
    with pytest.raises(featvis.ArgumentError, match=message):
        featvis.explain(backend, images, target=target)


def test_a_class_name_needs_class_names(images: list[np.ndarray]) -> None:
    with pytest.raises(featvis.ArgumentError, match="no class names"):
        featvis.explain(tiny_cnn(differentiable=True), images, target="cat")


def test_the_default_layer_is_the_last_with_a_grid_and_the_result_says_so(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    e = featvis.explain(backend, images[0])
    assert (e.layer, e.layer_alias, e.default_layer) == ("block.relu", "relu2", True)
    assert featvis.default_layer(backend).name == "block.relu"
    assert "last layer with a spatial grid" in repr(e)
    assert "last layer with a spatial grid" in e.describe(0)
    named = featvis.explain(backend, images[0], layer="conv2")
    assert (named.layer, named.default_layer) == ("block.conv", False)
    assert named.raw.shape == (1, 16, 16)


def _scaled_to_unit(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's scale_cam_image without its 1e-7: min to 0, max to 1."""
    low = m.min(axis=(1, 2), keepdims=True)
    return (m - low) / (m.max(axis=(1, 2), keepdims=True) - low)


def test_a_list_of_layers_fuses_their_maps_as_pytorch_grad_cam_does(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    from skimage.transform import resize  # bilinear, pixel centres aligned: an independent resize

    fused = featvis.explain(backend, images, layer=["block.relu", "stem.relu"], target=[1, 4, 7])
    deep = featvis.explain(backend, images, layer="block.relu", target=[1, 4, 7]).raw
    shallow = featvis.explain(backend, images, layer="stem.relu", target=[1, 4, 7]).raw
    assert deep.shape == (3, 16, 16) and shallow.shape == (3, 32, 32)
    # BaseCAM: per layer ReLU, scale to [0, 1] and resize; the mean over layers, scaled again
    up = np.stack([resize(m, (32, 32), order=1, mode="edge") for m in _scaled_to_unit(deep)])
    expected = _scaled_to_unit((up + _scaled_to_unit(shallow)) / 2)
    np.testing.assert_allclose(fused.maps, expected, atol=1e-5)
    np.testing.assert_array_equal(fused.raw, fused.maps)
    assert not np.allclose(_scaled_to_unit(shallow), expected, atol=0.05)  # both layers count
    assert fused.layer == ("block.relu", "stem.relu")
    assert fused.layer_alias == ("relu2", "relu1")
    np.testing.assert_array_equal(fused.targets, [1, 4, 7])
    np.testing.assert_allclose(
        fused.scores, featvis.explain(backend, images, target=[1, 4, 7]).scores
    )
    assert "fused over layers block.relu (relu2), stem.relu (relu1)" in fused.describe(0)
    assert "fused over layers" in repr(fused)
    fused.figure()  # draws like any other explanation


def test_fusing_layers_is_refused_where_it_cannot_mean_anything(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    with pytest.raises(featvis.ArgumentError, match="empty list"):
        featvis.explain(backend, images, layer=[])
    with pytest.raises(featvis.ArgumentError, match="more than once"):
        featvis.explain(backend, images, layer=["block.relu", "relu2"])  # one layer, two names
    with pytest.raises(featvis.ArgumentError, match="uses no layer"):
        featvis.explain(backend, images, method="occlusion", layer=["block.relu", "stem.relu"])
    with pytest.raises(featvis.UnknownLayerError):
        featvis.explain(backend, images, layer=["block.relu", "nope"])


def test_stage_layers_are_the_last_layer_of_each_grid_deepest_first(
    backend: ArrayBackend,
) -> None:
    # tiny_cnn: stem 32x32 -> pool 16x16 -> block 16x16 -> gap 1x1
    assert [layer.name for layer in featvis.stage_layers(backend, 2)] == [
        "block.relu",
        "stem.relu",
    ]
    assert featvis.stage_layers(backend, 1)[0].name == featvis.default_layer(backend).name
    with pytest.raises(featvis.ArgumentError, match=r"2 grid size\(s\) \(16x16, 32x32\)"):
        featvis.stage_layers(backend, 3)
    with pytest.raises(featvis.ArgumentError, match="positive integer"):
        featvis.stage_layers(backend, 0)


def test_stage_layers_runs_layers_of_unknown_shape_once_together(
    backend: ArrayBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a backend that lists no shapes (an ONNX graph with symbolic sizes): found by one run
    listed = [dataclasses.replace(layer, output_shape=None) for layer in backend.layers()]
    monkeypatch.setattr(backend, "layers", lambda: listed)
    runs: list[int] = []
    real = backend.activations
    monkeypatch.setattr(backend, "activations", lambda *a, **k: runs.append(1) or real(*a, **k))
    assert [layer.name for layer in featvis.stage_layers(backend, 2)] == [
        "block.relu",
        "stem.relu",
    ]
    assert len(runs) == 1


def test_fused_gradient_maps_come_from_one_forward_and_backward_pass(
    backend: ArrayBackend, images: list[np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = ["block.relu", "stem.relu"]
    alone = {name: featvis.explain(backend, images, layer=name).raw for name in layers}
    passes: list[list[str]] = []
    real = backend.gradients
    monkeypatch.setattr(
        backend,
        "gradients",
        lambda x, names, *a, **k: passes.append(list(names)) or real(x, names, *a, **k),
    )
    for method in ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam"):
        passes.clear()
        fused = featvis.explain(backend, images, method=method, layer=layers)
        assert passes == [layers], method  # one pass gives both layers, not one pass each
        assert fused.maps.shape == (3, 32, 32)
    passes.clear()
    fused = featvis.explain(backend, images, layer=layers, noise=0.1, samples=2)
    assert passes == [layers]  # the noisy copies too
    # the one pass gives each layer what a pass of its own gives
    pairs = featvis.explain(backend, images, layer=layers)
    up = upsample(featvis.normalize(alone["block.relu"], scope="channel"), (32, 32))
    expected = featvis.normalize(
        (up + featvis.normalize(alone["stem.relu"], scope="channel")) / 2, scope="channel"
    )
    np.testing.assert_allclose(pairs.maps, expected, atol=1e-6)


class _LayerPlugin:
    """A method from outside featvis that explains at a layer and has no ``run_layers``: each
    map is the layer's channel mean, the class the one it is asked, or (``flaky``) a class
    that changes from call to call."""

    def __init__(self) -> None:
        self.requests: list[featvis.MethodRequest] = []

    @featvis.hookimpl
    def register_methods(self, register: Any) -> None:
        def mean(req: featvis.MethodRequest) -> featvis.MethodResult:
            self.requests.append(req)
            assert req.layer is not None
            raw = req.backend.activations(req.batch, req.layer).mean(axis=1)
            targets = req.resolve()
            return featvis.MethodResult(raw, targets, targets.values(req.scores))

        def flaky(req: featvis.MethodRequest) -> featvis.MethodResult:
            result = mean(req)
            shifted = dataclasses.replace(
                result.targets, classes=result.targets.classes + len(self.requests)
            )
            return dataclasses.replace(result, targets=shifted)

        register(featvis.Method("channelmean", mean, description="the layer's channel mean"))
        register(featvis.Method("flaky", flaky, description="a class per call"))


def _registered(plugin: Any, name: str) -> Iterator[Any]:
    """``plugin`` registered for one test, unregistered after it whatever happens."""
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


@pytest.fixture
def layer_plugin() -> Iterator[_LayerPlugin]:
    yield from _registered(_LayerPlugin(), "test-layer-methods")


def test_a_method_without_run_layers_is_run_once_per_layer_for_one_set_of_targets(
    layer_plugin: _LayerPlugin, images: list[np.ndarray]
) -> None:
    counting = _Counting(tiny_cnn(differentiable=True))
    fused = featvis.explain(
        counting, images, method="channelmean", layer=["block.relu", "stem.relu"]
    )
    assert [r.layer.name for r in layer_plugin.requests] == ["block.relu", "stem.relu"]
    assert counting.sizes == [3]  # the model scored the images once, for both layers
    assert all(r.scores is not None for r in layer_plugin.requests)
    assert fused.layer == ("block.relu", "stem.relu") and fused.maps.shape == (3, 32, 32)


def test_fusing_layers_refuses_maps_of_different_classes(
    layer_plugin: _LayerPlugin, backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    # a method that does not explain the class it is given: no one class to fuse the maps of
    with pytest.raises(featvis.ModelError, match="different classes"):
        featvis.explain(backend, images, method="flaky", layer=["block.relu", "stem.relu"])


def test_a_backend_without_gradients_is_told_what_works(
    plain: ArrayBackend, images: list[np.ndarray]
) -> None:
    with pytest.raises(featvis.CapabilityError) as info:
        featvis.explain(plain, images, method="gradcam")
    message = str(info.value)
    assert "gradients" in message
    for works in ("scorecam", "ablationcam", "occlusion", "rise", "eigencam", "cam"):
        assert works in message
    assert "gradcampp" not in message


def test_unknown_methods_options_and_layers_are_refused_before_any_work(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    with pytest.raises(featvis.ArgumentError, match="Did you mean 'gradcam'"):
        featvis.explain(backend, images, method="gradcma")
    with pytest.raises(featvis.ArgumentError, match="options: window, stride"):
        featvis.explain(backend, images, method="occlusion", windows=4)
    with pytest.raises(featvis.ArgumentError, match="no option 'window'"):
        featvis.explain(backend, images, method="gradcam", window=4)
    with pytest.raises(featvis.ArgumentError, match="uses no layer"):
        featvis.explain(backend, images, method="rise", layer="conv1")
    with pytest.raises(featvis.UnknownLayerError):
        featvis.explain(backend, images, layer="conv9")
    with pytest.raises(featvis.ArgumentError, match="not class-discriminative"):
        featvis.explain(backend, images, method="eigencam", target=1)
    assert featvis.explain(backend, images[0], method="Grad-CAM++").method == "gradcampp"


@pytest.mark.parametrize(
    ("method", "options", "message"),
    [
        ("occlusion", {"window": 0}, "window must be a positive integer"),
        ("occlusion", {"window": 8, "stride": 0}, "stride must be a positive integer"),
        ("occlusion", {"window": (8, 2.5)}, "window must be a positive integer"),
        ("occlusion", {"window": True}, "window must be a positive integer"),
        ("rise", {"masks": 2.7}, "masks=2.7"),
        ("rise", {"cells": 0}, "cells=0"),
        ("rise", {"masks": "100"}, "whole numbers"),
        ("scorecam", {"channels": True}, "channels must be a positive integer"),
        ("scorecam", {"channels": 4.0}, "channels must be a positive integer"),
    ],
)
def test_option_values_are_refused_not_replaced_or_truncated(
    backend: ArrayBackend, images: list[np.ndarray], method: str, options: dict, message: str
) -> None:
    with pytest.raises(featvis.ArgumentError, match=re.escape(message)):
        featvis.explain(backend, images[0], method=method, **options)
    assert featvis.explain(backend, images[0], method="rise", masks=np.int64(4)).raw.shape[0] == 1


# -- gradient-free methods -------------------------------------------------------------------


def _run_from(backend: ArrayBackend, x: np.ndarray, start: int) -> np.ndarray:
    """The steps from ``start`` on, by hand."""
    for step in backend.steps[start:]:
        x = step.fn(np.array(x, copy=True))
    return np.asarray(x, np.float64)


def _scorecam_by_hand(backend: Any, x: np.ndarray, layer: str, classes: list[int]) -> Any:
    """Wang et al. 2020 as pytorch-grad-cam computes it, by brute force: every channel,
    upsampled with aligned corners, min-max scaled, times the input; softmax of the scores."""
    from featvis._explain._common import bilinear_matrix

    acts = backend.activations(x, layer).astype(np.float64)
    h, w = acts.shape[2:]
    ry = bilinear_matrix(h, x.shape[2], align_corners=True)
    rx = bilinear_matrix(w, x.shape[3], align_corners=True)
    out = []
    for n, c in enumerate(classes):
        values = []
        for k in range(acts.shape[1]):
            up = ry @ acts[n, k] @ rx.T
            mask = (up - up.min()) / (up.max() - up.min() + 1e-8)
            values.append(backend.scores((x[n] * mask)[None].astype(np.float32))[0, c])
        weights = np.exp(np.array(values) - max(values))
        weights /= weights.sum()
        out.append(_relu(np.einsum("k,khw->hw", weights, acts[n])))
    return np.stack(out)


def test_scorecam_equals_evaluating_every_channel(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    e = featvis.explain(backend, images[:2], method="scorecam", target=[2, 6], layer="conv2")
    expected = _scorecam_by_hand(backend, _prepared(backend, images[:2]), "conv2", [2, 6])
    np.testing.assert_allclose(e.raw, expected, atol=1e-5 * expected.max())


def _with_constant_channels() -> ArrayBackend:
    """The tiny CNN with half of block.relu's channels dead, and one stuck at 6 (a ReLU6)."""

    def stuck(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[:, :8] = 0.0
        x[:, 8] = 6.0
        return x

    tiny = tiny_cnn(seed=2)
    steps = [*tiny.steps[:5], Step("stuck", stuck, "relu", "ReLU6"), *tiny.steps[5:]]
    return ArrayBackend(steps, preprocess=tiny.preprocess)


def test_scorecam_shares_one_pass_among_constant_channels(images: list[np.ndarray]) -> None:
    # A constant channel masks the image to zeros, whatever its value: one pass serves all of
    # them, and the map is what evaluating each gives.
    backend = _Counting(_with_constant_channels())
    e = featvis.explain(backend, images[0], method="scorecam", layer="stuck", target=5)
    assert sum(backend.sizes) == 1 + 7 + 1  # the targets, the 7 varying channels, zeros
    expected = _scorecam_by_hand(backend, _prepared(backend, images[:1]), "stuck", [5])
    np.testing.assert_allclose(e.raw, expected, atol=1e-5 * expected.max())
    assert e.raw.max() > 0
    for room in (7, 16):  # channels= that leaves none of the 7 varying ones out: exact
        every = featvis.explain(
            backend, images[0], method="scorecam", layer="stuck", target=5, channels=room
        )
        np.testing.assert_array_equal(every.raw, e.raw)


def test_scorecam_on_the_top_channels(backend: ArrayBackend, images: list[np.ndarray]) -> None:
    counting = _Counting(backend)
    fast = featvis.explain(counting, images[0], method="scorecam", layer="conv2", channels=4)
    assert sum(counting.sizes) == 1 + 4
    assert fast.raw.shape == (1, 16, 16)
    with pytest.raises(featvis.ArgumentError, match="channels"):
        featvis.explain(backend, images[0], method="scorecam", channels=0)


def test_ablationcam_equals_zeroing_each_channel_by_hand(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    e = featvis.explain(backend, images[:2], method="ablationcam", layer="conv2", target=[0, 9])
    x = _prepared(backend, images[:2])
    start = backend.layer("conv2").index + 1
    for n, c in enumerate([0, 9]):
        a = backend.activations(x[n : n + 1], "conv2")[0]
        y = _run_from(backend, a[None], start)[0, c]
        w = []
        for k in range(len(a)):
            ablated = a.copy()
            ablated[k] = 0
            w.append((y - _run_from(backend, ablated[None], start)[0, c]) / y)
        expected = _relu(np.einsum("k,khw->hw", np.array(w), a.astype(np.float64)))
        np.testing.assert_allclose(e.raw[n], expected, atol=1e-5 * expected.max())


def _occlusion_by_hand(backend: Any, x: np.ndarray, c: int, window: int, stride: int) -> Any:
    base = backend.scores(x[None])[0, c]
    h = x.shape[1]
    starts = list(range(0, h - window + 1, stride))
    if starts[-1] + window < h:
        starts.append(starts[-1] + stride)
    total = np.zeros((h, h))
    count = np.zeros((h, h))
    grid = np.zeros((len(starts), len(starts)))
    for i, top in enumerate(starts):
        for j, left in enumerate(starts):
            copy = x.copy()
            copy[:, top : top + window, left : left + window] = 0
            grid[i, j] = base - backend.scores(copy[None])[0, c]
            total[top : top + window, left : left + window] += grid[i, j]
            count[top : top + window, left : left + window] += 1
    return grid, total / count


@pytest.mark.parametrize(("window", "stride"), [(8, 8), (12, 8), (5, 3)])
def test_occlusion_equals_every_window_by_hand(
    backend: ArrayBackend, images: list[np.ndarray], window: int, stride: int
) -> None:
    e = featvis.explain(
        backend, images[0], method="occlusion", window=window, stride=stride, target=3
    )
    x = _prepared(backend, images[:1])[0]
    grid, pixels = _occlusion_by_hand(backend, x, 3, window, stride)
    np.testing.assert_allclose(e.raw[0], grid, atol=1e-6)
    np.testing.assert_allclose(e.maps[0], pixels, atol=1e-6)


def test_occlusion_runs_in_batches_of_one_image_at_a_time(images: list[np.ndarray]) -> None:
    backend = _Counting(tiny_cnn(seed=2))
    featvis.explain(backend, images, method="occlusion", window=4, batch_size=10)
    assert max(backend.sizes[1:]) <= 10  # after the one pass for the targets
    assert sum(backend.sizes[1:]) == 3 * 64


def test_coarse_to_fine_occlusion(backend: ArrayBackend, images: list[np.ndarray]) -> None:
    full = featvis.explain(backend, images[0], method="occlusion", window=4, target=1)
    everywhere = featvis.explain(
        backend, images[0], method="occlusion", window=4, target=1, refine=1.0
    )
    np.testing.assert_allclose(everywhere.raw, full.raw, atol=1e-6)
    counting = _Counting(backend)
    quick = featvis.explain(
        counting, images[0], method="occlusion", window=4, target=1, refine=0.25
    )
    assert sum(counting.sizes) == 1 + 16 + 4 * 4  # targets, coarse grid, 4 cells refined
    assert quick.raw.shape == full.raw.shape


def test_an_image_asked_twice_is_perturbed_once(images: list[np.ndarray]) -> None:
    backend = _Counting(tiny_cnn(seed=2))
    both = featvis.explain(
        backend, [images[0], images[0]], method="occlusion", window=8, target=[1, 2]
    )
    assert sum(backend.sizes) == 2 + 16
    one = featvis.explain(tiny_cnn(seed=2), images[0], method="occlusion", window=8, target=2)
    np.testing.assert_allclose(both.raw[1], one.raw[0], atol=1e-6)


def test_rise_is_its_formula_and_seeded(backend: ArrayBackend, images: list[np.ndarray]) -> None:
    e = featvis.explain(backend, images[0], method="rise", masks=50, target=4, seed=3)
    x = _prepared(backend, images[:1])[0]
    masks = rise_masks(50, (32, 32), cells=7, p=0.5, seed=3)
    probs = backend.scores((x[None] * masks[:, None]).astype(np.float32))[:, 4]  # softmax model
    expected = np.einsum("i,ihw->hw", probs.astype(np.float64), masks) / (50 * 0.5)
    np.testing.assert_allclose(e.maps[0], expected, rtol=1e-5)
    again = featvis.explain(backend, images[0], method="rise", masks=50, target=4, seed=3)
    np.testing.assert_array_equal(again.maps, e.maps)
    other = featvis.explain(backend, images[0], method="rise", masks=50, target=4, seed=4)
    assert not np.allclose(other.maps, e.maps)
    assert e.options["seed"] == 3


def test_one_logit_per_image_is_refused_where_a_probability_is_needed() -> None:
    # one score, the left half's mean: its softmax would be 1 for every image and mask
    left = ArrayBackend([Step("score", lambda x: x[:, :1, :, :16].mean(axis=(1, 2, 3)))])
    left.preprocess = featvis.Preprocess(size=(32, 32))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for call in (
        lambda: featvis.explain(left, image, method="rise", masks=8),
        lambda: featvis.probabilities(left, image),
        lambda: featvis.evaluate(left, [image], {"flat": np.ones((1, 32, 32))}, metrics=["drop"]),
    ):
        with pytest.raises(featvis.ModelError, match="one score per image") as error:
            call()
        assert "(0, s)" in str(error.value) and "occlusion" in str(error.value)
    occluded = featvis.explain(left, image, method="occlusion", window=8)  # the raw score
    assert np.abs(occluded.raw[:, :, :2]).min() > 0 and np.abs(occluded.raw[:, :, 2:]).max() == 0
    left.score_kind = "probabilities"  # a sigmoid's output, say: taken as it is
    assert featvis.probabilities(left, image).shape == (1, 1)


def test_rise_masks_are_smooth_shifted_grids() -> None:
    masks = rise_masks(20, (32, 32), cells=4, p=0.5, seed=0)
    assert masks.shape == (20, 32, 32) and masks.min() >= 0 and masks.max() <= 1
    assert 0.3 < masks.mean() < 0.7
    np.testing.assert_array_equal(
        rise_masks(5, (32, 32), cells=4, p=0.5, seed=0, start=15), masks[15:]
    )


def test_cam_is_the_heads_weights_on_the_layer(images: list[np.ndarray]) -> None:
    backend = tiny_cnn(seed=2)
    e = featvis.explain(backend, images, method="cam", target=[1, 2, 3])
    head = backend.linear_head()
    assert head is not None
    a = backend.activations(images, "block.relu").astype(np.float64)
    expected = _relu(np.einsum("nk,nkhw->nhw", head[0][[1, 2, 3]].astype(np.float64), a))
    np.testing.assert_allclose(e.raw, expected, atol=1e-5 * expected.max())
    np.testing.assert_allclose(e.scores, backend.scores(images)[[0, 1, 2], [1, 2, 3]], rtol=1e-4)


def test_cam_refuses_a_layer_the_head_does_not_pool(images: list[np.ndarray]) -> None:
    with pytest.raises(featvis.CapabilityError, match="fully connected"):
        featvis.explain(tiny_cnn(seed=2), images, method="cam", layer="conv1")


def test_eigencam_is_the_first_principal_component_with_a_fixed_sign(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    e = featvis.explain(backend, images, method="eigencam", layer="conv2")
    a = backend.activations(images, "conv2").astype(np.float64)
    for n in range(3):
        x = a[n].reshape(len(a[n]), -1).T
        x = x - x.mean(axis=0)
        _, _, vt = np.linalg.svd(x, full_matrices=True)  # pytorch-grad-cam's way
        projection = x @ vt[0]
        if projection @ a[n].sum(axis=0).reshape(-1) < 0:  # the documented convention
            projection = -projection
        np.testing.assert_allclose(
            e.raw[n], _relu(projection).reshape(16, 16), atol=1e-6 * np.abs(projection).max()
        )
    assert (e.targets == -1).all() and np.isnan(e.scores).all()
    assert e.target_names() == ["no class"] * 3


def test_eigencam_works_on_a_backend_without_scores(images: list[np.ndarray]) -> None:
    # Only layers and activations: EigenCAM needs nothing else.
    e = featvis.explain(_ActivationsOnly(tiny_cnn()), images[0], method="eigencam")
    assert e.raw.shape == (1, 16, 16)


# -- noise ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["gradcam", "occlusion"])
def test_noise_averages_the_method_over_seeded_noisy_copies(
    backend: ArrayBackend, images: list[np.ndarray], method: str
) -> None:
    options = {"window": 8} if method == "occlusion" else {}
    e = featvis.explain(backend, images[:2], method=method, noise=0.1, samples=3, seed=7, **options)
    clean = featvis.explain(backend, images[:2], method=method, **options)
    np.testing.assert_array_equal(e.targets, clean.targets)
    np.testing.assert_allclose(e.scores, clean.scores)
    x = _prepared(backend, images[:2])
    rng = np.random.default_rng(7)
    spread = (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))[:, None, None, None]
    copies = np.repeat(x, 3, axis=0)
    copies = copies + rng.standard_normal(copies.shape, np.float32) * np.repeat(
        0.1 * spread, 3, axis=0
    )
    each = featvis.explain(
        backend,
        copies.astype(np.float32),
        method=method,
        target=list(np.repeat(clean.targets, 3)),
        **options,
    )
    np.testing.assert_allclose(
        e.raw, each.raw.reshape(2, 3, *each.raw.shape[1:]).mean(1), atol=1e-6
    )
    assert not np.allclose(e.raw, clean.raw)
    again = featvis.explain(
        backend, images[:2], method=method, noise=0.1, samples=3, seed=7, **options
    )
    np.testing.assert_array_equal(again.raw, e.raw)
    assert e.options["noise"] == 0.1 and "noisy copies" in e.describe(0)


# -- the explanation -------------------------------------------------------------------------


def test_an_explanation_draws_itself_and_overlays(
    backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    e = featvis.explain(backend, images)
    assert e.images is not None and e.images.shape == (3, 32, 32, 3)
    picture = featvis.overlay(images[0], e.maps[0])
    assert picture.size == (32, 32)
    png = e._repr_png_()
    assert png.startswith(b"\x89PNG")
    assert e.figure().size == (96, 64)
    big = [np.kron(image, np.ones((4, 4, 1), np.uint8)) for image in images]
    assert e.figure(big).size == (3 * 128, 256)
    figures = e.figures(big)
    assert len(figures) == 3 and figures[0][1].size == (128, 256)
    assert figures[0][0].startswith("gradcam: class") and "gradcam of class" in figures[0][2]
    single = e[1]
    assert len(single) == 1 and single.targets[0] == e.targets[1]
    np.testing.assert_array_equal(single.maps[0], e.maps[1])
    with pytest.raises(featvis.ArgumentError, match="2 image"):
        e.figure(big[:2])


def test_the_images_are_left_as_they_were(backend: ArrayBackend, images: list[np.ndarray]) -> None:
    x = _prepared(backend, images)
    before = x.copy()
    for method in ("gradcam", "scorecam", "occlusion"):
        featvis.explain(
            backend, x, method=method, **({"window": 8} if method == "occlusion" else {})
        )
    np.testing.assert_array_equal(x, before)


# -- plugins ---------------------------------------------------------------------------------


class _EdgePlugin:
    """A method from outside featvis: the image's own edges, with no model at all."""

    @featvis.hookimpl
    def register_methods(self, register: Any) -> None:
        def edges(req: featvis.MethodRequest) -> featvis.MethodResult:
            gray = req.batch.mean(axis=1)
            raw = np.abs(np.diff(gray, axis=2, prepend=gray[:, :, :1]))
            targets = req.resolve()
            return featvis.MethodResult(raw, targets, targets.values(req.backend.scores(req.batch)))

        register(featvis.Method("edges", edges, description="edges", uses_layer=False))
        register(featvis.Method("gradcam", edges, description="a name already taken"))


@pytest.fixture
def edge_plugin() -> Iterator[None]:
    for _ in _registered(_EdgePlugin(), "test-edges"):
        yield


def test_the_builtin_methods_register_through_the_hook() -> None:
    names = [m.name for m in featvis.list_methods()]
    assert names[:11] == [
        "gradcam", "gradcampp", "xgradcam", "layercam", "hirescam", "cam", "eigencam",
        "scorecam", "ablationcam", "occlusion", "rise",
    ]  # fmt: skip
    plugins = {pm.get_name(impl.plugin) for impl in pm.hook.register_methods.get_hookimpls()}
    assert "featvis-methods" in plugins


def test_a_plugin_adds_a_method(
    edge_plugin: None, backend: ArrayBackend, images: list[np.ndarray]
) -> None:
    with pytest.warns(featvis.FeatvisPluginWarning, match="already registered"):
        e = featvis.explain(backend, images, method="edges")
    assert e.raw.shape == (3, 32, 32) and e.layer is None
    with pytest.warns(featvis.FeatvisPluginWarning):
        assert featvis.explain(backend, images[0]).method == "gradcam"  # the built-in kept


# -- helpers ---------------------------------------------------------------------------------


class _Counting(ArrayBackend):
    """An ArrayBackend that records the size of every scores() call."""

    def __init__(self, inner: ArrayBackend) -> None:
        super().__init__(inner.steps, preprocess=inner.preprocess, categories=inner.categories)
        self.sizes: list[int] = []

    def scores(self, images: Any, *, batch_size: int | None = None) -> np.ndarray:
        out = super().scores(images, batch_size=batch_size)
        self.sizes.append(len(out))
        return out


class _ActivationsOnly(featvis.BackendBase):
    name = "activations-only"

    def __init__(self, inner: ArrayBackend) -> None:
        super().__init__(preprocess=inner.preprocess)
        self.inner = inner

    def _list_layers(self) -> list[featvis.Layer]:
        return self.inner.layers()

    def _run(self, batch: Any, layers: list[featvis.Layer]) -> list[np.ndarray]:
        return self.inner._run(batch, layers)
