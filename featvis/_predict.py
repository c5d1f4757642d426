"""What the model predicts: class probabilities and the top classes."""

from __future__ import annotations

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import Scorer
from featvis._errors import ArgumentError, ModelError
from featvis._images import Images

__all__ = ["probabilities", "softmax", "to_probabilities", "top_predictions"]


def softmax(scores: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, computed in float64 for stability, returned as float32."""
    x = np.asarray(scores, np.float64)
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def to_probabilities(scores: np.ndarray, kind: str) -> np.ndarray:
    """``(N, K)`` scores as class probabilities: as they are when ``kind`` is
    ``"probabilities"``, else their softmax.

    One logit per image is refused: a softmax over one class is 1 whatever the image, so every
    probability read from it (RISE's, the metrics of :func:`featvis.evaluate`) would be 1.
    """
    if kind == "probabilities":
        return np.ascontiguousarray(scores, np.float32)
    if scores.shape[-1] == 1:
        raise ModelError(
            "The model gives one score per image, a logit, and a softmax over one class is 1 "
            "whatever the image: no probability can be read from it (RISE and "
            "featvis.evaluate work on probabilities). Wrap the model to return two scores "
            "per image, (0, s), whose softmax is the sigmoid of s; or, if the score is a "
            "probability already, set backend.score_kind = 'probabilities'. The methods "
            "that use the raw score work as they are: gradcam, scorecam, ablationcam, "
            "occlusion."
        )
    return softmax(scores)


def probabilities(backend: Backend, images: Images, *, batch_size: int | None = None) -> np.ndarray:
    """Class probabilities for ``images``, ``(N, K)`` float32.

    From the model's own output when the backend is a :class:`featvis.Scorer` (a softmax is
    applied unless its :attr:`~featvis.Scorer.score_kind` says the scores already are
    probabilities); otherwise from the last listed layer, taken as scores (a softmax is applied
    unless that layer is of kind ``"prob"``).

    Examples
    --------
    >>> import numpy as np
    >>> import featvis
    >>> from featvis.testing import tiny_cnn
    >>> p = featvis.probabilities(tiny_cnn(), np.zeros((32, 32)))
    >>> p.shape, round(float(p.sum()), 5)
    ((1, 10), 1.0)
    """
    if isinstance(backend, Scorer):
        scores = backend.scores(images, batch_size=batch_size)
        already = backend.score_kind == "probabilities"
    else:
        last = backend.layers()[-1]
        out = backend.activations(images, last, batch_size=batch_size)
        scores = out.reshape(len(out), -1)
        already = last.kind == "prob"
    return to_probabilities(scores, "probabilities" if already else "logits")


def top_predictions(backend: Backend, images: Images, k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes for each image (see :func:`probabilities`).

    Class names come from ``backend.categories`` when the backend has them, else they are the
    class indices.

    Returns
    -------
    list of list of (str, float)
        Per image, ``k`` pairs of class name and probability, most probable first.

    Examples
    --------
    >>> import numpy as np
    >>> import featvis
    >>> from featvis.testing import tiny_cnn
    >>> backend = tiny_cnn()
    >>> backend.categories = [f"class {i}" for i in range(10)]
    >>> [name for name, p in featvis.top_predictions(backend, np.zeros((32, 32)), k=2)[0]]
    ['class 2', 'class 9']
    """
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ArgumentError(f"k must be a positive integer, got {k!r}.")
    probs = probabilities(backend, images)
    categories = backend.categories
    if categories is not None and len(categories) != probs.shape[1]:
        raise ArgumentError(
            f"The model has {probs.shape[1]} outputs but {len(categories)} class names were given."
        )
    rows = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        rows.append([(categories[i] if categories else str(i), float(row[i])) for i in order])
    return rows
