"""BackendBase: what every backend shares (name resolution, batching, result assembly); the
protocol it implements is :mod:`featvis._backend`."""

from __future__ import annotations

import sys
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from typing import Any, overload

import numpy as np

from featvis._backend import DEFAULT_BATCH_SIZE, Activations, LayerKey
from featvis._errors import ArgumentError, FeatvisError, LayerWarning, LayoutError
from featvis._images import Images, Preprocess, prepare_images
from featvis._layers import Layer, LayerIndex
from featvis._pool import prepared_batches
from featvis._stream import ActivationBatch, Labels, OnError, as_collection

__all__ = ["BackendBase"]

_FLOAT32 = np.dtype(np.float32)


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

    Examples
    --------
    A backend for a "model" that is one function, its layers the function's two steps:

    >>> import numpy as np
    >>> from featvis import BackendBase, Layer, Preprocess, as_nchw, number_layers
    >>> class Doubler(BackendBase):
    ...     name = "doubler"
    ...     def _list_layers(self):
    ...         return number_layers([Layer(name="double", kind="other", type="Mul"),
    ...                               Layer(name="relu", kind="relu", type="ReLU")])
    ...     def _run(self, batch, layers):
    ...         outputs = {"double": 2 * batch}
    ...         outputs["relu"] = np.maximum(outputs["double"], 0)
    ...         return [as_nchw(outputs[layer.name]) for layer in layers]
    >>> backend = Doubler(preprocess=Preprocess(size=(4, 4)))
    >>> [layer.alias for layer in backend.layers()]
    ['other1', 'relu1']
    >>> backend.activations(np.zeros((4, 4, 3), np.uint8), "relu1").shape
    (1, 3, 4, 4)
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
    def _run(self, batch: Any, layers: list[Layer]) -> list[np.ndarray | FeatvisError]:
        """Run one batch and return the outputs of ``layers`` (distinct), in that order.

        Each output must be an ``(N, C, H, W)`` float32 array that the caller may keep: a copy
        the model will not overwrite. :mod:`featvis._axes` has the shared shape rule
        (:func:`as_nchw` for a tensor whose axes nothing tells). A layer that cannot be
        returned for this batch is a :class:`FeatvisError` in its place, naming the layer: the
        other layers are returned all the same (see :meth:`activations`). Layers listed with
        :attr:`Layer.unavailable` are never passed here.
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
            self._index = LayerIndex(self._list_layers(), self._why_not_a_layer)
        return self._index

    def _why_not_a_layer(self, name: str) -> str | None:
        """Why ``name``, which the model has, is not a layer (a weight, a tensor without a
        batch axis...), for the error that says so; ``None`` when the model has no such
        thing. Subclasses that know override it."""
        return None

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
    ) -> Activations: ...

    def activations(
        self,
        images: Images,
        layers: LayerKey | Sequence[LayerKey],
        *,
        batch_size: int | None = None,
        progress: bool | None = None,
    ) -> np.ndarray | Activations:
        """Activations of one or more layers for one or more images.

        Parameters
        ----------
        images : image, list of images, or ndarray of shape (N, C, H, W)
            Files, PIL images or ``(H, W[, C])`` arrays are prepared with :attr:`preprocess`;
            a 4-D float array (or a backend's own tensor type) is used as it is.
        layers : str, int, Layer, or sequence of them
            Names or aliases (``"features.0"`` or ``"conv1"``), or indices in the layer table
            (``0`` is the first layer, ``-1`` the last).
        batch_size : int, optional
            Images per forward pass (default 32). Results do not depend on it.
        progress : bool, optional
            Show a progress bar; by default only when there are several batches and stderr
            is a terminal.

        Returns
        -------
        ndarray, shape (N, C, H, W), float32, or Activations
            One array for one layer. For a sequence, an :class:`Activations` dict keyed by the
            names as given, in the order given (a layer asked twice, by name and by alias,
            appears under both keys); a layer that could not be returned is left out and named
            in its ``missing``, with a :class:`featvis.LayerWarning` (see :class:`Backend`).

        Raises
        ------
        UnknownLayerError
            Before any work is done, for a name that is not a layer.
        LayoutError
            For one layer that cannot be returned (or a list none of which can), naming it.
        ImageError
            For an image that cannot be read.
        """
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
        index = self._layer_index()
        size = batch_size or DEFAULT_BATCH_SIZE
        if isinstance(layers, (str, int, np.integer, Layer)):  # one layer: the common case
            layer = index.resolve(layers)
            if layer.unavailable is not None:
                raise _unavailable(layer)
            out = self._run_batches(self._prepare(images), [layer], size, progress)[0]
            if isinstance(out, FeatvisError):
                raise out
            return out
        keys = list(layers)
        if not keys:
            raise ArgumentError("No layers were asked for; pass a layer name or a list of them.")
        resolved = [index.resolve(key) for key in keys]
        distinct = list({layer.name: layer for layer in resolved}.values())
        runnable = [layer for layer in distinct if layer.unavailable is None]
        failed: dict[str, FeatvisError] = {
            layer.name: _unavailable(layer) for layer in distinct if layer.unavailable is not None
        }
        if runnable:
            outputs = self._run_batches(self._prepare(images), runnable, size, progress)
            for layer, out in zip(runnable, outputs):
                if isinstance(out, FeatvisError):
                    failed[layer.name] = out
        else:
            outputs = []
        by_name = dict(zip((layer.name for layer in runnable), outputs))
        result = Activations()  # an int key stays the int it was
        for key, layer in zip(keys, resolved):
            shown = key.name if isinstance(key, Layer) else key
            if layer.name in failed:
                result.missing[shown] = failed[layer.name]
            else:
                result[shown] = by_name[layer.name]  # type: ignore[assignment]
        if result.missing:
            if not result:
                raise next(iter(result.missing.values()))
            listed = "; ".join(f"{name!r}: {error}" for name, error in result.missing.items())
            warnings.warn(
                f"{len(result.missing)} of the {len(keys)} layers asked for could not be "
                f"returned (the others were): {listed}",
                LayerWarning,
                stacklevel=2,
            )
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
        single = isinstance(layers, (str, int, np.integer, Layer))
        keys: list[LayerKey] = [layers] if single else list(layers)  # type: ignore[arg-type,list-item]
        if not keys:
            raise ArgumentError("No layers were asked for; pass a layer name or a list of them.")
        resolved = [index.resolve(key) for key in keys]
        distinct = list({layer.name: layer for layer in resolved}.values())
        for layer in distinct:  # a stream has no partial results: every layer or none
            if layer.unavailable is not None:
                raise _unavailable(layer)
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
                    for out in outs:
                        if isinstance(out, FeatvisError):
                            raise out
                    shapes = [(0, *out.shape[1:]) for out in outs]  # type: ignore[union-attr]
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
    ) -> list[np.ndarray | FeatvisError]:
        total = len(batch)
        if total <= batch_size:
            return self._checked_run(batch, layers, total)
        bar = _progress_bar(total, progress)
        results: list[np.ndarray | FeatvisError | None] = [None] * len(layers)
        try:
            for start in range(0, total, batch_size):
                part = batch[start : start + batch_size]
                count = min(batch_size, total - start)
                pending = [i for i, r in enumerate(results) if not isinstance(r, FeatvisError)]
                outs = self._checked_run(part, [layers[i] for i in pending], count)
                for i, out in zip(pending, outs):
                    if isinstance(out, FeatvisError):
                        results[i] = out  # this layer is out: the others carry on
                        continue
                    full = results[i]
                    if full is None:
                        full = results[i] = np.empty((total, *out.shape[1:]), np.float32)
                    assert isinstance(full, np.ndarray)
                    if full.shape[1:] != out.shape[1:]:
                        results[i] = LayoutError(
                            f"Layer {layers[i].name!r} gave shape {out.shape[1:]} for images "
                            f"{start}-{start + count - 1} but {full.shape[1:]} before: its "
                            "output depends on the images. Ask for it one batch at a time."
                        )
                        continue
                    full[start : start + count] = out
                if bar is not None:
                    bar.update(count)
        finally:
            if bar is not None:
                bar.close()
        return results  # type: ignore[return-value]

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

    def _checked_run(
        self, batch: Any, layers: list[Layer], size: int
    ) -> list[np.ndarray | FeatvisError]:
        """:meth:`_run`, with its promise checked: ``(size, C, H, W)`` float32 arrays (or a
        :class:`FeatvisError` per layer that cannot be returned), one per layer (a backend's
        bug would otherwise show up later as a wrong picture)."""
        outputs = self._run(batch, layers)
        if len(outputs) != len(layers):
            raise RuntimeError(
                f"{type(self).__name__}._run returned {len(outputs)} arrays for {len(layers)} "
                "layers (a bug in the backend)."
            )
        for layer, out in zip(layers, outputs):
            if isinstance(out, FeatvisError):
                continue
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


def _unavailable(layer: Layer) -> LayoutError:
    return LayoutError(
        f"Layer {layer.name!r} ({layer.alias}) cannot be returned: {layer.unavailable}. "
        "featvis refuses rather than guess which axis is which (the rule is in featvis._axes)."
    )


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
