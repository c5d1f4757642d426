"""The Backend protocol (what a backend is), and Activations (what it returns for several
layers); what every backend shares is :class:`featvis._backend_base.BackendBase`."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol, overload, runtime_checkable

import numpy as np

from featvis._errors import FeatvisError
from featvis._images import Images, Preprocess
from featvis._layers import Layer

__all__ = ["DEFAULT_BATCH_SIZE", "Activations", "Backend", "LayerKey"]

#: A layer is named by its backend-native name, its alias, its index in the layer table (an
#: ``int``), or the :class:`Layer` itself.
LayerKey = str | int | Layer

#: Images per forward pass when the caller does not choose.
DEFAULT_BATCH_SIZE = 32


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

        One layer gives one ``(N, C, H, W)`` float32 array, image ``i`` of the batch first
        along N; a list of layers gives a dict keyed by the names as given, in the order asked.
        Every backend makes its tensors NCHW by the one rule of :mod:`featvis._axes` (the
        batch axis first wherever the model keeps it, NHWC and token tensors with their
        channels on C, ``(N, C)`` as ``(N, C, 1, 1)``), so the same tensor has the same shape
        on every backend, and image ``i`` of a batch equals image ``i`` alone.

        **Partial results.** A layer that cannot be returned (its axes cannot be placed:
        :attr:`Layer.unavailable`; or its output at run time breaks what was listed) never
        aborts the others. Asked alone, it raises a :class:`featvis.FeatvisError` (usually
        :class:`featvis.LayoutError`) that names the layer and says why. In a list, the result
        is an :class:`Activations` dict without it, whose ``missing`` maps its name to that
        error (asking the dict for it raises the error), and a :class:`featvis.LayerWarning`
        names it. Only when no layer of the list can be returned is the first error raised.
        """
        ...


class Activations(dict[Any, np.ndarray]):
    """What ``activations(images, [layers...])`` returns: a dict from each name as given to its
    ``(N, C, H, W)`` array, in the order asked, and the layers that could not be returned.

    A layer whose axes featvis cannot place (see :attr:`Layer.unavailable`), or whose output at
    run time breaks what was listed, does not abort the others: it is left out of the dict,
    named in :attr:`missing` with the error that says why, and a :class:`featvis.LayerWarning`
    names it. Asking the dict for it raises that error (a :class:`featvis.FeatvisError`).

    Examples
    --------
    >>> import numpy as np
    >>> from featvis.testing import tiny_cnn
    >>> acts = tiny_cnn().activations(np.zeros((32, 32, 3), np.uint8), ["conv1", "relu1"])
    >>> list(acts), acts["conv1"].shape, acts.missing
    (['conv1', 'relu1'], (1, 8, 32, 32), {})
    """

    def __init__(
        self,
        arrays: Iterable[tuple[Any, np.ndarray]] = (),
        missing: Mapping[Any, FeatvisError] | None = None,
    ) -> None:
        super().__init__(arrays)
        #: Name (or index) as given -> the error that kept the layer out.
        self.missing: dict[Any, FeatvisError] = dict(missing or {})

    def __missing__(self, key: Any) -> np.ndarray:
        error = self.missing.get(key)
        if error is not None:
            raise error
        raise KeyError(key)
