"""Testing helpers: a framework-free backend, and the contract every backend must pass.

:class:`ArrayBackend` runs a chain of plain numpy functions, so featvis's own tests and examples
need no framework; :func:`tiny_cnn` builds a small seeded CNN with it. With closed-form
vector-Jacobian products on its steps, :class:`DifferentiableArrayBackend` is a
:class:`featvis.Differentiable` backend, so the CAM formulas are tested without a framework
(``tiny_cnn(differentiable=True)``).

:class:`BackendContract` is the shared test suite. A backend's tests subclass it and provide two
pytest fixtures, ``backend`` and ``images`` (a list of at least two images)::

    import pytest
    from featvis.testing import BackendContract

    class TestMyBackend(BackendContract):
        @pytest.fixture
        def backend(self):
            return MyBackend(my_tiny_model())

        @pytest.fixture
        def images(self):
            return [np.zeros((32, 32, 3), np.uint8), np.full((40, 30, 3), 200, np.uint8)]

pytest is only imported when the suite runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featvis import _arraygrad
from featvis._axes import as_nchw
from featvis._backend_base import BackendBase
from featvis._capabilities import Gradients, Objective, ScoreKind, as_scores
from featvis._contract import BackendContract
from featvis._errors import ArgumentError, CapabilityError, FeatvisError
from featvis._images import Preprocess
from featvis._layers import Layer, number_layers

__all__ = [
    "DEFAULT_PREPROCESS",
    "ArrayBackend",
    "BackendContract",
    "DifferentiableArrayBackend",
    "Step",
    "tiny_cnn",
]

#: ArrayBackend's preprocessing unless another is given: 32x32 RGB scaled to [-1, 1].
DEFAULT_PREPROCESS = Preprocess(size=(32, 32), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


@dataclass(frozen=True)
class Step:
    """One layer of an :class:`ArrayBackend`: a numpy function from the previous output.

    ``vjp(x, y, g)``, for :class:`DifferentiableArrayBackend`, returns the gradient with respect
    to the step's input ``x`` given its output ``y`` and the gradient ``g`` with respect to it.
    ``weights``, for a fully connected step, are its ``(K, C)`` weight and ``(K,)`` bias
    (:meth:`ArrayBackend.linear_head`).
    """

    name: str
    fn: Callable[[np.ndarray], np.ndarray]
    kind: str = "other"
    type: str = "function"
    params: int = 0
    description: str = ""
    vjp: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None = None
    weights: tuple[np.ndarray, np.ndarray] | None = None


class ArrayBackend(BackendBase):
    """A backend over a chain of numpy functions, each taking the previous one's output.

    The first step receives the prepared NCHW float32 batch. Layers are listed by running the
    chain once on zeros of the preprocess size. Execution stops after the last requested layer,
    and every output is copied, so a step that works in place cannot change a captured value.

    It is a :class:`featvis.Scorer`: the last step's output is the model's scores,
    probabilities when that step is of kind ``"prob"``; a :class:`featvis.Patchable` (a chain
    has no skip connections: the steps after a layer are the rest of the model); and a
    :class:`featvis.LinearHead` when its last step with ``weights`` is followed only by
    parameter-free steps.

    Parameters
    ----------
    steps : sequence of Step
    preprocess : Preprocess, optional
        Defaults to 32x32 RGB scaled to [-1, 1].
    categories : list of str, optional
        Names of the classes the last step scores.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis.testing import ArrayBackend, Step
    >>> backend = ArrayBackend(
    ...     [Step("negate", lambda x: -x), Step("relu", lambda x: np.maximum(x, 0), kind="relu")]
    ... )
    >>> [layer.alias for layer in backend.layers()]
    ['other1', 'relu1']
    >>> white = np.full((32, 32, 3), 255, np.uint8)  # scaled to 1.0 by the default preprocess
    >>> acts = backend.activations(white, ["other1", "relu1"])
    >>> float(acts["other1"].max()), float(acts["relu1"].max())
    (-1.0, 0.0)
    """

    name = "array"

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        preprocess: Preprocess | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        if not steps:
            raise ArgumentError("An ArrayBackend needs at least one step.")
        super().__init__(preprocess=preprocess or DEFAULT_PREPROCESS, categories=categories)
        self.steps = list(steps)
        self.score_kind: ScoreKind = "probabilities" if steps[-1].kind == "prob" else "logits"

    def scores(self, images: Any, *, batch_size: int | None = None) -> np.ndarray:
        """The last step's output for ``images``, as ``(N, K)`` float32 scores."""

        def run(batch: np.ndarray) -> np.ndarray:
            x = batch
            for step in self.steps:
                x = step.fn(x)
            return as_scores(np.array(x, copy=True), len(batch), "The last step")

        return self._batched(images, run, batch_size)

    def patched_scores(
        self,
        image: Any,
        layer: str | Layer,
        activations: np.ndarray | Callable[[np.ndarray], np.ndarray],
        *,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Scores with ``layer``'s output replaced by each row of ``activations`` (see
        :class:`featvis.Patchable`): the steps before it run once, on ``image``."""
        found = self.layer(layer)
        x = self._prepare(image)
        if len(x) != 1:
            raise ArgumentError(f"patched_scores takes one image, got {len(x)}.")
        for step in self.steps[: found.index + 1]:
            x = step.fn(x)
        if callable(activations):
            activations = activations(as_nchw(np.array(x, copy=True)))
        replacements = np.asarray(activations, np.float32)
        if replacements.ndim != 4 or replacements.shape[1:] != as_nchw(x).shape[1:]:
            raise ArgumentError(
                f"Replacements for layer {found.name!r} must be (M, *{as_nchw(x).shape[1:]}), "
                f"got {replacements.shape}."
            )
        rest = self.steps[found.index + 1 :]
        out = []
        size = batch_size or len(replacements)
        for start in range(0, len(replacements), size):
            y = replacements[start : start + size].reshape(-1, *x.shape[1:]).copy()
            for step in rest:
                y = step.fn(y)
            out.append(as_scores(np.array(y, copy=True), len(y), "The last step"))
        return np.concatenate(out)

    def linear_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The ``weights`` of the last step that has them, if only parameter-free steps follow
        it (see :class:`featvis.LinearHead`); else None."""
        for i in range(len(self.steps) - 1, -1, -1):
            step = self.steps[i]
            if step.weights is not None:
                weight, bias = step.weights
                return np.array(weight, np.float32), np.array(bias, np.float32)
            if step.params:
                return None
        return None

    def _list_layers(self) -> list[Layer]:
        size = self.preprocess.size or (32, 32)
        x = np.zeros((1, self.preprocess.channels, *size), np.float32)
        layers = []
        for step in self.steps:
            x = step.fn(x)
            layers.append(
                Layer(
                    name=step.name,
                    kind=step.kind,
                    type=step.type,
                    output_shape=(None, *as_nchw(x).shape[1:]),
                    params=step.params,
                    description=step.description,
                )
            )
        return number_layers(layers)

    def _run(self, batch: np.ndarray, layers: list[Layer]) -> list[np.ndarray | FeatvisError]:
        wanted = {layer.name for layer in layers}
        captured: dict[str, np.ndarray] = {}
        x = batch
        for step in self.steps:
            x = step.fn(x)
            if step.name in wanted:
                captured[step.name] = as_nchw(np.array(x, copy=True))
                if len(captured) == len(wanted):
                    break  # nothing after the last requested layer needs to run
        return [captured[layer.name] for layer in layers]


