"""The pool that decodes and prepares a collection's images ahead of the model, in batches
(the collections themselves are :mod:`featvis._stream`).

:func:`prepared_batches` decodes and prepares images in a bounded pool of threads, in position
order, and hands out :class:`PreparedBatch` es as they are ready. Batch boundaries fall on
multiples of the batch size in *positions*, so the same images form the same batches whether a
collection is streamed whole, in parts, or resumed. At most one batch plus ``ahead`` prepared
images are held at any time, whatever the collection's size.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError, ImageError
from featvis._images import Preprocess, _load, _name, _normalize_into, _resize_rgb
from featvis._stream import (
    Collection,
    ImageInfo,
    Labels,
    OnError,
    PreparedBatch,
    Skipped,
    _Index,
    _is_tensor,
    _Row,
)

__all__ = ["default_threads", "prepared_batches"]


# -- decoding one item -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Decoded:
    input: np.ndarray  # (C, H, W) float32
    info: ImageInfo


def _plain_label(value: Any) -> Any:
    """A label as JSON can hold it: int, float, str or None (0-d tensors and arrays unwrapped)."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if _is_tensor(value) or isinstance(value, np.ndarray | np.generic):
        array = np.asarray(value.detach().cpu() if _is_tensor(value) else value)
        if array.size != 1:
            raise ImageError(f"A label must be one value, got an array of shape {array.shape}.")
        value = array.reshape(()).item()
    if isinstance(value, (int, float, str)):
        return value
    raise ImageError(f"A label must be an int or str, got {type(value).__name__}.")


def _decode(
    raw: Any,
    position: int,
    preprocess: Preprocess,
    pairs: bool,
    labels: Labels,
    index: int,
    classes: Sequence[str] | None,
    getitem: Callable[[int], Any] | None,
) -> _Decoded:
    """One raw item -> prepared (C, H, W) input and what the survey remembers of it."""
    label: Any = None
    if isinstance(raw, _Index):
        raw = getitem(raw.index)  # type: ignore[misc]
    if pairs and isinstance(raw, (tuple, list)) and len(raw) == 2:
        raw, target = raw
        label = _plain_label(target)
        if classes is not None and isinstance(label, int) and 0 <= label < len(classes):
            label = classes[label]
    path = os.fspath(raw) if isinstance(raw, (str, os.PathLike)) else None
    if labels is not None:
        if isinstance(labels, str):  # "folder"
            if path is None:
                raise ArgumentError('labels="folder" needs images read from files.')
            label = Path(path).parent.name
        elif callable(labels):
            label = _plain_label(labels(position, path))
        else:
            label = _plain_label(labels[index])
    if _is_tensor(raw):
        raw = raw.detach().cpu().numpy()
        if raw.ndim == 3 and np.issubdtype(raw.dtype, np.floating):
            return _prepared(raw, position, path, label, preprocess)
        if raw.ndim == 3 and raw.shape[0] in (1, 3, 4):  # a uint8 CHW tensor (read_image)
            raw = np.ascontiguousarray(raw.transpose(1, 2, 0))
    elif isinstance(raw, _Row):
        return _prepared(raw.array, position, path, label, preprocess)
    loaded = _load(raw)
    if isinstance(loaded, Image.Image):
        size = (loaded.height, loaded.width)
    else:
        size = (int(loaded.shape[0]), int(loaded.shape[1]))
    target_size = preprocess.size or size
    out = np.empty((preprocess.channels, *target_size), np.float32)
    _normalize_into(out, _resize_rgb(loaded, target_size), preprocess)
    return _Decoded(out, ImageInfo(position, path, label, size))


def _prepared(
    raw: np.ndarray, position: int, path: str | None, label: Any, preprocess: Preprocess
) -> _Decoded:
    array = np.ascontiguousarray(raw, dtype=np.float32)
    if array.shape[0] != preprocess.channels:
        raise ImageError(
            f"The prepared input at position {position} has {array.shape[0]} channels; the "
            f"backend's Preprocess takes {preprocess.channels}."
        )
    return _Decoded(array, ImageInfo(position, path, label, (array.shape[1], array.shape[2])))


# -- the pool --------------------------------------------------------------------------------


def default_threads() -> int:
    """Decoding threads when the caller does not choose: up to 4, never more than the CPUs."""
    return max(1, min(4, os.cpu_count() or 1))


def _describe_item(raw: Any, position: int, pairs: bool) -> str:
    if isinstance(raw, _Index):
        return f"item {raw.index} of the dataset (position {position})"
    if isinstance(raw, _Row):
        return f"prepared image {position}"
    if pairs and isinstance(raw, (tuple, list)) and len(raw) == 2:
        raw = raw[0]
    if isinstance(raw, (str, os.PathLike)):
        return os.fspath(raw)
    return f"image {position} ({_name(raw)})"


