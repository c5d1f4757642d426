"""The random transformations an image is seen through at each step, and their backward pass.

An image that excites a channel only at one exact placement is an adversarial pattern, not a
feature; asking that it keep exciting the channel while it is shifted, scaled and rotated a
little at every step (Lucid's "transformation robustness") is what makes the result readable.
All of a step's transformations are composed into one affine map per image, and the view is
one bilinear resampling of the padded image, so the backward pass is one scatter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from featvis._errors import ArgumentError

__all__ = ["Transforms", "Warp"]


def _lucent_scales() -> tuple[float, ...]:
    return tuple(1 + (i - 5) / 50.0 for i in range(11))


def _lucent_angles() -> tuple[float, ...]:
    return tuple(float(a) for a in list(range(-10, 11)) + 5 * [0])


@dataclass(frozen=True)
class Transforms:
    """The random transformations of :func:`featvis.maximize`, drawn anew at each step for
    each image from the call's seed (the defaults are Lucid's and lucent's
    ``standard_transforms``).

    In order: the image gets a border of ``pad`` pixels of gray ``pad_value`` (the model sees
    the padded image, ``size + 2 * pad`` pixels a side), is shifted by a whole number of pixels
    in ``[0, jitter)`` on each axis, scaled about its centre by a factor drawn from ``scales``,
    rotated about its centre by an angle (degrees) drawn from ``angles``, and shifted again in
    ``[0, jitter_after)``. Where the view reaches past the border, it repeats the border.

    Parameters
    ----------
    pad : int
    pad_value : float
        In [0, 1] pixel units.
    jitter, jitter_after : int
        Shift ranges in pixels (1: no shift).
    scales, angles : sequence of float
        The choices, each equally likely (repeat a value to make it likelier).

    Examples
    --------
    >>> from featvis import Transforms
    >>> Transforms().pad, Transforms.none().jitter
    (12, 1)
    """

    pad: int = 12
    pad_value: float = 0.5
    jitter: int = 8
    scales: Sequence[float] = field(default_factory=_lucent_scales)
    angles: Sequence[float] = field(default_factory=_lucent_angles)
    jitter_after: int = 4

    def __post_init__(self) -> None:
        for name in ("pad", "jitter", "jitter_after"):
            value = getattr(self, name)
            low = 0 if name == "pad" else 1
            if not isinstance(value, (int, np.integer)) or value < low:
                raise ArgumentError(
                    f"Transforms {name} must be a whole number >= {low}, got {value!r}."
                )
        if not 0.0 <= float(self.pad_value) <= 1.0:
            raise ArgumentError(f"Transforms pad_value must be in [0, 1], got {self.pad_value!r}.")
        object.__setattr__(self, "scales", tuple(float(s) for s in self.scales))
        object.__setattr__(self, "angles", tuple(float(a) for a in self.angles))
        if not self.scales or any(not s > 0 for s in self.scales):
            raise ArgumentError(f"Transforms scales must be positive numbers, got {self.scales}.")
        if not self.angles or not all(math.isfinite(a) for a in self.angles):
            raise ArgumentError(f"Transforms angles must be finite degrees, got {self.angles}.")

    @classmethod
    def none(cls) -> Transforms:
        """No transformation: the model sees the image itself at every step."""
        return cls(pad=0, jitter=1, scales=(1.0,), angles=(0.0,), jitter_after=1)

    def draw(self, rngs: Sequence[np.random.Generator], size: tuple[int, int]) -> Warp:
        """This step's transformation of each image of ``size``, one generator per image."""
        n = len(rngs)
        h, w = size[0] + 2 * self.pad, size[1] + 2 * self.pad
        center = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
        matrices = np.empty((n, 2, 2))
        offsets = np.empty((n, 2))
        for i, rng in enumerate(rngs):
            t1 = rng.integers(0, self.jitter, 2).astype(np.float64)
            s = self.scales[int(rng.integers(len(self.scales)))]
            a = math.radians(self.angles[int(rng.integers(len(self.angles)))])
            t2 = rng.integers(0, self.jitter_after, 2).astype(np.float64)
            # forward, on (y, x): p -> c + R(a) s (p + t1 - c) + t2; the view samples the
            # source at the inverse of each output pixel.
            rotation = np.array([[math.cos(a), math.sin(a)], [-math.sin(a), math.cos(a)]])
            inverse = rotation.T / s
            matrices[i] = inverse
            offsets[i] = center - t1 - inverse @ (center + t2)
        return Warp(self.pad, float(self.pad_value), (h, w), matrices, offsets)