class DifferentiableArrayBackend(ArrayBackend):
    """An :class:`ArrayBackend` whose steps all have a ``vjp``: a
    :class:`featvis.Differentiable` backend with exact, closed-form gradients (in float64)."""

    def __init__(
        self,
        steps: Sequence[Step],
        *,
        preprocess: Preprocess | None = None,
        categories: Sequence[str] | None = None,
    ) -> None:
        missing = [step.name for step in steps if step.vjp is None]
        if missing:
            raise CapabilityError(f"Steps {missing} have no vjp, so they cannot be differentiated.")
        super().__init__(steps, preprocess=preprocess, categories=categories)

    def gradients(
        self,
        images: Any,
        layers: Sequence[str | Layer],
        objective: Objective,
        *,
        input: bool = False,
        batch_size: int | None = None,
    ) -> Gradients:
        """See :meth:`featvis.Differentiable.gradients`."""
        return _arraygrad.differentiate(
            self, images, layers, objective, input=input, batch_size=batch_size
        )


# -- a tiny CNN in numpy ---------------------------------------------------------------------


def _conv(weight: np.ndarray, bias: np.ndarray, pad: int) -> Callable[[np.ndarray], np.ndarray]:
    def conv(x: np.ndarray) -> np.ndarray:
        k = weight.shape[-1]
        padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
        windows = np.lib.stride_tricks.sliding_window_view(padded, (k, k), axis=(2, 3))
        # In float64, so that an image's result does not depend on the batch it is in (BLAS
        # sums float32 in a batch-dependent order): the contract checks image i of a batch
        # against image i alone.
        out = np.einsum("nchwij,ocij->nohw", windows, weight.astype(np.float64), optimize=True)
        return (out + bias[None, :, None, None]).astype(np.float32)

    return conv


