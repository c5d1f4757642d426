"""The survey on a Dask cluster: parts surveyed by workers, merged in a tree.

Each task surveys one part of the collection (a run of consecutive positions, its start a
multiple of the batch size, so that every image is in the same batch as in a one-process run)
with a backend the worker builds once from a picklable description. Parts are merged pairwise
as they finish; since :meth:`featvis.Survey.merge` is exact and refuses overlapping parts, the
result equals the one-process survey, and an image counted twice could not go unnoticed. A
worker that dies takes its unfinished tasks with it; the scheduler runs them again elsewhere.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import threading
from collections.abc import Callable
from typing import Any

from featvis._backend import Backend, LayerKey
from featvis._backend_base import _progress_bar
from featvis._errors import ArgumentError, MissingDependencyError
from featvis._stream import Collection, as_collection
from featvis._survey import Survey, _survey_here, measure_fields, open_backend

__all__ = ["survey_on_cluster"]

_MISSING = "featvis.survey(client=...) needs Dask: pip install 'featvis[dask]'"

#: Backends built on this worker, by description (a worker surveys many parts).
_backends: dict[str, Backend] = {}
_lock = threading.Lock()


def _key(description: Any) -> str:
    if isinstance(description, str):
        return description
    try:
        import cloudpickle

        data = cloudpickle.dumps(description)
    except ImportError:  # pragma: no cover - dask brings cloudpickle
        data = pickle.dumps(description)
    return hashlib.sha256(data).hexdigest()


def worker_backend(description: Any) -> Backend:
    """The backend for ``description`` on this worker, built the first time it is asked for."""
    key = _key(description)
    with _lock:
        if key not in _backends:
            _backends[key] = open_backend(description)
        return _backends[key]


class _Part:
    """One part of a collection as a task takes it: items ``[begin, end)``. Files and rows of a
    prepared array travel in the task (``items``); other collections are scattered to every
    worker once and sliced there."""

    def __init__(self, kind: str, items: Any, begin: int, end: int, pairs: bool) -> None:
        self.kind = kind
        self.items = items
        self.begin = begin
        self.end = end
        self.pairs = pairs

    def collection(self, shared: Any) -> Collection:
        if self.kind in ("paths", "prepared"):
            return as_collection(self.items)
        made = as_collection(_Slice(shared, self.begin, self.end))
        made.pairs = self.pairs
        return made


class _Slice:
    """Items ``[begin, end)`` of an indexable collection, indexable itself (a Dataset's part)."""

    def __init__(self, source: Any, begin: int, end: int) -> None:
        self.source, self.begin, self.end = source, begin, end
        self.classes = getattr(source, "classes", None)

    def __len__(self) -> int:
        return self.end - self.begin

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.source[self.begin + index]


def _survey_part(
    description: Any,
    part: _Part,
    shared: Any,
    start: int,
    keys: list[LayerKey],
    options: dict[str, Any],
) -> Survey:
    result = _survey_here(
        worker_backend(description),
        part.collection(shared),
        keys,
        start=start,
        receptive_fields=False,
        progress=False,
        identify=False,
        **options,
    )
    result.collection = None  # it stays on the worker
    return result


def _merge(a: Survey, b: Survey) -> Survey:
    return a.merge(b)


def _fields(description: Any, result: Survey, batch_size: int) -> Survey:
    measure_fields(worker_backend(description), result, batch_size)
    return result


def survey_on_cluster(
    client: Any,
    description: str | Callable[[], Any],
    images: Any,
    keys: list[LayerKey],
    *,
    k: int,
    by: str,
    labels: Any,
    batch_size: int,
    threads: int | None,
    on_error: str,
    receptive_fields: bool,
    progress: bool | None,
    start: int = 0,
    chunk_size: int | None = None,
) -> Survey:
    """:func:`featvis.survey` with ``client=``: see the module docstring."""
    try:
        from distributed import as_completed
    except ImportError as exc:
        raise MissingDependencyError(_MISSING) from exc
    collection = as_collection(images)
    if collection.kind not in ("folder", "paths") and not collection.indexable:
        raise ArgumentError(
            f"A survey on a cluster needs a collection its workers can split: a folder, a list "
            f"of files or images, an array or a Dataset, not a {collection.kind} one (which "
            "can only be read once, in order). Survey it in one process, without client=."
        )
    total = collection.length
    assert total is not None
    workers = max(1, len(client.scheduler_info().get("workers", {})))
    size = chunk_size or min(1024, max(batch_size, math.ceil(total / (4 * workers))))
    size = max(batch_size, math.ceil(size / batch_size) * batch_size)  # whole batches
    options = {"k": k, "by": by, "batch_size": batch_size, "threads": threads, "on_error": on_error}
    shared = None
    if collection.kind not in ("folder", "paths", "prepared"):  # sent to each worker once
        shared = client.scatter([collection.source], broadcast=True)[0]
    paths = iter(collection) if collection.kind in ("folder", "paths") else None
    per_image = labels is not None and not (isinstance(labels, str) or callable(labels))
    if per_image and len(labels) != total:
        raise ArgumentError(f"{len(labels)} labels were given for {total} images.")
    futures = []
    sizes = {}
    for begin in range(0, total, size):
        end = min(total, begin + size)
        if paths is not None:
            items: Any = [next(paths) for _ in range(end - begin)]
            part = _Part("paths", items, begin, end, False)
        elif collection.kind == "prepared":
            part = _Part("prepared", collection.source[begin:end], begin, end, False)
        else:
            part = _Part(collection.kind, None, begin, end, collection.pairs)
        part_labels = list(labels[begin:end]) if per_image else labels
        future = client.submit(
            _survey_part,
            description,
            part,
            shared,
            start + begin,
            keys,
            {**options, "labels": part_labels},
            pure=False,
        )
        futures.append(future)
        sizes[future.key] = end - begin
    bar = _progress_bar(total, progress, desc="survey")
    waiting = None
    try:
        pending = as_completed(futures)
        for future in pending:
            if bar is not None and future.key in sizes:
                bar.update(sizes[future.key])
            if waiting is None:
                waiting = future
            else:  # merge pairs as they finish: a tree whose depth is log2(parts)
                pending.add(client.submit(_merge, waiting, future, pure=False))
                waiting = None
        assert waiting is not None
        merged = waiting
        if receptive_fields:
            merged = client.submit(_fields, description, merged, batch_size, pure=False)
        result: Survey = merged.result()
    finally:
        if bar is not None:
            bar.close()
    result.fingerprint = collection.fingerprint()
    result.collection = collection
    result.collection_start = start
    result.classes = collection.classes or result.classes
    return result
