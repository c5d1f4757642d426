"""The survey's reduction: what is kept of each batch of a layer, and how partial results merge.

Per batch, :func:`summarize` reduces an ``(n, C, H, W)`` activation to a :class:`BatchSummary`
of ``(n, C)`` numbers; :class:`LayerState` folds summaries into the top-k images of each
channel and the per-channel statistics. The summary is the seam where a backend could reduce on
its device instead (only ``(n, C)`` numbers would cross to the host): anything that returns the
same :class:`BatchSummary` can feed a :class:`LayerState`.

Everything is deterministic and independent of how the images were batched, ordered or split:

- an image's numbers depend only on its own activations (its map is summed on its own, in an
  order written out here, :func:`map_sums`, that any array library can follow op for op: a
  backend reducing on its device gives the same float64 bits as numpy on the host);
- the top-k order is total: value descending, then collection position ascending;
- sums are exact (:class:`featvis._exact.ExactSum`), so they do not depend on the order of
  addition; maxima, minima and counts never did.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from featvis._errors import ArgumentError, ModelError
from featvis._exact import ExactSum

__all__ = ["BY", "BatchSummary", "Coverage", "LayerState", "map_sums", "summarize"]

#: Statistics that rank images for a channel: the peak of its map, or the map's mean.
BY = ("max", "mean")
By = Literal["max", "mean"]

#: An empty top-k slot: value -inf, and a position after every real one.
EMPTY = np.iinfo(np.int64).max

#: Class sums keep parts of values down to 2**-100 and values up to 2**100 (9 limbs a cell).
CLASS_QUANTUM = -100
CLASS_LIMIT = 100


@dataclass(frozen=True)
class BatchSummary:
    """All the survey keeps of one batch of one layer: ``(n, C)`` numbers per image.

    Attributes
    ----------
    peak : ndarray, shape (n, C), float32
        The largest value of each image's channel map.
    where : ndarray, shape (n, C), int64
        Where it is: the flat index ``y * W + x`` of its first occurrence in row-major order.
    sums : ndarray, shape (n, C), float64
        The sum of each map, in float64, in the order of :func:`map_sums`.
    positive : ndarray, shape (n, C), int64
        How many positions of each map are > 0.
    low : ndarray, shape (n, C), float32
        The smallest value of each map.
    spatial : (int, int)
        ``(H, W)`` of the maps.
    """

    peak: np.ndarray
    where: np.ndarray
    sums: np.ndarray
    positive: np.ndarray
    low: np.ndarray
    spatial: tuple[int, int]

    def statistic(self, by: By) -> np.ndarray:
        """The ``(n, C)`` float64 values images are ranked by."""
        if by == "max":
            return self.peak.astype(np.float64)
        return self.sums / float(self.spatial[0] * self.spatial[1])


def summarize(acts: np.ndarray) -> BatchSummary:
    """Reduce an ``(n, C, H, W)`` batch of activations to a :class:`BatchSummary` (numpy).

    Raises
    ------
    ModelError
        If an activation is NaN or infinite (a statistic of it would be meaningless).
    """
    n, channels, height, width = acts.shape
    flat = acts.reshape(n, channels, height * width)
    where = flat.argmax(axis=2)
    peak = np.take_along_axis(flat, where[:, :, None], axis=2)[:, :, 0]
    low = flat.min(axis=2)
    if not (np.isfinite(peak).all() and np.isfinite(low).all()):
        raise ModelError(
            "The layer's activations contain NaN or infinite values; a survey of them would "
            "be meaningless. Check the model and its input."
        )
    sums = np.empty((n, channels), np.float64)
    for i in range(n):  # one image at a time: a float64 copy of one image's maps, not the batch's
        sums[i] = map_sums(flat[i].astype(np.float64))
    positive = np.count_nonzero(flat > 0, axis=2).astype(np.int64)
    return BatchSummary(peak, where.astype(np.int64), sums, positive, low, (height, width))


def map_sums(maps: Any) -> Any:
    """The float64 sum of each row of ``maps``, in a fixed pairwise order; ``maps`` is
    overwritten.

    While a row has ``L > 1`` values, value ``i`` gets value ``i + L // 2`` added
    (``i < L // 2``) and, when ``L`` is odd, the last value moves to position ``L // 2``. Each
    step is one elementwise float64 addition, which IEEE 754 rounds the same way everywhere, so
    an implementation that takes the same steps (``featvis_torch`` does, on the device where
    the activations are) gets the same bits; the error is that of pairwise summation,
    ``O(log L)`` roundings. (``numpy.sum``'s own order is an implementation detail of numpy.)

    Parameters
    ----------
    maps : ndarray, shape (..., L), float64
        Anything with numpy's slicing and in-place ``+=`` (a torch tensor works as well).

    Returns
    -------
    ndarray, shape (...)
        A view of ``maps[..., 0]``, which holds the sums.

    Examples
    --------
    >>> map_sums(np.array([[1.0, 2.0, 3.0], [1e16, 1.0, -1e16]]))
    array([6., 0.])
    """
    length = maps.shape[-1]
    while length > 1:
        half = length // 2
        maps[..., :half] += maps[..., half : 2 * half]
        if length % 2:
            maps[..., half] = maps[..., 2 * half]
        length = half + length % 2
    return maps[..., 0]


def _label_key(label: Any) -> tuple[str, Any]:
    return (type(label).__name__, label)


class LayerState:
    """The top-k images and statistics of every channel of one layer, so far."""

    def __init__(self, name: str, channels: int, spatial: tuple[int, int], k: int, by: By):
        self.name = name
        self.channels = channels
        self.spatial = (int(spatial[0]), int(spatial[1]))
        self.k = k
        self.by = by
        self.top_value = np.full((channels, k), -np.inf)
        self.top_position = np.full((channels, k), EMPTY, np.int64)
        self.top_where = np.full((channels, k), -1, np.int64)
        self.total = ExactSum((channels,))
        self.images = 0
        self.peak = np.full(channels, -np.inf, np.float32)
        self.low = np.full(channels, np.inf, np.float32)
        self.positive = np.zeros(channels, np.int64)
        self.class_totals: dict[Hashable, ExactSum] = {}
        self.class_images: dict[Hashable, int] = {}

    # -- folding in a batch --------------------------------------------------------------------

    def update(
        self, summary: BatchSummary, positions: np.ndarray, labels: list[Any] | None = None
    ) -> None:
        """Fold in one batch: ``positions[i]`` and ``labels[i]`` belong to image ``i``."""
        n = len(positions)
        if n == 0:
            return
        if summary.peak.shape != (n, self.channels) or summary.spatial != self.spatial:
            raise ModelError(
                f"Layer {self.name!r} gave {summary.peak.shape[1]} channels of "
                f"{summary.spatial[0]}x{summary.spatial[1]} for a batch, "
                f"{self.channels} of {self.spatial[0]}x{self.spatial[1]} before: a survey "
                "needs one input size."
            )
        value = summary.statistic(self.by)
        self._merge_top(value.T, np.broadcast_to(positions, (self.channels, n)), summary.where.T)
        self.total.add_rows(summary.sums)
        self.images += n
        np.maximum(self.peak, summary.peak.max(axis=0), out=self.peak)
        np.minimum(self.low, summary.low.min(axis=0), out=self.low)
        self.positive += summary.positive.sum(axis=0)
        if labels is not None:
            for label in {label for label in labels if label is not None}:
                rows = [i for i, other in enumerate(labels) if other == label]
                if label not in self.class_totals:
                    self.class_totals[label] = ExactSum(
                        (self.channels,), quantum=CLASS_QUANTUM, limit=CLASS_LIMIT
                    )
                    self.class_images[label] = 0
                self.class_totals[label].add_rows(value[rows])
                self.class_images[label] += len(rows)

    def _merge_top(self, value: np.ndarray, position: np.ndarray, where: np.ndarray) -> None:
        values = np.concatenate([self.top_value, value], axis=1)
        positions = np.concatenate([self.top_position, position], axis=1)
        wheres = np.concatenate([self.top_where, where], axis=1)
        order = np.lexsort((positions, -values), axis=1)[:, : self.k]
        self.top_value = np.take_along_axis(values, order, axis=1)
        self.top_position = np.take_along_axis(positions, order, axis=1)
        self.top_where = np.take_along_axis(wheres, order, axis=1)

    # -- merging -------------------------------------------------------------------------------

    def compatible(self, other: LayerState) -> None:
        mine = (self.name, self.channels, self.spatial, self.k, self.by)
        theirs = (other.name, other.channels, other.spatial, other.k, other.by)
        if mine != theirs:
            raise ArgumentError(
                f"Cannot merge surveys of different layers or settings: (layer, channels, "
                f"size, k, by) {mine} and {theirs}."
            )

    def merge(self, other: LayerState) -> LayerState:
        """A new state holding both (of disjoint sets of images)."""
        self.compatible(other)
        out = LayerState(self.name, self.channels, self.spatial, self.k, self.by)
        out.top_value, out.top_position, out.top_where = (
            self.top_value,
            self.top_position,
            self.top_where,
        )
        out._merge_top(other.top_value, other.top_position, other.top_where)
        out.total = self.total.merge(other.total)
        out.images = self.images + other.images
        out.peak = np.maximum(self.peak, other.peak)
        out.low = np.minimum(self.low, other.low)
        out.positive = self.positive + other.positive
        for label in sorted({*self.class_totals, *other.class_totals}, key=_label_key):
            parts = [s for s in (self, other) if label in s.class_totals]
            total = parts[0].class_totals[label]
            for part in parts[1:]:
                total = total.merge(part.class_totals[label])
            out.class_totals[label] = total
            out.class_images[label] = sum(s.class_images.get(label, 0) for s in (self, other))
        return out

    # -- reading -------------------------------------------------------------------------------

    def positions(self) -> np.ndarray:
        """The positions held in some channel's top-k."""
        held = self.top_position[self.top_position != EMPTY]
        return np.unique(held)

    def means(self) -> np.ndarray:
        size = self.spatial[0] * self.spatial[1]
        return self.total.values(np.full(self.channels, self.images * size))

    def class_means(self) -> tuple[list[Any], np.ndarray]:
        """``(labels, means)``: labels in a fixed order, means ``(len(labels), C)``."""
        labels = sorted(self.class_totals, key=_label_key)
        if not labels:
            return [], np.empty((0, self.channels))
        means = np.stack(
            [
                self.class_totals[label].values(np.full(self.channels, self.class_images[label]))
                for label in labels
            ]
        )
        return labels, means

    def equal(self, other: LayerState) -> bool:
        """Whether both hold the same numbers, bit for bit."""
        arrays = ("top_value", "top_position", "top_where", "peak", "low", "positive")
        return (
            (self.name, self.channels, self.spatial, self.k, self.by, self.images)
            == (other.name, other.channels, other.spatial, other.k, other.by, other.images)
            and all(np.array_equal(getattr(self, a), getattr(other, a)) for a in arrays)
            and np.array_equal(self.total.canonical(), other.total.canonical())
            and self.class_images == other.class_images
            and all(
                np.array_equal(t.canonical(), other.class_totals[label].canonical())
                for label, t in self.class_totals.items()
            )
        )


class Coverage:
    """Which positions have been surveyed: disjoint half-open intervals, kept merged."""

    def __init__(self, intervals: Iterable[tuple[int, int]] = ()) -> None:
        self.intervals: list[tuple[int, int]] = []
        for start, stop in intervals:
            self.add(start, stop)

    def add(self, start: int, stop: int) -> None:
        """Add ``[start, stop)``; an :class:`ArgumentError` if part of it is already there."""
        if stop <= start:
            return
        out = []
        placed = False
        for a, b in self.intervals:
            if a < stop and start < b:
                raise ArgumentError(
                    f"Images {max(a, start)} to {min(b, stop) - 1} would be counted twice: "
                    "the surveys being merged overlap. Give each part its own start "
                    "(featvis.survey(..., start=N))."
                )
            if not placed and start <= a:
                out.append((start, stop))
                placed = True
            out.append((a, b))
        if not placed:
            out.append((start, stop))
        merged: list[tuple[int, int]] = []
        for a, b in out:
            if merged and merged[-1][1] == a:
                merged[-1] = (merged[-1][0], b)
            else:
                merged.append((a, b))
        self.intervals = merged

    def add_positions(self, positions: np.ndarray) -> None:
        """Add sorted positions, run by run."""
        if not len(positions):
            return
        breaks = np.flatnonzero(np.diff(positions) != 1) + 1
        for run in np.split(positions, breaks):
            self.add(int(run[0]), int(run[-1]) + 1)

    def merge(self, other: Coverage) -> Coverage:
        out = Coverage(self.intervals)
        for start, stop in other.intervals:
            out.add(start, stop)
        return out

    def __contains__(self, position: int) -> bool:
        return any(a <= position < b for a, b in self.intervals)

    def count(self) -> int:
        return sum(b - a for a, b in self.intervals)
