"""Parity between two backends: the same layers, the same images, how far apart the values are.

:func:`compare` runs two backends (typically a PyTorch model and its ONNX export) on one
prepared batch, matches their layers, and reports per layer the largest absolute and relative
error and the cosine similarity, as a :class:`ComparisonTable`.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._errors import ArgumentError
from featvis._images import Images, prepare_images
from featvis._layers import CALL_SEPARATOR, Layer, text_table

__all__ = ["ComparisonRow", "ComparisonTable", "compare"]

#: Default tolerances, chosen from measurement: fp32 PyTorch and ONNX Runtime on CPU differ by
#: about 1e-6 of a layer's peak on ResNet-18 and AlexNet, up to ~1e-5 where the exporter folds
#: a BatchNorm into the convolution before it; 1e-4 leaves room for other kernels and orders of
#: summation while still catching a wrong weight, layout or layer (errors of 1e-2 and more).
RTOL = 1e-4
ATOL = 1e-6


@dataclass(frozen=True)
class ComparisonRow:
    """One matched pair of layers and how far apart their activations are.

    Attributes
    ----------
    layer_a, layer_b : Layer
    how : str
        How they were matched: ``"source"`` (the same module path), ``"folded"`` (a
        BatchNorm the exporter folded into the convolution before it), or ``"alias"``.
    max_abs : float
        ``max |a - b|``.
    max_rel : float
        ``max |a - b| / max |a|``: the error relative to the reference layer's peak.
    cosine : float
        Cosine similarity of the flattened activations (1.0 for identical directions).
    passed : bool
        Whether ``max |a - b| <= rtol * max |a| + atol`` (and the shapes agree).
    note : str
        Why a row failed without numbers (shapes that differ, NaN in one backend only).
    """

    layer_a: Layer
    layer_b: Layer
    how: str
    max_abs: float
    max_rel: float
    cosine: float
    passed: bool
    note: str = ""


@dataclass(frozen=True)
class Unmatched:
    """A layer with no counterpart, and why."""

    layer: Layer
    reason: str
    explained: bool  # a known export transformation, not a sign of a mismatch


class ComparisonTable(Sequence[ComparisonRow]):
    """The result of :func:`compare`: one row per matched layer pair, and the unmatched layers.

    ``str(table)`` is a text table with a summary; Jupyter shows it as HTML. It is a sequence
    of :class:`ComparisonRow`.
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
        """Whether every layer has a counterpart, or a known reason not to (see :func:`compare`)."""
        return not any(u for u in self.unmatched_a + self.unmatched_b if not u.explained)

    @property
    def passed(self) -> bool:
        """Whether every matched pair is within tolerance."""
        return all(row.passed for row in self.rows)

    @property
    def ok(self) -> bool:
        """Whether all layers matched and every pair is within tolerance."""
        return self.all_matched and self.passed and bool(self.rows)

    @property
    def columns(self) -> tuple[str, ...]:
        a, b = self.names
        return ("alias", f"{a} layer", f"{b} layer", "match", "max abs", "max rel", "cosine", "ok")

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
            )
            for row in self.rows
        ]

    def summary(self) -> list[str]:
        """Plain-language lines: the verdict, the tolerance, and the unmatched layers."""
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
        for name, unmatched in zip(self.names, (self.unmatched_a, self.unmatched_b)):
            by_reason: dict[str, list[str]] = {}
            for u in unmatched:
                by_reason.setdefault(u.reason, []).append(u.layer.name)
            for reason, layers in by_reason.items():
                shown = ", ".join(layers[:8]) + (
                    f" and {len(layers) - 8} more" if len(layers) > 8 else ""
                )
                lines.append(f"Unmatched in {name}: {shown}: {reason}.")
        verdict = "all layers matched" if self.all_matched else "SOME LAYERS UNMATCHED"
        lines.append(f"Verdict: {verdict}; {'all' if self.passed else 'NOT all'} within tolerance.")
        return lines

    def __str__(self) -> str:
        table = text_table(self.columns, self.cells(), right={4, 5, 6})  # the numbers
        return "\n".join([table, "", *self.summary()])

    __repr__ = __str__

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            f'<tr class="{"ok" if row.passed else "failed"}">'
            + "".join(f"<td>{html.escape(cell)}</td>" for cell in cells)
            + "</tr>"
            for row, cells in zip(self.rows, self.cells())
        )
        notes = "".join(f"<p>{html.escape(line)}</p>" for line in self.summary())
        return (
            '<div class="featvis-compare"><table class="featvis-compare-table"><thead><tr>'
            f"{head}</tr></thead><tbody>{body}</tbody></table>{notes}</div>"
        )


