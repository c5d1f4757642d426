"""The Backend protocol, and BackendBase: what every backend shares (names, batching, results)."""

from __future__ import annotations

import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np

from featvis._errors import ArgumentError
from featvis._images import Images, Preprocess, prepare_images
from featvis._layers import Layer, LayerIndex
from featvis._stream import ActivationBatch, Labels, OnError, as_collection, prepared_batches

__all__ = ["Backend", "BackendBase", "LayerKey", "as_nchw"]

#: A layer is named by its backend-native name, its alias, or the :class:`Layer` itself.
LayerKey = str | Layer

#: Images per forward pass when the caller does not choose.
DEFAULT_BATCH_SIZE = 32

_FLOAT32 = np.dtype(np.float32)


@runtime_checkable
class Backend(Protocol):
    """What featvis needs from a framework: its layers, and their activations for images.

    Every built-in and third-party backend has these members, and featvis's functions use
    nothing else of a backend without first checking a capability (:class:`featvis.Scorer`,
    :class:`featvis.Differentiable`, :class:`featvis.OnnxExportable`). Subclassing
    :class:`BackendBase` is the easy way to have them all.
    """

    #: The backend's registered name, e.g. ``"torch"``.
    name: str
    #: How images become model input.
    preprocess: Preprocess
    #: Class names of the model's outputs, when known (for :func:`featvis.top_predictions`).
    categories: list[str] | None
    #: Where the results come from, for reports: framework versions, model file and hash...
    provenance: dict[str, str]

    def layers(self) -> list[Layer]:
        """The model's layers in execution order, numbered and aliased by :func:`number_layers`."""
        ...

    def layer(self, key: LayerKey) -> Layer:
        """The layer named ``key``: a name or alias (or another name the backend knows, such
        as the module path of an exported layer); :class:`UnknownLayerError` if none."""
        ...

    @overload
    def activations(  # type: ignore[overload-overlap]  # a str is also a Sequence
        self, images: Images, layers: LayerKey, *, batch_size: int | None = ...
    ) -> np.ndarray: ...

    @overload
    def activations(
        self, images: Images, layers: Sequence[LayerKey], *, batch_size: int | None = ...
    ) -> dict[str, np.ndarray]: ...

    def activations(
        self,
        images: Images,
        layers: LayerKey | Sequence[LayerKey],
        *,
        batch_size: int | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Activations of ``layers`` for ``images``.

        One layer gives one ``(N, C, H, W)`` float32 array; a list of layers gives a dict keyed
        by the names as given, in the order asked. A non-spatial output of shape ``(N, C)`` comes
        back as ``(N, C, 1, 1)``.
        """
        ...


def as_nchw(array: np.ndarray) -> np.ndarray:
    """Give an output with a leading batch dimension the NCHW shape featvis works in.

    The rule: ``(N,)`` becomes ``(N, 1, 1, 1)``; ``(N, C)`` becomes ``(N, C, 1, 1)`` (as MATLAB's
    ``'OutputAs','channels'``); ``(N, C, L)`` becomes ``(N, C, 1, L)``; ``(N, C, H, W)`` stays;
    more than four dimensions fold the extra ones into H: ``(N, C, D, H, W)`` becomes
    ``(N, C, D*H, W)``. The result is C-contiguous float32 (a copy only when needed).

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import as_nchw
    >>> as_nchw(np.zeros((2, 10))).shape
    (2, 10, 1, 1)
    """
    if array.ndim == 0:
        raise ArgumentError("A layer output needs a batch dimension; got a scalar.")
    if array.ndim == 1:
        array = array[:, None, None, None]
    elif array.ndim == 2:
        array = array[:, :, None, None]
    elif array.ndim == 3:
        array = array[:, :, None, :]
    elif array.ndim > 4:
        array = array.reshape(*array.shape[:2], -1, array.shape[-1])
    return np.ascontiguousarray(array, dtype=np.float32)


class BackendBase(ABC):
    """A base for backends: name resolution, batching and result assembly are done here.

    A subclass sets :attr:`name`, implements :meth:`_list_layers` and :meth:`_run`, and may
    override :meth:`_prepare` to accept framework tensors. It decides its preprocessing (and
    anything else it knows) before calling ``BackendBase.__init__``, which only stores values.

    Parameters
    ----------
    preprocess : Preprocess, optional
        How images become model input. Default: 224x224, ImageNet mean and std.
    categories : list of str, optional
        Class names of the model's outputs.
    provenance : dict of str to str, optional
        Facts about the model for reports; ``{"backend": name}`` is always included.
    """

    #: The backend's registered name, e.g. ``"torch"``.
    name: str = "base"

    def __init__(
        self,
        *,
        preprocess: Preprocess | None = None,
        categories: Sequence[str] | None = None,
        provenance: dict[str, str] | None = None,
    ) -> None:
        if preprocess is not None and not isinstance(preprocess, Preprocess):
            raise ArgumentError(
                f"preprocess must be a featvis.Preprocess, not {type(preprocess).__name__}."
            )
        self.preprocess: Preprocess = preprocess if preprocess is not None else Preprocess()
        #: Class names of the model's outputs, when known (for :func:`featvis.top_predictions`).
        self.categories: list[str] | None = None if categories is None else list(categories)
        #: Where the results come from, for reports: framework versions, model file and hash...
        #: Backends and model loaders add entries.
        self.provenance: dict[str, str] = {"backend": self.name, **(provenance or {})}
        self._index: LayerIndex | None = None

    # -- for subclasses ------------------------------------------------------------------------

    @abstractmethod
    def _list_layers(self) -> list[Layer]:
        """The model's layers, numbered by :func:`featvis.number_layers`. Called once."""

    @abstractmethod
    def _run(self, batch: Any, layers: list[Layer]) -> list[np.ndarray]:
        """Run one batch and return the outputs of ``layers`` (distinct), in that order.

        Each output must be an ``(N, C, H, W)`` float32 array that the caller may keep: a copy
        the model will not overwrite. :func:`as_nchw` applies the shared shape rule.
        """

    def _prepare(self, images: Any) -> Any:
        """Images -> a batch :meth:`_run` takes (sliceable, with ``len``). NCHW float32 here."""
        return prepare_images(images, self.preprocess)

    # -- public API ----------------------------------------------------------------------------

    def layers(self) -> list[Layer]:
        """The model's layers in execution order."""
        return list(self._layer_index().layers)

    def layer(self, key: LayerKey) -> Layer:
        """The layer named ``key`` (name or alias); :class:`UnknownLayerError` if there is none."""
        return self._layer_index().resolve(key)

    def _layer_index(self) -> LayerIndex:
        if self._index is None:
            self._index = LayerIndex(self._list_layers())
        return self._index

    @overload
    def activations(  # type: ignore[overload-overlap]  # a str is also a Sequence
        self,
        images: Images,
        layers: LayerKey,
        *,
        batch_size: int | None = ...,
        progress: bool | None = ...,
    ) -> np.ndarray: ...

    @overload
    def activations(
        self,
        images: Images,
        layers: Sequence[LayerKey],
        *,
        batch_size: int | None = ...,
        progress: bool | None = ...,
    ) -> dict[str, np.ndarray]: ...

    def activations(
        self,
        images: Images,
        layers: LayerKey | Sequence[LayerKey],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray | dict[str, np.ndarray]:
        """Activations of one or more layers for one or more images.

        Parameters
        ----------
        images : image, list of images, or ndarray of shape (N, C, H, W)
            Files, PIL images or ``(H, W[, C])`` arrays are prepared with :attr:`preprocess`;
            a 4-D float array (or a backend's own tensor type) is used as it is.
        layers : str, Layer, or sequence of them
            Names or aliases (``"features.0"`` or ``"conv1"``).
        batch_size : int, optional
            Images per forward pass (default 32). Results do not depend on it.
        progress : bool, optional
            Show a progress bar; by default only when there are several batches and stderr
            is a terminal.

        Returns
        -------
        ndarray, shape (N, C, H, W), float32, or dict of str to ndarray
            One array for one layer. For a sequence, a dict keyed by the names as given, in the
            order given (a layer asked twice, by name and by alias, appears under both keys).

        Raises
        ------
        UnknownLayerError
            Before any work is done, for a name that is not a layer.
        ImageError
            For an image that cannot be read.
        """
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
        index = self._layer_index()
        size = batch_size or DEFAULT_BATCH_SIZE
        if isinstance(layers, (str, Layer)):  # one layer: the common case, kept short
            layer = index.resolve(layers)
            return self._run_batches(self._prepare(images), [layer], size, progress)[0]
        keys = list(layers)
        if not keys:
            raise ArgumentError("No layers were asked for; pass a layer name or a list of them.")
        resolved = [index.resolve(key) for key in keys]
        distinct = list({layer.name: layer for layer in resolved}.values())

        outputs = self._run_batches(self._prepare(images), distinct, size, progress)

        by_name = dict(zip((layer.name for layer in distinct), outputs))
        result: dict[str, np.ndarray] = {}
        for key, layer in zip(keys, resolved):
            result[key.name if isinstance(key, Layer) else key] = by_name[layer.name]
        return result

    def iter_activations(
        self,
        images: Any,
        layers: LayerKey | Sequence[LayerKey],
        *,
        batch_size: int | None = None,
        threads: int | None = None,
        on_error: OnError = "raise",
        labels: Labels = None,
        start: int = 0,
        progress: bool | None = None,
    ) -> Iterator[ActivationBatch]:
        """Activations batch by batch, for a collection of any size: the streaming form of
        :meth:`activations`.

        Images are decoded and prepared by a pool of threads ahead of the model, and each
        batch is run as soon as it is ready. Nothing of the collection's size is held: one
        batch of activations, and a bounded number of prepared images waiting for the model.

        Parameters
        ----------
        images : folder, list, iterable, ndarray or PyTorch Dataset/DataLoader
            A folder (searched recursively for image files, in path order), a list of files or
            images, any iterable of images, a prepared ``(N, C, H, W)`` array, or a PyTorch
            ``Dataset`` (read by index in the threads; ``(image, label)`` items give labels)
            or an unshuffled ``DataLoader``. A float tensor of shape ``(C, H, W)`` from a
            dataset is model input as it is.
        layers : str, Layer, or sequence of them
        batch_size : int, optional
            Images per forward pass (default 32). A batch holds the images whose positions
            lie in ``[b * batch_size, (b + 1) * batch_size)``.
        threads : int, optional
            Threads decoding and preparing images (default: up to 4).
        on_error : {"raise", "skip"}
            An image that cannot be read raises an :class:`ImageError` naming it, or is
            skipped and listed in the batch's ``skipped``.
        labels : sequence, callable or "folder", optional
            A label per image, ``labels(position, path)``, or the name of each file's folder.
        start : int
            Position of the first image (when streaming a part of a larger collection).
        progress : bool, optional
            Show a bar with images per second (and time left when the count is known); by
            default only when stderr is a terminal.

        Yields
        ------
        ActivationBatch
            ``positions``, ``activations`` (one array for one layer, else a dict keyed as
            given), ``images`` (path, label, size of each) and ``skipped``.

        Examples
        --------
        >>> import numpy as np
        >>> from featvis.testing import tiny_cnn
        >>> images = [np.zeros((32, 32, 3), np.uint8)] * 5
        >>> [len(b) for b in tiny_cnn().iter_activations(images, "conv1", batch_size=2)]
        [2, 2, 1]
        """
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
        index = self._layer_index()
        single = isinstance(layers, (str, Layer))
        keys: list[LayerKey] = [layers] if isinstance(layers, (str, Layer)) else list(layers)
        if not keys:
            raise ArgumentError("No layers were asked for; pass a layer name or a list of them.")
        resolved = [index.resolve(key) for key in keys]
        distinct = list({layer.name: layer for layer in resolved}.values())
        collection = as_collection(images)
        bar = _progress_bar(collection.length, progress, desc="activations")
        shapes: list[tuple[int, ...]] = [(0, 0, 0, 0)] * len(distinct)
        try:
            for batch in prepared_batches(
                collection,
                self.preprocess,
                batch_size=batch_size or DEFAULT_BATCH_SIZE,
                threads=threads,
                on_error=on_error,
                labels=labels,
                start=start,
                progress=bar,
            ):
                if len(batch):
                    outs = self._checked_run(self._prepare(batch.inputs), distinct, len(batch))
                    shapes = [(0, *out.shape[1:]) for out in outs]
                else:  # every image of the batch was skipped
                    outs = [np.empty(shape, np.float32) for shape in shapes]
                by_name = dict(zip((layer.name for layer in distinct), outs))
                result: Any
                if single:
                    result = outs[0]
                else:
                    result = {
                        key.name if isinstance(key, Layer) else key: by_name[layer.name]
                        for key, layer in zip(keys, resolved)
                    }
                yield ActivationBatch(batch.positions, result, batch.images, batch.skipped)
        finally:
            if bar is not None:
                bar.close()

    def _run_batches(
        self, batch: Any, layers: list[Layer], batch_size: int, progress: bool | None
    ) -> list[np.ndarray]:
        total = len(batch)
        if total <= batch_size:
            return self._checked_run(batch, layers, total)
        bar = _progress_bar(total, progress)
        results: list[np.ndarray] = []
        try:
            for start in range(0, total, batch_size):
                part = batch[start : start + batch_size]
                outs = self._checked_run(part, layers, min(batch_size, total - start))
                if not results:
                    results = [np.empty((total, *out.shape[1:]), np.float32) for out in outs]
                for full, out in zip(results, outs):
                    full[start : start + len(out)] = out
                if bar is not None:
                    bar.update(len(outs[0]))
        finally:
            if bar is not None:
                bar.close()
        return results

    def _batched(
        self,
        images: Images,
        fn: Callable[[Any], np.ndarray],
        batch_size: int | None,
        *,
        progress: bool | None = False,
    ) -> np.ndarray:
        """``fn`` on each batch of the prepared ``images``, the results concatenated along the
        first axis: for per-image outputs other than activations (a model's scores)."""
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
        batch = self._prepare(images)
        total = len(batch)
        size = batch_size or DEFAULT_BATCH_SIZE
        if total <= size:
            return fn(batch)
        bar = _progress_bar(total, progress)
        parts = []
        try:
            for start in range(0, total, size):
                parts.append(fn(batch[start : start + size]))
                if bar is not None:
                    bar.update(len(parts[-1]))
        finally:
            if bar is not None:
                bar.close()
        return np.concatenate(parts)

    def _checked_run(self, batch: Any, layers: list[Layer], size: int) -> list[np.ndarray]:
        """:meth:`_run`, with its promise checked: ``(size, C, H, W)`` float32 arrays, one per
        layer (a backend's bug would otherwise show up later as a wrong picture)."""
        outputs = self._run(batch, layers)
        if len(outputs) != len(layers):
            raise RuntimeError(
                f"{type(self).__name__}._run returned {len(outputs)} arrays for {len(layers)} "
                "layers (a bug in the backend)."
            )
        for layer, out in zip(layers, outputs):
            if not (
                isinstance(out, np.ndarray)
                and out.ndim == 4
                and out.dtype == _FLOAT32
                and out.shape[0] == size
            ):
                raise RuntimeError(
                    f"{type(self).__name__}._run returned {type(out).__name__} "
                    f"{getattr(out, 'shape', '')} {getattr(out, 'dtype', '')} for layer "
                    f"{layer.name!r}; expected an (N, C, H, W) float32 array with "
                    f"N={size} (a bug in the backend)."
                )
        return outputs

    def __repr__(self) -> str:
        count = f"{len(self._index)} layers" if self._index is not None else "layers not listed yet"
        return f"<{type(self).__name__} {self.name!r}: {count}>"


def _progress_bar(total: int | None, progress: bool | None, desc: str = "activations") -> Any:
    if progress is False:
        return None
    from tqdm.auto import tqdm

    # disable=None: tqdm hides itself when stderr is not a terminal.
    return tqdm(
        total=total,
        unit="img",
        desc=desc,
        disable=None if progress is None else False,
        file=sys.stderr,
        leave=False,
    )
