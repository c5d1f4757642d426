"""ROAD's imputation: the multigrid fast path against SuperLU, the plain path."""

from __future__ import annotations

import numpy as np
import pytest
from skimage import data
from skimage.transform import resize

from featvis._evaluate import _multigrid, _road

SIZE = 224


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    """A real photograph at ROAD's usual size, normalized as a model's input roughly is."""
    rgb = resize(data.astronaut(), (SIZE, SIZE), anti_aliasing=True)
    return ((rgb - 0.45) / 0.25).transpose(2, 0, 1).astype(np.float32)


def _blob() -> np.ndarray:
    """A smooth map with one off-centre peak, as an upsampled CAM is."""
    yy, xx = np.mgrid[:SIZE, :SIZE]
    return np.exp(-((yy - 90.0) ** 2 + (xx - 140.0) ** 2) / (2 * 45.0**2))


def _masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    scattered = rng.random((SIZE, SIZE))
    return {
        "blob 90%": _blob() >= np.percentile(_blob(), 10),
        "blob 50%": _blob() >= np.percentile(_blob(), 50),
        "outside the blob 90%": _blob() <= np.percentile(_blob(), 90),
        "scattered 90%": scattered < 0.9,
        "scattered 50%": scattered < 0.5,
    }


@pytest.mark.parametrize("name", list(_masks()))
def test_multigrid_equals_the_direct_solve(image: np.ndarray, name: str) -> None:
    removed = _masks()[name]
    direct = _road.impute(image, removed, noise=0.0, rng=np.random.default_rng(0), method="direct")
    fast = _road.impute(image, removed, noise=0.0, rng=np.random.default_rng(0), method="multigrid")
    auto = _road.impute(image, removed, noise=0.0, rng=np.random.default_rng(0))
    # The imputed values span about [-2, 2]; ROAD then adds noise of 0.01 to them.
    np.testing.assert_allclose(fast, direct, atol=2e-6)
    np.testing.assert_allclose(auto, direct, atol=2e-6)
    np.testing.assert_array_equal(fast[:, ~removed], image[:, ~removed])
    assert np.ptp(direct[:, removed]) > 1.0  # the systems are not trivial


@pytest.mark.parametrize("name", list(_masks()))
def test_with_noise_the_multigrid_solve_errs_by_under_a_hundredth_of_the_noise(
    image: np.ndarray, name: str
) -> None:
    # With noise the solve stops earlier (rtol 1e-3 of the noise): what that costs must stay
    # small next to the noise ROAD adds, or the two paths would score differently.
    removed, noise = _masks()[name], 0.01
    direct = _road.impute(
        image, removed, noise=noise, rng=np.random.default_rng(0), method="direct"
    )
    fast = _road.impute(
        image, removed, noise=noise, rng=np.random.default_rng(0), method="multigrid"
    )
    assert np.abs(fast - direct).max() <= noise / 100


def test_the_threaded_imputation_is_the_serial_one_noise_included(image: np.ndarray) -> None:
    masks = list(_masks().values())
    serial_rng, threaded_rng = np.random.default_rng(3), np.random.default_rng(3)
    serial = [_road.impute(image, m, noise=0.01, rng=serial_rng) for m in masks]
    threaded = _road.impute_many(image, masks, noise=0.01, rng=threaded_rng, threads=2)
    for a, b in zip(serial, threaded):
        np.testing.assert_array_equal(a, b)


def test_one_pixel_more_in_a_mask_leaves_every_other_pixels_noise_as_it_was(
    image: np.ndarray,
) -> None:
    # A map that moves one pixel across a percentile cut (an ONNX export's rounding does)
    # must move ROAD by that pixel's worth, not redraw the noise of the whole image.
    blob, other = _masks()["blob 50%"], _masks()["scattered 50%"]
    grown = blob.copy()
    ys, xs = np.nonzero(~blob)
    grown[ys[0], xs[0]] = True  # a known pixel becomes removed

    def both(mask: np.ndarray, noise: float) -> list[np.ndarray]:
        rng = np.random.default_rng(5)
        return _road.impute_many(image, [mask, other], noise=noise, rng=rng, method="direct")

    (noisy, noisy_next), (grown_noisy, grown_next) = both(blob, 0.01), both(grown, 0.01)
    clean, grown_clean = both(blob, 0.0)[0], both(grown, 0.0)[0]
    np.testing.assert_array_equal(grown_next, noisy_next)  # the next mask's noise: the same
    # On the pixels removed in both, the noisy images differ by what the solve moved alone.
    np.testing.assert_allclose(
        (grown_noisy - noisy)[:, blob], (grown_clean - clean)[:, blob], atol=1e-6
    )
    assert not np.allclose(noisy[:, blob], clean[:, blob], atol=1e-3)  # noise was added


def test_a_channel_that_is_zero_everywhere_is_imputed_as_zero(image: np.ndarray) -> None:
    dark = image.copy()
    dark[1] = 0.0  # its right-hand side is zero: conjugate gradients would divide 0 by 0
    out = _road.impute(dark, _masks()["blob 90%"], noise=0.0, rng=np.random.default_rng(0))
    assert np.isfinite(out).all()
    assert not out[1].any()
    direct = _road.impute(
        dark, _masks()["blob 90%"], noise=0.0, rng=np.random.default_rng(0), method="direct"
    )
    np.testing.assert_allclose(out, direct, atol=2e-6)


def test_a_solve_that_does_not_converge_says_so_and_auto_falls_back(
    image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    removed = _masks()["blob 90%"]
    flat = image.astype(np.float64).reshape(3, -1)
    matrix, rhs, ys, xs = _road.system(flat, removed.reshape(-1), SIZE, SIZE)
    with pytest.raises(RuntimeError, match="did not reach"):
        _multigrid.solve(matrix, rhs, ys, xs, rtol=1e-7, maxiter=1)
    real = _multigrid.solve
    monkeypatch.setattr(_multigrid, "solve", lambda *a, **k: real(*a, **k, maxiter=1))
    direct = _road.solve(matrix, rhs, ys, xs, method="direct")
    np.testing.assert_array_equal(_road.solve(matrix, rhs, ys, xs), direct)
    with pytest.raises(RuntimeError):
        _road.solve(matrix, rhs, ys, xs, method="multigrid")


def test_an_unknown_solver_is_refused(image: np.ndarray) -> None:
    with pytest.raises(ValueError, match="'auto', 'direct' or 'multigrid'"):
        _road.impute(image, _masks()["blob 50%"], rng=np.random.default_rng(0), method="lu")
