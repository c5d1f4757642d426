"""Integer activations and how to dequantize them: ``(q - zero_point) * scale``.

Integer activations are dequantized with the scale and zero point of the operator that produced
them: QuantizeLinear, QLinearConv, QLinearMatMul and the other QLinear operators; MaxPool,
Reshape, Transpose and friends pass their input's parameters on. A DequantizeLinear of such a
tensor is not listed: it holds the same values. Scales computed at run time
(DynamicQuantizeLinear) are not constants: those integer tensors are not layers, and the float
tensors after them are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from featvis_onnx._graph import QUANT_TYPES, GraphInfo, attributes

__all__ = ["Quantization", "quantizations"]


def _ops(names: str) -> frozenset[str]:
    return frozenset(names.split())


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
