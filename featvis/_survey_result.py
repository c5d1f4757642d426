"""The result of featvis.survey: per layer and channel, the images that excite it most and
its statistics (:class:`Survey`, :class:`TopImage`, :class:`ChannelStats`,
:class:`ClassScore`). The computation is in :mod:`featvis._survey`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featvis._errors import ArgumentError
from featvis._images import Preprocess
from featvis._layers import Layer
from featvis._receptive import ReceptiveField, image_box
from featvis._reduce import EMPTY, By, Coverage, LayerState
from featvis._stream import Collection, ImageInfo, Skipped

if TYPE_CHECKING:
    from featvis.render import Picture

__all__ = ["SKIPPED_DETAILS", "ChannelStats", "ClassScore", "Survey", "TopImage"]


#: Details of at most this many skipped images are kept (all of them are counted).
SKIPPED_DETAILS = 1000


@dataclass(frozen=True)
class TopImage:
    """One of the images that excite a channel most.

    Attributes
    ----------
    rank : int
        0 for the best.
    position : int
        The image's index in the whole collection.
    value : float
        The statistic it was ranked by (the map's maximum or mean).
    peak : (int, int)
        ``(y, x)`` of the map's maximum, in the layer's own grid.
    box : (int, int, int, int) or None
        ``(top, left, bottom, right)``, half-open, in the image's own pixels: the part of the
        image the peak activation sees (its receptive field, clipped to the image; see
        :func:`featvis.receptive_field`). ``None`` if receptive fields were not measured.
    input_box : (int, int, int, int) or None
        The same box in model input pixels.
    path : str or None
        The file the image came from, when it came from one.
    label : object
        The image's label, when it had one.
    size : (int, int)
        ``(height, width)`` of the image.
    """

    rank: int
    position: int
    value: float
    peak: tuple[int, int]
    box: tuple[int, int, int, int] | None
    input_box: tuple[int, int, int, int] | None
    path: str | None
    label: Any
    size: tuple[int, int]


@dataclass(frozen=True)
class ChannelStats:
    """Per-channel statistics of a layer over the images surveyed (arrays of shape (C,)).

    Attributes
    ----------
    layer : str
    images : int
        Images surveyed.
    mean : ndarray of float64
        Mean activation over every position of every image (summed exactly, rounded once).
    max, min : ndarray of float64
        The largest and smallest activation seen.
    positive : ndarray of float64
        Fraction of positions (over all images) where the activation is > 0.
    never_active : ndarray of bool
        Channels that were never > 0 anywhere: dead for this collection.
    """

    layer: str
    images: int
    mean: np.ndarray
    max: np.ndarray
    min: np.ndarray
    positive: np.ndarray
    never_active: np.ndarray

    @property
    def dead(self) -> list[int]:
        """The channels that were never active."""
        return [int(c) for c in np.flatnonzero(self.never_active)]

    def rows(self) -> list[dict[str, Any]]:
        """One dict per channel (what the atlas's ``stats.jsonl`` holds)."""
        return [
            {
                "layer": self.layer,
                "channel": c,
                "images": self.images,
                "mean": float(self.mean[c]),
                "max": float(self.max[c]),
                "min": float(self.min[c]),
                "positive": float(self.positive[c]),
                "never_active": bool(self.never_active[c]),
            }
            for c in range(len(self.mean))
        ]


@dataclass(frozen=True)
class ClassScore:
    """How much a class excites a channel: the mean, over its images, of the statistic."""

    label: Any
    mean: float
    images: int


class Survey:
    """The result of :func:`featvis.survey`: per layer and channel, the images that excite it
    most and its statistics. Mergeable with the survey of other images of the same collection.

    Attributes
    ----------
    layers : list of str
        The layers, as they were asked for (names or aliases).
    k : int
        Images kept per channel.
    by : str
        What ranks them: ``"max"`` (the peak of the map) or ``"mean"`` (its mean).
    images : int
        Images surveyed.
    skipped : int
        Images that could not be read and were skipped (``on_error="skip"``).
    """

    def __init__(
        self,
        layers: Sequence[tuple[str, LayerState]],
        *,
        k: int,
        by: By,
        preprocess: Preprocess,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        self._keys = [key for key, _ in layers]
        self._states = dict(layers)
        self.k = k
        self.by: By = by
        self.preprocess = preprocess
        self.input_size = input_size
        self.coverage = Coverage()
        self.skipped = 0
        self.skipped_details: list[Skipped] = []
        self.infos: dict[int, ImageInfo] = {}
        self.fields: dict[str, ReceptiveField] = {}
        self.fingerprint: dict[str, Any] | None = None
        self.provenance: dict[str, str] = {}
        #: The collection surveyed, when this process streamed it (to draw the atlas from).
        self.collection: Collection | None = None
        #: The position of the collection's first image.
        self.collection_start = 0
        self.classes: list[str] | None = None

    # -- reading -------------------------------------------------------------------------------

    @property
    def layers(self) -> list[str]:
        return list(self._keys)

    @property
    def images(self) -> int:
        return next(iter(self._states.values())).images if self._states else 0

    def _state(self, layer: str | Layer) -> LayerState:
        key = layer.name if isinstance(layer, Layer) else layer
        if key in self._states:
            return self._states[key]
        for state in self._states.values():
            if state.name == key:
                return state
        raise ArgumentError(
            f"This survey has no layer {key!r}; it surveyed {', '.join(map(repr, self._keys))}."
        )

    def channels(self, layer: str | Layer) -> int:
        """Number of channels of ``layer``."""
        return self._state(layer).channels

    def top(self, layer: str | Layer, channel: int) -> list[TopImage]:
        """The (up to) ``k`` images that excite ``channel`` of ``layer`` most, best first.

        Ties are broken by position in the collection (earlier first), so the order does not
        depend on batch size, arrival order or number of workers.

        Examples
        --------
        >>> import numpy as np, featvis
        >>> from featvis.testing import tiny_cnn
        >>> images = [np.full((32, 32, 3), v, np.uint8) for v in (0, 250, 120)]
        >>> result = featvis.survey(tiny_cnn(), images, "relu1", k=2, progress=False)
        >>> [(t.position, round(t.value, 3), t.peak, t.box) for t in result.top("relu1", 0)]
        [(0, 1.609, (0, 0), (0, 0, 2, 2)), (2, 0.094, (0, 0), (0, 0, 2, 2))]
        """
        state = self._state(layer)
        if not 0 <= channel < state.channels:
            raise ArgumentError(
                f"Channel {channel} is out of range: layer {state.name!r} has "
                f"{state.channels} channels (0 to {state.channels - 1})."
            )
        field = self.fields.get(state.name)
        width = state.spatial[1]
        out = []
        for rank in range(self.k):
            position = int(state.top_position[channel, rank])
            if position == EMPTY:
                break
            where = int(state.top_where[channel, rank])
            y, x = divmod(where, width)
            info = self.infos[position]
            input_box = field.box(y, x) if field is not None else None
            box = (
                image_box(input_box, info.size, field.input_size)
                if input_box is not None and field is not None
                else None
            )
            out.append(
                TopImage(
                    rank,
                    position,
                    float(state.top_value[channel, rank]),
                    (y, x),
                    box,
                    input_box,
                    info.path,
                    info.label,
                    info.size,
                )
            )
        return out

    def stats(self, layer: str | Layer) -> ChannelStats:
        """The per-channel statistics of ``layer``."""
        state = self._state(layer)
        positions = state.images * state.spatial[0] * state.spatial[1]
        with np.errstate(invalid="ignore", divide="ignore"):
            positive = state.positive / positions if positions else np.full(state.channels, np.nan)
        return ChannelStats(
            layer=state.name,
            images=state.images,
            mean=state.means(),
            max=state.peak.astype(np.float64),
            min=state.low.astype(np.float64),
            positive=positive,
            never_active=state.positive == 0,
        )

    def tied(self, layer: str | Layer) -> list[int]:
        """Channels whose ``k`` kept images all share one value, as after a clipped activation
        (ReLU6 saturates at 6): their order is only the tie-break, by position. Survey the layer
        before the clip, or rank by ``"mean"``, to tell those images apart."""
        state = self._state(layer)
        full = state.top_position[:, -1] != EMPTY
        same = state.top_value[:, 0] == state.top_value[:, -1]
        return [int(c) for c in np.flatnonzero(full & same & (self.k > 1))]

    def top_classes(self, layer: str | Layer, channel: int, n: int = 5) -> list[ClassScore]:
        """The ``n`` classes whose images excite ``channel`` most on average (by the survey's
        statistic), best first; empty when the images had no labels."""
        state = self._state(layer)
        labels, means = state.class_means()
        if not labels:
            return []
        column = means[:, channel]
        order = sorted(range(len(labels)), key=lambda i: (-column[i], i))[:n]
        return [
            ClassScore(labels[i], float(column[i]), state.class_images[labels[i]]) for i in order
        ]

    # -- combining -----------------------------------------------------------------------------

    def merge(self, other: Survey) -> Survey:
        """A survey of both parts' images: equal to surveying them in one run.

        The parts must be of the same layers and settings and cover different positions (each
        part surveyed with its own ``start``); overlapping parts are refused, since their
        images would count twice.
        """
        if not isinstance(other, Survey):
            raise ArgumentError(f"Can only merge a Survey with a Survey, not {type(other)}.")
        if self._keys != other._keys or (self.k, self.by) != (other.k, other.by):
            raise ArgumentError(
                f"Cannot merge surveys of different layers or settings: {self._keys} k={self.k} "
                f"by={self.by!r} and {other._keys} k={other.k} by={other.by!r}."
            )
        sizes = {s for s in (self.input_size, other.input_size) if s is not None}
        if len(sizes) > 1:
            raise ArgumentError(f"Cannot merge surveys made at input sizes {sorted(sizes)}.")
        out = Survey(
            [(key, self._states[key].merge(other._states[key])) for key in self._keys],
            k=self.k,
            by=self.by,
            preprocess=self.preprocess,
            input_size=self.input_size or other.input_size,
        )
        out.coverage = self.coverage.merge(other.coverage)
        out.skipped = self.skipped + other.skipped
        out.skipped_details = sorted(
            [*self.skipped_details, *other.skipped_details], key=lambda s: s.position
        )[:SKIPPED_DETAILS]
        for name in {*self.fields, *other.fields}:
            mine, theirs = self.fields.get(name), other.fields.get(name)
            if mine is not None and theirs is not None and mine != theirs:
                raise ArgumentError(f"The two surveys measured different fields for {name!r}.")
            out.fields[name] = mine or theirs  # type: ignore[assignment]
        out.infos = {**self.infos, **other.infos}
        out._prune()
        out.provenance = dict(self.provenance or other.provenance)
        out.fingerprint = self.fingerprint if self.fingerprint == other.fingerprint else None
        out.collection = self.collection if self.collection is other.collection else None
        out.classes = self.classes or other.classes
        return out

    def _prune(self) -> None:
        """Forget the images no top-k holds any more."""
        held = set()
        for state in self._states.values():
            held.update(state.positions().tolist())
        if len(held) != len(self.infos):
            self.infos = {p: info for p, info in self.infos.items() if p in held}

    def equal(self, other: Survey) -> bool:
        """Whether both hold the same results, bit for bit (not counting where they came from)."""
        return (
            self._keys == other._keys
            and (self.k, self.by, self.input_size) == (other.k, other.by, other.input_size)
            and all(self._states[key].equal(other._states[key]) for key in self._keys)
            and self.coverage.intervals == other.coverage.intervals
            and self.skipped == other.skipped
            and self.infos == other.infos
            and self.fields == other.fields
        )

    # -- files ---------------------------------------------------------------------------------

    def save(
        self,
        folder: str | os.PathLike[str],
        *,
        images: Any = None,
        maximize: Any = None,
        maximize_options: dict[str, Any] | None = None,
    ) -> Path:
        """Write the atlas into ``folder``: an HTML page per layer, the numbers as JSON lines,
        and the mergeable state (``state.npz``, read back with :meth:`load`).

        Parameters
        ----------
        folder : path
        images : optional
            The collection again, to draw the patches from, when the survey cannot read its
            images by itself: it can when they were files, or when this process surveyed an
            indexable collection (a list, an array, a Dataset).
        maximize : backend, optional
            Also show each channel's optimized image (:func:`featvis.maximize`) first among
            its dataset images; it costs the optimization's steps for every channel of every
            layer. A backend without gradients (ONNX) gets a line on each page saying why
            there are none and what does work.
        maximize_options : dict, optional
            Keywords for :func:`featvis.maximize` (``{"steps": 128, "size": 128}``).

        Returns
        -------
        Path
            The atlas's ``index.html``.
        """
        from featvis._atlas import write_atlas

        return write_atlas(
            self, Path(folder), images, maximize=maximize, maximize_options=maximize_options
        )

    def save_state(self, path: str | os.PathLike[str]) -> Path:
        """Write only the mergeable state (a ``.npz`` file, no pickles), atomically."""
        from featvis._survey_io import write_state

        return write_state(self, Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Survey:
        """Read a survey saved by :meth:`save` (its folder) or :meth:`save_state` (the file)."""
        from featvis._survey_io import read_state

        target = Path(path)
        if target.is_dir():
            target = target / "state.npz"
        return read_state(target)

    def montage(
        self, layer: str | Layer, channels: Sequence[int] | None = None, *, images: Any = None
    ) -> Picture:
        """A picture: one row per channel, its top-k patches left to right (best first)."""
        from featvis._atlas import patch_montage

        return patch_montage(self, layer, channels, images)

    def __getstate__(self) -> dict[str, Any]:
        # The collection is this process's handle on the images (it may hold a generator):
        # a pickled survey (a Dask result) leaves it behind.
        return {**self.__dict__, "collection": None}

    def __repr__(self) -> str:
        layers = ", ".join(f"{key} ({self._states[key].channels} channels)" for key in self._keys)
        skipped = f", {self.skipped} skipped" if self.skipped else ""
        return f"<Survey of {self.images} images{skipped}: {layers}; k={self.k}, by {self.by}>"
