"""What a backend can do beyond listing layers and their activations, as protocols.

Every backend is a :class:`featvis.Backend`. Some can do more, and say so by having the members
of a capability protocol; featvis's methods check with ``isinstance`` at the call site and never
reach for a member no protocol declares::

    Backend                   layers, activations (every backend)
    ├── Scorer                class scores from the model's own output
    │   ├── Differentiable    gradients of a per-image scalar with respect to layers and input
    │   └── Patchable         scores with one layer's output replaced (the rest of the model)
    ├── LinearHead            the fully connected layer that computes the scores
    ├── OnnxExportable        writes the model as an ONNX file
    ├── Summarizing           reduces layers to the survey's per-image numbers where they are
    └── Randomizable          a copy of the model with its top layers' weights re-drawn

A method that needs a capability the backend lacks raises :class:`CapabilityError`, which names
the capability, what the backend is, and which methods do work with it (see :func:`require`).

The protocols are framework-free: arrays cross them as numpy, so a method written against them
(a CAM, a metric, a feature visualization) works on every backend that has the capability,
third-party ones included.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np

from featvis._backend_base import _unavailable
from featvis._errors import ArgumentError, CapabilityError, ModelError
from featvis._images import Images
from featvis._layers import Layer
from featvis._reduce import BatchSummary

__all__ = [
    "Differentiable",
    "Gradients",
    "LinearHead",
    "Objective",
    "OnnxExportable",
    "Patchable",
    "Randomizable",
    "ScoreKind",
    "Scorer",
    "Summarizing",
    "as_scores",
    "require",
]

#: What :meth:`Scorer.scores` returns: raw class scores, or probabilities (a softmax head).
ScoreKind = Literal["logits", "probabilities"]


@runtime_checkable
class Scorer(Protocol):
    """A backend that gives the model's class scores: the output of the model itself.

    The scores are what the model returns (the ONNX graph's output, the torch module's return
    value), not whatever the last listed layer is: a model whose head is a function call has no
    module for it.
    """

    #: ``"logits"`` if :meth:`scores` are raw scores, ``"probabilities"`` if the model ends in a
    #: softmax (see :func:`featvis.probabilities`).
    score_kind: ScoreKind

    def scores(self, images: Images, *, batch_size: int | None = None) -> np.ndarray:
        """The model's output for ``images``: an ``(N, K)`` float32 array, one row per image.

        Raises
        ------
        ModelError
            If the model's output is not one score per class (an ``(N, K)`` tensor).
        """
        ...


def as_scores(output: np.ndarray, batch: int, what: str) -> np.ndarray:
    """A model's output as ``(N, K)`` float32 scores, or a :class:`ModelError` naming ``what``.

    ``(N, K)`` is kept, ``(N, K, 1, 1)`` (a head that keeps spatial axes of size one) and
    ``(N,)`` (one score) are reshaped; anything else is not one score per class.
    """
    array = np.asarray(output)
    if (
        array.ndim >= 1
        and array.shape[0] == batch
        and (array.ndim <= 2 or all(d == 1 for d in array.shape[2:]))
    ):
        flat = array.reshape(batch, -1)
        return np.ascontiguousarray(flat, dtype=np.float32)
    raise ModelError(
        f"{what} returns an array of shape {array.shape} for {batch} image(s); class scores "
        "need one row of scores per image, shape (N, K). Explain a classifier, or wrap the "
        "model so that it returns (N, K) scores."
    )


#: ``fn(output, index) -> (values, cotangent)``: see :class:`Objective`.
ObjectiveFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Objective:
    """A scalar per image, computed from one output of the model, to be differentiated.

    ``layer`` says which output: ``None`` for the model's scores (``(N, K)``, as
    :meth:`Scorer.scores` gives them), or a layer name, whose value is its ``(N, C, H, W)``
    activation. ``fn(output, index)`` receives that output as numpy for one batch, and
    ``index``, the positions of the batch's images among all the images given (so that per-image
    weights can be sliced); it returns ``(values, cotangent)``: the ``(n,)`` objective of each
    image, and the gradient of ``values.sum()`` with respect to ``output`` (same shape). The
    backend then differentiates through the model with that cotangent.

    Most objectives are linear in the output; :meth:`linear` builds those from weights.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import Objective
    >>> cat = Objective.linear(np.eye(3, dtype=np.float32)[[1]])  # score of class 1
    >>> values, cotangent = cat.fn(np.array([[0.5, 2.0, 1.0]], np.float32), np.arange(1))
    >>> values.tolist(), cotangent.tolist()
    ([2.0], [[0.0, 1.0, 0.0]])
    """

    fn: ObjectiveFn
    layer: str | Layer | None = None
    description: str = ""

    @classmethod
    def linear(
        cls, weights: np.ndarray, layer: str | Layer | None = None, description: str = ""
    ) -> Objective:
        """``values[i] = sum(weights[i] * output[i])``: a class score, a contrast of two
        classes, the mean of a channel, one neuron.

        Parameters
        ----------
        weights : ndarray
            Shape ``(N, *output.shape[1:])`` (one row per image) or ``(1, ...)`` (the same for
            every image).
        layer : str or Layer, optional
            The output the weights apply to (``None``: the scores).
        """
        w = np.asarray(weights, dtype=np.float32)
        if w.ndim < 2:
            raise ArgumentError(
                f"Objective weights need a batch axis first, shape (N, ...); got {w.shape}."
            )

        def fn(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            rows = w if len(w) == 1 else w[index]
            if rows.shape[1:] != output.shape[1:]:
                raise ArgumentError(
                    f"Objective weights of shape {w.shape} do not fit an output of shape "
                    f"{output.shape}."
                )
            cotangent = np.broadcast_to(rows, output.shape).astype(np.float32)
            values = (cotangent * output).reshape(len(output), -1).sum(axis=1)
            return values.astype(np.float32), cotangent

        return cls(fn, layer, description)


@dataclass(frozen=True)
class Gradients:
    """What :meth:`Differentiable.gradients` returns, all as numpy, one row per image.

    Attributes
    ----------
    values : ndarray, shape (N,)
        The objective of each image.
    output : ndarray
        The output the objective was computed from (the scores, or the layer's activation).
    activations : dict of str to ndarray
        Each requested layer's ``(N, C, H, W)`` activation, keyed by the names as given.
    gradients : dict of str to ndarray
        The gradient of each image's objective with respect to each requested layer, the same
        shape and keys as :attr:`activations`.
    input : ndarray or None
        The gradient with respect to the prepared ``(N, C, H, W)`` model input, when asked for.
    """

    values: np.ndarray
    output: np.ndarray
    activations: dict[str, np.ndarray] = field(default_factory=dict)
    gradients: dict[str, np.ndarray] = field(default_factory=dict)
    input: np.ndarray | None = None


@runtime_checkable
class Differentiable(Scorer, Protocol):
    """A backend that can differentiate an :class:`Objective` through the model.

    Computing gradients must leave the model as it was: parameters' ``requires_grad`` and
    accumulated gradients, hooks, training flags.
    """

    def gradients(
        self,
        images: Images,
        layers: Sequence[str | Layer],
        objective: Objective,
        *,
        input: bool = False,
        batch_size: int | None = None,
    ) -> Gradients:
        """One forward pass to the objective's output and one backward pass from it.

        Parameters
        ----------
        images : image, list of images, or ndarray of shape (N, C, H, W)
            As for :meth:`featvis.Backend.activations`; a prepared 4-D float array is used as
            it is (what feature visualization optimizes).
        layers : sequence of str or Layer
            Layers whose activations and gradients to return (may be empty).
        objective : Objective
        input : bool
            Also return the gradient with respect to the prepared input.
        batch_size : int, optional
            Images per pass; ``None`` runs all of them at once (an objective that couples the
            images of a batch, as a diversity term does, needs that).
        """
        ...


@runtime_checkable
class Patchable(Scorer, Protocol):
    """A backend that can run the rest of the model from a layer's output that featvis gives.

    What Ablation-CAM needs (and activation patching in general): the scores of one image when
    the output of ``layer`` is replaced by each of several arrays, with the part of the model
    before the layer run once, not once per array. A backend where something computed before
    the layer is also read after it (a skip connection crossing the cut) must still return the
    scores of the whole model with only that layer's output replaced.
    """

    def patched_scores(
        self,
        image: Images,
        layer: str | Layer,
        activations: np.ndarray | Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """The ``(M, K)`` float32 scores of ``image`` with ``layer``'s output replaced by each
        of the ``M`` rows of ``activations``.

        Parameters
        ----------
        image : image, or ndarray of shape (1, C, H, W)
            One image, as for :meth:`featvis.Backend.activations`.
        layer : str or Layer
        activations : ndarray of shape (M, C, H, W), or callable
            Replacements, in the NCHW shape :meth:`~featvis.Backend.activations` returns for
            the layer; row ``i`` gives row ``i`` of the result. A callable is called once,
            during the pass, with the layer's own ``(1, C, H, W)`` activation for the image,
            and returns the replacements: a method that builds them from the activation
            (Ablation-CAM) then runs the part before the layer once in all.
        batch_size : int, optional
            Replacements per pass through the rest of the model. Default: as many as the
            backend can take in one pass (each pass runs the part before the layer again).

        Raises
        ------
        CapabilityError
            If this layer's output cannot be replaced (the message says why).
        """
        ...


@runtime_checkable
class LinearHead(Protocol):
    """A backend that can give the weights of the fully connected layer that makes its scores.

    What CAM (Zhou et al., 2016) needs: for a network that ends in global average pooling and a
    fully connected layer, the class activation map is that layer's weights applied to the last
    spatial layer, position by position, with no gradient and no extra forward pass.
    """

    def linear_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(weight, bias)``, shapes ``(K, C)`` and ``(K,)`` float32, of the fully connected
        layer whose output is the model's scores (before a softmax, if the model ends in one);
        ``None`` when the model does not end in one. featvis checks numerically that the scores
        are this layer applied to the spatial mean of the layer it explains before using it.
        The arrays may be read-only views of the model's current weights (the torch backend's
        are): copy them to keep them.
        """
        ...


@runtime_checkable
class OnnxExportable(Protocol):
    """A backend that can write its model as an ONNX file ``featvis.load`` opens."""

    def to_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Export the model to ``path`` and return it."""
        ...


@runtime_checkable
class Summarizing(Protocol):
    """A backend that reduces a batch of a layer's activations to the survey's numbers itself.

    :func:`featvis.survey` keeps of each image only ``(C,)`` numbers per layer (a
    :class:`featvis.BatchSummary`: each map's peak and where it is, its sum, its count of
    positive values, its minimum). A backend whose activations live on an accelerator can
    compute them there, so that only those numbers cross to the host instead of every map; the
    survey uses :meth:`summaries` when the backend has it, and numpy
    (``featvis._reduce.summarize``) on :meth:`~featvis.Backend.activations` otherwise.

    The numbers must be the ones numpy computes from the activations, bit for bit: the peak
    and minimum of the float32 map, the flat index of the *first* occurrence of the peak, the
    count of values > 0, and the float64 sum taken in the order of
    ``featvis._reduce.map_sums``. The contract suite (:class:`featvis.testing.BackendContract`)
    checks it.
    """

    def summaries(self, images: Images, layers: Sequence[str | Layer]) -> list[BatchSummary]:
        """One :class:`featvis.BatchSummary` of ``images`` (one batch, run at once) per layer.

        Raises
        ------
        ModelError
            If an activation is NaN or infinite.
        LayoutError
            If a layer's output cannot be placed as ``(N, C, H, W)``.
        """
        ...


@runtime_checkable
class Randomizable(Protocol):
    """A backend that can make a copy of itself whose top layers have new random weights.

    What the sanity check of Adebayo et al. ("Sanity Checks for Saliency Maps", 2018) needs:
    a map that does not change when the weights that make the prediction are re-drawn does not
    explain the model. The backend's own model is never changed.
    """

    def randomized(self, layers: int, *, seed: int = 0) -> Any:
        """A new backend of the same kind (same preprocess, categories, score kind) whose
        ``layers`` weighted layers nearest the output (convolutions and fully connected
        layers, counted backwards in execution order: cascading from the top) have their
        weights and biases re-drawn, uniformly in ``+-1/sqrt(fan_in)`` (PyTorch's default
        initialization of ``Conv2d`` and ``Linear``), from a generator seeded with
        ``seed``. Everything else (normalization statistics included) is copied as it is.

        Raises
        ------
        ArgumentError
            If ``layers`` is not between 1 and the number of weighted layers.
        """
        ...


@dataclass
class GradientRequest:
    """What a :meth:`Differentiable.gradients` call asks for, checked the same way by every
    backend (:func:`gradient_request`): the keys as given, their layers, the objective's
    layer (``None``: the model's output) and the distinct layers to tap, that one included."""

    keys: list[Any]
    layers: list[Layer]
    target: Layer | None
    distinct: list[Layer]

    def named(self) -> list[tuple[Any, Layer]]:
        """``(name as the caller gave it, layer)`` per key, for the result's dicts."""
        return [
            (key.name if isinstance(key, Layer) else key, layer)
            for key, layer in zip(self.keys, self.layers)
        ]


def gradient_request(
    backend: Any,
    layers: Any,
    objective: Any,
    *,
    input: bool,
    batch_size: int | None,
) -> GradientRequest:
    """The arguments of :meth:`Differentiable.gradients` checked, with errors that say what
    to pass instead, and resolved through ``backend.layer``.

    Raises
    ------
    ArgumentError
        For an objective that is no :class:`Objective`, one layer name instead of a list,
        nothing to differentiate with respect to, or a bad ``batch_size``.
    LayoutError
        For a layer featvis cannot place (:attr:`Layer.unavailable`).
    """
    if not isinstance(objective, Objective):
        raise ArgumentError(
            f"objective must be a featvis.Objective, not {type(objective).__name__} "
            "(featvis.Objective.linear(weights) builds the common ones)."
        )
    if isinstance(layers, (str, Layer)):
        raise ArgumentError("layers must be a list of layer names (possibly empty), not one name.")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    keys = list(layers)
    resolved = [backend.layer(key) for key in keys]
    target = None if objective.layer is None else backend.layer(objective.layer)
    if not resolved and target is None and not input:
        raise ArgumentError(
            "Nothing to differentiate with respect to: ask for layers, or input=True."
        )
    distinct = list({layer.name: layer for layer in resolved}.values())
    if target is not None and target.name not in {layer.name for layer in distinct}:
        distinct.append(target)
    for layer in distinct:
        if layer.unavailable is not None:
            raise _unavailable(layer)
    return GradientRequest(keys, resolved, target, distinct)


def patch_request(
    backend: Any, image: Any, layer: Any, batch_size: int | None
) -> tuple[Layer, np.ndarray]:
    """The arguments of :meth:`Patchable.patched_scores` checked the same way by every
    backend: the layer (one featvis can place) and the prepared batch of the one image.

    Raises
    ------
    ArgumentError
        For more than one image or a bad ``batch_size``.
    LayoutError
        For a layer featvis cannot place (:attr:`Layer.unavailable`).
    """
    found = backend.layer(layer)
    if found.unavailable is not None:
        raise _unavailable(found)
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    batch = backend._prepare(image)
    if len(batch) != 1:
        raise ArgumentError(f"patched_scores takes one image, got a batch of {len(batch)}.")
    return found, batch


_C = TypeVar("_C")


def require(backend: object, capability: type[_C], *, needed_for: str, works: str = "") -> _C:
    """``backend`` as a ``capability``, or a :class:`CapabilityError` that says what to do.

    Parameters
    ----------
    backend : object
    capability : type
        A protocol of this module (:class:`Scorer`, :class:`Differentiable`...).
    needed_for : str
        What needs it, for the message: ``"method 'gradcam'"``.
    works : str
        What does work with a backend that lacks it: ``"gradient-free methods: eigencam,
        scorecam, ..."``.

    Examples
    --------
    >>> from featvis import Differentiable, require
    >>> from featvis.testing import tiny_cnn
    >>> require(tiny_cnn(), Differentiable, needed_for="method 'gradcam'", works="eigencam")
    Traceback (most recent call last):
    ...
    featvis._errors.CapabilityError: method 'gradcam' needs gradients ...
    """
    if isinstance(backend, capability):
        return backend
    what = _WHAT.get(capability.__name__, f"the {capability.__name__} capability")
    kind = getattr(backend, "name", type(backend).__name__)
    hint = f" With this backend, use {works}." if works else ""
    raise CapabilityError(
        f"{needed_for} needs {what}, which the {kind!r} backend ({type(backend).__name__}) does "
        f"not provide (featvis.{capability.__name__}).{hint}"
    )


_WHAT = {
    "Scorer": "the model's class scores",
    "Differentiable": "gradients through the model",
    "Patchable": "scores with a layer's output replaced",
    "LinearHead": "the weights of a fully connected head",
    "OnnxExportable": "an export to ONNX",
    "Randomizable": "a copy of the model with re-drawn weights",
}
