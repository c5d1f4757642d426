"""Streaming images: a collection of any size, decoded and prepared ahead of the model, in batches.

A *collection* is a folder (searched recursively), a list of files or images, any iterable of
images, a 4-D prepared array, or a PyTorch ``Dataset``/``DataLoader`` (recognized without
importing torch: only when the user has imported it). Each image gets a *position*: its index in
the collection (plus ``start``, when a part of a larger collection is streamed).

:func:`prepared_batches` decodes and prepares images in a bounded pool of threads, in position
order, and hands out :class:`PreparedBatch` es as they are ready. Batch boundaries fall on
multiples of the batch size in *positions*, so the same images form the same batches whether a
collection is streamed whole, in parts, or resumed. At most one batch plus ``ahead`` prepared
images are held at any time, whatever the collection's size.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError, ImageError
from featvis._images import Preprocess, _load, _name, _normalize_into, _resize_rgb

__all__ = [
    "IMAGE_SUFFIXES",
    "ActivationBatch",
    "Collection",
    "ImageInfo",
    "OnError",
    "PreparedBatch",
    "Skipped",
    "as_collection",
    "prepared_batches",
]

#: File name endings (lower case) taken as images when a folder is searched.
IMAGE_SUFFIXES = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
    ".pbm",
    ".pnm",
)

#: What to do with an image that cannot be read: stop with its error, or skip and count it.
OnError = Literal["raise", "skip"]

#: Labels: one per image (a sequence), a function of the image's :class:`ImageInfo`-to-be
#: ``(position, path)``, or ``"folder"`` (the name of the folder the file is in).
Labels = Sequence[Any] | Callable[[int, str | None], Any] | Literal["folder"] | None


@dataclass(frozen=True)
class ImageInfo:
    """One image of a collection, as the survey remembers it.

    Attributes
    ----------
    position : int
        Index in the whole collection.
    path : str or None
        The file it was read from, when it was a file.
    label : object
        Its label (class), when labels were given or the dataset had them.
    size : (int, int)
        ``(height, width)`` of the image in its own pixels (what boxes are measured in).
    """

    position: int
    path: str | None
    label: Any
    size: tuple[int, int]


@dataclass(frozen=True)
class Skipped:
    """An image that could not be read and was skipped (``on_error="skip"``)."""

    position: int
    name: str
    reason: str


@dataclass
class PreparedBatch:
    """Prepared model input for a run of consecutive positions (those that could be read)."""

    positions: np.ndarray  # (n,) int64, ascending
    inputs: np.ndarray  # (n, C, H, W) float32
    images: list[ImageInfo]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)


@dataclass
class ActivationBatch:
    """What :meth:`featvis.BackendBase.iter_activations` yields for each batch.

    Attributes
    ----------
    positions : ndarray, shape (n,), int64
        Each image's position in the collection, ascending.
    activations : ndarray or dict of str to ndarray
        ``(n, C, H, W)`` float32: one array for one layer, a dict keyed by the names as given
        for a sequence of layers (as :meth:`~featvis.BackendBase.activations`).
    images : list of ImageInfo
        Path, label and size of each image.
    skipped : list of Skipped
        Images of this batch's range of positions that could not be read (``on_error="skip"``).
    """

    positions: np.ndarray
    activations: Any
    images: list[ImageInfo]
    skipped: list[Skipped] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.positions)


# -- collections -----------------------------------------------------------------------------


def _torch_data() -> Any:
    """``torch.utils.data`` if the user has imported torch, else None (never imports torch)."""
    if "torch" not in sys.modules:
        return None
    import torch.utils.data

    return torch.utils.data


def _is_tensor(value: object) -> bool:
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(value, torch.Tensor)


def _walk(root: Path) -> Iterator[str]:
    """Image files under ``root``, recursively, sorted by path; hidden entries are skipped."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise ImageError(f"Cannot list the folder {os.fspath(folder)!r}: {exc}") from None
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                subfolders.append(Path(entry.path))
            elif entry.name.lower().endswith(IMAGE_SUFFIXES):
                yield entry.path
        # depth first, in name order: a folder's files, then its subfolders, in order
        stack.extend(reversed(subfolders))


class Collection:
    """Images to stream, each with a position: what :func:`as_collection` makes of its input.

    Attributes
    ----------
    kind : str
        ``"folder"``, ``"paths"``, ``"sequence"``, ``"dataset"``, ``"prepared"``,
        ``"loader"`` or ``"iterable"``.
    length : int or None
        Number of images, when known without reading them.
    indexable : bool
        Whether :meth:`item` can fetch an image by its index (needed to split the work
        between Dask workers and to draw an atlas afterwards).
    """

    def __init__(
        self,
        kind: str,
        *,
        items: Callable[[], Iterable[Any]],
        length: int | None,
        getitem: Callable[[int], Any] | None = None,
        pairs: bool = False,
        description: str = "",
        root: Path | None = None,
        source: Any = None,
        classes: Sequence[str] | None = None,
    ) -> None:
        self.kind = kind
        self._items = items
        self.length = length
        self._getitem = getitem
        self.pairs = pairs  # items are (image, label) pairs, as a Dataset gives them
        self.description = description
        self.root = root
        self.source = source
        self.classes = None if classes is None else list(classes)

    @property
    def indexable(self) -> bool:
        return self._getitem is not None and self.length is not None

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())

    def item(self, index: int) -> Any:
        """The raw item at ``index`` (0 <= index < length)."""
        if self._getitem is None:
            raise ArgumentError(f"A {self.kind} collection cannot be indexed.")
        return self._getitem(index)

    def fingerprint(self) -> dict[str, Any]:
        """What identifies the collection, for checking that a resumed run reads the same one:
        its kind and length, and for files a hash of their paths (relative to the folder)."""
        out: dict[str, Any] = {"kind": self.kind, "length": self.length}
        if self.kind in ("folder", "paths"):
            digest = hashlib.sha256()
            count = 0
            for path in self:
                shown = os.path.relpath(path, self.root) if self.root is not None else path
                digest.update(Path(shown).as_posix().encode() + b"\0")
                count += 1
            out["length"] = count
            out["paths_sha256"] = digest.hexdigest()
        return out


