"""How the linear-algebra operators move their operands' axes (MatMul, Gemm, Einsum, and the
recurrent LSTM, GRU and RNN), for :class:`featvis_onnx._flow.Flow`: each a function of its
operands' axes, the output's dims and the batch's size, in the factors and roles of
:mod:`featvis_onnx._layout`; also the two fallbacks they share with the flow.
"""

from __future__ import annotations

from onnx import NodeProto

from featvis_onnx._graph import attributes
from featvis_onnx._layout import Axes, Axis, Dim, _fixed, _plain, _size, _unknown, axis_role

__all__ = ["einsum", "gemm", "generic", "matmul", "resized", "rnn"]


def resized(axes: tuple[Axis, ...], dims: tuple[Dim, ...] | None, batch: Dim) -> Axes:
    """``axes`` with the sizes ``dims`` (unknown roles where the ranks differ)."""
    if dims is None or len(dims) != len(axes):
        return axes if dims is None else _unknown(dims, batch)
    return tuple(_plain(d, axis) for d, axis in zip(dims, axes))


def generic(ins: list[Axes], dims: tuple[Dim, ...] | None, batch: Dim) -> Axes:
    """An operator featvis knows nothing about: the first input's roles where sizes
    agree, unknown elsewhere."""
    if dims is None:
        return None
    first = next((a for a in ins if a is not None), None)
    if first is None:
        return _unknown(dims, batch)
    if len(first) != len(dims):
        return _unknown(dims, batch)
    return tuple(axis if _size(axis) == d else ((d, "?"),) for axis, d in zip(first, dims))


def matmul(a: Axes, b: Axes, dims: tuple[Dim, ...] | None, batch: Dim) -> Axes:
    if dims is None:
        return None
    if a is None and b is not None and len(b) >= 2:  # weight @ activation
        out = (*_batch_dims(None, b, len(dims) - 2), _fixed(dims[-2]), b[-1])
        return resized(out, dims, batch)
    if a is None or len(a) < 2 or len(dims) < 2:
        return _unknown(dims, batch)
    last = b[-1] if b is not None and len(b) >= 2 else ((dims[-1], "C"),)
    out = (*_batch_dims(a, b, len(dims) - 2), a[-2], last)
    return resized(out, dims, batch)


def _batch_dims(a: Axes, b: Axes, count: int) -> list[Axis]:
    """The broadcast leading axes of a batched MatMul."""
    lead_a = list(a[:-2]) if a is not None else []
    lead_b = list(b[:-2]) if b is not None else []
    out: list[Axis] = []
    for k in range(count):
        ja, jb = k - (count - len(lead_a)), k - (count - len(lead_b))
        choices = [x[j] for x, j in ((lead_a, ja), (lead_b, jb)) if j >= 0]
        known = [c for c in choices if axis_role(c) not in ("F", "?") or _size(c) != 1]
        out.append((known or choices or [_fixed(1)])[0])
    return out


def gemm(node: NodeProto, ins: list[Axes], dims: tuple[Dim, ...] | None, batch: Dim) -> Axes:
    a = ins[0]
    if a is None or dims is None or len(a) != 2:
        return generic(ins, dims, batch)
    attrs = attributes(node)
    rows = a[1] if attrs.get("transA", 0) else a[0]
    b = ins[1] if len(ins) > 1 else None
    cols = ((dims[1], "C"),) if b is None else b[0] if attrs.get("transB", 0) else b[1]
    return resized((rows, cols), dims, batch)


def einsum(node: NodeProto, ins: list[Axes], dims: tuple[Dim, ...] | None, batch: Dim) -> Axes:
    equation = str(attributes(node).get("equation", "")).replace(" ", "")
    if "->" not in equation or "." in equation or dims is None:
        return generic(ins, dims, batch)
    sources, target = equation.split("->")
    letters: dict[str, Axis] = {}
    for axes, spec in zip(ins, sources.split(",")):
        if axes is None:
            continue
        for letter, axis in zip(spec, axes):
            if letter not in letters or axis_role(letters[letter]) == "F":
                letters[letter] = axis
    out = tuple(letters.get(letter, ((d, "C"),)) for letter, d in zip(target, dims))
    return resized(out, dims, batch)


def rnn(node: NodeProto, first: tuple[Axis, ...], outs: list, batch: Dim) -> list[Axes]:
    if len(first) != 3:
        return [generic([first], d, batch) for d in outs]
    batch_first = bool(attributes(node).get("layout", 0))
    seq, rows = (first[1], first[0]) if batch_first else (first[0], first[1])
    found: list[Axes] = []
    for i, dims in enumerate(outs):
        if dims is None:
            found.append(None)
            continue
        if i == 0 and len(dims) == 4:  # Y: (T, dirs, N, H) or (N, T, dirs, H)
            y = (
                (rows, seq, _fixed(dims[2]), ((dims[3], "C"),))
                if batch_first
                else (seq, _fixed(dims[1]), rows, ((dims[3], "C"),))
            )
            found.append(resized(y, dims, batch))
        elif len(dims) == 3:  # Y_h, Y_c: (dirs, N, H) or (N, dirs, H)
            h = (
                (rows, _fixed(dims[1]), ((dims[2], "C"),))
                if batch_first
                else (_fixed(dims[0]), rows, ((dims[2], "C"),))
            )
            found.append(resized(h, dims, batch))
        else:
            found.append(_unknown(dims, batch))
    return found
