"""How an optimized image is parameterized: plain pixels, or a 1/f-scaled Fourier spectrum,
each optionally in a decorrelated color space; all numpy, each with its exact backward pass.

Lucid (Olah et al., "Feature Visualization", Distill 2017, and its PyTorch port lucent) found
that gradient ascent on pixels finds high-frequency patterns the network responds to but a
person reads as noise. Optimizing a Fourier spectrum whose coefficients are scaled by ``1/f``
gives every frequency the same share of each step in image space that natural images give it,
and optimizing color in the whitened space of ImageNet's color statistics keeps colors from
drifting apart; a sigmoid keeps every pixel in [0, 1]. The constants are Lucid's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["COLOR_CORRELATION", "Parameterization", "fourier", "pixels"]

#: The square root of ImageNet's RGB color correlation (Lucid), columns scaled to norm <= 1.
_SVD_SQRT = np.array([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], np.float32)
COLOR_CORRELATION = _SVD_SQRT / np.max(np.linalg.norm(_SVD_SQRT, axis=0))
#: Lucid's constant dividing the Fourier image ("increasing this seems to reduce saturation").
_FOURIER_DIVISOR = 4.0
#: Standard deviation of the random initial parameters (Lucid's).
_INIT_SD = 0.01


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(np.float32)  # no overflow for large |x|


def spectrum_scale(h: int, w: int, decay: float = 1.0) -> np.ndarray:
    """``1 / max(f, 1 / max(h, w)) ** decay`` for the ``(h, w // 2 + 1)`` frequencies of a real
    2-D FFT (cycles per pixel): the 1/f scaling of Lucid's Fourier parameterization."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    freqs = np.sqrt(fx * fx + fy * fy)
    return (1.0 / np.maximum(freqs, 1.0 / max(h, w)) ** decay).astype(np.float32)


def _hermitian_weights(w: int) -> np.ndarray:
    """How many times each column of a real FFT's half spectrum counts in the full spectrum:
    2, except the zero frequency and (even ``w``) the Nyquist column, which count once. The
    backward pass of ``irfft2`` is ``rfft2`` times these."""
    weights = np.full(w // 2 + 1, 2.0, np.float32)
    weights[0] = 1.0
    if w % 2 == 0:
        weights[-1] = 1.0
    return weights


@dataclass(frozen=True)
class Parameterization:
    """Parameters to ``(N, 3, H, W)`` float32 images in [0, 1], and gradients back.

    ``image(params)`` returns the images and a cache; ``backward(grad, cache)`` turns the
    gradient of the objective with respect to the images into one with respect to the params.
    """

    name: str
    fourier: bool
    decorrelate: bool
    size: tuple[int, int]
    decay: float = 1.0

    def init(self, rng: np.random.Generator, n: int) -> np.ndarray:
        h, w = self.size
        shape = (n, 3, h, w // 2 + 1, 2) if self.fourier else (n, 3, h, w)
        return (rng.standard_normal(shape) * _INIT_SD).astype(np.float32)

    def _scale(self) -> np.ndarray:
        return spectrum_scale(*self.size, self.decay)

    def image(self, params: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The images for ``params``, and the cache :meth:`backward` needs (the images)."""
        x = params
        if self.fourier:
            spectrum = (params[..., 0] + 1j * params[..., 1]) * self._scale()
            x = np.fft.irfft2(spectrum, s=self.size, norm="ortho") / _FOURIER_DIVISOR
        if self.decorrelate:
            x = np.einsum("cd,ndhw->nchw", COLOR_CORRELATION, x, optimize=True)
        images = _sigmoid(np.asarray(x, np.float32))
        return images, images

    def backward(self, grad: np.ndarray, images: np.ndarray) -> np.ndarray:
        """The gradient with respect to the params, given the one with respect to the images."""
        g = (grad * images * (1.0 - images)).astype(np.float32)  # sigmoid
        if self.decorrelate:
            g = np.einsum("cd,nchw->ndhw", COLOR_CORRELATION, g, optimize=True)
        if not self.fourier:
            return np.asarray(g, np.float32)
        spectrum = np.fft.rfft2(g / _FOURIER_DIVISOR, norm="ortho")
        spectrum *= self._scale() * _hermitian_weights(self.size[1])
        return np.stack([spectrum.real, spectrum.imag], axis=-1).astype(np.float32)


def fourier(size: tuple[int, int], *, decorrelate: bool = True) -> Parameterization:
    """Lucid's default: a 1/f-scaled spectrum per color channel."""
    return Parameterization("fourier", True, decorrelate, size)


def pixels(size: tuple[int, int], *, decorrelate: bool = True) -> Parameterization:
    """Plain pixels (through the same color space and sigmoid)."""
    return Parameterization("pixels", False, decorrelate, size)
