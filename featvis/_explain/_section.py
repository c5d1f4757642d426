"""The "Explain the prediction" section of reports and of the demo.

One :class:`featvis.Section` with, per image, the map of the predicted class laid over the
image: Grad-CAM on a backend with gradients, a gradient-free method (Ablation-CAM, or Score-CAM
where the backend cannot patch a layer) on the others. Given a second backend running the same
model (``against=``: PyTorch next to its ONNX export), the same method runs on both and each
figure shows the two maps side by side with their difference, and the caption says how large
it is.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import Differentiable, Patchable, Scorer, require
from featvis._explain._api import explain
from featvis._explain._explanation import Explanation
from featvis._explain._registry import get_method
from featvis._figures import MAX_SIZE, Figure, for_display
from featvis._images import ImageSource
from featvis._report import Section
from featvis.render import Picture, colormap, overlay, resize

__all__ = ["TITLE", "default_method", "difference", "explain_section"]

TITLE = "Explain the prediction"


def default_method(backend: object) -> str:
    """The method a report uses: ``gradcam`` with gradients (:class:`featvis.Differentiable`),
    else ``ablationcam`` (one pass to the layer, then only the rest of the model per channel:
    :class:`featvis.Patchable`), else ``scorecam`` (one forward pass per channel: slow)."""
    if isinstance(backend, Differentiable):
        return "gradcam"
    if isinstance(backend, Patchable):
        return "ablationcam"
    return "scorecam"


def difference(a: Explanation, b: Explanation) -> float:
    """The largest absolute difference of two explanations' maps, relative to the larger
    map's peak (its largest absolute value): 0 for identical maps; 0 for two all-zero ones."""
    peak = float(max(np.abs(a.maps).max(), np.abs(b.maps).max()))
    gap = float(np.abs(a.maps.astype(np.float64) - b.maps).max())
    return gap / peak if peak > 0 else gap


def _side_by_side(rgb: np.ndarray, a: Explanation, b: Explanation) -> tuple[Picture, float]:
    """The image, map ``a`` over it, map ``b`` over it, and ``|a - b|`` drawn on ``a``'s
    scale (black: no difference; the top of the colormap: as large as the map's peak)."""
    heat_a = np.asarray(overlay(rgb, a.maps[0]))
    heat_b = np.asarray(overlay(rgb, b.maps[0]))
    peak = float(max(np.abs(a.maps[0]).max(), np.abs(b.maps[0]).max()))
    gap = np.abs(a.maps[0].astype(np.float64) - b.maps[0]).astype(np.float32)
    scaled = np.clip(gap / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(gap)
    scaled = np.clip(resize(scaled, rgb.shape[:2]), 0.0, 1.0)
    diff = colormap("inferno")[(scaled * 255.0 + 0.5).astype(np.uint8)]
    relative = difference(a[:1], b[:1])
    return Picture(np.concatenate([rgb, heat_a, heat_b, diff], axis=1)), relative


def explain_section(
    backend: Backend,
    images: Sequence[tuple[str, ImageSource]],
    *,
    method: str | None = None,
    against: Backend | None = None,
    names: tuple[str, str] = ("this backend", "the other backend"),
    max_size: int | None = MAX_SIZE,
) -> tuple[Section, list[float]]:
    """The "Explain the prediction" section for ``(label, image)`` pairs.

    Parameters
    ----------
    backend : Backend
        A :class:`featvis.Scorer` (the map explains its predicted class).
    images : list of (label, image)
    method : str, optional
        Default: :func:`default_method`.
    against : Backend, optional
        The same model on another backend: the method runs on both, and each figure shows
        ``backend``'s map, ``against``'s, and their difference.
    names : (str, str)
        What to call ``backend`` and ``against`` in the captions.
    max_size : int or None
        The photos' longer side in the figures.

    Returns
    -------
    (Section, list of float)
        The section, and per image the largest absolute difference of the two maps relative
        to their peak (empty without ``against``).
    """
    require(backend, Scorer, needed_for="an explanation of the prediction")
    chosen = get_method(method if method is not None else default_method(backend)).name
    if against is not None:
        require(against, Scorer, needed_for="an explanation of the prediction")
    figures: list[Figure] = []
    gaps: list[float] = []
    for label, image in images:
        shown = for_display(image, max_size)
        e = explain(backend, image, method=chosen, progress=False)
        if against is None:
            (title, picture, caption) = e.figures([shown])[0]
            figures.append(Figure(f"{label}: {title}", picture, caption, "jpeg"))
            continue
        # the same target on both, even where the two backends' top classes differ
        target = None if e.targets[0] < 0 else int(e.targets[0])
        other = explain(against, image, method=chosen, target=target, progress=False)
        picture, gap = _side_by_side(shown, e, other)
        gaps.append(gap)
        figures.append(
            Figure(
                f"{label}: {chosen} on {names[0]} and on {names[1]}",
                picture,
                f"{e.describe(0)} Left to right: the image, the map on {names[0]}, the map on "
                f"{names[1]}, and their absolute difference on the scale of the maps' peak "
                f"(black: none). Largest difference: {gap:.2e} of the peak.",
                "jpeg",
            )
        )
    what = (
        f"{html.escape(chosen)} (see <code>featvis.explain</code>): where in the image the "
        "evidence for the predicted class lies."
    )
    if against is not None:
        worst = max(gaps) if gaps else 0.0
        what += (
            f" The same method on {html.escape(names[0])} and on {html.escape(names[1])}: their "
            f"maps differ by at most {worst:.2e} of the peak."
        )
    return Section(TITLE, figures, f"<p>{what}</p>"), gaps
