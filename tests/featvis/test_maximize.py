"""featvis.maximize on the framework-free differentiable tiny CNN: every piece of the hand
written chain (parameterization, transforms, objectives) against finite differences or its
adjoint, and the whole method end to end."""

from __future__ import annotations

import numpy as np
import pytest

import featvis
from featvis._maximize import _objectives
from featvis._maximize._api import _input_backward, _normalized
from featvis._maximize._param import fourier, pixels, spectrum_scale
from featvis.testing import tiny_cnn

#: Transformations scaled to the tiny images of these tests (Lucid's pad 12 is for 224 pixels).
SMALL = featvis.Transforms(
    pad=2, jitter=3, scales=(0.95, 1.0, 1.05), angles=(-5, 0, 5), jitter_after=2
)


@pytest.fixture(scope="module")
def backend() -> featvis.Backend:
    return tiny_cnn(differentiable=True)


def _directional(f, x: np.ndarray, direction: np.ndarray, eps: float = 1e-3) -> float:
    """(f(x + eps d) - f(x - eps d)) / 2 eps, in float64."""
    return float((f(x + eps * direction) - f(x - eps * direction)) / (2 * eps))


# -- the pieces ------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [fourier, pixels])
@pytest.mark.parametrize("size", [(12, 12), (9, 13)])  # even and odd widths (Nyquist column)
@pytest.mark.parametrize("decorrelate", [True, False])
def test_the_parameterization_backward_is_its_derivative(make, size, decorrelate) -> None:
    param = make(size, decorrelate=decorrelate)
    rng = np.random.default_rng(0)
    params = param.init(rng, 2).astype(np.float64) * 50  # away from the flat start
    weights = rng.standard_normal((2, 3, *size))

    def f(p: np.ndarray) -> float:
        return float((param.image(p.astype(np.float32))[0].astype(np.float64) * weights).sum())

    _, cache = param.image(params.astype(np.float32))
    grad = param.backward(weights.astype(np.float32), cache)
    for _ in range(3):
        d = rng.standard_normal(params.shape)
        expected = _directional(f, params, d, eps=1e-2)
        assert float((grad * d).sum()) == pytest.approx(expected, rel=2e-2, abs=1e-3)


def test_the_fourier_images_are_lucids_formula_written_out() -> None:
    # image = sigmoid(M @ irfft2(scale * (a + ib), ortho) / 4), M the normalized color matrix
    size = (8, 10)
    param = fourier(size)
    params = param.init(np.random.default_rng(1), 1) * 30
    spectrum = (params[..., 0] + 1j * params[..., 1]) * spectrum_scale(*size)
    raw = np.fft.irfft2(spectrum, s=size, norm="ortho") / 4.0
    svd = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]])
    m = svd / np.linalg.norm(svd, axis=0).max()
    expected = 1 / (1 + np.exp(-np.einsum("cd,ndhw->nchw", m, raw)))
    np.testing.assert_allclose(param.image(params)[0], expected, atol=1e-6)
    # 1/f: the scale is 1 / max(f, 1 / max(h, w)), f in cycles per pixel
    assert spectrum_scale(8, 10)[0, 0] == pytest.approx(10.0)
    assert spectrum_scale(8, 10)[0, 5] == pytest.approx(2.0)  # f = 0.5


@pytest.mark.parametrize("pad", [0, 3])
def test_the_transform_backward_is_the_adjoint_of_the_view(pad: int) -> None:
    transforms = featvis.Transforms(pad=pad, jitter=4, scales=(0.9, 1.1), angles=(-10, 7))
    rng = np.random.default_rng(0)
    warp = transforms.draw([np.random.default_rng([0, i]) for i in range(3)], (10, 12))
    x = rng.standard_normal((3, 3, 10, 12)).astype(np.float32)
    view_of = warp.apply
    # the view is affine in x (the border is a constant): its linear part's adjoint
    zero = view_of(np.zeros_like(x))
    y = rng.standard_normal(zero.shape).astype(np.float32)
    lhs = float(((view_of(x) - zero) * y).sum(dtype=np.float64))
    rhs = float((x * warp.backward(y, (10, 12))).sum(dtype=np.float64))
    assert lhs == pytest.approx(rhs, rel=1e-4)
    assert zero.shape == (3, 3, 10 + 2 * pad, 12 + 2 * pad)


