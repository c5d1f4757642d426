"""A collection of thousands of distinct images, built offline from scikit-image's samples.

featvis's tests, benchmarks and docs need an image collection and cannot download one.
:class:`SampleImages` makes one from the photographs and micrographs that ship with
scikit-image: image ``i`` is a crop of one sample at a random scale and place, maybe mirrored
or flipped, resized to ``size``; the parameters come from a generator seeded with ``(seed, i)``,
so image ``i`` is always the same, is made only when asked for, and any two are distinct.

>>> from featvis.samples import SampleImages
>>> images = SampleImages(2000)
>>> len(images), images[0].shape, images[0].dtype
(2000, (224, 224, 3), dtype('uint8'))
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import overload

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError

__all__ = ["SAMPLES", "SampleImages", "sample", "write_samples"]

#: The scikit-image samples used (all bundled with scikit-image, none downloaded).
SAMPLES = (
    "astronaut",
    "brick",
    "camera",
    "cat",
    "cell",
    "chelsea",
    "coffee",
    "coins",
    "colorwheel",
    "grass",
    "gravel",
    "horse",
    "hubble_deep_field",
    "immunohistochemistry",
    "logo",
    "moon",
    "page",
    "retina",
    "rocket",
    "text",
    "clock",
)


@functools.cache
def sample(name: str) -> np.ndarray:
    """A scikit-image sample as an RGB uint8 array (gray, binary and RGBA made RGB)."""
    import skimage.data

    if name not in SAMPLES:
        raise ArgumentError(f"No sample {name!r}; the samples are {', '.join(SAMPLES)}.")
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.shape[2] == 4:  # over white, as featvis reads transparent images
        alpha = image[:, :, 3:4].astype(np.float32) / 255.0
        image = (image[:, :, :3] * alpha + 255.0 * (1.0 - alpha) + 0.5).astype(np.uint8)
    image = np.ascontiguousarray(image)
    image.setflags(write=False)
    return image


class SampleImages(Sequence[np.ndarray]):
    """``count`` distinct RGB images, made one at a time from scikit-image's samples.

    Parameters
    ----------
    count : int
        Number of images.
    size : (int, int) or None
        ``(height, width)`` of every image; ``None`` keeps each crop's own size (varied).
    seed : int
        Another seed gives another collection.
    min_scale : float
        The smallest crop, as a fraction of the sample's shorter side (the largest is all of it).

    Attributes
    ----------
    labels : list of str
        The sample each image was cut from (for surveys with labels).
    """

    def __init__(
        self,
        count: int,
        *,
        size: tuple[int, int] | None = (224, 224),
        seed: int = 0,
        min_scale: float = 0.15,
    ) -> None:
        if not isinstance(count, int) or count < 1:
            raise ArgumentError(f"count must be a positive integer, got {count!r}.")
        if not 0 < min_scale <= 1:
            raise ArgumentError(f"min_scale must be in (0, 1], got {min_scale!r}.")
        self.length = count
        self.size = size
        self.seed = seed
        self.min_scale = min_scale

    def __len__(self) -> int:
        return self.length

    @overload
    def __getitem__(self, index: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, index: slice) -> list[np.ndarray]: ...

    def __getitem__(self, index: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self.length))]
        i = int(index)
        if i < 0:
            i += self.length
        if not 0 <= i < self.length:
            raise IndexError(f"image {index} of {self.length}")
        name, (top, left, side_h, side_w), flip_h, flip_v = self._params(i)
        crop = sample(name)[top : top + side_h, left : left + side_w]
        if flip_h:
            crop = crop[:, ::-1]
        if flip_v:
            crop = crop[::-1]
        image = Image.fromarray(np.ascontiguousarray(crop))
        if self.size is not None:
            height, width = self.size
            image = image.resize((width, height), Image.Resampling.BILINEAR)
        return np.asarray(image)

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(self.length):
            yield self[i]

    def _params(self, i: int) -> tuple[str, tuple[int, int, int, int], bool, bool]:
        rng = np.random.default_rng([self.seed, i])
        name = SAMPLES[int(rng.integers(len(SAMPLES)))]
        height, width = sample(name).shape[:2]
        short = min(height, width)
        side = max(8, int(short * rng.uniform(self.min_scale, 1.0)))
        aspect = rng.uniform(0.75, 1.33) if self.size is None else 1.0
        side_h, side_w = min(height, side), min(width, max(8, int(side * aspect)))
        top = int(rng.integers(0, height - side_h + 1))
        left = int(rng.integers(0, width - side_w + 1))
        return name, (top, left, side_h, side_w), bool(rng.integers(2)), bool(rng.random() < 0.2)

    @property
    def labels(self) -> list[str]:
        return [self._params(i)[0] for i in range(self.length)]

    def __repr__(self) -> str:
        return f"SampleImages({self.length}, size={self.size}, seed={self.seed})"


def write_samples(
    folder: str | os.PathLike[str],
    count: int,
    *,
    size: tuple[int, int] | None = (224, 224),
    seed: int = 0,
    by_sample: bool = False,
    quality: int = 90,
) -> list[Path]:
    """Write :class:`SampleImages` as JPEG files into ``folder`` and return their paths.

    Parameters
    ----------
    by_sample : bool
        Put each image in a subfolder named after its sample (``folder/coffee/0007.jpg``), the
        layout ``labels="folder"`` reads.
    """
    images = SampleImages(count, size=size, seed=seed)
    root = Path(folder)
    paths = []
    for i in range(count):
        where = root / images._params(i)[0] if by_sample else root
        where.mkdir(parents=True, exist_ok=True)
        path = where / f"{i:06d}.jpg"
        Image.fromarray(images[i]).save(path, quality=quality)
        paths.append(path)
    return paths
