"""Which layer of one backend is which layer of the other: the matching rules of compare().

Layers are paired by what they are, never by looking alike:

1. **The same tensor name**, when both backends are of the same kind (two ONNX files, a model
   and its quantized copy): a name is the value's identity there.
2. **The same module path** (:attr:`Layer.source`; a PyTorch layer's source is its name). A
   module that runs several times carries ``#k`` and matches call by call. When one side's
   paths all carry a prefix the other's lack (a model exported inside a wrapper module,
   ``model.features.0`` against ``features.0``), the prefix is set aside. A layer into which
   the export records that it fused other modules (:attr:`Layer.fused`: a BatchNorm folded
   into a convolution) is the value of the last of them, and is paired by that path.
3. **The same value**: a layer that returns an earlier layer's output unchanged
   (:attr:`Layer.same_as`: an identity, an empty ``nn.Sequential``) is paired with that
   layer's partner.
4. **Folding the export did without recording it** (the TorchScript exporter): where one side
   has a convolution then a BatchNorm (with a module path) and the other side's partner of
   that convolution has no BatchNorm after it, nor any layer for the BatchNorm's path, the
   exporter folded it: that convolution holds the BatchNorm's value and is paired with it.
   Nothing is folded where the other side has the BatchNorm (``TorchBackend.to_onnx`` folds
   nothing), nor for a BatchNorm without a module path.
5. **The same alias** (``conv1``, ``relu5``...), only when one side records no module paths
   at all (a model converted from another framework).

Every rule checks the listed shapes: two layers whose NCHW shapes are known and differ are
never paired (that is a mismatch to report, not a row to fail). A layer left over is
*explained* when the export is known to drop or merge it (a dropout or identity, a convolution
whose BatchNorm was folded into it, a computation inside a module's forward that the other side
does not list as a layer, a layer featvis cannot fetch); otherwise it is a sign of a mismatch.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from featvis._layers import CALL_SEPARATOR, Layer

__all__ = ["Pair", "Unmatched", "match"]


@dataclass(frozen=True)
class Pair:
    """Two layers that hold the same value, how they were paired and why."""

    a: Layer
    b: Layer
    how: str  # "name", "source", "same value", "folded" or "alias"
    why: str


@dataclass(frozen=True)
class Unmatched:
    """A layer with no counterpart, and why."""

    layer: Layer
    reason: str
    explained: bool  # a known export transformation, not a sign of a mismatch


_REMOVED_AT_EXPORT = {
    "drop": "dropout is the identity at inference, and exporters remove it",
    "identity": "an identity, which exporters remove",
}


def _compatible(a: Layer, b: Layer) -> bool:
    """Whether the listed NCHW shapes can be the same (unknown sizes agree with anything)."""
    if a.output_shape is None or b.output_shape is None:
        return True
    if len(a.output_shape) != len(b.output_shape):
        return False
    return all(x is None or y is None or x == y for x, y in zip(a.output_shape, b.output_shape))


def _shape(layer: Layer) -> str:
    if layer.output_shape is None:
        return "?"
    return "x".join("?" if d is None else str(d) for d in layer.output_shape[1:])


class _Matcher:
    def __init__(self, a: list[Layer], b: list[Layer], names: tuple[str, str]) -> None:
        self.sides = (a, b)
        self.names = names
        self.partner: tuple[dict[str, Pair], dict[str, Pair]] = ({}, {})
        self.by_name = ({x.name: x for x in a}, {x.name: x for x in b})
        #: name -> reason, for layers that could have been paired but whose shapes differ
        self.conflicts: tuple[dict[str, str], dict[str, str]] = ({}, {})
        #: Path prefix set aside per side (a wrapper module), and which side carries it.
        self.prefix: tuple[str, str] = ("", "")

    # -- pairs ---------------------------------------------------------------------------

    def paired(self, side: int, layer: Layer) -> bool:
        return layer.name in self.partner[side]

    def link(self, a: Layer, b: Layer, how: str, why: str) -> bool:
        """Pair ``a`` and ``b`` unless their shapes differ (then record the conflict)."""
        if not _compatible(a, b):
            reason = (
                f"{self.names[0]} {a.name!r} ({_shape(a)}) and {self.names[1]} {b.name!r} "
                f"({_shape(b)}) would pair by {how} but their shapes differ"
            )
            self.conflicts[0][a.name] = reason
            self.conflicts[1][b.name] = reason
            return False
        pair = Pair(a, b, how, why)
        self.partner[0][a.name] = pair
        self.partner[1][b.name] = pair
        return True

    def unlink(self, pair: Pair) -> None:
        del self.partner[0][pair.a.name]
        del self.partner[1][pair.b.name]

    def free(self, side: int) -> list[Layer]:
        return [x for x in self.sides[side] if x.unavailable is None and not self.paired(side, x)]

    def link_sided(self, side: int, mine: Layer, other: Layer, how: str, why: str) -> bool:
        a, b = (mine, other) if side == 0 else (other, mine)
        return self.link(a, b, how, why)

    # -- rules ---------------------------------------------------------------------------

    def by_tensor_name(self) -> None:
        others = {x.name: x for x in self.free(1)}
        for layer in self.free(0):
            other = others.get(layer.name)
            if other is not None and not self.paired(1, other):
                self.link(layer, other, "name", f"the same tensor name {layer.name!r} in both")

    def _find_prefix(self) -> None:
        """A module-path prefix one side's paths all carry and the other's lack."""
        paths = [{x.source for x in side if x.source} for side in self.sides]
        direct = len(paths[0] & paths[1])
        best = ("", 0, 0)
        for side in (0, 1):
            counts: Counter[str] = Counter()
            for path in paths[side]:
                atoms = path.split(".")
                for cut in range(1, len(atoms)):
                    if ".".join(atoms[cut:]) in paths[1 - side]:
                        counts[".".join(atoms[:cut]) + "."] += 1
            if counts:
                prefix, count = counts.most_common(1)[0]
                if count > best[1]:
                    best = (prefix, count, side)
        if best[1] > direct:
            prefix, _, side = best
            self.prefix = (prefix, "") if side == 0 else ("", prefix)

    def path(self, side: int, layer: Layer) -> str | None:
        """The module path ``layer`` holds the value of, the other side's way (no prefix)."""
        path = layer.fused[-1] if layer.fused else layer.source
        prefix = self.prefix[side]
        if path is None or not prefix:
            return path
        return path[len(prefix) :] if path.startswith(prefix) else None

    def by_source(self) -> None:
        self._find_prefix()
        index: dict[str, Layer] = {}
        for layer in self.free(1):
            path = self.path(1, layer)
            if path is not None:
                index.setdefault(path, layer)
        wrapper = self.prefix[0] or self.prefix[1]
        note = (
            f" (the {self.names[0 if self.prefix[0] else 1]} paths carry the prefix "
            f"{wrapper!r}: a wrapper module)"
            if wrapper
            else ""
        )
        for layer in self.free(0):
            path = self.path(0, layer)
            other = index.get(path) if path is not None else None
            if other is None or self.paired(1, other):
                continue
            fused = other.fused or layer.fused
            why = f"the same module path {path!r}{note}"
            if fused:
                why += f"; the export fused {' + '.join(fused)} into one node"
            self.link(layer, other, "source", why)

    def by_value(self) -> None:
        for side in (0, 1):
            for layer in self.free(side):
                if layer.same_as is None:
                    continue
                origin = self.by_name[side].get(layer.same_as)
                pair = self.partner[side].get(layer.same_as) if origin is not None else None
                if pair is None:
                    continue
                other = pair.b if side == 0 else pair.a
                why = (
                    f"{layer.name!r} returns the output of {layer.same_as!r} unchanged (the "
                    f"same tensor), which is paired with {other.name!r}"
                )
                self.link_sided(side, layer, other, "same value", why)

    def by_unrecorded_folding(self) -> None:
        for side in (0, 1):
            mine, other_side = self.sides[side], self.sides[1 - side]
            other_paths = [p for x in other_side if (p := self.path(1 - side, x))]
            position = {x.name: i for i, x in enumerate(other_side)}
            for conv, bn in itertools.pairwise(mine):
                if conv.kind != "conv" or bn.kind != "bn" or bn.source is None:
                    continue
                if self.paired(side, bn) or bn.unavailable is not None:
                    continue
                pair = self.partner[side].get(conv.name)
                if pair is None or pair.how != "source":
                    continue
                partner = pair.b if side == 0 else pair.a
                if partner.kind != "conv" or partner.fused:
                    continue
                bn_path = self.path(side, bn)
                if bn_path is None or any(_within(p, bn_path) for p in other_paths):
                    continue  # the other side has the BatchNorm (or modules inside it): kept
                after = position[partner.name] + 1
                if after < len(other_side) and other_side[after].kind == "bn":
                    continue
                self.unlink(pair)
                why = (
                    f"the export has no BatchNorm for {bn.name!r}: {partner.name!r} is "
                    f"{conv.name!r} with it folded in (exporters fold a BatchNorm into the "
                    "convolution before it in eval mode)"
                )
                if not self.link_sided(side, bn, partner, "folded", why):
                    self.partner[0][pair.a.name] = pair  # keep the first pairing
                    self.partner[1][pair.b.name] = pair

    def by_alias(self) -> None:
        sourced = [any(x.source for x in side) for side in self.sides]
        if all(sourced):
            return
        bare = self.names[sourced.index(False)]
        others = {x.alias: x for x in self.free(1)}
        for layer in self.free(0):
            other = others.get(layer.alias)
            if other is None or self.paired(1, other):
                continue
            why = f"the same alias {layer.alias!r} ({bare} records no module paths)"
            self.link(layer, other, "alias", why)

    # -- leftovers -----------------------------------------------------------------------

    def fused_paths(self, side: int) -> set[str]:
        return {path for x in self.sides[side] for path in x.fused}

    def leftover(self, side: int) -> list[Unmatched]:
        mine, other = self.sides[side], self.sides[1 - side]
        other_name = self.names[1 - side]
        other_sources = {p for x in other if (p := self.path(1 - side, x))}
        fused_elsewhere = self.fused_paths(1 - side)
        found = []
        for i, layer in enumerate(mine):
            if self.paired(side, layer):
                continue
            after = mine[i + 1] if i + 1 < len(mine) else None
            path = self.path(side, layer)
            if layer.unavailable is not None:
                found.append(Unmatched(layer, f"cannot be fetched: {layer.unavailable}", True))
            elif layer.name in self.conflicts[side]:
                found.append(Unmatched(layer, self.conflicts[side][layer.name], False))
            elif layer.fused and path not in other_sources:
                reason = (
                    f"holds {' + '.join(layer.fused)} fused at export; {other_name} lists no "
                    "layer with that value (a BatchNorm computed inside a module's forward)"
                )
                found.append(Unmatched(layer, reason, True))
            elif layer.kind == "conv" and after is not None and self._folded_after(side, after):
                reason = "folded at export into the BatchNorm after it"
                found.append(Unmatched(layer, reason, True))
            elif (
                layer.kind == "conv"
                and after is not None
                and fused_elsewhere
                and any(_within(after.source, p) for p in fused_elsewhere)
            ):
                reason = "folded at export with the BatchNorm after it (the export records it)"
                found.append(Unmatched(layer, reason, True))
            elif layer.kind in _REMOVED_AT_EXPORT:
                found.append(Unmatched(layer, _REMOVED_AT_EXPORT[layer.kind], True))
            elif layer.same_as is not None:
                reason = f"returns the output of {layer.same_as!r} unchanged"
                found.append(Unmatched(layer, reason, True))
            elif other_sources and _inside_module(path, other_sources):
                reason = (
                    f"computed inside a module's forward, not by a module {other_name} lists "
                    "as a layer (a padding, a residual addition, a flatten...)"
                )
                found.append(Unmatched(layer, reason, True))
            elif (
                layer.kind in ("flatten", "reshape")
                and i > 0
                and layer.output_shape is not None
                and layer.output_shape == mine[i - 1].output_shape
            ):
                reason = (
                    f"a {layer.kind} with the NCHW shape of {mine[i - 1].name!r} before it: a "
                    "change of layout that the other side does inside a module"
                )
                found.append(Unmatched(layer, reason, True))
            elif layer.kind == "pad" and after is not None and self._paired_kind(side, after):
                reason = "folded into the padding of the convolution that follows it at export"
                found.append(Unmatched(layer, reason, True))
            else:
                found.append(Unmatched(layer, f"no counterpart in {other_name}", False))
        return found

    def _folded_after(self, side: int, after: Layer) -> bool:
        pair = self.partner[side].get(after.name)
        return (
            after.kind == "bn"
            and pair is not None
            and pair.how in ("folded", "source")
            and ((pair.b if side == 0 else pair.a).kind == "conv")
        )

    def _paired_kind(self, side: int, after: Layer) -> bool:
        return after.kind == "conv" and self.paired(side, after)