def test_no_transform_is_the_identity_and_a_shift_moves_the_image() -> None:
    x = np.random.default_rng(0).random((1, 3, 6, 7)).astype(np.float32)
    same = featvis.Transforms.none().draw([np.random.default_rng(0)], (6, 7))
    np.testing.assert_allclose(same.apply(x), x, atol=1e-6)

    shift = featvis.Transforms(pad=2, jitter=3, scales=(1.0,), angles=(0.0,), jitter_after=1)
    for seed in range(20):  # some seed draws a shift of (2, 0): the content moves down 2 rows
        warp = shift.draw([np.random.default_rng(seed)], (6, 7))
        view = warp.apply(x)
        if np.allclose(view[:, :, 4:8, 2:9], x[:, :, 0:4, :]):
            break
    else:
        pytest.fail("no seed shifted the image down by two pixels")
    assert np.allclose(view[:, :, :4, :], 0.5)  # what came into view is the gray border


@pytest.mark.parametrize("name", ["channel", "neuron", "layer", "diversity", "class"])
def test_each_objective_cotangent_is_its_derivative(name: str) -> None:
    rng = np.random.default_rng(0)
    layer = "x"
    targets = np.array([1, 2, 0])
    output = rng.standard_normal((3, 4, 5, 5)) if name != "class" else rng.standard_normal((3, 6))
    objective = {
        "channel": lambda: _objectives.channel(targets, layer),
        "neuron": lambda: _objectives.neuron(targets, layer),
        "layer": lambda: _objectives.deepdream(layer),
        "diversity": lambda: _objectives.diversity(np.array([1, 1, 1]), layer, 10.0),
        "class": lambda: _objectives.class_score(targets),
    }[name]()
    index = np.arange(3)
    _, cotangent = objective.fn(output.astype(np.float32), index)
    for _ in range(3):
        d = rng.standard_normal(output.shape)
        total = lambda o: objective.fn(o, index)[0].sum(dtype=np.float64)  # noqa: E731
        expected = _directional(total, output, d, eps=1e-2)  # the values are float32
        assert float((cotangent * d).sum()) == pytest.approx(expected, rel=1e-2, abs=1e-3)


def test_the_diversity_term_is_lucids_written_out() -> None:
    rng = np.random.default_rng(1)
    a = rng.standard_normal((3, 4, 2, 3)).astype(np.float32)
    layer = "x"
    values, _ = _objectives.diversity(np.array([2, 2, 2]), layer, 7.0).fn(a, np.arange(3))
    flat = a.reshape(3, 4, -1).astype(np.float64)
    grams = [f @ f.T for f in flat]
    grams = [g / np.linalg.norm(g) for g in grams]
    for i in range(3):
        similarity = sum((grams[i] * grams[j]).sum() for j in range(3) if j != i)
        assert values[i] == pytest.approx(a[i, 2].mean() - 7.0 / 3 * similarity, rel=1e-5)


def test_the_whole_step_gradient_is_the_derivative_of_the_objective(backend) -> None:
    """param -> image -> view -> (x - mean) / std -> model -> objective, chained by hand."""
    param = fourier((12, 12))
    transforms = featvis.Transforms(pad=2, jitter=3, scales=(0.95,), angles=(5.0,))
    warp = transforms.draw([np.random.default_rng(i) for i in range(2)], param.size)
    layer = backend.layer("conv2")
    objective = _objectives.channel(np.array([3, 5]), layer)
    pre = backend.preprocess
    params = param.init(np.random.default_rng(0), 2) * 100

    def f(p: np.ndarray) -> float:
        x = _normalized(warp.apply(param.image(p.astype(np.float32))[0]), pre)
        out = backend.activations(x, layer).astype(np.float64)
        return float(objective.fn(out, np.arange(2))[0].sum(dtype=np.float64))

    images, cache = param.image(params)
    g = backend.gradients(_normalized(warp.apply(images), pre), [], objective, input=True)
    grad = param.backward(warp.backward(_input_backward(g.input, pre), param.size), cache)
    d = np.random.default_rng(5).standard_normal(params.shape)
    assert float((grad * d).sum()) == pytest.approx(_directional(f, params, d, 1e-2), rel=3e-2)


