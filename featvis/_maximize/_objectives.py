"""What :func:`featvis.maximize` maximizes, as :class:`featvis.Objective` functions of one
output of the model (each returns the per-image values and their exact cotangent)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from featvis._capabilities import Objective
from featvis._errors import ArgumentError
from featvis._layers import Layer

__all__ = ["OBJECTIVES", "ObjectiveName"]

ObjectiveName = Literal["channel", "neuron", "layer", "class", "diversity"]
#: The objectives by name, with what each image's value is.
OBJECTIVES: dict[str, str] = {
    "channel": "the mean of its channel over all positions",
    "neuron": "its channel at the centre position",
    "layer": "the mean square of the whole layer (DeepDream)",
    "class": "the model's score of its class",
    "diversity": "the mean of the channel, minus weight x the cosine similarity of its "
    "Gram matrix to the other images' (Lucid's diversity)",
}


def _check_channels(output: np.ndarray, targets: np.ndarray, what: str) -> None:
    if targets.size and (targets.min() < 0 or targets.max() >= output.shape[1]):
        raise ArgumentError(
            f"{what} {targets.max() if targets.max() >= output.shape[1] else targets.min()} is "
            f"out of range: the output has {output.shape[1]} (0 to {output.shape[1] - 1})."
        )


def channel(targets: np.ndarray, layer: str | Layer) -> Objective:
    def fn(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = targets[index]
        _check_channels(output, chosen, "Channel")
        rows = np.arange(len(index))
        positions = output.shape[2] * output.shape[3]
        cotangent = np.zeros(output.shape, np.float32)
        cotangent[rows, chosen] = 1.0 / positions
        values = output[rows, chosen].reshape(len(index), -1).mean(axis=1, dtype=np.float64)
        return values.astype(np.float32), cotangent

    return Objective(fn, layer, "the mean of a channel")


def neuron(targets: np.ndarray, layer: str | Layer) -> Objective:
    def fn(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = targets[index]
        _check_channels(output, chosen, "Channel")
        rows = np.arange(len(index))
        y, x = output.shape[2] // 2, output.shape[3] // 2
        cotangent = np.zeros(output.shape, np.float32)
        cotangent[rows, chosen, y, x] = 1.0
        return output[rows, chosen, y, x].astype(np.float32), cotangent

    return Objective(fn, layer, "a channel at the centre position")


def deepdream(layer: str | Layer) -> Objective:
    def fn(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        size = output[0].size
        values = (output.astype(np.float64) ** 2).reshape(len(output), -1).mean(axis=1)
        return values.astype(np.float32), (2.0 / size * output).astype(np.float32)

    return Objective(fn, layer, "the mean square of a layer")


def class_score(targets: np.ndarray) -> Objective:
    def fn(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        chosen = targets[index]
        _check_channels(output, chosen, "Class")
        rows = np.arange(len(index))
        cotangent = np.zeros(output.shape, np.float32)
        cotangent[rows, chosen] = 1.0
        return output[rows, chosen].astype(np.float32), cotangent

    return Objective(fn, None, "a class score")


def diversity(targets: np.ndarray, layer: str | Layer, weight: float) -> Objective:
    """The channel's mean minus ``weight`` times Lucid's diversity term: image ``i``'s value is
    ``mean(A_i[c]) - weight / n * sum_{j != i} <g_i, g_j>``, with ``g_i`` the Gram matrix of
    image ``i``'s activations over positions, scaled to unit Frobenius norm. The whole batch
    must be in one pass (the term couples its images)."""
    mean = channel(targets, layer)

    def fn(output: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        values, cotangent = mean.fn(output, index)
        n, c = output.shape[:2]
        if n < 2:
            return values, cotangent
        features = output.reshape(n, c, -1).astype(np.float64)
        grams = features @ features.transpose(0, 2, 1)
        norms = np.maximum(np.linalg.norm(grams.reshape(n, -1), axis=1), 1e-12)[:, None, None]
        unit = grams / norms
        total = unit.sum(axis=0)
        similarity = np.einsum("nij,ij->n", unit, total) - np.einsum("nij,nij->n", unit, unit)
        # d(sum_i similarity_i)/d unit_i = 2 (total - unit_i); then through the norm and Gram.
        d_unit = 2.0 * (total[None] - unit)
        radial = np.einsum("nij,nij->n", d_unit, unit)[:, None, None]
        d_gram = (d_unit - radial * unit) / norms
        d_features = (d_gram + d_gram.transpose(0, 2, 1)) @ features
        penalty = -weight / n
        values = values + (penalty * similarity).astype(np.float32)
        cotangent = cotangent + (penalty * d_features).reshape(output.shape).astype(np.float32)
        return values.astype(np.float32), cotangent

    return Objective(fn, layer, "a channel's mean with a diversity term")
