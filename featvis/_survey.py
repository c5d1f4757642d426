"""featvis.survey: what each channel of a layer responds to across a whole image collection."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from featvis._backend import DEFAULT_BATCH_SIZE, Backend, LayerKey
from featvis._backend_base import BackendBase, _progress_bar
from featvis._capabilities import Summarizing
from featvis._errors import ArgumentError, FeatvisError, ImageError
from featvis._layers import Layer
from featvis._pool import prepared_batches
from featvis._receptive import receptive_field
from featvis._reduce import BY, BatchSummary, By, Coverage, LayerState, summarize
from featvis._stream import (
    Collection,
    ImageInfo,
    Labels,
    OnError,
    Skipped,
    as_collection,
)
from featvis._survey_result import SKIPPED_DETAILS, ChannelStats, ClassScore, Survey, TopImage

__all__ = ["ChannelStats", "ClassScore", "Survey", "TopImage", "survey"]

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
