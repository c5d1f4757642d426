"""featvis.maximize(): the image a channel wants to see, by gradient ascent on the input.

Each step is one :meth:`featvis.Differentiable.gradients` call on the prepared model input,
and everything around it is numpy here: the parameters become RGB images
(:mod:`._param`), the images are seen through random transformations (:mod:`._transforms`)
and normalized with the backend's mean and std, the backend gives the gradient with respect to
that input, and the chain runs back by hand to an Adam step on the parameters. A third-party
backend with gradients gets all of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import Differentiable, Objective, require
from featvis._errors import ArgumentError
from featvis._explain._common import progress_bar
from featvis._images import Preprocess
from featvis._layers import Layer
from featvis._maximize import _objectives
from featvis._maximize._param import Parameterization, fourier, pixels
from featvis._maximize._result import Maximization
from featvis._maximize._transforms import Transforms

__all__ = ["maximize"]

#: Images per optimization batch when the caller does not choose.
BATCH = 32


class _Adam:
    """Adam (Kingma & Ba, 2015) ascending the objective, as ``torch.optim.Adam`` descends."""

    def __init__(self, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        self.lr, self.betas, self.eps = lr, betas, eps
        self.t = 0
        self.m: np.ndarray | None = None
        self.v: np.ndarray | None = None

    def step(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        b1, b2 = self.betas
        if self.m is None or self.v is None:
            self.m, self.v = np.zeros_like(params), np.zeros_like(params)
        self.t += 1
        self.m = b1 * self.m + (1 - b1) * grad
        self.v = b2 * self.v + (1 - b2) * grad * grad
        m_hat = self.m / (1 - b1**self.t)
        v_hat = self.v / (1 - b2**self.t)
        return (params + self.lr * m_hat / (np.sqrt(v_hat) + self.eps)).astype(np.float32)


def _size(size: Any, preprocess: Preprocess) -> tuple[int, int]:
    if size is None:
        return preprocess.size or (224, 224)
    pair = (size, size) if isinstance(size, (int, np.integer)) else tuple(size)
    if len(pair) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 8 for s in pair):
        raise ArgumentError(
            f"size must be a number of pixels >= 8 or (height, width), got {size!r}."
        )
    return int(pair[0]), int(pair[1])


def _targets(channels: Any, objective: str, count: int) -> list[int | None]:
    """What each image is optimized for."""
    if objective == "layer":
        if channels is not None:
            raise ArgumentError(
                'objective="layer" maximizes the whole layer (DeepDream): give channels=None '
                "and count= for several images."
            )
        return [None] * count
    if channels is None:
        raise ArgumentError(f"objective={objective!r} needs channels (or classes) to maximize.")
    chosen = [channels] if isinstance(channels, (int, np.integer)) else list(channels)
    if not chosen or not all(isinstance(c, (int, np.integer)) and c >= 0 for c in chosen):
        raise ArgumentError(f"channels must be non-negative whole numbers, got {channels!r}.")
    if objective == "diversity" and len(chosen) != 1:
        raise ArgumentError(
            'objective="diversity" makes several different images of one channel: give one '
            "channel and count= images."
        )
    return [int(c) for c in chosen for _ in range(count)]


def _objective(
    name: str, targets: list[int | None], layer: Layer | None, diversity: float
) -> Objective:
    index = np.array([-1 if t is None else t for t in targets], np.int64)
    if name == "class":
        return _objectives.class_score(index)
    assert layer is not None
    if name == "channel":
        return _objectives.channel(index, layer)
    if name == "neuron":
        return _objectives.neuron(index, layer)
    if name == "layer":
        return _objectives.deepdream(layer)
    return _objectives.diversity(index, layer, diversity)


def _gradient_free_methods(backend: Backend) -> str:
    from featvis._explain import list_methods

    works = [m.name for m in list_methods() if m.works_with(backend)]
    methods = f" and featvis.explain with methods {', '.join(works)}" if works else ""
    return f"featvis.survey (each channel's strongest dataset images){methods}"


def maximize(
    backend: Any,
    layer: str | Layer | None,
    channels: int | Sequence[int] | None = None,
    *,
    objective: str = "channel",
    size: int | tuple[int, int] | None = None,
    steps: int = 256,
    seed: int = 0,
    parameterization: str = "fourier",
    decorrelate: bool = True,
    transforms: Transforms | None = Transforms(),  # noqa: B008  # frozen, never modified
    lr: float = 0.05,
    count: int | None = None,
    diversity: float = 100.0,
    batch_size: int | None = None,
    progress: bool | None = None,
) -> Maximization:
    """The images that excite ``channels`` of ``layer`` most, by gradient ascent on the input
    (feature visualization, Olah et al., Distill 2017; MATLAB's ``deepDreamImage``).

    Each image starts as faint noise; each step sees it through a random small shift, scale and
    rotation (``transforms``), normalizes it with the backend's own mean and std, takes the
    gradient of the objective with respect to that input from the backend, and moves the
    parameters up it with Adam. Many channels are optimized together, one per image of a batch.

    Parameters
    ----------
    backend : Differentiable backend
        Any backend with gradients (:class:`featvis.Differentiable`); others raise
        :class:`featvis.CapabilityError`, which names what does work with them.
    layer : str or Layer or None
        The layer whose channels to excite (``None`` with ``objective="class"``).
    channels : int or sequence of int, optional
        One image per channel (per class with ``objective="class"``), in this order.
    objective : {"channel", "neuron", "layer", "class", "diversity"}
        Each image's value: ``"channel"`` the mean of its channel over the positions;
        ``"neuron"`` its channel at the centre position; ``"layer"`` the mean square of the
        whole layer (DeepDream; ``channels=None``); ``"class"`` the model's score of its class
        (logits or probabilities, whatever the model returns); ``"diversity"`` ``count``
        images of one channel, each its mean minus ``diversity / count`` times the cosine
        similarity of its Gram matrix to the others' (Lucid's diversity term), so that they
        show different facets of the channel.
    size : int or (int, int), optional
        The images' size; by default the backend's input size.
    steps : int
        Adam steps (Lucid and lucent use 512; fewer give fainter features).
    seed : int
        Seeds the initial images and every transformation: same seed, same images.
    parameterization : {"fourier", "pixels"}
        ``"fourier"`` (the default) optimizes a 1/f-scaled spectrum, which keeps the
        high-frequency noise of plain ``"pixels"`` out of the result.
    decorrelate : bool
        Optimize color in the decorrelated space of ImageNet's color statistics (Lucid's).
    transforms : Transforms or None
        The random transformations of each step (:class:`featvis.Transforms`, Lucid's by
        default); ``None`` for none.
    lr : float
        Adam's learning rate.
    count : int, optional
        Images per channel (default 1; 4 with ``objective="diversity"``), or the number of
        images with ``objective="layer"``.
    diversity : float
        Weight of the diversity term (Lucid's example uses 100).
    batch_size : int, optional
        Images per pass (default 32); a diversity run is always one batch.
    progress : bool, optional
        Show a progress bar; by default only when stderr is a terminal.

    Returns
    -------
    Maximization
        ``.images`` ``(N, H, W, 3)`` float in [0, 1], ``.values`` their objectives.

    Raises
    ------
    CapabilityError
        If the backend has no gradients (an ONNX model).
    ArgumentError
        For an unknown objective or parameterization, or channels that do not fit.

    Examples
    --------
    >>> import featvis
    >>> from featvis.testing import tiny_cnn
    >>> backend = tiny_cnn(differentiable=True)
    >>> result = featvis.maximize(backend, "conv2", [0, 3], steps=8, size=16)
    >>> result.images.shape, result.values.shape
    ((2, 16, 16, 3), (2,))
    """
    differentiable = require(
        backend,
        Differentiable,
        needed_for="featvis.maximize",
        works=_gradient_free_methods(backend),
    )
    if objective not in _objectives.OBJECTIVES:
        raise ArgumentError(
            f"Unknown objective {objective!r}; choose one of {', '.join(_objectives.OBJECTIVES)}."
        )
    if parameterization not in ("fourier", "pixels"):
        raise ArgumentError(
            f"Unknown parameterization {parameterization!r}; choose 'fourier' or 'pixels'."
        )
    if transforms is not None and not isinstance(transforms, Transforms):
        raise ArgumentError(
            f"transforms must be a featvis.Transforms or None, not {type(transforms).__name__}."
        )
    for name, value, low in (
        ("steps", steps, 1),
        ("count", count, 1),
        ("batch_size", batch_size, 1),
    ):
        if value is not None and (not isinstance(value, (int, np.integer)) or value < low):
            raise ArgumentError(f"{name} must be a whole number >= {low}, got {value!r}.")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ArgumentError(f"lr must be a positive number, got {lr!r}.")
    preprocess: Preprocess = backend.preprocess
    if preprocess.channels not in (1, 3):
        raise ArgumentError(
            f"The model takes {preprocess.channels} channels; maximize needs 1 or 3."
        )
    resolved = None
    if objective != "class":
        if layer is None:
            raise ArgumentError(f"objective={objective!r} needs a layer.")
        resolved = backend.layer(layer)
    if count is None:
        count = 4 if objective == "diversity" else 1
    if objective == "diversity" and count < 2:
        raise ArgumentError('objective="diversity" needs count >= 2 images to compare.')
    targets = _targets(channels, objective, int(count))
    shape = _size(size, preprocess)
    make = fourier if parameterization == "fourier" else pixels
    param = make(shape, decorrelate=decorrelate)
    chunk = len(targets) if objective == "diversity" else (batch_size or BATCH)
    images, values, history = [], [], []
    with progress_bar(steps * -(-len(targets) // chunk), progress, "maximize") as bar:
        for start in range(0, len(targets), chunk):
            part = targets[start : start + chunk]
            goal = _objective(objective, part, resolved, float(diversity))
            rngs = [np.random.default_rng([seed, start + i]) for i in range(len(part))]
            img, hist = _optimize(
                differentiable, preprocess, goal, param, transforms, rngs, steps, lr, bar
            )
            images.append(img)
            history.append(hist)
            values.append(_final_values(backend, goal, img, preprocess))
    return Maximization(
        images=np.concatenate(images).transpose(0, 2, 3, 1).copy(),
        values=np.concatenate(values),
        channels=tuple(targets),
        layer=None if resolved is None else resolved.name,
        objective=objective,
        history=np.concatenate(history, axis=1),
        seed=seed,
    )


def _normalized(images: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    """RGB ``(N, 3, H, W)`` in [0, 1] as the model's input (gray models: the channel mean)."""
    mean = np.asarray(preprocess.mean, np.float32)[None, :, None, None]
    std = np.asarray(preprocess.std, np.float32)[None, :, None, None]
    if preprocess.channels == 1:
        images = images.mean(axis=1, keepdims=True)
    return ((images - mean) / std).astype(np.float32)


def _input_backward(grad: np.ndarray, preprocess: Preprocess) -> np.ndarray:
    std = np.asarray(preprocess.std, np.float32)[None, :, None, None]
    g = grad / std
    if preprocess.channels == 1:
        g = np.repeat(g / 3.0, 3, axis=1)
    return g.astype(np.float32)


def _optimize(
    backend: Differentiable,
    preprocess: Preprocess,
    objective: Objective,
    param: Parameterization,
    transforms: Transforms | None,
    rngs: list[np.random.Generator],
    steps: int,
    lr: float,
    bar: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` of Adam on one batch; the final ``(n, 3, H, W)`` images and the history."""
    params = np.concatenate([param.init(rng, 1) for rng in rngs])
    adam = _Adam(lr)
    history = np.empty((steps, len(rngs)), np.float32)
    for step in range(steps):
        images, cache = param.image(params)
        if transforms is not None:
            warp = transforms.draw(rngs, param.size)
            view = warp.apply(images)
        else:
            view = images
        g = backend.gradients(_normalized(view, preprocess), [], objective, input=True)
        assert g.input is not None
        history[step] = g.values
        grad = _input_backward(g.input, preprocess)
        if transforms is not None:
            grad = warp.backward(grad, param.size)
        params = adam.step(params, param.backward(grad, cache))
        if bar is not None:
            bar.update(1)
    return param.image(params)[0], history


def _final_values(
    backend: Any, objective: Objective, images: np.ndarray, preprocess: Preprocess
) -> np.ndarray:
    """The objective of the images themselves (no transformation, no gradient)."""
    x = _normalized(images, preprocess)
    if objective.layer is None:
        output = backend.scores(x)
    else:
        output = backend.activations(x, objective.layer)
    values, _ = objective.fn(output, np.arange(len(x)))
    return np.asarray(values, np.float32)
