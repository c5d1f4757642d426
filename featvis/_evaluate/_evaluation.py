"""Evaluation: what :func:`featvis.evaluate` returns, as a table, a figure and a report section."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from featvis._errors import ArgumentError
from featvis.render import Picture

__all__ = ["METRICS", "Evaluation"]

#: Each metric: whether higher is better, and what it measures (the protocols are in
#: :func:`featvis.evaluate` and docs/evaluation.md).
METRICS: dict[str, tuple[bool, str]] = {
    "deletion": (False, "area under the score as the most salient pixels are removed"),
    "insertion": (True, "area under the score as the most salient pixels are revealed"),
    "road": (True, "ROAD: (LeRF - MoRF) / 2 with noisy linear imputation"),
    "drop": (False, "average drop in confidence, image times map (Grad-CAM++)"),
    "increase": (True, "increase in confidence: share of images whose score rises"),
    "prediction": (True, "share of keep-fractions from which the class is still predicted"),
    "second_class": (False, "Spearman of the map with the second class's map"),
    "stability": (False, "max-sensitivity: largest relative change under input noise"),
    "sanity": (False, "Spearman of the map with the randomized model's map"),
}

_COLOURS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


@dataclass(frozen=True, eq=False)
class Evaluation:
    """The scores of several methods' maps on the same images, one row per method.

    ``evaluation[method][metric]`` is the mean over the images; :attr:`values` keeps each
    image's value and :attr:`curves` the curves behind them.

    Attributes
    ----------
    methods : list of str
    metrics : list of str
        Keys of :data:`METRICS`, in order.
    values : dict of str to dict of str to ndarray
        ``values[method][metric]``: ``(N,)`` float64, one value per image (NaN where the
        metric does not apply: ``stability`` of a fixed array).
    curves : dict of str to dict of str to ndarray
        ``curves[method][name]``, ``(N, points)``: ``deletion`` and ``insertion`` (the score at
        each of ``steps + 1`` fractions of pixels), ``road_morf`` and ``road_lerf`` (at each
        percentile), ``prediction`` (0/1 at each keep fraction), ``stability`` (each noisy
        copy's sensitivity), ``sanity`` (the correlation after randomizing 1..k layers).
    maps : dict of str to ndarray
        Each method's ``(N, H, W)`` maps, at the model input's size.
    targets : ndarray, shape (N,), int64
        The class evaluated for each image.
    scores : ndarray, shape (N,), float32
        Its probability on the unperturbed image.
    images : ndarray, shape (N, H, W, 3), uint8, or None
        The images as the model saw them.
    categories : list of str or None
    settings : dict
        The protocol's parameters (steps, substrates, percentiles, noise, seed...).
    notes : list of str
        What was left out, and why.
    times : dict of str to dict of str to float
        Seconds per method: ``explain`` (making the maps) and each metric group.
    """

    methods: list[str]
    metrics: list[str]
    values: dict[str, dict[str, np.ndarray]]
    curves: dict[str, dict[str, np.ndarray]]
    maps: dict[str, np.ndarray]
    targets: np.ndarray
    scores: np.ndarray
    images: np.ndarray | None = None
    categories: list[str] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    times: dict[str, dict[str, float]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, method: str) -> dict[str, float]:
        """``{metric: mean over the images}`` for ``method`` (NaN values left out)."""
        if method not in self.values:
            raise ArgumentError(
                f"No method {method!r} in this evaluation; it has {', '.join(self.methods)}."
            )
        return {k: _mean(v) for k, v in self.values[method].items()}

    def mean(self, method: str, metric: str) -> float:
        """The mean of ``metric`` over the images, NaN values left out."""
        return _mean(self._values(method, metric))

    def se(self, method: str, metric: str) -> float:
        """The standard error of that mean (sample standard deviation / sqrt(n))."""
        return _se(self._values(method, metric))

    def paired(self, reference: str, metric: str) -> dict[str, tuple[float, float]]:
        """Per-image paired differences against ``reference``: ``{method: (mean, se)}`` of
        ``values[method][metric] - values[reference][metric]`` over the images where both are
        defined. A method is better than the reference when the difference is more than two
        standard errors in the metric's good direction."""
        base = self._values(reference, metric)
        out = {}
        for method in self.methods:
            d = self._values(method, metric) - base
            out[method] = (_mean(d), _se(d))
        return out

    def best(self, metric: str) -> str:
        """The method with the best mean on ``metric``."""
        higher = METRICS[metric][0]
        means = {k: self.mean(k, metric) for k in self.methods}
        finite = {k: v for k, v in means.items() if np.isfinite(v)}
        if not finite:
            raise ArgumentError(f"No method has a value for {metric!r}.")
        return (max if higher else min)(finite, key=finite.__getitem__)

    def _values(self, method: str, metric: str) -> np.ndarray:
        if method not in self.values:
            raise ArgumentError(
                f"No method {method!r} in this evaluation; it has {', '.join(self.methods)}."
            )
        if metric not in self.values[method]:
            raise ArgumentError(
                f"No metric {metric!r} in this evaluation; it has {', '.join(self.metrics)}."
            )
        return self.values[method][metric]

    # -- text and HTML ---------------------------------------------------------------------

    def _cells(self) -> list[list[str]]:
        rows = []
        for method in self.methods:
            row = [method]
            for metric in self.metrics:
                v = self._values(method, metric)
                mu, s, finite = _mean(v), _se(v), int(np.isfinite(v).sum())
                if not np.isfinite(mu):
                    row.append("n/a")
                    continue
                cell = f"{mu:.3f} ± {s:.3f}" if np.isfinite(s) else f"{mu:.3f}"
                # an undefined value (a constant map's rank correlation) is left out: say so
                row.append(cell if finite == len(v) else f"{cell} ({finite} of {len(v)})")
            rows.append(row)
        return rows

    def _header(self) -> list[str]:
        return ["method"] + [f"{k} {'↑' if METRICS[k][0] else '↓'}" for k in self.metrics]

    def __str__(self) -> str:
        header, rows = self._header(), self._cells()
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
        lines.append(
            f"{len(self)} image(s); mean ± standard error; ↑ higher is better, ↓ lower. "
            + self.protocol()
        )
        lines.extend(self.notes)
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"<Evaluation of {len(self.methods)} method(s) ({', '.join(self.methods)}) on "
            f"{len(self)} image(s): {', '.join(self.metrics)}>"
        )

    def protocol(self) -> str:
        """The settings, in one sentence, so a number can be reproduced."""
        s = self.settings
        return (
            f"Score: the target's probability. Deletion {s.get('steps')} steps over "
            f"{s.get('deletion')}, insertion over {s.get('insertion')} (blur sigma "
            f"{s.get('sigma')}); ROAD at percentiles {list(s.get('percentiles', ()))}, "
            f"imputation noise {s.get('road_noise')}; prediction keeps "
            f"{list(s.get('keep', ()))} of the pixels; stability: worst of "
            f"{s.get('noise_samples')} copies with noise {s.get('noise')}; sanity: top "
            f"{s.get('randomize')} weighted layer(s) re-drawn; seed {s.get('seed')}."
        )

    def table_html(self) -> str:
        """The table as HTML, the best value of each column in bold."""
        best: dict[str, str | None] = {}
        for metric in self.metrics:
            try:
                best[metric] = self.best(metric)
            except ArgumentError:
                best[metric] = None
        head = "".join(f"<th>{html.escape(h)}</th>" for h in self._header())
        body = []
        for method, cells in zip(self.methods, self._cells()):
            tds = [f"<td>{html.escape(cells[0])}</td>"]
            for metric, cell in zip(self.metrics, cells[1:]):
                text = html.escape(cell)
                tds.append(
                    f"<td><b>{text}</b></td>" if best[metric] == method else f"<td>{text}</td>"
                )
            body.append("<tr>" + "".join(tds) + "</tr>")
        notes = "".join(f"<p>{html.escape(n)}</p>" for n in self.notes)
        return (
            f"<table><tr>{head}</tr>{''.join(body)}</table><p>{len(self)} image(s); mean ± "
            "standard error over the images; ↑ higher is better, ↓ lower; the best of each "
            f"column in bold. {html.escape(self.protocol())}</p>{notes}"
        )

    def _repr_html_(self) -> str:
        return self.table_html()

    # -- figures ---------------------------------------------------------------------------

    def figure(self, *, width: int = 900, height: int = 340) -> Picture:
        """The mean deletion and insertion curves of every method, side by side: the
        target's probability against the fraction of pixels removed (deletion) or revealed
        (insertion)."""
        panels = [k for k in ("deletion", "insertion") if k in self.metrics]
        if not panels:
            raise ArgumentError("This evaluation has no deletion or insertion curves.")
        canvas = Image.new("RGB", (width, height), (255, 255, 255))
        draw = ImageDraw.Draw(canvas)
        panel_w = width // len(panels)
        legend = 16 * len(self.methods) + 8
        for p, name in enumerate(panels):
            left, top = p * panel_w + 48, 24
            right, bottom = (p + 1) * panel_w - 16, height - 36 - legend
            draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
            draw.text((left, 6), f"{name} (mean over {len(self)} images)", fill=(0, 0, 0))
            for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
                x = left + tick * (right - left)
                y = bottom - tick * (bottom - top)
                draw.line((x, bottom, x, bottom + 4), fill=(0, 0, 0))
                draw.text((x - 10, bottom + 6), f"{tick:g}", fill=(0, 0, 0))
                draw.line((left - 4, y, left, y), fill=(0, 0, 0))
                draw.text((left - 34, y - 6), f"{tick:.2f}", fill=(0, 0, 0))
            what = "removed" if name == "deletion" else "revealed"
            draw.text((left + 4, bottom + 18), f"fraction of pixels {what}", fill=(90, 90, 90))
            for j, method in enumerate(self.methods):
                curve = self.curves[method][name].mean(axis=0)
                xs = np.linspace(left, right, len(curve))
                ys = bottom - np.clip(curve, 0, 1) * (bottom - top)
                colour = _COLOURS[j % len(_COLOURS)]
                draw.line(list(zip(xs.tolist(), ys.tolist())), fill=colour, width=2)
                auc = self.mean(method, name)
                y0 = height - legend + 16 * j
                draw.line((left, y0 + 6, left + 20, y0 + 6), fill=colour, width=3)
                draw.text((left + 26, y0), f"{method}: AUC {auc:.3f}", fill=(0, 0, 0))
        return Picture(np.asarray(canvas))

    def _repr_png_(self) -> bytes:
        return self.figure().png()

    def maps_figure(self, method: str, *, count: int | None = None) -> Picture:
        """The images (top) and ``method``'s maps over them (below), side by side."""
        from featvis.render import overlay

        if self.images is None:
            raise ArgumentError("This evaluation keeps no images to draw the maps on.")
        maps = self.maps[method]
        chosen = range(len(self) if count is None else min(count, len(self)))
        tiles = [
            np.concatenate([self.images[i], np.asarray(overlay(self.images[i], maps[i]))], axis=0)
            for i in chosen
        ]
        return Picture(np.concatenate(tiles, axis=1))

    def section(
        self, title: str = "Evaluation of the explanations", *, maps: int | None = 8
    ) -> Any:
        """A :class:`featvis.Section` for :func:`featvis.report`: the table, the curves, and
        each method's maps over the first ``maps`` images (``0``: none)."""
        from featvis._figures import Figure
        from featvis._report import Section

        figures = []
        if "deletion" in self.metrics or "insertion" in self.metrics:
            figures.append(
                Figure(
                    "Deletion and insertion curves",
                    self.figure(),
                    "The target's probability as the most salient pixels are removed "
                    f"(deletion, over {self.settings.get('deletion')}) or revealed (insertion, "
                    f"over {self.settings.get('insertion')}); mean over the images.",
                )
            )
        if self.images is not None and maps != 0:
            for method in self.methods:
                figures.append(
                    Figure(
                        f"{method}: maps",
                        self.maps_figure(method, count=maps),
                        f"Each image (top) and {method}'s map over it (red: highest; each map "
                        "scaled to its own range).",
                        format="jpeg",
                    )
                )
        return Section(title, figures, self.table_html())


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


def _se(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    if len(finite) < 2:
        return float("nan")
    return float(finite.std(ddof=1) / np.sqrt(len(finite)))
