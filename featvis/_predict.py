"""What the model predicts: the top classes from its last layer."""

from __future__ import annotations

import numpy as np

from featvis._backend import Backend
from featvis._errors import ArgumentError
from featvis._images import Images

__all__ = ["top_predictions"]


def top_predictions(backend: Backend, images: Images, k: int = 5) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes for each image, from the model's last layer.

    The last layer's output is taken as class scores; a softmax turns them into probabilities
    unless that layer already is one (kind ``"prob"``). Class names come from
    ``backend.categories`` when the backend has them, else they are the class indices.

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
    last = backend.layers()[-1]
    scores = np.asarray(backend.activations(images, last.name), np.float64)
    scores = scores.reshape(len(scores), -1)
    if last.kind == "prob":
        probs = scores
    else:
        shifted = np.exp(scores - scores.max(axis=1, keepdims=True))
        probs = shifted / shifted.sum(axis=1, keepdims=True)
    categories = getattr(backend, "categories", None)
    if categories is not None and len(categories) != probs.shape[1]:
        raise ArgumentError(
            f"The model's last layer {last.name!r} has {probs.shape[1]} outputs but "
            f"{len(categories)} class names were given."
        )
    rows = []
    for row in probs:
        order = np.argsort(-row, kind="stable")[:k]
        rows.append([(categories[i] if categories else str(i), float(row[i])) for i in order])
    return rows