def prepared_batches(
    collection: Collection,
    preprocess: Preprocess,
    *,
    batch_size: int,
    threads: int | None = None,
    on_error: OnError = "raise",
    start: int = 0,
    skip: Callable[[int], bool] | None = None,
    labels: Labels = None,
    progress: Any = None,
) -> Iterator[PreparedBatch]:
    """Prepared batches of ``collection``, in position order (see the module docstring).

    Parameters
    ----------
    collection : Collection
    preprocess : Preprocess
        How images become model input.
    batch_size : int
        A batch holds the images whose positions fall in one interval
        ``[b * batch_size, (b + 1) * batch_size)``.
    threads : int, optional
        Threads that decode and prepare images ahead of the model (default: up to 4).
    on_error : {"raise", "skip"}
        An image that cannot be read stops the stream with an :class:`ImageError` naming it,
        or is skipped and reported in its batch's :attr:`PreparedBatch.skipped`.
    start : int
        Position of the collection's first image.
    skip : callable, optional
        ``skip(position) -> bool``: positions not to read at all (already surveyed).
    labels : sequence, callable or "folder", optional
        See :data:`Labels`.
    progress : tqdm bar, optional
        Updated by one for each image read or skipped.
    """
    if on_error not in ("raise", "skip"):
        raise ArgumentError(f'on_error must be "raise" or "skip", not {on_error!r}.')
    if labels is not None and not (labels == "folder" or callable(labels)):
        if isinstance(labels, str) or not hasattr(labels, "__getitem__"):
            raise ArgumentError(
                "labels must be a sequence (one label per image), a function of (position, "
                'path), or "folder".'
            )
        if collection.length is not None and len(labels) != collection.length:
            raise ArgumentError(
                f"{len(labels)} labels were given for {collection.length} images; give one "
                "label per image."
            )
    workers = threads or default_threads()
    ahead = max(2 * batch_size, 4 * workers)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="featvis-decode")
    pending: deque[tuple[int, Any, Future[_Decoded]]] = deque()
    source = iter(collection)
    exhausted = False
    index = 0  # items taken from the source

    def fill() -> None:
        nonlocal exhausted, index
        while not exhausted and len(pending) < ahead:
            try:
                raw = next(source)
            except StopIteration:
                exhausted = True
                return
            position = start + index
            index += 1
            if skip is not None and skip(position):
                continue
            future = pool.submit(
                _decode,
                raw,
                position,
                preprocess,
                collection.pairs,
                labels,
                index - 1,
                collection.classes,
                collection._getitem,
            )
            pending.append((position, raw, future))

    current: int | None = None  # the batch being filled: positions // batch_size
    inputs: list[np.ndarray] = []
    infos: list[ImageInfo] = []
    skipped: list[Skipped] = []
    shape: tuple[int, ...] | None = None
    total_skipped = 0

    def emit() -> PreparedBatch:
        positions = np.array([info.position for info in infos], np.int64)
        if inputs:
            batch = np.stack(inputs)
        else:
            size = preprocess.size or (1, 1)
            batch = np.empty((0, preprocess.channels, *size), np.float32)
        out = PreparedBatch(positions, batch, list(infos), list(skipped))
        inputs.clear()
        infos.clear()
        skipped.clear()
        return out

    try:
        fill()
        while pending:
            position, raw, future = pending.popleft()
            fill()
            key = position // batch_size
            if current is not None and key != current and (infos or skipped):
                yield emit()
            current = key
            try:
                decoded = future.result()
                if shape is None:
                    shape = decoded.input.shape
                elif decoded.input.shape != shape:
                    raise ImageError(
                        f"{_describe_item(raw, position, collection.pairs)} gives model input "
                        f"of shape {decoded.input.shape}, the images before it "
                        f"{shape}: a batch needs one size. Give the backend a Preprocess "
                        "with a size (featvis.Preprocess(size=(224, 224)))."
                    )
            except Exception as exc:
                what = _describe_item(raw, position, collection.pairs)
                if isinstance(exc, ImageError):
                    message = str(exc)
                elif collection.kind == "dataset":  # the user's dataset failed on this item
                    message = f"{what} could not be read: {type(exc).__name__}: {exc}"
                else:
                    raise  # a bug, not a bad image
                if on_error == "raise":
                    if isinstance(exc, ImageError):
                        raise
                    raise ImageError(message) from exc
                skipped.append(Skipped(position, what, message))
                total_skipped += 1
            else:
                inputs.append(decoded.input)
                infos.append(decoded.info)
            if progress is not None:
                progress.update(1)
                if total_skipped:
                    progress.set_postfix(skipped=total_skipped, refresh=False)
        if infos or skipped:
            yield emit()
    finally:
        for _, _, future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
