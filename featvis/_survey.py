"""featvis.survey: what each channel of a layer responds to across a whole image collection."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from featvis._backend import DEFAULT_BATCH_SIZE, Backend, BackendBase, LayerKey, _progress_bar
from featvis._capabilities import Summarizing
from featvis._errors import ArgumentError, FeatvisError, ImageError
from featvis._images import Preprocess
from featvis._layers import Layer
from featvis._receptive import ReceptiveField, image_box, receptive_field
from featvis._reduce import BY, EMPTY, BatchSummary, By, Coverage, LayerState, summarize
from featvis._stream import (
    Collection,
    ImageInfo,
    Labels,
    OnError,
    Skipped,
    as_collection,
    prepared_batches,
)

if TYPE_CHECKING:
    from featvis.render import Picture

__all__ = ["ChannelStats", "ClassScore", "Survey", "TopImage", "survey"]

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


# -- the survey itself -------------------------------------------------------------------------


def _summaries(backend: Backend, inputs: np.ndarray, layers: list[Layer]) -> list[BatchSummary]:
    """Each layer's :class:`BatchSummary` of one batch: reduced by the backend where its
    activations are when it is :class:`Summarizing`, else by numpy from its activations."""
    if isinstance(backend, Summarizing):
        return backend.summaries(inputs, layers)
    return [summarize(out) for out in _run_layers(backend, inputs, layers)]


def _run_layers(backend: Backend, inputs: np.ndarray, layers: list[Layer]) -> list[np.ndarray]:
    if isinstance(backend, BackendBase):  # no copy of the batch, no second check of names
        outs = backend._checked_run(backend._prepare(inputs), layers, len(inputs))
        for result in outs:
            if isinstance(result, FeatvisError):
                raise result  # a survey has no partial results: every layer or none
        return outs  # type: ignore[return-value]
    names = [layer.name for layer in layers]
    out = backend.activations(inputs, names, batch_size=len(inputs))
    return [np.asarray(out[name], np.float32) for name in names]


def open_backend(description: Any) -> Backend:
    """A backend from a description: a :class:`Backend` itself, a model name, an ``.onnx``
    path, ``package.module:callable`` (as the command line takes them), or a function
    returning a backend or a model."""
    if isinstance(description, Backend):
        return description
    if isinstance(description, (str, os.PathLike)):
        from featvis.cli._inputs import open_model

        return open_model(os.fspath(description))
    if callable(description):
        from featvis.plugins import load

        made = description()
        return made if isinstance(made, Backend) else load(made)
    raise ArgumentError(
        f"Cannot make a backend from {type(description).__name__}: pass a backend, a model "
        "name, an .onnx path, or a function that returns a backend."
    )


def survey(
    backend: Backend | str | Callable[[], Any],
    images: Any,
    layers: LayerKey | Sequence[LayerKey],
    *,
    k: int = 9,
    by: By = "max",
    labels: Labels = None,
    batch_size: int | None = None,
    threads: int | None = None,
    on_error: OnError = "raise",
    start: int = 0,
    resume: Survey | str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    receptive_fields: bool = True,
    client: Any = None,
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> Survey:
    """What each channel of ``layers`` responds to across a whole collection of images.

    For every channel: the ``k`` images that excite it most (by the peak of its map, or its
    mean), where the peak is and the patch of the image it sees (its receptive field), and
    statistics over all images (mean, max, fraction of positions > 0, never-active channels);
    with labels, the classes that excite it most. Images are streamed: memory holds the
    results (layers x channels x k) and one batch, whatever the collection's size.

    The result is deterministic: ties are broken by position, sums are exact, and each image
    is reduced on its own, so batch size, arrival order and the number of workers do not
    change it (for a backend whose activations do not depend on the batch).

    Parameters
    ----------
    backend : Backend, str or callable
        A backend, or a picklable description of one (a model name such as
        ``"efficientnet_lite0"``, an ``.onnx`` path, or a function returning a backend),
        which is what ``client=`` needs.
    images : folder, list, iterable, ndarray, or PyTorch Dataset/DataLoader
        See :meth:`featvis.BackendBase.iter_activations`.
    layers : str, Layer, or sequence of them
    k : int
        Images kept per channel.
    by : {"max", "mean"}
        What ranks the images of a channel: its map's peak, or its map's mean.
    labels : sequence, callable or "folder", optional
        A label per image (or ``labels(position, path)``, or ``"folder"``: each file's folder
        name). A Dataset's ``(image, label)`` items give labels by themselves.
    batch_size : int, optional
        Images per forward pass (default 32). Does not change the result.
    threads : int, optional
        Threads decoding and preparing images ahead of the model (default: up to 4).
    on_error : {"raise", "skip"}
        An unreadable image stops the survey with an :class:`ImageError` that names it, or is
        skipped and counted (:attr:`Survey.skipped`; details in ``skipped_details``).
    start : int
        Position of the first image, when ``images`` is a part of a larger collection: the
        parts' surveys then :meth:`~Survey.merge` into the survey of the whole.
    resume : Survey or path, optional
        A survey (or its saved state) of some of these images: they are not read again, and
        the result is the survey of all of them, equal to an uninterrupted run.
    checkpoint : path, optional
        Save the state there every ``checkpoint_every`` images and at the end (and when
        interrupted), to ``resume`` from.
    receptive_fields : bool
        Measure each layer's receptive fields (once per layer and input size; see
        :func:`featvis.receptive_field`) so that :meth:`Survey.top` gives patch boxes.
    client : dask.distributed.Client, optional
        Survey on a Dask cluster: each worker builds its own backend from ``backend`` (a
        description, not a backend object), surveys parts of the collection, and the parts
        are merged in a tree. Needs an indexable collection (a folder, a list, an array, a
        Dataset). Install with ``pip install 'featvis[dask]'``.
    chunk_size : int, optional
        Images per Dask task (default: about 4 tasks per worker, at most 1024 images).
    progress : bool, optional
        A bar with images per second and the time left; by default when stderr is a terminal.

    Returns
    -------
    Survey

    Examples
    --------
    >>> import numpy as np, featvis
    >>> from featvis.testing import tiny_cnn
    >>> rng = np.random.default_rng(0)
    >>> images = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(20)]
    >>> result = featvis.survey(tiny_cnn(), images, "relu2", k=3, progress=False)
    >>> result
    <Survey of 20 images: relu2 (16 channels); k=3, by max>
    >>> best = result.top("relu2", 0)[0]
    >>> best.rank, best.box is not None
    (0, True)
    """
    if not isinstance(k, int) or k < 1:
        raise ArgumentError(f"k must be a positive integer, got {k!r}.")
    if by not in BY:
        raise ArgumentError(f"by must be one of {', '.join(map(repr, BY))}, not {by!r}.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if not isinstance(start, int) or start < 0:
        raise ArgumentError(f"start must be a position >= 0, got {start!r}.")
    keys = [layers] if isinstance(layers, (str, int, Layer)) else list(layers)
    if not keys:
        raise ArgumentError("No layers were asked for; pass a layer name or a list of them.")
    options: dict[str, Any] = {
        "k": k,
        "by": by,
        "labels": labels,
        "batch_size": batch_size or DEFAULT_BATCH_SIZE,
        "threads": threads,
        "on_error": on_error,
        "receptive_fields": receptive_fields,
        "progress": progress,
    }
    if client is not None:
        if isinstance(backend, Backend):
            raise ArgumentError(
                "With client=, each Dask worker builds its own backend: pass a picklable "
                "description of it instead of the backend object, such as a model name "
                "('efficientnet_lite0'), an .onnx path, or a function that returns a backend."
            )
        if resume is not None or checkpoint is not None:
            raise ArgumentError(
                "resume= and checkpoint= are for one process; on a cluster, a lost task is "
                "retried by Dask."
            )
        from featvis._distributed import survey_on_cluster

        return survey_on_cluster(
            client, backend, images, keys, start=start, chunk_size=chunk_size, **options
        )
    return _survey_here(
        open_backend(backend),
        as_collection(images),
        keys,
        start=start,
        resume=resume,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        **options,
    )


def _survey_here(
    backend: Backend,
    collection: Collection,
    keys: list[LayerKey],
    *,
    k: int,
    by: By,
    labels: Labels,
    batch_size: int,
    threads: int | None,
    on_error: OnError,
    receptive_fields: bool,
    progress: bool | None,
    start: int = 0,
    resume: Survey | str | os.PathLike[str] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    identify: bool = True,
) -> Survey:
    """The survey in this process: stream, reduce each batch, fold it in."""
    resolved = [backend.layer(key) for key in keys]
    distinct = list({layer.name: layer for layer in resolved}.values())
    # a layer given by its index is surveyed under its name: the atlas's folders are names
    names = [key if isinstance(key, str) else layer.name for key, layer in zip(keys, resolved)]
    previous = _previous(resume)
    identity = collection.fingerprint() if identify else None
    if previous is not None:
        if previous.layers != names or (previous.k, previous.by) != (k, by):
            raise ArgumentError(
                f"The survey to resume is of {previous.layers} with k={previous.k}, "
                f"by={previous.by!r}; this one of {names} with k={k}, by={by!r}."
            )
        if previous.fingerprint is not None and identity != previous.fingerprint:
            raise ArgumentError(
                "The survey to resume was made on another collection of images "
                f"({previous.fingerprint}, now {identity}): resume on the same images."
            )
    part = _Part(backend, names, resolved, k, by, previous)
    part.identity = identity
    since_checkpoint = 0
    todo = collection.length
    if todo is not None and previous is not None:
        stop = start + todo
        todo -= sum(max(0, min(b, stop) - max(a, start)) for a, b in previous.coverage.intervals)
    bar = _progress_bar(todo, progress, desc="survey")

    def current() -> Survey | None:
        made = part.survey()
        if previous is None or made is None:
            return made or previous
        return previous.merge(made)

    try:
        for batch in prepared_batches(
            collection,
            backend.preprocess,
            batch_size=batch_size,
            threads=threads,
            on_error=on_error,
            start=start,
            skip=(lambda p: p in previous.coverage) if previous is not None else None,
            labels=labels,
            progress=bar,
        ):
            if len(batch):
                summaries = _summaries(backend, batch.inputs, distinct)
                part.add(batch, dict(zip((layer.name for layer in distinct), summaries)))
            part.add_skipped(batch)
            since_checkpoint += len(batch) + len(batch.skipped)
            if checkpoint is not None and since_checkpoint >= checkpoint_every:
                _save(current(), checkpoint)
                since_checkpoint = 0
    except KeyboardInterrupt:
        if checkpoint is not None:
            _save(current(), checkpoint)
        raise
    finally:
        if bar is not None:
            bar.close()
    result = current()
    if result is None:
        if part.skipped:
            raise ImageError(
                f"None of the {part.skipped} images could be read; the first: "
                f"{part.skipped_details[0].name}: {part.skipped_details[0].reason}"
            )
        raise ArgumentError("There were no images to survey.")
    result.fingerprint = identity if previous is None else previous.fingerprint
    result.collection = collection
    result.collection_start = start
    result.classes = collection.classes or result.classes
    result.provenance = dict(backend.provenance)
    if receptive_fields:
        measure_fields(backend, result, batch_size)
    if checkpoint is not None:
        _save(result, checkpoint)
    return result


def measure_fields(backend: Backend, result: Survey, batch_size: int | None = None) -> None:
    """Measure the receptive field of each surveyed layer not measured yet (cached)."""
    if result.input_size is None:
        return
    for state in result._states.values():
        if state.name not in result.fields:
            result.fields[state.name] = receptive_field(
                backend, state.name, input_size=result.input_size, batch_size=batch_size
            )


def _save(result: Survey | None, path: str | os.PathLike[str]) -> None:
    if result is not None:
        result.save_state(path)


def _previous(resume: Survey | str | os.PathLike[str] | None) -> Survey | None:
    if resume is None or isinstance(resume, Survey):
        return resume
    path = Path(resume)
    if not path.exists():
        return None  # nothing saved yet: a first run with a checkpoint path
    return Survey.load(path)


class _Part:
    """What one run has surveyed so far; its layers are shaped by the first batch read."""

    def __init__(
        self,
        backend: Backend,
        names: list[str],
        resolved: list[Layer],
        k: int,
        by: By,
        template: Survey | None = None,
    ) -> None:
        self.preprocess = backend.preprocess
        self.names = names
        self.resolved = resolved
        self.k = k
        self.by: By = by
        self.states: dict[str, LayerState] = {}
        self.input_size: tuple[int, int] | None = None
        self.coverage = Coverage()
        self.infos: dict[int, ImageInfo] = {}
        self.skipped = 0
        self.skipped_details: list[Skipped] = []
        self.identity: dict[str, Any] | None = None
        if template is not None:  # a resumed run: the layers' shapes are known
            self.input_size = template.input_size
            for state in template._states.values():
                self.states[state.name] = LayerState(
                    state.name, state.channels, state.spatial, k, by
                )

    def add(self, batch: Any, summaries: dict[str, BatchSummary]) -> None:
        if not self.states:
            self.input_size = (int(batch.inputs.shape[2]), int(batch.inputs.shape[3]))
            for name, summary in summaries.items():
                channels = summary.peak.shape[1]
                self.states[name] = LayerState(name, channels, summary.spatial, self.k, self.by)
        labels = [info.label for info in batch.images]
        has_labels = any(label is not None for label in labels)
        for name, summary in summaries.items():
            self.states[name].update(summary, batch.positions, labels if has_labels else None)
        self.infos.update((info.position, info) for info in batch.images)
        held: set[int] = set()
        for state in self.states.values():
            held.update(state.positions().tolist())
        self.infos = {p: info for p, info in self.infos.items() if p in held}

    def add_skipped(self, batch: Any) -> None:
        taken = [s.position for s in batch.skipped]
        self.coverage.add_positions(np.union1d(batch.positions, taken).astype(np.int64))
        self.skipped += len(batch.skipped)
        room = max(SKIPPED_DETAILS - len(self.skipped_details), 0)
        self.skipped_details.extend(batch.skipped[:room])

    def survey(self) -> Survey | None:
        """A :class:`Survey` of what was read (a copy), or None if no image was read yet."""
        if not self.states:
            return None
        layers = [
            (key, copy_state(self.states[layer.name]))
            for key, layer in zip(self.names, self.resolved)
        ]
        out = Survey(
            layers, k=self.k, by=self.by, preprocess=self.preprocess, input_size=self.input_size
        )
        out.coverage = Coverage(self.coverage.intervals)
        out.infos = dict(self.infos)
        out.skipped = self.skipped
        out.skipped_details = list(self.skipped_details)
        out.fingerprint = self.identity
        return out


def copy_state(state: LayerState) -> LayerState:
    """An independent copy (a checkpoint must not change as the run goes on)."""
    empty = LayerState(state.name, state.channels, state.spatial, state.k, state.by)
    return empty.merge(state)
