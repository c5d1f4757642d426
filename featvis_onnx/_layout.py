"""Where every tensor's batch, channel and spatial axes are, followed through the graph.

ONNX Runtime cannot rerun most exported models at another batch size or image size (exporters
fix both), so featvis_onnx finds what featvis_torch measures by tracing, from the graph itself:
starting from the image input (``N C H W``, or ``N H W C`` for a channels-last input), every
operator says how its outputs' axes come from its inputs'. Each axis is kept as its
**factors**: ``(size, role)`` pairs whose product is the axis, with the roles of
:mod:`featvis._axes` (``N``, ``H``, ``W``, ``L``, ``C``, ``F``, ``?``, ``X``). A Reshape then
regroups factors instead of guessing: ``(N, C, H, W) -> (N, C, H*W)`` makes an axis of factors
``H`` and ``W`` (role ``L``, a token grid), and a later ``(N, C, H*W) -> (N, C, H, W)`` gets
them back; ``(N*k, L, C)`` keeps its ``N`` factor first (a batch merged with another axis,
batch major). A factor split in two keeps its role in the outer part (a height cut into
patches: the number of patches grows with the image, the patch does not).

How each operator moves the axes is :mod:`featvis_onnx._flow`.
"""

from __future__ import annotations

from collections.abc import Sequence

from featvis._axes import SPATIAL, Merged, Role

__all__ = [
    "NCHW",
    "NHWC",
    "UNKNOWN",
    "Axes",
    "Axis",
    "Dim",
    "axis_role",
    "input_layout",
    "roles_of",
]

NCHW = "NCHW"
NHWC = "NHWC"

Dim = int | str | None
#: One factor of an axis: its size and its role.
Factor = tuple[Dim, str]
#: One axis: its factors, outer to inner.
Axis = tuple[Factor, ...]
#: A tensor's axes, or ``None`` for a tensor with none that follow anything (a constant).
Axes = tuple[Axis, ...] | None


class _Unknown:
    """The axes of a tensor computed from the input whose rank shape inference lost."""

    def __repr__(self) -> str:
        return "UNKNOWN"


#: The axes (and roles) of a tensor computed from the input, of unknown rank.
UNKNOWN: _Unknown = _Unknown()


def input_layout(shape: tuple[int | None, ...] | None) -> str:
    """NCHW unless the shape says channels-last: (N, H, W, 1 or 3) with dim 1 not 1 or 3."""
    if shape is not None and len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        return NHWC
    return NCHW


# -- roles of axes made of factors ---------------------------------------------------------


def _combined(roles: Sequence[str]) -> str:
    """The role of several non-batch factors in one axis (what its size follows)."""
    if "X" in roles:
        return "X"
    if "?" in roles:
        return "?"
    spatial = set(roles) & SPATIAL
    if "L" in spatial or {"H", "W"} <= spatial:
        return "L"
    if spatial:
        return spatial.pop()
    return "C" if "C" in roles else "F"


def axis_role(axis: Axis) -> Role:
    """The role of an axis, from its factors (size-1 factors other than the batch aside)."""
    factors = [f for f in axis if f[0] != 1 or f[1] == "N"]
    if not factors:  # size 1: fixed, unless nothing is known about it
        return "?" if any(role in ("?", "X") for _, role in axis) else "F"
    batch = [i for i, (_, role) in enumerate(factors) if role == "N"]
    roles = [role for _, role in factors]
    if not batch:
        return _combined(roles)
    if len(factors) == 1:
        return "N"
    if len(batch) > 1 or "X" in roles:
        return "X"
    other = _combined([r for r in roles if r != "N"])
    major = True if batch[0] == 0 else False if batch[0] == len(factors) - 1 else None
    return Merged(other, major)


def roles_of(axes: Axes) -> tuple[Role, ...] | None:
    """The role of each axis, or ``None`` for a tensor without axes that follow anything
    (``UNKNOWN`` stays ``UNKNOWN``)."""
    if axes is None or axes is UNKNOWN:
        return axes  # type: ignore[return-value]
    return tuple(axis_role(axis) for axis in axes)


def _plain(size: Dim, axis: Axis) -> Axis:
    """``axis`` resized to ``size``: one factor with the axis's role (factors kept when the
    size is unchanged)."""
    total = _size(axis)
    if size is not None and size == total:
        return axis
    role = axis_role(axis)
    if isinstance(role, Merged):
        return ((size, "X"),)  # a merged batch cut or padded: its rows no longer follow N
    return ((size, role),)


def _size(axis: Axis) -> Dim:
    total: int = 1
    for size, _ in axis:
        if not isinstance(size, int):
            return size if len(axis) == 1 else None
        total *= size
    return total


def _fixed(size: Dim) -> Axis:
    return ((size, "F"),)


def _split_role(role: str) -> tuple[str, str]:
    """(outer, inner) roles of a factor cut in two."""
    if role == "L":
        return "H", "W"  # a flattened grid cut back into rows and columns
    if role in ("H", "W"):
        return role, "F"  # patches: their number grows with the image, their size does not
    if role == "N":
        return "N", "F"
    return role, role


def _regroup(axes: tuple[Axis, ...], dims: Sequence[Dim]) -> Axes:
    """The axes of a reshape of ``axes`` to ``dims``: the same factors, regrouped; ``None``
    when they cannot be (sizes unknown, or cut across a factor)."""
    factors: list[Factor] = [f for axis in axes for f in axis]
    out: list[Axis] = []
    i = 0
    for d in dims:
        if d is None:
            return None
        taken: list[Factor] = []
        if isinstance(d, str):
            while i < len(factors) and factors[i][0] == 1 and factors[i][1] != "N":
                taken.append(factors[i])
                i += 1
            if i < len(factors) and factors[i][0] == d:
                taken.append(factors[i])
                i += 1
            else:
                return None
        elif d == 1:
            run = i
            while run < len(factors) and factors[run][0] == 1:
                run += 1
            batch = [k for k in range(i, run) if factors[k][1] == "N"]
            if batch:  # of several size-1 factors, the batch keeps an axis of its own
                taken.append(factors[batch[0]])
                i = batch[0] + 1
            elif i < run:
                taken.append(factors[i])
                i += 1
            else:
                taken.append((1, "F"))
        else:
            product = 1
            while product < d:
                if i >= len(factors):
                    return None
                size, role = factors[i]
                if not isinstance(size, int):
                    return None
                if product * size <= d and d % (product * size) == 0:
                    taken.append(factors[i])
                    product *= size
                    i += 1
                else:
                    need = d // product
                    if d % product or size % need:
                        return None
                    outer, inner = _split_role(role)
                    taken.append((need, outer))
                    factors[i] = (size // need, inner)
                    product *= need
            if product != d:
                return None
        out.append(tuple(taken))
    if any(size != 1 for size, _ in factors[i:]):
        return None
    return tuple(out)


def _scrambled(dims: Sequence[Dim]) -> Axes:
    return tuple(((d, "X"),) for d in dims)


def _unknown(dims: Sequence[Dim], batch: Dim) -> Axes:
    """Axes nothing says anything about, but the batch symbol where it appears."""
    return tuple(
        ((d, "N"),) if isinstance(batch, str) and d == batch else ((d, "?"),) for d in dims
    )