def _number(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.2e}"


# -- matching --------------------------------------------------------------------------------

_REMOVED_AT_EXPORT = {
    "drop": "dropout is the identity at inference, and exporters remove it",
    "identity": "an identity, which exporters remove",
}


class _Matcher:
    """Pairs the layers of two backends (see :func:`compare` for the rules)."""

    def __init__(self, a: list[Layer], b: list[Layer]) -> None:
        self.sides = (a, b)
        self.links: tuple[dict[str, str], dict[str, str]] = ({}, {})  # a -> b, b -> a names
        self.how: dict[str, str] = {}  # a name -> how it was matched

    def link(self, a: str, b: str, how: str) -> None:
        self.links[0][a], self.links[1][b] = b, a
        self.how[a] = how

    def unlink(self, a: str) -> None:
        del self.links[1][self.links[0].pop(a)]
        del self.how[a]

    def run(self) -> None:
        a, b = self.sides
        by_source: dict[str, Layer] = {}
        for layer in b:
            if layer.source:
                by_source.setdefault(layer.source, layer)
        for layer in a:
            partner = by_source.get(layer.source) if layer.source else None
            if partner is not None and partner.name not in self.links[1]:
                self.link(layer.name, partner.name, "source")
        self._fold_all()
        by_alias = {layer.alias: layer for layer in b if layer.name not in self.links[1]}
        for layer in a:
            partner = by_alias.get(layer.alias)
            if (
                layer.name not in self.links[0]
                and partner is not None
                and partner.name not in self.links[1]
                and not (layer.source and partner.source)
            ):
                self.link(layer.name, partner.name, "alias")
        self._fold_all()  # alias matches too: a model exported without sources

    def _fold_all(self) -> None:
        for side in (0, 1):
            self._fold(side)

    def _fold(self, side: int) -> None:
        """A conv matched to the other side's conv and followed here by an unmatched BatchNorm:
        the other side's conv is that BatchNorm's output (folded at export); re-pair it."""
        mine, other = self.sides[side], self.sides[1 - side]
        kinds = {layer.name: layer.kind for layer in other}
        for conv, bn in itertools.pairwise(mine):
            partner = self.links[side].get(conv.name)
            if (
                conv.kind != "conv"
                or bn.kind != "bn"
                or bn.name in self.links[side]
                or partner is None
                or kinds[partner] != "conv"
            ):
                continue
            if side == 0:
                self.unlink(conv.name)
                self.link(bn.name, partner, "folded")
            else:
                self.unlink(partner)
                self.link(partner, bn.name, "folded")

    def unmatched(self, side: int, names: tuple[str, str]) -> list[Unmatched]:
        mine, other = self.sides[side], self.sides[1 - side]
        other_sources = {layer.source for layer in other if layer.source}
        linked = self.links[side]
        found = []
        for i, layer in enumerate(mine):
            if layer.name in linked:
                continue
            after = mine[i + 1] if i + 1 < len(mine) else None
            folds = after is not None and after.name in linked
            if layer.kind == "conv" and folds and after.kind == "bn":  # type: ignore[union-attr]
                reason = "folded into the BatchNorm that follows it at export"
                found.append(Unmatched(layer, reason, True))
            elif layer.kind in _REMOVED_AT_EXPORT:
                found.append(Unmatched(layer, _REMOVED_AT_EXPORT[layer.kind], True))
            elif other_sources and _inside_module(layer.source, other_sources):
                reason = (
                    f"computed inside a module's forward, not by a module {names[1 - side]} "
                    "lists as a layer (a padding, a residual addition, a flatten...)"
                )
                found.append(Unmatched(layer, reason, True))
            elif layer.kind == "pad" and folds and after.kind == "conv":  # type: ignore[union-attr]
                reason = "folded into the padding of the convolution that follows it at export"
                found.append(Unmatched(layer, reason, True))
            else:
                found.append(Unmatched(layer, f"no counterpart in {names[1 - side]}", False))
        return found