def _relu(x: np.ndarray) -> np.ndarray:
    np.maximum(x, 0.0, out=x)  # in place, as torch's ReLU(inplace=True): captures must copy
    return x


def _maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x[:, :, : h // 2 * 2, : w // 2 * 2].reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def tiny_cnn(
    seed: int = 0, *, preprocess: Preprocess | None = None, differentiable: bool = False
) -> ArrayBackend:
    """A small seeded CNN as an :class:`ArrayBackend`: conv, ReLU, max pool, conv, ReLU,
    global average pool, fully connected, softmax (8 layers, 32x32 RGB input by default).

    The ReLUs work in place, like ``torch.nn.ReLU(inplace=True)``, so the conv outputs are only
    right if a backend copies what it captures. With ``differentiable=True`` it is a
    :class:`DifferentiableArrayBackend` (the same model, with closed-form gradients).

    Examples
    --------
    >>> import numpy as np
    >>> from featvis.testing import tiny_cnn
    >>> backend = tiny_cnn()
    >>> [layer.alias for layer in backend.layers()][:4]
    ['conv1', 'relu1', 'pool1', 'conv2']
    >>> backend.activations(np.zeros((32, 32, 3), np.uint8), "conv1").shape
    (1, 8, 32, 32)
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0.0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0.0, 0.1, 8).astype(np.float32)
    w2 = rng.normal(0.0, 0.3, (16, 8, 3, 3)).astype(np.float32)
    b2 = rng.normal(0.0, 0.1, 16).astype(np.float32)
    wf = rng.normal(0.0, 0.3, (10, 16)).astype(np.float32)
    bf = rng.normal(0.0, 0.1, 10).astype(np.float32)
    steps = [
        Step(
            "stem",
            _conv(w1, b1, 1),
            "conv",
            "Conv",
            w1.size + b1.size,
            "8 3x3x3 convolutions with stride [1 1] and padding [1 1]",
            _arraygrad.conv_vjp(w1, 1),
        ),
        Step("stem.relu", _relu, "relu", "ReLU", description="ReLU", vjp=_arraygrad.relu_vjp),
        Step(
            "stem.pool",
            _maxpool2,
            "pool",
            "MaxPool",
            description="2x2 max pooling with stride [2 2]",
            vjp=_arraygrad.maxpool2_vjp,
        ),
        Step(
            "block.conv",
            _conv(w2, b2, 1),
            "conv",
            "Conv",
            w2.size + b2.size,
            "16 3x3x8 convolutions with stride [1 1] and padding [1 1]",
            _arraygrad.conv_vjp(w2, 1),
        ),
        Step("block.relu", _relu, "relu", "ReLU", description="ReLU", vjp=_arraygrad.relu_vjp),
        Step(
            "gap",
            lambda x: x.mean(axis=(2, 3)),
            "pool",
            "GlobalAvgPool",
            description="global average pooling",
            vjp=_arraygrad.gap_vjp,
        ),
        Step(
            "head",
            lambda x: (x @ wf.T.astype(np.float64) + bf).astype(np.float32),  # as _conv
            "fc",
            "Linear",
            wf.size + bf.size,
            "10 fully connected layer",
            _arraygrad.linear_vjp(wf),
            (wf, bf),
        ),
        Step(
            "softmax",
            _softmax,
            "prob",
            "Softmax",
            description="softmax",
            vjp=_arraygrad.softmax_vjp,
        ),
    ]
    kind = DifferentiableArrayBackend if differentiable else ArrayBackend
    return kind(steps, preprocess=preprocess)
