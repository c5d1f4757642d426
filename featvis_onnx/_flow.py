"""How every operator of the graph moves its inputs' axes to its outputs (:class:`Flow`),
in the factors and roles of :mod:`featvis_onnx._layout`.

- Convolutions, pooling, normalization and the other NCHW operators keep the batch and the
  spatial axes and make a new channel axis; global pooling and reductions leave fixed size-1
  axes; Transpose permutes; Reshape, Flatten, Squeeze and Unsqueeze regroup factors; Concat,
  Slice, Pad, Resize keep roles (with new sizes); MatMul, Gemm and Einsum follow their
  operands' axes, a weight adding a channel axis; LSTM, GRU and RNN read ``(T, N, I)`` (or
  ``(N, T, I)``) and write ``(T, dirs, N, H)``; Gather takes out one axis.
- Element-wise operators (and any operator whose output has an input's shape) keep roles,
  broadcasting as numpy does.
- Any other operator keeps, axis by axis, the roles of its first input where the sizes agree,
  and marks the rest unknown (``?``), which :func:`featvis._axes.place` resolves by the
  convention. A Reshape whose factors cannot be regrouped marks its axes scrambled (``X``):
  such a tensor is listed and refused, never drawn transposed.
- Constants, weights and shape computations have no axes at all: they are not layers. Neither
  is a tensor with no batch factor left (a scale computed from the whole input).

The symbolic batch dimension of a model with a dynamic batch helps too: an axis whose size is
that symbol is the batch, even after an operator featvis does not know.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from onnx import NodeProto

from featvis._axes import Merged, Role
from featvis_onnx._graph import GraphInfo, attributes, ints
from featvis_onnx._layout import (
    NHWC,
    UNKNOWN,
    Axes,
    Axis,
    Dim,
    _fixed,
    _plain,
    _regroup,
    _scrambled,
    _size,
    _unknown,
    axis_role,
    roles_of,
)
from featvis_onnx._linalg import einsum, gemm, generic, matmul, resized, rnn

__all__ = ["Flow", "axis_roles"]


# -- operators ---------------------------------------------------------------------------


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


#: Operators on NCHW input that make a new channel axis (a weight's output channels).
_CONV = _ops("Conv ConvTranspose QLinearConv ConvInteger FusedConv DeformConv NhwcFusedConv")
#: Operators on NCHW input that keep the channel axis and (resized) spatial axes.
_POOL = _ops(
    "MaxPool AveragePool LpPool QLinearAveragePool MaxRoiPool RoiAlign MaxUnpool DepthToSpace "
    "SpaceToDepth Col2Im"
)
#: Operators whose output 0 has input 0's shape and axes.
_SAME = _ops(
    "BatchNormalization InstanceNormalization LRN GroupNormalization MeanVarianceNormalization "
    "Softmax LogSoftmax Hardmax CumSum Identity Cast CastLike DynamicQuantizeLinear "
    "QuantizeLinear DequantizeLinear Dropout Trilu Shrink LayerNormalization "
    "SimplifiedLayerNormalization SkipLayerNormalization SkipSimplifiedLayerNormalization"
)
_GLOBAL = _ops("GlobalAveragePool GlobalMaxPool GlobalLpPool QLinearGlobalAveragePool")
_REDUCE = _ops(
    "ReduceMean ReduceSum ReduceMax ReduceMin ReduceProd ReduceL1 ReduceL2 ReduceLogSum "
    "ReduceLogSumExp ReduceSumSquare ArgMax ArgMin"
)
#: Operators whose output 0 has input 0's axes, with new sizes.
_KEEP = _ops("Slice Pad Resize Upsample Tile ReverseSequence Compress")
_RNN = _ops("LSTM GRU RNN")

Handler = Callable[[NodeProto, list[Axes], list[tuple[Dim, ...] | None], "Flow"], list[Axes]]


class Flow:
    """The axes of every tensor of a graph (see the module docstring)."""

    def __init__(self, g: GraphInfo, image: str | None, layout: str, batch: Dim) -> None:
        self.g = g
        self.batch = batch
        self.axes: dict[str, Axes] = {}
        if image is not None:
            dims = g.dims(image)
            if dims is not None and len(dims) == 4:
                n, a, b, c = dims
                if layout == NHWC:
                    self.axes[image] = (((n, "N"),), ((a, "H"),), ((b, "W"),), ((c, "C"),))
                else:
                    self.axes[image] = (((n, "N"),), ((a, "C"),), ((b, "H"),), ((c, "W"),))
            elif dims:  # not an image tensor: its batch first, nothing known of the rest
                self.axes[image] = (((dims[0], "N"),), *(((d, "?"),) for d in dims[1:]))
            else:
                self.axes[image] = UNKNOWN  # type: ignore[assignment]
        for node in g.nodes:
            read = [self._axes_of(name) for name in node.input]
            if all(axes is None for axes in read):
                # constants, weights, shape computations, and what is computed from values
                # without axes (a quantization scale of the whole batch): no axes either
                for name in node.output:
                    if name and any(n in self.axes for n in node.input):
                        self.axes[name] = None
                continue
            ins: list[Axes] = [None if a is UNKNOWN else a for a in read]
            outs = [self.g.dims(name) if name else None for name in node.output]
            if all(axes is None for axes in ins):  # read only tensors of unknown rank
                found: list[Axes] = [None if d is None else _unknown(d, batch) for d in outs]
            else:
                try:
                    found = self._node(node, ins, outs)
                except (IndexError, KeyError, TypeError, ValueError):
                    found = [None if d is None else _unknown(d, batch) for d in outs]
            for name, axes, dims in zip(node.output, found, outs):
                if not name or name in g.static or name in g.plumbing:
                    continue
                if dims is None:  # shape inference lost it: keep what the handler could tell
                    self.axes[name] = axes if axes is not None else UNKNOWN  # type: ignore[assignment]
                    continue
                if axes is not None and len(axes) != len(dims):
                    axes = _unknown(dims, batch)  # a handler's mistake must not mislead
                self.axes[name] = self._with_batch_symbol(axes, dims)

    def _axes_of(self, name: str) -> Axes:
        if not name or name in self.g.static or name in self.g.plumbing:
            return None
        return self.axes.get(name)

    def _with_batch_symbol(self, axes: Axes, dims: tuple[Dim, ...] | None) -> Axes:
        """Where data flow lost the batch, the model's own batch symbol still names it."""
        if axes is None or dims is None or not isinstance(self.batch, str):
            return axes
        roles = roles_of(axes) or ()
        if "N" in roles or any(isinstance(r, Merged) for r in roles):
            return axes
        return tuple(
            ((d, "N"),) if d == self.batch and axis_role(axis) == "?" else axis
            for axis, d in zip(axes, dims)
        )

    # -- per operator ----------------------------------------------------------------------

    def _node(
        self, node: NodeProto, ins: list[Axes], outs: list[tuple[Dim, ...] | None]
    ) -> list[Axes]:
        op = node.op_type
        first = ins[0] if ins else None
        shape0 = outs[0] if outs else None
        if op in ("Shape", "Size", "NonZero", "ConstantOfShape", "Range"):
            return [None for _ in outs]
        if op in _CONV and first is not None:
            return [self._conv(first, shape0)] + [None] * (len(outs) - 1)
        if op in _POOL and first is not None:
            return [self._resized(first, d) if d is not None else None for d in outs]
        if op in _GLOBAL and first is not None:
            return [(first[0], first[1], *(_fixed(1) for _ in first[2:]))]
        if op in _REDUCE and first is not None:
            return [self._reduce(node, first, ins)]
        if op in _SAME and first is not None:
            if op == "DynamicQuantizeLinear":
                return [first, None, None]  # the scale and zero point: one value per batch
            if op in ("BatchNormalization", "Dropout"):
                return [first] + [None] * (len(outs) - 1)  # running stats, the mask
            # the same shape, even where inference lost the sizes; normalization statistics
            # (LayerNormalization's mean and inverse std) are reduced along the normalized axes
            return [first] + [self._reduced_to(first, d) for d in outs[1:]]
        if op in _KEEP and first is not None:
            return [self._resized(first, d) if d is not None else first for d in outs]
        if op == "Transpose" and first is not None:
            perm = list(attributes(node).get("perm") or reversed(range(len(first))))  # type: ignore[call-overload]
            return [tuple(first[p] for p in perm)]
        if op in ("Squeeze", "Unsqueeze") and first is not None:
            return [self._squeeze(node, first, shape0)]
        if op == "Flatten" and first is not None:
            split = int(attributes(node).get("axis", 1)) % (len(first) + 1)  # type: ignore[call-overload]
            outer = tuple(f for axis in first[:split] for f in axis) or ((1, "F"),)
            inner = tuple(f for axis in first[split:] for f in axis) or ((1, "F"),)
            return [(outer, inner)]
        if op == "Reshape" and first is not None:
            if op == "Reshape" and (shape0 is None or None in shape0):
                shape0 = self._reshape_target(node, first) or shape0
            return [self._reshape(first, shape0, node)]
        if op == "Concat":
            return [self._concat(node, ins, shape0)]
        if op in ("Split", "SplitToSequence", "Unique", "TopK", "SequenceAt"):
            return [self._resized(first, d) if d is not None and first else None for d in outs]
        if op in ("Gather", "GatherElements"):
            return [self._gather(node, ins, shape0)]
        if op in ("MatMul", "MatMulInteger", "QLinearMatMul"):
            b = 3 if op == "QLinearMatMul" else 1
            return [matmul(ins[0], ins[b] if len(ins) > b else None, shape0, self.batch)]
        if op in ("Gemm", "QGemm"):
            return [gemm(node, ins, shape0, self.batch)]
        if op == "Einsum":
            return [einsum(node, ins, shape0, self.batch)]
        if op in _RNN and first is not None:
            return rnn(node, first, outs, self.batch)
        if op == "Expand" and first is not None:
            return [self._broadcast([(first, self._dims(node.input[0]))], shape0)]
        if op in _ELEMENTWISE_ANY or _elementwise(ins, outs, node, self.g):
            operands = [(a, self._dims(name)) for a, name in zip(ins, node.input)]
            return [self._broadcast(operands, d) for d in outs]
        return [self._generic(ins, d) for d in outs]

    def _dims(self, name: str) -> tuple[Dim, ...] | None:
        return self.g.dims(name) if name else None

    def _resized(self, axes: tuple[Axis, ...], dims: tuple[Dim, ...] | None) -> Axes:
        return resized(axes, dims, self.batch)

    def _reduced_to(self, axes: tuple[Axis, ...], dims: tuple[Dim, ...] | None) -> Axes:
        if dims is None or len(dims) != len(axes):
            return None
        return tuple(axis if d == _size(axis) else _fixed(d) for d, axis in zip(dims, axes))

    def _conv(self, first: tuple[Axis, ...], dims: tuple[Dim, ...] | None) -> Axes:
        if dims is None or len(dims) != len(first):
            return None if dims is None else _unknown(dims, self.batch)
        spatial = [_plain(d, axis) for d, axis in zip(dims[2:], first[2:])]
        return (first[0], ((dims[1], "C"),), *spatial)

    def _reduce(self, node: NodeProto, first: tuple[Axis, ...], ins: list[Axes]) -> Axes:
        attrs = attributes(node)
        axes = ints(attrs.get("axes"))
        if not axes and len(node.input) > 1 and node.input[1]:
            axes = ints(self.g.const(node.input[1]))
        if node.op_type in ("ArgMax", "ArgMin"):
            axes = ints(attrs.get("axis", 0))
        rank = len(first)
        if not axes:
            if attrs.get("noop_with_empty_axes", 0):
                return first
            axes = list(range(rank))
        gone = {a % rank for a in axes}
        if attrs.get("keepdims", 1):
            return tuple(_fixed(1) if i in gone else axis for i, axis in enumerate(first))
        return tuple(axis for i, axis in enumerate(first) if i not in gone)

    def _reshape_target(self, node: NodeProto, first: tuple[Axis, ...]) -> tuple[Dim, ...] | None:
        """A Reshape's output shape from its constant target, where inference left it open."""
        target = self.g.const(node.input[1]) if len(node.input) > 1 else None
        if target is None:
            return None
        sizes = [_size(axis) for axis in first]
        out: list[Dim] = []
        for i, d in enumerate(int(v) for v in target.reshape(-1)):
            out.append(sizes[i] if d == 0 and i < len(sizes) else None if d == -1 else d)
        whole = [d for d in sizes if isinstance(d, int)]
        if out.count(None) == 1 and len(whole) == len(sizes):
            known = int(np.prod([d for d in out if isinstance(d, int)]))
            total = int(np.prod(whole))
            out[out.index(None)] = total // known if known and total % known == 0 else None
        return tuple(out)

    def _reshape(
        self, first: tuple[Axis, ...], dims: tuple[Dim, ...] | None, node: NodeProto | None = None
    ) -> Axes:
        if dims is None:
            return None
        regrouped = _regroup(first, dims)
        if regrouped is not None:
            return regrouped
        like = self._shape_source(node)
        if like is not None and all(axis_role(axis) == "?" for axis in first):
            # reshaped back to the shape of a tensor featvis knows (how exporters write
            # GroupNorm: a reshape to groups, InstanceNormalization, a reshape back)
            return like
        sizes = {size for axis in first for size, _ in axis}
        lost = any(d is None or (isinstance(d, str) and d not in sizes) for d in dims)
        if lost or all(axis_role(axis) == "?" for axis in first):
            return _unknown(dims, self.batch)  # nothing known to contradict
        roles = roles_of(first) or ()
        if all(role == "?" for role in roles):
            return _unknown(dims, self.batch)
        return _scrambled(dims)  # known axes, mixed in a way the factors do not show

    def _squeeze(
        self, node: NodeProto, first: tuple[Axis, ...], dims: tuple[Dim, ...] | None
    ) -> Axes:
        axes = ints(attributes(node).get("axes"))
        if not axes and len(node.input) > 1 and node.input[1]:
            axes = ints(self.g.const(node.input[1]))
        if node.op_type == "Squeeze":
            rank = len(first)
            if not axes:
                gone = {i for i, axis in enumerate(first) if _size(axis) == 1}
            else:
                gone = {a % rank for a in axes}
            return tuple(axis for i, axis in enumerate(first) if i not in gone)
        if not axes or dims is None:
            return self._reshape(first, dims)
        rank = len(dims)
        inserted = {a % rank for a in axes}
        rest = iter(first)
        return tuple(_fixed(1) if i in inserted else next(rest) for i in range(rank))

    def _shape_source(self, node: NodeProto | None) -> Axes:
        """The axes of ``t`` when a Reshape's target is ``Shape(t)``."""
        if node is None or node.op_type != "Reshape" or len(node.input) < 2:
            return None
        index = self.g.producer.get(node.input[1])
        if index is None:
            return None
        shape_node = self.g.nodes[index]
        whole = attributes(shape_node).get("start", 0) == 0 and "end" not in attributes(shape_node)
        if shape_node.op_type != "Shape" or not whole or not shape_node.input:
            return None
        found = self.axes.get(shape_node.input[0])
        return found if isinstance(found, tuple) else None

    def _concat(self, node: NodeProto, ins: list[Axes], dims: tuple[Dim, ...] | None) -> Axes:
        dynamic = [a for a in ins if a is not None]
        if not dynamic or dims is None:
            return None
        axis = int(attributes(node).get("axis", 0)) % len(dims)  # type: ignore[call-overload]
        base = dynamic[0]
        if len(base) != len(dims):
            return _unknown(dims, self.batch)
        out: list[Axis] = []
        for k, d in enumerate(dims):
            if k == axis:
                roles = [axis_role(a[k]) for a in dynamic]
                role = next((r for r in roles if r not in ("F", "?")), roles[0])
                out.append(((d, "X"),) if isinstance(role, Merged) else ((d, role),))
            else:
                out.append(_plain(d, base[k]))
        return tuple(out)

    def _gather(self, node: NodeProto, ins: list[Axes], dims: tuple[Dim, ...] | None) -> Axes:
        data = ins[0]
        if data is None or dims is None:
            return self._generic(ins, dims)
        if node.op_type == "GatherElements":
            return self._resized(data, dims)
        axis = int(attributes(node).get("axis", 0)) % len(data)  # type: ignore[call-overload]
        indices = ins[1] if len(ins) > 1 else None
        index_dims = self._dims(node.input[1]) or ()
        if indices is not None:
            middle = indices
        elif len(index_dims) == 1 and not isinstance(axis_role(data[axis]), Merged):
            # some entries of one axis (channels 0, 2, 4...): the axis's role, fewer of them
            middle = (_plain(index_dims[0], data[axis]),)
        else:
            # a scalar index takes the axis out; indices of higher rank reshuffle the data in
            # a way only their values tell (how exporters write as_strided)
            middle = tuple(((d, "?"),) for d in index_dims)
        out = (*data[:axis], *middle, *data[axis + 1 :])
        if len(out) != len(dims):
            return _unknown(dims, self.batch)
        return self._resized(out, dims)

    def _broadcast(
        self, operands: list[tuple[Axes, tuple[Dim, ...] | None]], dims: tuple[Dim, ...] | None
    ) -> Axes:
        if dims is None:
            # inference lost the shape (a CastLike operand...): one activation and constants
            # give the activation's shape, as constants broadcast to it
            dynamic = [axes for axes, _ in operands if axes is not None]
            return dynamic[0] if len(dynamic) == 1 else None
        rank = len(dims)
        out: list[Axis] = []
        for k, d in enumerate(dims):
            choices: list[Axis] = []
            for axes, operand_dims in operands:
                if axes is None:
                    continue
                j = k - (rank - len(axes))
                if j < 0:
                    continue
                size = operand_dims[j] if operand_dims is not None else _size(axes[j])
                if size == 1 and d != 1:
                    continue  # broadcast along this axis: says nothing about it
                choices.append(axes[j])
            if not choices:
                out.append(_fixed(d))
                continue
            out.append(_plain(d, min(choices, key=_rank_of_role)))
        return tuple(out)

    def _generic(self, ins: list[Axes], dims: tuple[Dim, ...] | None) -> Axes:
        return generic(ins, dims, self.batch)