def _inside_module(source: str | None, other_sources: set[str]) -> bool:
    """Whether a layer is computed outside every leaf module the other side lists: it has no
    module path, or its path is a composite module (a block) whose children the other side
    lists, as the addition that ends a residual block is."""
    if source is None:
        return True
    prefix = source.split(CALL_SEPARATOR)[0] + "."
    return any(other.startswith(prefix) for other in other_sources)


# -- the comparison --------------------------------------------------------------------------


def _stats(
    a: np.ndarray, b: np.ndarray, rtol: float, atol: float
) -> tuple[float, float, float, bool, str]:
    if a.shape != b.shape:
        return math.nan, math.nan, math.nan, False, f"shapes differ: {a.shape} vs {b.shape}"
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b):
        return math.nan, math.nan, math.nan, False, "NaN in one backend only"
    keep = ~nan_a
    x, y = a[keep].astype(np.float64), b[keep].astype(np.float64)
    if x.size == 0:
        return 0.0, 0.0, 1.0, True, ""
    max_abs = float(np.max(np.abs(x - y)))
    peak = float(np.max(np.abs(x)))
    max_rel = max_abs / peak if peak > 0 else (0.0 if max_abs == 0 else math.inf)
    norms = float(np.linalg.norm(x)) * float(np.linalg.norm(y))
    cosine = float(np.dot(x, y) / norms) if norms > 0 else (1.0 if max_abs == 0 else 0.0)
    passed = bool(np.isfinite(max_abs)) and max_abs <= rtol * peak + atol
    return max_abs, max_rel, cosine, passed, ""


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

    Layers are matched by these rules, in order:

    1. The same ``source``, the module path both backends record (a PyTorch layer's source is
       its name; the ONNX backend reads the path the exporter left). Calls of a module that runs
       several times carry ``#k`` and match call by call.
    2. BatchNorm folded at export: where one side has a convolution followed by a BatchNorm and
       the other has only the convolution, the other side's convolution is the BatchNorm's
       output, and is matched to it; the first convolution is reported as folded.
    3. For layers without a source on one side, the same alias (``conv1``, ``relu5``...).

    A layer without a counterpart is *explained* when it is a convolution folded into the
    BatchNorm after it, a dropout or identity (removed at export), or a computation outside
    every leaf module the other side lists (a padding inside a convolution module's forward,
    the addition that ends a residual block: no module path, or a composite module's path);
    anything else makes
    :attr:`ComparisonTable.all_matched` false.

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
    >>> len(table), table.all_matched, table.passed
    (8, True, True)
    """
    if rtol < 0 or atol < 0:
        raise ArgumentError(f"rtol and atol must not be negative, got {rtol} and {atol}.")
    from featvis.plugins import load  # plugins import the backends' protocol, not this module

    backend_a, backend_b = load(backend_a), load(backend_b)
    names = _names(backend_a, backend_b)
    layers_a = backend_a.layers()
    layers_b = backend_b.layers()
    wanted = None if layers is None else _chosen(backend_a, layers)
    matcher = _Matcher(layers_a, layers_b)
    matcher.run()
    batch = _batch(images, backend_a, backend_b)
    pairs = [
        (layer, matcher.links[0][layer.name], matcher.how[layer.name])
        for layer in layers_a
        if layer.name in matcher.links[0] and (wanted is None or layer.name in wanted)
    ]
    rows = []
    if pairs:
        outs_a = backend_a.activations(batch, [a.name for a, _, _ in pairs], batch_size=batch_size)
        outs_b = backend_b.activations(batch, [b for _, b, _ in pairs], batch_size=batch_size)
        by_name = {layer.name: layer for layer in layers_b}
        for a, b, how in pairs:
            stats = _stats(outs_a[a.name], outs_b[b], rtol, atol)
            rows.append(ComparisonRow(a, by_name[b], how, *stats))
    unmatched_a = matcher.unmatched(0, names)
    unmatched_b = matcher.unmatched(1, names)
    if wanted is not None:  # only what was asked about
        unmatched_a = [u for u in unmatched_a if u.layer.name in wanted]
        unmatched_b = []
    return ComparisonTable(rows, unmatched_a, unmatched_b, names=names, rtol=rtol, atol=atol)


def _chosen(backend: Backend, keys: Sequence[str | Layer] | str | Layer) -> set[str]:
    """The names of the layers ``keys`` name (names or aliases), resolved as the backend does."""
    keys = [keys] if isinstance(keys, (str, Layer)) else list(keys)
    return {backend.layer(key).name for key in keys}
