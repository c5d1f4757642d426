"""Streaming images: a collection of any size, decoded and prepared ahead of the model, in batches.

A *collection* is a folder (searched recursively), a list of files or images, any iterable of
images, a 4-D prepared array, or a PyTorch ``Dataset``/``DataLoader`` (recognized without
importing torch: only when the user has imported it). Each image gets a *position*: its index in
the collection (plus ``start``, when a part of a larger collection is streamed).

The pool that streams them in batches is :mod:`featvis._pool`.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError, ImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "ActivationBatch",
    "Collection",
    "ImageInfo",
    "OnError",
    "PreparedBatch",
    "Skipped",
    "as_collection",
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
    """What :func:`featvis._pool.prepared_batches` streams from ``images`` (the module
    docstring says what it takes)."""
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