_ORDER = {"X": 0, "N": 1, "L": 2, "H": 3, "W": 3, "C": 4, "F": 5, "?": 6}


def _rank_of_role(axis: Axis) -> int:
    role = axis_role(axis)
    return 1 if isinstance(role, Merged) else _ORDER.get(role, 6)


#: Element-wise operators, whatever their inputs' shapes.
_ELEMENTWISE_ANY = _ops(
    "Add Sub Mul Div Pow Max Min Sum Mean Where Equal Less Greater LessOrEqual GreaterOrEqual "
    "And Or Xor Mod BitShift PRelu QLinearAdd QLinearMul Relu LeakyRelu Clip Sigmoid Tanh "
    "HardSigmoid HardSwish Gelu FastGelu BiasGelu Elu Selu Celu Softplus Softsign Mish Swish "
    "ThresholdedRelu Neg Abs Exp Log Sqrt Reciprocal Erf Floor Ceil Round Sign Not IsNaN IsInf "
    "Sin Cos Tan Asin Acos Atan Sinh Cosh Asinh Acosh Atanh QLinearSigmoid QLinearLeakyRelu "
    "QuickGelu BiasAdd"
)


def _elementwise(
    ins: list[Axes], outs: list[tuple[Dim, ...] | None], node: NodeProto, g: GraphInfo
) -> bool:
    """Whether an unknown operator's output has the shape of one of its dynamic inputs."""
    if len(outs) != 1 or outs[0] is None:
        return False
    return any(axes is not None and g.dims(name) == outs[0] for axes, name in zip(ins, node.input))


def axis_roles(
    g: GraphInfo, image: str | None, layout: str, batch: Dim
) -> dict[str, tuple[Role, ...] | None]:
    """The roles of every dynamic tensor's axes (``None`` for one that has none), from the
    image input named ``image`` of ``layout`` (``NCHW`` or ``NHWC``) whose batch dimension is
    ``batch`` (an int when fixed, its symbol when dynamic)."""
    flow = Flow(g, image, layout, batch)
    return {name: roles_of(axes) for name, axes in flow.axes.items()}
