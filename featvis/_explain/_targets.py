"""What an explanation explains: a class per image, or the contrast of two classes.

A target is resolved against the model's scores into one weight vector per image over the
classes, ``w[i] = e[a]`` for class ``a``, or ``e[a] - e[b]`` for "``a`` rather than ``b``": every
method then explains ``w[i] . scores[i]``, a linear function of the model's output, so the same
target means the same thing for a gradient (the objective's cotangent) and for a perturbation
(the score drop).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featvis._errors import ArgumentError

__all__ = ["Resolved", "Targets", "parse_targets"]

#: A class: its index, or its name in ``backend.categories``.
ClassKey = int | str
#: What ``target=`` accepts (see :func:`featvis.explain`).
OneTarget = ClassKey | tuple[ClassKey, ClassKey] | None
Target = OneTarget | Sequence[OneTarget]

PREDICTED = -1  # the class the model predicts for the image


@dataclass(frozen=True)
class Resolved:
    """Targets resolved against the scores: ``classes`` and ``contrast`` are ``(N,)`` int64
    (``contrast`` -1 where an image has none, or None when no image has one) and ``weights``
    the ``(N, K)`` float32 rows that pick the explained score out of the model's output."""

    classes: np.ndarray
    contrast: np.ndarray | None
    weights: np.ndarray

    def values(self, scores: np.ndarray) -> np.ndarray:
        """The explained score of each image, ``(N,)``, from ``(N, K)`` scores."""
        return np.einsum("nk,nk->n", self.weights, scores).astype(np.float32)

    def take(self, rows: np.ndarray) -> Resolved:
        return Resolved(
            self.classes[rows],
            None if self.contrast is None else self.contrast[rows],
            self.weights[rows],
        )


@dataclass(frozen=True)
class Targets:
    """Targets as asked for, before the scores are known: ``classes[i]`` is a class index or
    :data:`PREDICTED`; ``contrast[i]`` a class index or -1."""

    classes: np.ndarray
    contrast: np.ndarray

    @property
    def needs_scores(self) -> bool:
        """Whether resolving needs the model's scores (some image explains its prediction)."""
        return bool((self.classes == PREDICTED).any())

    def resolve(self, scores: np.ndarray | None, k: int | None = None) -> Resolved:
        """Against ``(N, K)`` scores (or only ``k``, the number of classes, when no image
        explains its prediction)."""
        if scores is not None:
            k = scores.shape[1]
        if k is None:
            raise RuntimeError("targets resolved without scores or a class count")
        classes = self.classes.copy()
        if scores is not None:
            predicted = classes == PREDICTED
            classes[predicted] = np.argmax(scores[predicted], axis=1)
        elif (classes == PREDICTED).any():
            raise RuntimeError("predicted targets resolved without scores")
        for what, values in (("target", classes), ("contrast", self.contrast)):
            bad = values[(values >= k) | (values < (0 if what == "target" else -1))]
            if len(bad):
                raise ArgumentError(
                    f"{what} class {int(bad[0])} is out of range: the model scores {k} classes "
                    f"(0 to {k - 1})."
                )
        weights = np.zeros((len(classes), k), np.float32)
        rows = np.arange(len(classes))
        weights[rows, classes] = 1.0
        has = self.contrast >= 0
        weights[rows[has], self.contrast[has]] -= 1.0
        if (has & (self.contrast == classes)).any():
            raise ArgumentError("A contrast of a class with itself explains nothing.")
        contrast = self.contrast.copy() if has.any() else None
        return Resolved(classes, contrast, weights)

    def repeat(self, times: int) -> Targets:
        """Each image's target ``times`` times in a row (for noisy copies)."""
        return Targets(np.repeat(self.classes, times), np.repeat(self.contrast, times))


def _index(key: Any, categories: Sequence[str] | None) -> int:
    if isinstance(key, (bool, np.bool_)):
        raise ArgumentError(f"A target class is an index or a class name, not {key!r}.")
    if isinstance(key, (int, np.integer)):
        if key < 0:
            raise ArgumentError(f"A target class index must be 0 or more, got {key}.")
        return int(key)
    if isinstance(key, str):
        if categories is None:
            raise ArgumentError(
                f"Target {key!r} is a class name, but the backend has no class names "
                "(backend.categories is None): give the class index, or set "
                "backend.categories = [...]."
            )
        names = list(categories)
        if key in names:
            return names.index(key)
        folded = [name.casefold() for name in names]
        if key.casefold() in folded:
            return folded.index(key.casefold())
        close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ArgumentError(
            f"No class named {key!r} among the model's {len(names)} classes.{hint} "
            "(backend.categories lists them.)"
        )
    raise ArgumentError(
        f"A target class is an index or a class name, not {type(key).__name__} ({key!r})."
    )


def _one(item: Any, categories: Sequence[str] | None) -> tuple[int, int]:
    if item is None:
        return PREDICTED, -1
    if isinstance(item, tuple):
        if len(item) != 2:
            raise ArgumentError(
                f"A contrast is a pair of classes, (explained, rather than), got {item!r}."
            )
        return _index(item[0], categories), _index(item[1], categories)
    return _index(item, categories), -1


def parse_targets(target: Any, n: int, categories: Sequence[str] | None) -> Targets:
    """``target=`` as :func:`featvis.explain` takes it, for ``n`` images.

    ``None``: the predicted class; an index or a class name: that class for every image; a
    tuple of two: the first class rather than the second, for every image; a list (or array)
    of ``n`` of those: one per image.
    """
    if isinstance(target, (list, np.ndarray)):
        items = list(target)
        if len(items) != n:
            raise ArgumentError(
                f"A list of targets gives one per image: {len(items)} targets for {n} images. "
                "For a contrast of two classes pass a tuple: target=('Egyptian cat', 'tabby')."
            )
    else:
        items = [target] * n
    pairs = [_one(item, categories) for item in items]
    classes = np.array([p[0] for p in pairs], np.int64).reshape(n)
    contrast = np.array([p[1] for p in pairs], np.int64).reshape(n)
    return Targets(classes, contrast)


def class_names(values: np.ndarray, categories: Sequence[str] | None) -> list[str]:
    """Names for class indices (the index itself where there are no names)."""
    return [
        (categories[v] if categories is not None and 0 <= v < len(categories) else str(v))
        if v >= 0
        else ""
        for v in values.tolist()
    ]
