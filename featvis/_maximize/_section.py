"""A report section of optimized images (:func:`featvis.report`'s ``sections=``)."""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import Any

from featvis._capabilities import Differentiable
from featvis._figures import Figure
from featvis._layers import Layer
from featvis._maximize._api import _gradient_free_methods, maximize
from featvis._report import Section

__all__ = ["maximize_section"]


def maximize_section(
    backend: Any, layer: str | Layer, channels: Sequence[int], **options: Any
) -> Section:
    """A :class:`featvis.Section` showing the optimized image of each of ``channels`` of
    ``layer`` (:func:`featvis.maximize` with ``options``), for :func:`featvis.report`.

    A backend without gradients gets a section that says why there are no images and what
    does work with it, rather than an error: the rest of the report still stands.

    Examples
    --------
    >>> import numpy as np, featvis
    >>> from featvis.testing import tiny_cnn
    >>> image = np.zeros((32, 32, 3), np.uint8)
    >>> section = featvis.maximize_section(tiny_cnn(differentiable=True), "conv2", [0, 1],
    ...                                    steps=2, size=16)
    >>> page = featvis.report(tiny_cnn(), [image], ["conv2"], sections=[section])
    >>> page.sections[-1].title, len(page.sections[-1].figures)
    ('Optimized images: conv2', 1)
    """
    name = layer.name if isinstance(layer, Layer) else str(layer)
    title = f"Optimized images: {name}"
    if not isinstance(backend, Differentiable):
        kind = getattr(backend, "name", type(backend).__name__)
        return Section(
            title,
            html=f"<p>No optimized images: featvis.maximize needs gradients through the "
            f"model, which the {html.escape(repr(kind))} backend does not provide. With this "
            f"backend, use {html.escape(_gradient_free_methods(backend))}.</p>",
        )
    result = maximize(backend, layer, list(channels), **options)
    steps = len(result.history)
    figure = Figure(
        f"{name}: the image each channel wants to see",
        result.picture(labels=True),
        f"One image per channel (numbered under it), optimized for {steps} steps to maximize "
        f"the channel's mean ({result.objective}), from seed {result.seed}. Objectives: "
        + ", ".join(f"{c}: {v:.3g}" for c, v in zip(result.channels, result.values)),
    )
    return Section(title, [figure])
