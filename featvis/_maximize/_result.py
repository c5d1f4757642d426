"""What :func:`featvis.maximize` returns."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from featvis.render import Picture

__all__ = ["Maximization"]


@dataclass(frozen=True, eq=False)
class Maximization:
    """The images that maximize an objective, one per channel asked (in that order).

    Attributes
    ----------
    images : ndarray, shape (N, H, W, 3), float32
        Ordinary RGB pictures in [0, 1] (the backend's normalization is applied inside the
        optimization, not to these).
    values : ndarray, shape (N,), float32
        Each image's objective, computed on the image itself (no transformation).
    channels : tuple
        What each image was optimized for: a channel, a class (``objective="class"``), or
        ``None`` (``objective="layer"``).
    layer : str or None
        The layer's name (``None`` for a class score).
    objective : str
    history : ndarray, shape (steps, N), float32
        The objective of each image at each step, on that step's transformed view.
    seed : int
    """

    images: np.ndarray
    values: np.ndarray
    channels: tuple[int | None, ...]
    layer: str | None
    objective: str
    history: np.ndarray
    seed: int

    def __len__(self) -> int:
        return len(self.images)

    def picture(
        self,
        *,
        grid: tuple[int | None, int | None] | None = None,
        padding: int = 2,
        labels: bool | Sequence[str] = False,
    ) -> Picture:
        """The images as one grid, row by row (see :func:`featvis.gallery`); ``labels=True``
        writes each image's channel under it."""
        from featvis.render import gallery

        if labels is True:
            names = ["" if c is None else str(c) for c in self.channels]
            return gallery(self.images, grid=grid, padding=padding, labels=names)
        return gallery(self.images, grid=grid, padding=padding, labels=labels or None)

    def __repr__(self) -> str:
        h, w = self.images.shape[1:3]
        what = self.layer if self.layer is not None else "scores"
        return (
            f"<Maximization of {self.objective} on {what}: {len(self)} image(s) of {h}x{w}, "
            f"{len(self.history)} steps, seed {self.seed}>"
        )
