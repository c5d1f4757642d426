"""Parity between two backends: the same layers, the same images, how far apart the values are.

:func:`compare` runs two backends (typically a PyTorch model and its ONNX export) on one
prepared batch, pairs their layers (:mod:`featvis._compare_match`), and reports per pair the
largest absolute and relative error and the cosine similarity (:mod:`featvis._compare_stats`),
as a :class:`ComparisonTable`. This module is the presentation: the table and its verdict.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featvis._backend import Activations, Backend
from featvis._compare_match import Unmatched, match
from featvis._compare_stats import ATOL, RTOL, stats
from featvis._errors import ArgumentError, FeatvisError, LayerWarning
from featvis._images import Images, prepare_images
from featvis._layers import Layer
from featvis._table import Table

__all__ = ["ATOL", "RTOL", "ComparisonRow", "ComparisonTable", "Unmatched", "compare"]


@dataclass(frozen=True)
class ComparisonRow:
    """One pair of layers and how far apart their activations are.

    Attributes
    ----------
    layer_a, layer_b : Layer
    how : str
        The rule that paired them: ``"name"`` (the same tensor name, backends of one kind),
        ``"source"`` (the same module path), ``"same value"`` (a layer that returns another's
        output unchanged), ``"folded"`` (a BatchNorm the exporter folded into the convolution
        before it) or ``"alias"`` (one side records no module paths).
    max_abs : float
        ``max |a - b|``.
    max_rel : float
        ``max |a - b| / max |a|``: the error relative to the reference layer's peak.
    cosine : float
        Cosine similarity of the flattened activations (1.0 for identical directions).
    passed : bool
        Whether ``max |a - b| <= rtol * max |a| + atol`` (and the shapes agree).
    note : str
        Why a row failed without numbers (shapes that differ, NaN in one backend only, a layer
        that could not be fetched).
    why : str
        Why these two layers were paired, in words (the module path they share, ...).
    """

    layer_a: Layer
    layer_b: Layer
    how: str
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    note: str = ""
    why: str = ""


class ComparisonTable(Sequence[ComparisonRow]):
    """The result of :func:`compare`: one row per pair of layers, and the unpaired layers.

    ``str(table)`` is a text table with a summary that ends in a verdict; Jupyter shows it as
    HTML. It is a sequence of :class:`ComparisonRow`.
    """

    def __init__(
        self,
        rows: Sequence[ComparisonRow],
        unmatched_a: Sequence[Unmatched],
        unmatched_b: Sequence[Unmatched],
        *,
        names: tuple[str, str],
        rtol: float,
        atol: float,
    ) -> None:
        self.rows = list(rows)
        #: Layers of ``backend_a`` without a counterpart, with the reason.
        self.unmatched_a = list(unmatched_a)
        #: Layers of ``backend_b`` without a counterpart, with the reason.
        self.unmatched_b = list(unmatched_b)
        self.names = names
        self.rtol = rtol
        self.atol = atol

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: Any) -> Any:
        return self.rows[i]

    def __iter__(self) -> Iterator[ComparisonRow]:
        return iter(self.rows)

    @property
    def all_matched(self) -> bool:
        """Whether every layer has a counterpart, or a known reason not to (see :func:`compare`),
        and at least one pair was found."""
        explained = all(u.explained for u in self.unmatched_a + self.unmatched_b)
        return explained and bool(self.rows)

    @property
    def passed(self) -> bool:
        """Whether layers were paired and every pair is within tolerance (nothing compared is
        not a pass)."""
        return bool(self.rows) and all(row.passed for row in self.rows)

    @property
    def ok(self) -> bool:
        """Whether all layers matched and every pair is within tolerance."""
        return self.all_matched and self.passed

    @property
    def columns(self) -> tuple[str, ...]:
        a, b = self.names
        return (
            "alias", f"{a} layer", f"{b} layer", "match", "max abs", "max rel", "cosine", "ok",
            "why paired",
        )  # fmt: skip

    def cells(self) -> list[tuple[str, ...]]:
        """The table's cells as strings, one tuple per row, in :attr:`columns` order."""
        return [
            (
                row.layer_a.alias,
                row.layer_a.name,
                row.layer_b.name,
                row.how,
                _number(row.max_abs),
                _number(row.max_rel),
                "" if math.isnan(row.cosine) else f"{row.cosine:.7f}",
                ("yes" if row.passed else "NO") + (f" ({row.note})" if row.note else ""),
                row.why,
            )
            for row in self.rows
        ]

    def summary(self) -> list[str]:
        """Plain-language lines: the counts, the worst pair, the unpaired layers, the verdict."""
        failed = [row for row in self.rows if not row.passed]
        lines = [
            f"{len(self.rows)} layer pairs compared, {len(self.rows) - len(failed)} within "
            f"tolerance (|a - b| <= {self.rtol:g} * max|a| + {self.atol:g})."
        ]
        finite = [row for row in self.rows if not math.isnan(row.max_rel)]
        if finite:
            worst = max(finite, key=lambda row: row.max_rel)
            lines.append(
                f"Largest relative error: {worst.max_rel:.2e} at {worst.layer_a.name} "
                f"({worst.layer_a.alias})."
            )
        unexplained = 0
        for name, other, unmatched in zip(
            self.names, self.names[::-1], (self.unmatched_a, self.unmatched_b)
        ):
            by_reason: dict[tuple[bool, str], list[str]] = {}
            for u in unmatched:
                by_reason.setdefault((u.explained, u.reason), []).append(u.layer.name)
                unexplained += not u.explained
            for (explained, reason), layers in by_reason.items():
                shown = ", ".join(layers[:8]) + (
                    f" and {len(layers) - 8} more" if len(layers) > 8 else ""
                )
                what = (
                    f"Without a counterpart in {other} (explained)"
                    if explained
                    else f"UNMATCHED in {name}"
                )
                lines.append(f"{what}: {shown}: {reason}.")
        lines.append(self._verdict(len(failed), unexplained))
        return lines

    def _verdict(self, failed: int, unexplained: int) -> str:
        if not self.rows:
            return "Verdict: FAILED: no layers could be paired, so nothing was compared."
        if self.ok:
            return (
                "Verdict: OK: every pair is within tolerance, and every layer is paired or "
                "explained above."
            )
        problems = []
        if failed:
            problems.append(f"{failed} of {len(self.rows)} pairs beyond tolerance")
        if unexplained:
            problems.append(f"{unexplained} layers without a counterpart or a reason")
        return f"Verdict: FAILED: {'; '.join(problems)}."

    def _table(self) -> Table:
        return Table(
            self.columns,
            self.cells(),
            right={4, 5, 6},  # the numbers
            css="featvis-compare-table",
            row_classes=["ok" if row.passed else "failed" for row in self.rows],
            notes=self.summary(),
        )

    def __str__(self) -> str:
        return self._table().text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self._table().html()


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2e}"