# -- the method ------------------------------------------------------------------------------


def test_each_image_excites_its_own_channel_more_than_the_others_do(backend) -> None:
    channels = [0, 3, 9, 14]
    result = featvis.maximize(backend, "conv2", channels, steps=40, size=16, transforms=SMALL)
    assert result.images.shape == (4, 16, 16, 3) and result.images.dtype == np.float32
    assert result.images.min() >= 0.0 and result.images.max() <= 1.0
    assert result.channels == tuple(channels) and result.layer == "block.conv"
    # .values are the objective of the images themselves, as the backend computes it
    x = np.ascontiguousarray(result.images.transpose(0, 3, 1, 2))
    mean = np.asarray(backend.preprocess.mean, np.float32)[:, None, None]
    std = np.asarray(backend.preprocess.std, np.float32)[:, None, None]
    acts = backend.activations(((x - mean) / std).astype(np.float32), "conv2").mean(axis=(2, 3))
    np.testing.assert_allclose(result.values, acts[np.arange(4), channels], rtol=1e-5, atol=1e-6)
    own = acts[np.arange(4), channels]
    for i, c in enumerate(channels):
        others = np.delete(acts[:, c], i)
        assert own[i] > others.max(), f"channel {c}"
    assert (result.history[-5:].mean(axis=0) > result.history[:5].mean(axis=0)).all()


def test_the_same_seed_gives_the_same_images_and_another_seed_others(backend) -> None:
    run = {"steps": 6, "size": 12, "transforms": SMALL}
    a = featvis.maximize(backend, "conv2", [1, 2], seed=3, **run)
    b = featvis.maximize(backend, "conv2", [1, 2], seed=3, **run)
    c = featvis.maximize(backend, "conv2", [1, 2], seed=4, **run)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.abs(a.images - c.images).mean() > 1e-3


def test_batches_do_not_change_which_image_a_channel_gets(backend) -> None:
    run = {"steps": 5, "size": 12, "transforms": SMALL}
    together = featvis.maximize(backend, "conv2", [4, 6, 8], **run)
    split = featvis.maximize(backend, "conv2", [4, 6, 8], batch_size=2, **run)
    np.testing.assert_allclose(together.images, split.images, atol=1e-5)


@pytest.mark.parametrize(
    ("objective", "layer", "channels", "images"),
    [("neuron", "conv2", [2], 1), ("layer", "relu1", None, 2), ("class", None, [7], 1)],
)
def test_other_objectives_go_up(backend, objective, layer, channels, images) -> None:
    count = images if objective == "layer" else None
    run = {"objective": objective, "size": 16, "count": count, "transforms": None}
    result = featvis.maximize(backend, layer, channels, steps=25, **run)
    start = featvis.maximize(backend, layer, channels, steps=1, **run)
    assert len(result) == images and result.objective == objective
    assert (result.values > start.values).all()


def test_under_transforms_the_neuron_is_the_centre_of_what_the_model_sees(backend) -> None:
    """As in Lucid and lucent, objective="neuron" takes the centre of the layer output of the
    transformed (padded, shifted, scaled, rotated) view at each step: the first step's value
    is that position of the view of the seeded start image, written out here."""
    channels, size, seed = [2, 5], (16, 16), 7
    run = {"objective": "neuron", "steps": 1, "size": size, "seed": seed, "transforms": SMALL}
    result = featvis.maximize(backend, "conv2", channels, **run)
    param = fourier(size)
    rngs = [np.random.default_rng([seed, i]) for i in range(2)]
    start = param.image(np.concatenate([param.init(rng, 1) for rng in rngs]))[0]
    view = SMALL.draw(rngs, size).apply(start)
    acts = backend.activations(_normalized(view, backend.preprocess), "conv2")
    image_acts = backend.activations(_normalized(start, backend.preprocess), "conv2")
    assert acts.shape[2:] != image_acts.shape[2:]  # the view's map is bigger (the border)
    h, w = acts.shape[2] // 2, acts.shape[3] // 2
    np.testing.assert_allclose(result.history[0], acts[[0, 1], channels, h, w], rtol=1e-5)