def _within(source: str | None, path: str) -> bool:
    if source is None:
        return False
    base = source.split(CALL_SEPARATOR)[0]
    return base == path or base.startswith(path + ".")


def _inside_module(source: str | None, other_sources: set[str]) -> bool:
    """Whether a layer is computed outside every leaf module the other side lists: it has no
    module path, or its path is a composite module (a block) whose children the other side
    lists, as the addition that ends a residual block is."""
    if source is None:
        return True
    prefix = source.split(CALL_SEPARATOR)[0] + "."
    return any(other.startswith(prefix) for other in other_sources)


def match(
    a: Sequence[Layer], b: Sequence[Layer], names: tuple[str, str], *, same_kind: bool
) -> tuple[list[Pair], list[Unmatched], list[Unmatched]]:
    """Pair the layers of two backends by the rules of this module.

    Returns the pairs in ``a``'s order, and the layers of ``a`` and of ``b`` left unpaired,
    with the reason. ``same_kind`` says both backends name tensors the same way (the same
    backend), which makes a shared name the strongest evidence.
    """
    matcher = _Matcher(list(a), list(b), names)
    if same_kind:
        matcher.by_tensor_name()
    matcher.by_source()
    matcher.by_value()
    matcher.by_unrecorded_folding()
    matcher.by_alias()
    matcher.by_value()  # identities of layers paired by alias
    pairs = [matcher.partner[0][x.name] for x in a if x.name in matcher.partner[0]]
    return pairs, matcher.leftover(0), matcher.leftover(1)
