"""featvis.maximize through the torch backend: the numpy pieces against lucent and torch (the
peers), the model left as it was (the autouse hygiene fixture), and on the embedded
EfficientNet-Lite0 what a user looks for: images that excite their channel far more than any
natural image does, and a Fourier parameterization with less high-frequency noise than pixels.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import featvis
from featvis._maximize._api import _Adam
from featvis._maximize._param import fourier, pixels
from featvis.samples import SAMPLES, sample
from featvis_torch import TorchBackend

with warnings.catch_warnings():  # kornia 0.4 (lucent's) calls the deprecated torch.jit.script
    warnings.simplefilter("ignore", FutureWarning)
    from lucent.optvis.param.color import to_valid_rgb
    from lucent.optvis.param.spatial import fft_image, pixel_image


@pytest.mark.parametrize("fft", [True, False])
def test_the_parameterizations_equal_lucents_images_and_gradients(fft: bool) -> None:
    size = (12, 16)  # lucent keeps an extra spectrum column for odd widths; an even one
    torch.manual_seed(0)
    params_t, image_f = fft_image((2, 3, *size)) if fft else pixel_image((2, 3, *size))
    with torch.no_grad():
        params_t[0].mul_(40.0)
    image = to_valid_rgb(image_f, decorrelate=True)()
    weights = torch.randn(image.shape, generator=torch.Generator().manual_seed(1))
    (grad_t,) = torch.autograd.grad((image * weights).sum(), params_t)

    param = (fourier if fft else pixels)(size, decorrelate=True)
    params = params_t[0].detach().numpy()
    mine, cache = param.image(params)
    np.testing.assert_allclose(mine, image.detach().numpy(), atol=1e-6)
    grad = param.backward(weights.numpy(), cache)
    np.testing.assert_allclose(grad, grad_t.numpy(), rtol=1e-4, atol=1e-6)


def test_adam_ascends_as_torch_adam_descends() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(5).astype(np.float32)
    t = torch.tensor(x, requires_grad=True)
    optimizer = torch.optim.Adam([t], lr=0.05)
    adam = _Adam(0.05)
    for _ in range(20):
        grad = np.cos(x) * 3  # d/dx of 3 sin(x)
        x = adam.step(x, grad)
        optimizer.zero_grad()
        (-3 * torch.sin(t)).sum().backward()
        optimizer.step()
    np.testing.assert_allclose(x, t.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_maximize_on_a_torch_model_leaves_it_as_it_was(tiny_backend: TorchBackend) -> None:
    # the hygiene fixture checks hooks, grads, requires_grad and training flags afterwards
    result = featvis.maximize(tiny_backend, "conv2", [0, 1], steps=3, size=16)
    assert result.images.shape == (2, 16, 16, 3) and np.isfinite(result.values).all()


def test_a_failure_inside_the_optimization_leaves_the_model_as_it_was(
    tiny_backend: TorchBackend,
) -> None:
    with pytest.raises(featvis.ArgumentError, match="out of range"):
        featvis.maximize(tiny_backend, "conv2", [999], steps=2, size=16)


# -- EfficientNet-Lite0 ----------------------------------------------------------------------

LAYER = "_blocks.6._expand_conv"  # 14x14, 480 channels: the middle of the network
CHANNELS = [1, 7, 20]


@pytest.fixture(scope="module")
def lite0() -> TorchBackend:
    return featvis.load_model("efficientnet_lite0")


def _channel_means(backend: TorchBackend, images: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    mean = np.asarray(backend.preprocess.mean, np.float32)[:, None, None]
    std = np.asarray(backend.preprocess.std, np.float32)[:, None, None]
    acts = backend.activations(((x - mean) / std).astype(np.float32), LAYER)
    return acts.mean(axis=(2, 3))


@pytest.mark.slow
def test_an_optimized_image_excites_its_channel_3x_more_than_any_sample(
    lite0: TorchBackend,
) -> None:
    natural = lite0.activations([sample(name) for name in SAMPLES], LAYER).mean(axis=(2, 3))
    result = featvis.maximize(lite0, LAYER, CHANNELS, steps=48, size=128)
    excited = _channel_means(lite0, result.images)
    np.testing.assert_allclose(result.values, excited[np.arange(3), CHANNELS], rtol=1e-4)
    for i, c in enumerate(CHANNELS):
        strongest = natural[:, c].max()
        assert strongest > 0
        assert excited[i, c] >= 3 * strongest, f"channel {c}: {excited[i, c]} vs {strongest}"
        others = np.delete(excited[:, c], i)
        assert excited[i, c] > others.max(), f"channel {c} is excited more by another image"


def _high_frequency_share(images: np.ndarray) -> float:
    """The share of the spectral energy (mean removed) above a quarter of the sampling rate."""
    gray = images.mean(axis=3)
    gray = gray - gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(gray)) ** 2
    fy = np.fft.fftfreq(gray.shape[1])[:, None]
    fx = np.fft.fftfreq(gray.shape[2])[None, :]
    high = np.sqrt(fy**2 + fx**2) > 0.25
    return float(power[:, high].sum() / power.sum())


@pytest.mark.slow
def test_fourier_has_less_high_frequency_energy_than_pixels(lite0: TorchBackend) -> None:
    run = {"steps": 32, "size": 96, "seed": 1}
    smooth = featvis.maximize(lite0, LAYER, CHANNELS[:2], parameterization="fourier", **run)
    noisy = featvis.maximize(lite0, LAYER, CHANNELS[:2], parameterization="pixels", **run)
    assert _high_frequency_share(smooth.images) < 0.5 * _high_frequency_share(noisy.images)


@pytest.mark.slow
def test_a_seed_gives_the_same_images_on_a_real_model(lite0: TorchBackend) -> None:
    run = {"steps": 3, "size": 64}
    a = featvis.maximize(lite0, LAYER, [3], seed=5, **run)
    b = featvis.maximize(lite0, LAYER, [3], seed=5, **run)
    c = featvis.maximize(lite0, LAYER, [3], seed=6, **run)
    np.testing.assert_array_equal(a.images, b.images)
    assert np.abs(a.images - c.images).mean() > 1e-3


@pytest.mark.slow
def test_a_class_score_goes_up_on_a_real_model(lite0: TorchBackend) -> None:
    run = {"objective": "class", "size": 64}
    start = featvis.maximize(lite0, None, [281, 504], steps=1, **run)
    result = featvis.maximize(lite0, None, [281, 504], steps=12, **run)
    assert (result.values > start.values + 1.0).all()
