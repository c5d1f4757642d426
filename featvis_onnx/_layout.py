"""Turning what ONNX Runtime returns into NCHW float32: layouts and quantization.

**Layout.** ONNX's spatial operators (Conv, pooling, normalization...) are NCHW by definition,
but graphs converted from TensorFlow (tf2onnx) keep NHWC tensors between Transposes. The layout
of every 4-D tensor is followed from the image input through the graph: spatial operators make
NCHW; element-wise operators, activations, Pad, Resize, Slice and quantization keep their input's
layout (their 4-D operands must agree); a Transpose with ``perm=[0, 2, 3, 1]`` turns NCHW into
NHWC and ``[0, 3, 1, 2]`` turns it back. Anything else (a Reshape to 4-D, another permutation)
makes the layout unknown. In a graph without NHWC tensors an unknown layout is NCHW, the ONNX
convention; in a graph with them, asking for such a tensor raises :class:`featvis.LayoutError`
rather than drawing a transposed picture.

**Quantization.** Integer activations are dequantized as ``(q - zero_point) * scale``, with the
scale and zero point of the operator that produced them: QuantizeLinear, QLinearConv,
QLinearMatMul and the other QLinear operators; MaxPool, Reshape, Transpose and friends pass
their input's parameters on. A DequantizeLinear of such a tensor is not listed: it holds the
same values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import NodeProto

from featvis import LayoutError, ModelError, as_nchw
from featvis_onnx._graph import FLOAT_TYPES, QUANT_TYPES, GraphInfo, attributes

__all__ = ["NCHW", "NHWC", "Quantization", "TensorPlan", "layouts", "quantizations"]

NCHW = "NCHW"
NHWC = "NHWC"


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


_SPATIAL = _ops(
    "Conv ConvTranspose QLinearConv ConvInteger FusedConv MaxPool AveragePool GlobalAveragePool "
    "GlobalMaxPool LpPool GlobalLpPool QLinearAveragePool QLinearGlobalAveragePool "
    "BatchNormalization InstanceNormalization LRN GroupNormalization DepthToSpace SpaceToDepth "
    "MaxUnpool MaxRoiPool RoiAlign"
)
_KEEP = _ops(
    "Relu LeakyRelu PRelu Clip Sigmoid Tanh HardSigmoid HardSwish Gelu Elu Selu Celu Softplus "
    "Softsign Mish Swish ThresholdedRelu Dropout Identity Cast QuantizeLinear DequantizeLinear "
    "Pad Resize Upsample Slice Neg Abs Exp Log Sqrt Reciprocal Erf Floor Ceil Round Sign Not "
    "LayerNormalization Add Sub Mul Div Pow Max Min Sum Mean Where Concat QLinearAdd QLinearMul "
    "QLinearConcat QLinearSigmoid QLinearLeakyRelu"
)
_TO_NHWC = [0, 2, 3, 1]
_TO_NCHW = [0, 3, 1, 2]

#: Operators that pass an integer input's quantization to output 0 unchanged.
_PASS_QUANT = _ops(
    "MaxPool Reshape Flatten Transpose Squeeze Unsqueeze Identity Slice Pad Resize Upsample "
    "DepthToSpace SpaceToDepth Split GlobalMaxPool"
)
#: Where the output scale and zero point of quantizing operators are: (scale, zero point).
_QUANT_AT = {
    "QuantizeLinear": (1, 2),
    "QLinearConv": (6, 7),
    "QLinearMatMul": (6, 7),
    "QLinearAdd": (6, 7),
    "QLinearMul": (6, 7),
    "QGemm": (7, 8),
    "QLinearAveragePool": (3, 4),
    "QLinearGlobalAveragePool": (3, 4),
    "QLinearSigmoid": (3, 4),
    "QLinearLeakyRelu": (3, 4),
    "QLinearConcat": (0, 1),
}


def input_layout(shape: tuple[int | None, ...] | None) -> str:
    """NCHW unless the shape says channels-last: (N, H, W, 1 or 3) with dim 1 not 1 or 3."""
    if shape is not None and len(shape) == 4 and shape[3] in (1, 3) and shape[1] not in (1, 3):
        return NHWC
    return NCHW


def layouts(g: GraphInfo, image_input: str | None, image_layout: str) -> dict[str, str | None]:
    """The layout (NCHW, NHWC or None for unknown) of every 4-D dynamic tensor."""
    found: dict[str, str | None] = {}
    if image_input is not None:
        found[image_input] = image_layout
    for v in g.inputs:
        shape = g.shape(v.name)
        if v.name not in found and shape is not None and len(shape) == 4:
            found[v.name] = input_layout(shape)
    for i, node in enumerate(g.nodes):
        rank4 = [n for n in node.output if n and (s := g.shape(n)) is not None and len(s) == 4]
        if not rank4:
            continue
        layout = _node_layout(node, g, found, g.dynamic_reads(i))
        for name in rank4:
            found[name] = layout
    return found


def _node_layout(
    node: NodeProto, g: GraphInfo, found: dict[str, str | None], reads: list[str]
) -> str | None:
    op = node.op_type
    if op in _SPATIAL:
        return NCHW
    operands = [found.get(n) for n in reads if (s := g.shape(n)) is not None and len(s) == 4]
    if op == "Transpose":
        perm = list(attributes(node).get("perm") or [])  # type: ignore[call-overload]
        source = operands[0] if operands else None
        if perm == [0, 1, 2, 3]:
            return source
        if perm == _TO_NHWC and source == NCHW:
            return NHWC
        if perm == _TO_NCHW and source == NHWC:
            return NCHW
        return None
    if op in _KEEP and operands and all(o == operands[0] for o in operands):
        return operands[0]
    return None


@dataclass(frozen=True)
class Quantization:
    """How to dequantize a tensor: ``(q - zero_point) * scale`` along ``axis``."""

    scale: np.ndarray
    zero_point: np.ndarray
    axis: int = 1

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        scale, zero = self.scale.astype(np.float32), self.zero_point.astype(np.float32)
        if scale.ndim == 1 and scale.size > 1:  # per-channel: broadcast along the axis
            shape = [1] * q.ndim
            shape[self.axis % q.ndim] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        return (q.astype(np.float32) - zero) * scale


def quantizations(g: GraphInfo) -> dict[str, Quantization]:
    """The dequantization of every integer activation whose scale and zero point are known."""
    found: dict[str, Quantization] = {}
    for node in g.nodes:
        out = node.output[0] if node.output else ""
        at = _QUANT_AT.get(node.op_type)
        elem_type = g.elem_type(out)
        # Outputs of com.microsoft operators are often untyped: shape inference skips them.
        if (
            not out
            or out in g.static
            or elem_type not in (QUANT_TYPES if at is None else {*QUANT_TYPES, None})
        ):
            continue
        if at is not None:
            scale = g.const(node.input[at[0]]) if at[0] < len(node.input) else None
            zero = g.const(node.input[at[1]]) if at[1] < len(node.input) else None
            if scale is not None:
                zero = np.zeros_like(scale, np.int32) if zero is None else zero
                axis = int(attributes(node).get("axis", 1))  # type: ignore[call-overload]
                found[out] = Quantization(scale.reshape(-1), zero.reshape(-1), axis)
        elif node.op_type in _PASS_QUANT and node.input and node.input[0] in found:
            for name in node.output if node.op_type == "Split" else node.output[:1]:
                found[name] = found[node.input[0]]
    return found


@dataclass(frozen=True)
class TensorPlan:
    """What to do with one requested tensor's raw output."""

    name: str
    layout: str | None  # None: 4-D with an unknown layout in a graph that has NHWC tensors
    quantization: Quantization | None = None
    rank: int | None = None  # from shape inference

    def convert(self, raw: np.ndarray) -> np.ndarray:
        """Raw ONNX Runtime output -> a new NCHW float32 array."""
        if raw.dtype.kind in "iu" and self.quantization is not None:
            raw = self.quantization.dequantize(raw)
        elif raw.dtype.kind != "f":
            raise ModelError(
                f"Tensor {self.name!r} holds {raw.dtype} values with no known quantization; "
                "featvis shows float activations and dequantizable integer ones."
            )
        if raw.ndim == 4:
            self.check_layout()
            if self.layout == NHWC:
                raw = raw.transpose(_TO_NCHW)
        return as_nchw(raw)

    def check_layout(self) -> None:
        """Raise :class:`LayoutError` if this tensor is 4-D and its layout is unknown."""
        if self.layout is None and self.rank in (4, None):
            raise LayoutError(
                f"Tensor {self.name!r} is 4-D but featvis cannot tell whether it is NCHW or "
                "NHWC: this graph mixes layouts and the tensor comes from a Reshape or an "
                "unusual Transpose. Ask for a tensor nearer a convolution or pooling."
            )


def plan(
    name: str,
    g: GraphInfo,
    found_layouts: dict[str, str | None],
    quant: dict[str, Quantization],
    mixed: bool,
) -> TensorPlan:
    """The conversion for ``name``; ``mixed`` says whether the graph has NHWC tensors."""
    layout = found_layouts.get(name)
    if layout is None and not mixed:
        layout = NCHW
    shape = g.shape(name)
    return TensorPlan(
        name,
        layout,
        quant.get(name) if g.elem_type(name) not in FLOAT_TYPES else None,
        None if shape is None else len(shape),
    )