def as_collection(images: Any) -> Collection:
    """What :func:`prepared_batches` streams from ``images`` (see the module docstring)."""
    if isinstance(images, Collection):
        return images
    if isinstance(images, (str, os.PathLike)):
        path = Path(images)
        if path.is_dir():
            root = path
            count = sum(1 for _ in _walk(root))
            if count == 0:
                raise ImageError(
                    f"No image files under {os.fspath(path)!r} (searched recursively for "
                    f"{', '.join(IMAGE_SUFFIXES)})."
                )
            return Collection(
                "folder",
                items=lambda: _walk(root),
                length=count,
                description=f"folder {os.fspath(path)!r}",
                root=root,
            )
        return Collection("paths", items=lambda: [os.fspath(path)], length=1, source=[path])
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            if not np.issubdtype(images.dtype, np.floating):
                raise ImageError(
                    "A 4-D array is a prepared (N, C, H, W) model input and must be float, "
                    f"got {images.dtype}. For raw images pass a list of (H, W, C) arrays."
                )
            array = images
            return Collection(
                "prepared",
                items=lambda: (_Row(row) for row in array),
                length=len(array),
                getitem=lambda i: _Row(array[i]),
                source=array,
            )
        return Collection(
            "sequence", items=lambda: [images], length=1, getitem=[images].__getitem__
        )
    if isinstance(images, Image.Image):
        return Collection(
            "sequence", items=lambda: [images], length=1, getitem=[images].__getitem__
        )
    data = _torch_data()
    if data is not None and isinstance(images, data.DataLoader):
        return _loader_collection(images, data)
    if data is not None and isinstance(images, data.IterableDataset):
        return Collection("iterable", items=lambda: images, length=None, pairs=True)
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("No images were given (an empty list).")
        if all(isinstance(item, (str, os.PathLike)) for item in images):
            paths = [os.fspath(item) for item in images]
            return Collection(
                "paths",
                items=lambda: paths,
                length=len(paths),
                getitem=paths.__getitem__,
                source=paths,
            )
        seq = images
        return Collection(
            "sequence", items=lambda: seq, length=len(seq), getitem=seq.__getitem__, source=seq
        )
    if hasattr(images, "__getitem__") and hasattr(images, "__len__"):
        # a torch Dataset, or anything indexable like one (items may be (image, label) pairs)
        dataset = images
        classes = getattr(dataset, "classes", None)
        return Collection(
            "dataset",
            items=lambda: (_Index(i) for i in range(len(dataset))),
            length=len(dataset),
            getitem=dataset.__getitem__,
            pairs=True,
            source=dataset,
            classes=classes if _is_names(classes) else None,
        )
    if isinstance(images, Iterable):
        return Collection("iterable", items=lambda: images, length=None, source=None)
    raise ImageError(
        f"Cannot stream images from {type(images).__name__}: pass a folder, a list of files or "
        "images, an iterable of images, a prepared (N, C, H, W) array, or a PyTorch "
        "Dataset or DataLoader."
    )


@dataclass(frozen=True)
class _Row:
    """One image of a prepared (N, C, H, W) array: model input as it is."""

    array: np.ndarray


@dataclass(frozen=True)
class _Index:
    """An index into a dataset, read in a decoding thread."""

    index: int


def _is_names(value: object) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)


def _loader_collection(loader: Any, data: Any) -> Collection:
    sampler = getattr(loader, "sampler", None)
    batch_sampler = getattr(loader, "batch_sampler", None)
    inner = getattr(batch_sampler, "sampler", None)
    if isinstance(sampler, data.RandomSampler) or isinstance(inner, data.RandomSampler):
        raise ArgumentError(
            "This DataLoader shuffles (shuffle=True), so an image's position would change from "
            "run to run and a survey could not be merged or resumed. Pass a DataLoader with "
            "shuffle=False, or the Dataset itself (featvis reads it in its own threads)."
        )

    def unbatched() -> Iterator[Any]:
        for batch in loader:
            if isinstance(batch, (list, tuple)) and len(batch) == 2:
                images, labels = batch
                for i in range(len(images)):
                    yield images[i], labels[i]
            elif isinstance(batch, dict):
                raise ImageError(
                    "The DataLoader yields dicts; featvis reads (images, labels) or images. "
                    "Wrap the dataset so that it returns (image, label)."
                )
            else:
                for i in range(len(batch)):
                    yield batch[i]

    dataset = getattr(loader, "dataset", None)
    try:
        length = len(dataset) if dataset is not None else None
    except TypeError:  # an IterableDataset without a length
        length = None
    classes = getattr(dataset, "classes", None)
    return Collection(
        "loader",
        items=unbatched,
        length=length,
        pairs=True,
        classes=classes if _is_names(classes) else None,
    )


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