@dataclass(frozen=True)
class Warp:
    """One step's view of a batch: source position ``matrices[i] @ q + offsets[i]`` of each
    output pixel ``q = (y, x)`` of the padded ``out`` grid, sampled bilinearly."""

    pad: int
    pad_value: float
    out: tuple[int, int]
    matrices: np.ndarray
    offsets: np.ndarray

    def _canvas(self, images: np.ndarray) -> np.ndarray:
        p = self.pad
        if not p:
            return images
        n, c, h, w = images.shape
        canvas = np.full((n, c, h + 2 * p, w + 2 * p), self.pad_value, np.float32)
        canvas[:, :, p : p + h, p : p + w] = images
        return canvas

    def _corners(self, shape: tuple[int, int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Flat source indices ``(N, P)`` of the four neighbours and their weights."""
        h, w = shape
        ys, xs = np.meshgrid(
            np.arange(self.out[0], dtype=np.float64),
            np.arange(self.out[1], dtype=np.float64),
            indexing="ij",
        )
        q = np.stack([ys.ravel(), xs.ravel()])  # (2, P)
        src = np.einsum("nij,jp->nip", self.matrices, q) + self.offsets[:, :, None]
        sy = np.clip(src[:, 0], 0.0, h - 1.0)  # past the border, repeat the border
        sx = np.clip(src[:, 1], 0.0, w - 1.0)
        y0 = np.minimum(np.floor(sy).astype(np.int64), max(h - 2, 0))
        x0 = np.minimum(np.floor(sx).astype(np.int64), max(w - 2, 0))
        fy = (sy - y0).astype(np.float32)
        fx = (sx - x0).astype(np.float32)
        y1 = np.minimum(y0 + 1, h - 1)
        x1 = np.minimum(x0 + 1, w - 1)
        index = [y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1]
        weight = [(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx]
        return index, weight

    def apply(self, images: np.ndarray) -> np.ndarray:
        """The ``(N, C, *out)`` views of ``(N, C, H, W)`` images."""
        canvas = self._canvas(images)
        n, c, h, w = canvas.shape
        flat = canvas.reshape(n, c, h * w)
        index, weight = self._corners((h, w))
        out = np.zeros((n, c, index[0].shape[1]), np.float32)
        for idx, wt in zip(index, weight):
            out += np.take_along_axis(flat, idx[:, None, :], axis=2) * wt[:, None, :]
        return out.reshape(n, c, *self.out)

    def backward(self, grad: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """The gradient with respect to the ``(N, C, *size)`` images, given the one with
        respect to their views (the adjoint of :meth:`apply`: a scatter of the same weights)."""
        n, c = grad.shape[:2]
        p = self.pad
        h, w = size[0] + 2 * p, size[1] + 2 * p
        index, weight = self._corners((h, w))
        g = grad.reshape(n, c, -1)
        base = (np.arange(n * c, dtype=np.int64) * (h * w)).reshape(n, c, 1)
        total = np.zeros(n * c * h * w)
        for idx, wt in zip(index, weight):
            flat_index = (base + idx[:, None, :]).ravel()
            total += np.bincount(flat_index, (g * wt[:, None, :]).ravel(), minlength=total.size)
        canvas = total.reshape(n, c, h, w).astype(np.float32)
        return np.ascontiguousarray(canvas[:, :, p : p + size[0], p : p + size[1]])
