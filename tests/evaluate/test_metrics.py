"""featvis.evaluate on framework-free models whose right answer is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

import featvis
from featvis import ArgumentError, CapabilityError
from featvis._evaluate import METRICS
from featvis._evaluate._metrics import substrate
from featvis.testing import ArrayBackend, Step

SIZE = 32


def _quadrant_scores(x: np.ndarray) -> np.ndarray:
    """Two logits: 4x the mean of the top-left quadrant, and 1."""
    s = 4.0 * x[:, :, : SIZE // 2, : SIZE // 2].mean(axis=(1, 2, 3))
    return np.stack([s, np.ones_like(s)], axis=1)


@pytest.fixture(scope="module")
def quadrant() -> ArrayBackend:
    """A model that looks only at the top-left quadrant of the image."""
    return ArrayBackend([Step("score", _quadrant_scores, kind="fc")])


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(4):
        image = rng.integers(0, 120, (SIZE, SIZE, 3), np.uint8)
        image[: SIZE // 2, : SIZE // 2] = rng.integers(180, 256, (SIZE // 2, SIZE // 2, 3))
        out.append(image)
    return out


def _bump(cy: float, cx: float, n: int = 4) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.repeat(-np.hypot(yy - cy, xx - cx)[None], n, axis=0).astype(np.float32)


@pytest.fixture(scope="module")
def ranked(quadrant: ArrayBackend, images: list[np.ndarray]) -> featvis.Evaluation:
    methods = {
        "right quadrant": _bump(7.5, 7.5),
        "random": np.random.default_rng(1).random((4, SIZE, SIZE)).astype(np.float32),
        "wrong quadrant": _bump(23.5, 23.5),
    }
    return featvis.evaluate(
        quadrant, images, methods, metrics=["deletion", "insertion", "road"], steps=16
    )


@pytest.mark.parametrize("metric", ["deletion", "insertion", "road"])
def test_the_quadrant_the_model_reads_is_best_another_worst_random_between(
    ranked: featvis.Evaluation, metric: str
) -> None:
    right, random, wrong = (ranked[k][metric] for k in ranked.methods)
    if METRICS[metric][0]:  # higher is better
        assert right > random > wrong
    else:
        assert right < random < wrong
    assert ranked.best(metric) == "right quadrant"


def _probability(backend: ArrayBackend, x: np.ndarray) -> np.ndarray:
    z = backend.scores(x)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize("steps", [8, 20])
def test_deletion_and_insertion_equal_petsiuk_written_out(
    quadrant: ArrayBackend, images: list[np.ndarray], steps: int
) -> None:
    """8 steps divide the 1,024 pixels; 20 do not (51.2 pixels a step): the area is taken over
    the fractions of pixels actually removed."""
    maps = np.random.default_rng(2).random((4, SIZE, SIZE)).astype(np.float32)
    ev = featvis.evaluate(
        quadrant,
        images,
        {"m": maps},
        metrics=["deletion", "insertion"],
        steps=steps,
        deletion="zeros",
        insertion="mean",
    )
    batch = featvis.prepare_images(images, quadrant.preprocess)
    for i in range(4):
        x = batch[i]
        target = int(_probability(quadrant, x[None]).argmax())
        order = np.argsort(-maps[i].ravel(), kind="stable")
        mean = x.mean(axis=(1, 2), keepdims=True) * np.ones_like(x)
        dele, ins, removed = [], [], []
        for step in range(steps + 1):
            removed.append(round(step * SIZE * SIZE / steps))
            top = order[: removed[-1]]
            d = x.copy().reshape(3, -1)
            d[:, top] = 0.0
            a = mean.copy().reshape(3, -1)
            a[:, top] = x.reshape(3, -1)[:, top]
            dele.append(_probability(quadrant, d.reshape(1, 3, SIZE, SIZE))[0, target])
            ins.append(_probability(quadrant, a.reshape(1, 3, SIZE, SIZE))[0, target])
        grid = np.array(removed) / (SIZE * SIZE)
        assert ev.values["m"]["deletion"][i] == pytest.approx(np.trapezoid(dele, grid), abs=1e-6)
        assert ev.values["m"]["insertion"][i] == pytest.approx(np.trapezoid(ins, grid), abs=1e-6)
        np.testing.assert_allclose(ev.curves["m"]["deletion"][i], dele, atol=1e-6)


def test_confidence_change_equals_grad_campp_written_out(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    maps = np.random.default_rng(3).random((4, SIZE, SIZE)).astype(np.float32) * 5 - 1
    ev = featvis.evaluate(quadrant, images, {"m": maps}, metrics=["drop", "increase"])
    batch = featvis.prepare_images(images, quadrant.preprocess)
    p = _probability(quadrant, batch)
    target = p.argmax(axis=1)
    y = p[np.arange(4), target]
    unit = (maps - maps.min(axis=(1, 2), keepdims=True)) / np.ptp(maps, axis=(1, 2), keepdims=True)
    o = _probability(quadrant, batch * unit[:, None])[np.arange(4), target]
    np.testing.assert_allclose(ev.values["m"]["drop"], np.maximum(0, y - o) / y, atol=1e-6)
    np.testing.assert_array_equal(ev.values["m"]["increase"], (o > y).astype(float))


def test_a_constant_map_keeps_no_region_as_pytorch_grad_cam_scales_it(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    # scale_cam_image makes a constant map 0: the image times it is all zeros. (All ones
    # kept the whole image: drop 0, the best there is, for a map that marks nothing.)
    flat = np.stack([np.zeros((SIZE, SIZE)), np.full((SIZE, SIZE), 3.0)]).astype(np.float32)
    ev = featvis.evaluate(quadrant, images[:2], {"flat": flat}, metrics=["drop", "increase"])
    batch = featvis.prepare_images(images[:2], quadrant.preprocess)
    p = _probability(quadrant, batch)
    target = p.argmax(axis=1)
    y = p[np.arange(2), target]
    o = _probability(quadrant, np.zeros_like(batch))[np.arange(2), target]
    np.testing.assert_allclose(ev.values["flat"]["drop"], np.maximum(0, y - o) / y, atol=1e-6)
    assert ev.values["flat"]["drop"].min() > 0.1


def test_road_does_not_depend_on_the_maps_scale(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    # LeRF's ranking: 1 - map in float32 tied every value of a map this small
    maps = np.random.default_rng(5).random((2, SIZE, SIZE)).astype(np.float32)
    runs = [
        featvis.evaluate(quadrant, images[:2], {"m": maps * k}, metrics=["road"], seed=1)
        for k in (np.float32(1.0), np.float32(1e-9))
    ]
    assert np.isfinite(runs[1].values["m"]["road"]).all()
    np.testing.assert_array_equal(runs[0].values["m"]["road"], runs[1].values["m"]["road"])


def test_prediction_from_the_top_of_the_map(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    ev = featvis.evaluate(
        quadrant,
        images,
        {"right": _bump(7.5, 7.5), "wrong": _bump(23.5, 23.5)},
        metrics=["prediction"],
        keep=(0.25, 0.5),
        insertion="zeros",
    )
    # the top quarter of the right map is the quadrant: the class survives; the wrong map's
    # top quarter is another quadrant, the model's quadrant is zeros: it does not.
    assert ev["right"]["prediction"] == 1.0
    assert ev.curves["wrong"]["prediction"][:, 0].tolist() == [0.0] * 4


def test_stability_is_zero_for_a_map_that_ignores_noise_and_not_for_one_that_follows_it(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    def fixed(backend: object, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.broadcast_to(_bump(7.5, 7.5, 1), (len(x), SIZE, SIZE)).copy()

    def pixels(backend: object, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return x.mean(axis=1) + 3.0

    ev = featvis.evaluate(
        quadrant, images, {"fixed": fixed, "pixels": pixels}, metrics=["stability"], noise=0.1
    )
    assert ev["fixed"]["stability"] == 0.0
    assert 0.01 < ev["pixels"]["stability"] < 1.0
    again = featvis.evaluate(quadrant, images, {"pixels": pixels}, metrics=["stability"], noise=0.1)
    np.testing.assert_array_equal(
        again.values["pixels"]["stability"], ev.values["pixels"]["stability"]
    )


def test_second_class_map_of_a_class_blind_method_is_the_same(
    images: list[np.ndarray],
) -> None:
    backend = featvis.testing.tiny_cnn(differentiable=True)
    ev = featvis.evaluate(backend, images, ["gradcam", "eigencam"], metrics=["second_class"])
    assert ev["eigencam"]["second_class"] == 1.0
    assert ev["gradcam"]["second_class"] < 0.9


def test_a_row_can_name_its_own_layer(images: list[np.ndarray]) -> None:
    backend = featvis.testing.tiny_cnn(differentiable=True)
    rows = {"default": "gradcam", "conv1": {"method": "gradcam", "layer": "conv1"}}
    ev = featvis.evaluate(backend, images, rows, metrics=["deletion"])
    at_conv1 = featvis.explain(backend, images, method="gradcam", layer="conv1")
    default = featvis.explain(backend, images, method="gradcam")
    assert default.layer != "conv1"
    np.testing.assert_array_equal(ev.maps["conv1"], at_conv1.maps)
    np.testing.assert_array_equal(ev.maps["default"], default.maps)
    with pytest.raises(ArgumentError, match="uses no layer"):  # never silently ignored
        featvis.evaluate(backend, images, {"o": {"method": "occlusion", "layer": "conv1"}})


def test_a_row_can_fuse_layers_and_an_explanation_of_fused_layers_runs_again(
    images: list[np.ndarray],
) -> None:
    backend = featvis.testing.tiny_cnn(differentiable=True)
    layers = ["block.relu", "stem.relu"]
    fused = featvis.explain(backend, images, layer=layers)
    rows = {"row": {"method": "gradcam", "layer": layers}, "given": fused}
    ev = featvis.evaluate(backend, images, rows, metrics=["deletion", "stability"])
    np.testing.assert_array_equal(ev.maps["row"], fused.maps)
    np.testing.assert_array_equal(ev.maps["given"], fused.maps)
    # the explanation is run again on the noisy copies, fused over the same layers
    assert np.isfinite(ev.values["given"]["stability"]).all()
    np.testing.assert_array_equal(ev.values["given"]["stability"], ev.values["row"]["stability"])


def test_a_fixed_array_has_no_stability_and_cannot_depend_on_the_model(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    ev = featvis.evaluate(
        quadrant, images, {"a": _bump(7.5, 7.5)}, metrics=["stability", "second_class"]
    )
    assert np.isnan(ev["a"]["stability"]) and np.isnan(ev["a"]["second_class"])
    assert "n/a" in str(ev)


def test_sanity_needs_a_randomizable_backend(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    with pytest.raises(CapabilityError, match="sanity.*deletion, insertion"):
        featvis.evaluate(quadrant, images, {"a": _bump(7.5, 7.5)}, metrics=["sanity"])
    ev = featvis.evaluate(
        quadrant, images[:1], {"a": _bump(7.5, 7.5, 1)}, steps=4, percentiles=(50,)
    )
    assert "sanity" not in ev.metrics and "sanity was left out" in ev.notes[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"metrics": ["deletions"]}, "Unknown metric.*deletion"),
        ({"deletion": "black"}, "substrate"),
        ({"steps": 0}, "steps"),
        ({"keep": (0.0,)}, "keep"),
        ({"methods": {"a": np.zeros((3, SIZE, SIZE))}}, r"shape \(4, H, W\)"),
        ({"methods": {"a": np.full((4, SIZE, SIZE), np.nan)}}, "NaN"),
        ({"methods": {"a": np.ones((4, 2 * SIZE, SIZE))}}, "not the input's"),  # larger
        ({"methods": {"a": np.ones((4, SIZE // 2, SIZE // 8))}}, "coarser grid of the same"),
        ({"methods": {"a": 3}}, "method name"),
        ({"methods": ["nosuch"]}, "nosuch"),
    ],
)
def test_bad_arguments_are_refused_before_any_work(
    quadrant: ArrayBackend, images: list[np.ndarray], kwargs: dict, match: str
) -> None:
    kwargs = {"methods": {"a": _bump(7.5, 7.5)}, **kwargs}
    with pytest.raises((ArgumentError, featvis.FeatvisError), match=match):
        featvis.evaluate(quadrant, images, **kwargs)


def test_a_coarser_map_of_the_same_shape_is_resized_to_the_input(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    fine = _bump(7.5, 7.5)[:1]
    coarse = fine[:, 1::4, 1::4]  # a layer's grid, 4 times coarser
    ev = featvis.evaluate(quadrant, images[:1], {"coarse": coarse}, metrics=["deletion"], steps=4)
    assert ev.maps["coarse"].shape == (1, SIZE, SIZE)


def test_the_evaluation_reads_as_a_table_a_page_and_a_figure(ranked: featvis.Evaluation) -> None:
    text = str(ranked)
    assert text.splitlines()[0].split()[:2] == ["method", "deletion"]
    assert "right quadrant" in text and "±" in text and "16 steps" in text
    page = ranked._repr_html_()
    assert page.count("<tr>") == 4 and "<b>" in page
    picture = ranked.figure()
    assert picture.size == (340, 900)
    section = ranked.section()
    assert section.figures[0].title == "Deletion and insertion curves"
    assert len(section.figures) == 1 + len(ranked.methods)
    assert ranked["random"].keys() == {"deletion", "insertion", "road"}
    diffs = ranked.paired("random", "deletion")
    assert diffs["random"] == (0.0, 0.0) and diffs["right quadrant"][0] < 0
    with pytest.raises(ArgumentError, match="right quadrant"):
        ranked["nope"]


def test_substrates_never_write_into_the_image() -> None:
    x = np.random.default_rng(0).standard_normal((3, 16, 16)).astype(np.float32)
    kept = x.copy()
    for kind in ("blur", "mean", "zeros"):
        out = substrate(x, kind)
        assert out.shape == x.shape and out.dtype == np.float32
    np.testing.assert_array_equal(x, kept)
    assert np.allclose(substrate(x, "mean")[:, 0, 0], x.mean(axis=(1, 2)), atol=1e-6)


def test_road_of_a_constant_map_is_not_a_number_and_nothing_is_solved(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    # Every value of a constant map is at its percentile: every pixel would be removed and
    # there is nothing to impute from (the system would be singular). The image's ROAD is
    # NaN, left out of the mean, and no warning or NaN input reaches the model.
    import warnings

    maps = np.stack([np.zeros((SIZE, SIZE), np.float32), _bump(7.5, 7.5, 1)[0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ev = featvis.evaluate(quadrant, images[:2], {"flat first": maps}, metrics=["road"])
    road = ev.values["flat first"]["road"]
    assert np.isnan(road[0]) and np.isfinite(road[1])
    assert ev["flat first"]["road"] == pytest.approx(road[1])


def test_a_mean_over_fewer_images_than_evaluated_says_how_many(
    quadrant: ArrayBackend, images: list[np.ndarray]
) -> None:
    # ROAD of a constant map is undefined: the table gives the mean of the others and says
    # over how many images, and no "± nan" for a mean of one.
    maps = np.stack([np.zeros((SIZE, SIZE), np.float32), _bump(7.5, 7.5, 1)[0]])
    ev = featvis.evaluate(quadrant, images[:2], {"flat first": maps}, metrics=["road", "drop"])
    text = str(ev)
    assert "(1 of 2)" in text and "nan" not in text
    assert f"{ev['flat first']['road']:.3f} (1 of 2)" in text
    assert "(1 of 2)" in ev.table_html()