def test_diversity_makes_the_images_of_one_channel_less_alike(backend) -> None:
    run = {"steps": 30, "size": 16, "count": 3, "transforms": SMALL}
    layer = backend.layer("relu2")

    def similarity(result: featvis.Maximization) -> float:
        """The mean cosine similarity of the Gram matrices of the images' activations."""
        x = np.ascontiguousarray(result.images.transpose(0, 3, 1, 2))
        acts = backend.activations(_normalized(x, backend.preprocess), layer)
        flat = acts.reshape(3, acts.shape[1], -1).astype(np.float64)
        grams = [f @ f.T / np.linalg.norm(f @ f.T) for f in flat]
        return float(np.mean([(grams[i] * grams[j]).sum() for i in range(3) for j in range(i)]))

    plain = featvis.maximize(backend, "relu2", [0, 0, 0], **{**run, "count": 1})
    diverse = featvis.maximize(backend, "relu2", 0, objective="diversity", diversity=50.0, **run)
    assert diverse.channels == (0, 0, 0)
    assert similarity(diverse) < similarity(plain)


def test_the_layer_view_tiles_the_images_in_order(backend) -> None:
    result = featvis.maximize(backend, "conv2", [0, 1, 2], steps=2, size=10)
    picture = np.asarray(result.picture(grid=(1, 3), padding=2))
    assert picture.shape == (14, 38, 3)
    expected = (result.images[1] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(picture[2:12, 14:24], expected)
    labelled = result.picture(labels=True)
    assert labelled.size[1] > picture.shape[0]


def test_a_backend_without_gradients_is_told_what_works() -> None:
    with pytest.raises(featvis.CapabilityError) as info:
        featvis.maximize(tiny_cnn(), "conv2", [0], steps=1)
    message = str(info.value)
    assert "featvis.maximize needs gradients" in message
    assert "featvis.survey" in message and "eigencam" in message and "gradcam" not in message


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"objective": "dream"}, "Unknown objective 'dream'; choose one of channel"),
        ({"parameterization": "wavelet"}, "Unknown parameterization"),
        ({"objective": "layer"}, "channels=None"),
        ({"objective": "diversity", "channels": [0, 1]}, "one channel"),
        ({"objective": "diversity", "count": 1}, "count >= 2"),
        ({"channels": [99]}, "Channel 99 is out of range: the output has 16"),
        ({"channels": [-1]}, "non-negative"),
        ({"steps": 0}, "steps must be"),
        ({"size": 4}, "size must be"),
        ({"transforms": "standard"}, "featvis.Transforms or None"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(backend, kwargs, match) -> None:
    args = {"channels": [0], "steps": 1, "size": 12, **kwargs}
    with pytest.raises(featvis.ArgumentError, match=match):
        featvis.maximize(backend, "conv2", **args)


def test_bad_transforms_are_refused() -> None:
    with pytest.raises(featvis.ArgumentError, match="jitter must be a whole number >= 1"):
        featvis.Transforms(jitter=0)
    with pytest.raises(featvis.ArgumentError, match="scales must be positive"):
        featvis.Transforms(scales=(0.0,))


def test_an_unknown_layer_names_the_layers(backend) -> None:
    with pytest.raises(featvis.UnknownLayerError):
        featvis.maximize(backend, "conv9", [0], steps=1)


def test_the_gallery_takes_uint8_and_refuses_what_is_not_rgb() -> None:
    tiles = np.zeros((2, 4, 4, 3), np.uint8)
    tiles[1] = 200
    picture = np.asarray(featvis.gallery(tiles, grid=(1, 2), padding=0))
    assert picture.shape == (4, 8, 3) and picture[0, 5, 0] == 200
    with pytest.raises(featvis.ArgumentError, match=r"\(N, H, W, 3\)"):
        featvis.gallery(np.zeros((2, 4, 4)))
    with pytest.raises(featvis.ArgumentError, match="labels"):
        featvis.gallery(tiles, labels=["a"])