def _batch(images: Images, backend_a: Backend, backend_b: Backend) -> Any:
    """One prepared batch for both backends: ``backend_a``'s preprocessing, checked against b's."""
    pre_a, pre_b = backend_a.preprocess, backend_b.preprocess
    sizes = {pre.size for pre in (pre_a, pre_b)} - {None}
    if len(sizes) > 1:
        raise ArgumentError(
            f"The backends prepare images at different sizes ({pre_a.size} and {pre_b.size}), "
            "so their layers cannot be compared. Give both the same "
            "featvis.Preprocess(size=...), e.g. featvis.load(model, preprocess=other.preprocess)."
        )
    return prepare_images(images, pre_a)


def _names(backend_a: Backend, backend_b: Backend) -> tuple[str, str]:
    a, b = str(backend_a.name), str(backend_b.name)
    return ("a", "b") if a == b else (a, b)


def compare(
    backend_a: Backend,
    backend_b: Backend,
    images: Images,
    layers: Sequence[str | Layer] | None = None,
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
    batch_size: int | None = None,
) -> ComparisonTable:
    """Compare the activations of two backends of the same network, layer by layer.

    The images are prepared once, with ``backend_a``'s preprocessing, and the same
    ``(N, C, H, W)`` batch is fed to both, so preprocessing differences do not count.

    Layers are paired by what they are (the rules are in :mod:`featvis._compare_match`): the
    same tensor name for two backends of one kind; the same module path (a wrapper module's
    prefix set aside; a layer into which the export records a fused BatchNorm counts as that
    BatchNorm); a layer that returns another's output unchanged goes with that layer's
    partner; a BatchNorm the exporter folded without recording it goes with the convolution
    that holds it; and the same alias only when one side records no module paths. Two layers
    whose listed shapes differ are never paired. Every row says why it was paired.

    A layer without a counterpart is *explained* when the export is known to remove or merge
    it: a dropout or identity, a convolution whose BatchNorm was folded into it, a computation
    outside every module the other side lists (a padding inside a convolution module's
    forward, the addition that ends a residual block), a layer whose axes featvis cannot place;
    anything else makes :attr:`ComparisonTable.all_matched` false. Nothing paired is a failure.

    Parameters
    ----------
    backend_a, backend_b : Backend, or a model :func:`featvis.load` accepts
        The reference (typically PyTorch) and the backend under test.
    images : image, list of images, or ndarray of shape (N, C, H, W)
    layers : sequence of str or Layer, optional
        Only these layers of ``backend_a`` (names or aliases); all by default.
    rtol, atol : float
        A pair passes when ``max |a - b| <= rtol * max |a| + atol``: the tolerance scales with
        the layer's peak activation, since float32 errors do.
    batch_size : int, optional
        Passed to both backends' ``activations``.

    Returns
    -------
    ComparisonTable

    Examples
    --------
    >>> import numpy as np, featvis
    >>> from featvis.testing import tiny_cnn
    >>> table = featvis.compare(tiny_cnn(seed=0), tiny_cnn(seed=0), np.zeros((32, 32, 3), np.uint8))
    >>> len(table), table.all_matched, table.passed, table[0].why
    (8, True, True, "the same tensor name 'stem' in both")
    """
    if rtol < 0 or atol < 0:
        raise ArgumentError(f"rtol and atol must not be negative, got {rtol} and {atol}.")
    from featvis.plugins import load  # plugins import the backends' protocol, not this module

    backend_a, backend_b = load(backend_a), load(backend_b)
    names = _names(backend_a, backend_b)
    layers_a = backend_a.layers()
    layers_b = backend_b.layers()
    wanted = None if layers is None else _chosen(backend_a, layers)
    same_kind = str(backend_a.name) == str(backend_b.name)
    pairs, unmatched_a, unmatched_b = match(layers_a, layers_b, names, same_kind=same_kind)
    if wanted is not None:  # only what was asked about
        pairs = [p for p in pairs if p.a.name in wanted]
        unmatched_a = [u for u in unmatched_a if u.layer.name in wanted]
        unmatched_b = []
    rows = []
    if pairs:
        batch = _batch(images, backend_a, backend_b)
        outs_a = _fetch(backend_a, batch, [p.a.name for p in pairs], batch_size)
        outs_b = _fetch(backend_b, batch, [p.b.name for p in pairs], batch_size)
        for p in pairs:
            a, b = outs_a.get(p.a.name), outs_b.get(p.b.name)
            if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
                f = stats(a, b, rtol, atol)
                row = (f.max_abs, f.max_rel, f.cosine, f.passed, f.note)
                rows.append(ComparisonRow(p.a, p.b, p.how, *row, why=p.why))
            else:
                error = a if not isinstance(a, np.ndarray) else b
                note = f"could not be fetched: {error}"
                rows.append(
                    ComparisonRow(p.a, p.b, p.how, math.nan, math.nan, math.nan, False, note, p.why)
                )
    return ComparisonTable(rows, unmatched_a, unmatched_b, names=names, rtol=rtol, atol=atol)


def _fetch(
    backend: Backend, batch: Any, names: list[str], batch_size: int | None
) -> dict[str, np.ndarray | FeatvisError]:
    """The activations of ``names`` (distinct), and the error of each that could not be
    fetched: the table reports those, so the partial result's warning is not repeated."""
    distinct = list(dict.fromkeys(names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LayerWarning)
        try:
            outs = backend.activations(batch, distinct, batch_size=batch_size)
        except FeatvisError as exc:  # none of them could be fetched
            return dict.fromkeys(distinct, exc)
    found: dict[str, np.ndarray | FeatvisError] = dict(outs)
    if isinstance(outs, Activations):
        found.update(outs.missing)
    return found


def _chosen(backend: Backend, keys: Sequence[str | Layer] | str | Layer) -> set[str]:
    """The names of the layers ``keys`` name (names or aliases), resolved as the backend does."""
    keys = [keys] if isinstance(keys, (str, Layer)) else list(keys)
    return {backend.layer(key).name for key in keys}
