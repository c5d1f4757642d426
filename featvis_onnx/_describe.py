"""Kinds, parameter counts and MATLAB-like descriptions of ONNX nodes.

The wording follows MATLAB's ``net.Layers`` and is the same as featvis_torch's for the same
operation (``96 11x11x3 convolutions with stride [4 4] and padding [2 2]``), so a model reads
the same whichever backend lists it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import NodeProto

from featvis_onnx._graph import GraphInfo, attributes

__all__ = ["describe", "kind_of", "param_count"]

_KINDS: dict[str, str] = {}
for _kind, _ops in {
    "conv": "Conv ConvTranspose QLinearConv ConvInteger NhwcConv FusedConv",
    "relu": "Relu LeakyRelu PRelu",
    "act": "Sigmoid Tanh HardSigmoid HardSwish Gelu FastGelu QuickGelu Elu Selu Celu Softplus "
    "Softsign Mish Swish ThresholdedRelu QLinearSigmoid QLinearLeakyRelu",
    "pool": "MaxPool AveragePool GlobalAveragePool GlobalMaxPool LpPool GlobalLpPool "
    "QLinearAveragePool QLinearGlobalAveragePool",
    "bn": "BatchNormalization",
    "norm": "LRN LayerNormalization GroupNormalization InstanceNormalization RMSNormalization "
    "SimplifiedLayerNormalization SkipLayerNormalization MeanVarianceNormalization "
    "LpNormalization",
    "fc": "Gemm QGemm",
    "drop": "Dropout",
    "add": "Add Sum QLinearAdd",
    "mul": "Mul QLinearMul",
    "concat": "Concat QLinearConcat",
    "flatten": "Flatten",
    "reshape": "Reshape Transpose Squeeze Unsqueeze",
    "prob": "Softmax LogSoftmax",
    "resize": "Resize Upsample",
    "pad": "Pad",
    "identity": "Identity",
}.items():
    _KINDS.update(dict.fromkeys(_ops.split(), _kind))

_MATMUL = frozenset({"MatMul", "MatMulInteger", "QLinearMatMul"})
_REDUCE_POOL = {"ReduceMean": "average", "ReduceMax": "max"}

#: Inputs that hold learned weights, for the operators that have them.
_WEIGHTS: dict[str, tuple[int, ...]] = {
    "Conv": (1, 2),
    "ConvTranspose": (1, 2),
    "ConvInteger": (1,),
    "QLinearConv": (3, 8),
    "Gemm": (0, 1, 2),
    "QGemm": (3, 6),
    "MatMul": (0, 1),
    "MatMulInteger": (0, 1),
    "QLinearMatMul": (0, 3),
    "BatchNormalization": (1, 2),  # the running mean and variance are statistics, as in torch
    "InstanceNormalization": (1, 2),
    "LayerNormalization": (1, 2),
    "GroupNormalization": (1, 2),
    "RMSNormalization": (1,),
    "PRelu": (1,),
}
#: Element-wise operators whose constant operands (a bias, a scale) count as parameters.
_ELEMENTWISE = frozenset({"Add", "Sub", "Mul", "Div", "Sum"})


def _weight(node: NodeProto, g: GraphInfo) -> str | None:
    """The name of the constant operand of a matrix product, if it has one."""
    position = {"QLinearMatMul": (0, 3)}.get(node.op_type, (0, 1))
    for i in reversed(position):
        if i < len(node.input) and node.input[i] in g.static:
            return node.input[i]
    return None


def _reduced_hw(node: NodeProto, g: GraphInfo) -> bool:
    """Whether a ReduceMean/ReduceMax averages over H and W of a 4-D tensor (global pooling)."""
    shape = g.shape(node.input[0]) if node.input else None
    if shape is None or len(shape) != 4:
        return False
    axes = attributes(node).get("axes")
    if axes is None and len(node.input) > 1:
        value = g.const(node.input[1])
        axes = None if value is None else value.tolist()
    return axes is not None and {int(a) % 4 for a in axes} == {2, 3}  # type: ignore[attr-defined]


def _clip_bounds(node: NodeProto, g: GraphInfo) -> tuple[float | None, float | None]:
    attrs = attributes(node)
    low: object = attrs.get("min")
    high: object = attrs.get("max")
    if len(node.input) > 1:
        value = g.const(node.input[1])
        low = None if value is None else value
    if len(node.input) > 2:
        value = g.const(node.input[2])
        high = None if value is None else value
    return (
        None if low is None else float(np.asarray(low).reshape(-1)[0]),
        None if high is None else float(np.asarray(high).reshape(-1)[0]),
    )


def kind_of(node: NodeProto, g: GraphInfo) -> str:
    """The featvis kind (see :data:`featvis.KINDS`) of the layer a node's output makes."""
    op = node.op_type
    if op == "Clip":
        low, _ = _clip_bounds(node, g)
        return "relu" if low == 0.0 else "act"
    if op in _MATMUL:
        return "fc" if _weight(node, g) is not None else "other"
    if op in _REDUCE_POOL:
        return "pool" if _reduced_hw(node, g) else "other"
    return _KINDS.get(op, "other")


def param_count(node: NodeProto, g: GraphInfo) -> int:
    """Elements of the weights a node reads (initializers, possibly through Dequantize)."""
    positions = _WEIGHTS.get(node.op_type)
    if positions is None:
        if node.op_type not in _ELEMENTWISE:
            return 0
        positions = tuple(range(len(node.input)))
    total = 0
    for i in positions:
        if i < len(node.input) and node.input[i] in g.static:
            count = g.elements(node.input[i])
            if node.op_type in _ELEMENTWISE and count <= 1:
                continue  # x * 0.5 holds a constant, not a learned parameter
            total += count
    return total


def _vector(values: Sequence[object]) -> str:
    return "[" + " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "]"


def _padding(attrs: dict[str, object], spatial: int) -> str:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return "'same'"
    pads = list(attrs.get("pads") or [0] * (2 * spatial))  # type: ignore[call-overload]
    begin, end = pads[:spatial], pads[spatial:]
    if begin == end:
        return _vector(begin)
    # MATLAB's order for asymmetric padding: [top bottom left right]
    return _vector([p for pair in zip(begin, end) for p in pair])


def _window(node: NodeProto, g: GraphInfo, kernel: Sequence[int]) -> str:
    attrs = attributes(node)
    spatial = len(kernel)
    strides = list(attrs.get("strides") or [1] * spatial)  # type: ignore[call-overload]
    word = "cropping" if node.op_type == "ConvTranspose" else "padding"
    text = f"with stride {_vector(strides)} and {word} {_padding(attrs, spatial)}"
    dilations = list(attrs.get("dilations") or [1] * spatial)  # type: ignore[call-overload]
    if any(d != 1 for d in dilations):
        text += f" and dilation {_vector(dilations)}"
    return text


def _conv(node: NodeProto, g: GraphInfo) -> str:
    transposed = node.op_type == "ConvTranspose"
    weight = node.input[3] if node.op_type == "QLinearConv" else node.input[1]
    shape = g.shape(weight)
    group = int(attributes(node).get("group", 1))  # type: ignore[call-overload]
    if shape is None or any(d is None for d in shape) or len(shape) < 3:
        return "transposed convolution" if transposed else "convolution"
    # As featvis_torch: a transposed convolution's depth is its output channels per group.
    filters, depth = (shape[1] * group, shape[1]) if transposed else (shape[0], shape[1])
    size = "x".join(str(d) for d in shape[2:])
    what = "transposed convolutions" if transposed else "convolutions"
    text = f"{filters} {size}x{depth} {what} {_window(node, g, shape[2:])}"  # type: ignore[arg-type]
    return text + (f" ({group} groups)" if group > 1 else "")


def _pool(node: NodeProto, g: GraphInfo) -> str:
    op = node.op_type
    if op.startswith(("Global", "QLinearGlobal")) or op in _REDUCE_POOL:
        how = "max" if "Max" in op else "Lp" if "Lp" in op else "average"
        return f"global {how} pooling"
    kernel = list(attributes(node).get("kernel_shape") or [])  # type: ignore[call-overload]
    how = "max" if op == "MaxPool" else "Lp" if op == "LpPool" else "average"
    size = "x".join(str(k) for k in kernel)
    ceil = " (ceil mode)" if attributes(node).get("ceil_mode", 0) else ""
    return f"{size} {how} pooling {_window(node, g, kernel)}{ceil}"


def _fc(node: NodeProto, g: GraphInfo) -> str:
    weight = _weight(node, g) if node.op_type != "Gemm" else node.input[1]
    shape = g.shape(weight) if weight else None
    if not shape or shape[-1] is None:
        return "fully connected layer"
    if node.op_type == "Gemm":
        outputs = shape[0] if attributes(node).get("transB", 0) else shape[-1]
    else:
        outputs = shape[-1]
    return f"{outputs} fully connected layer"


def _relu(node: NodeProto, g: GraphInfo) -> str:
    op = node.op_type
    if op == "LeakyRelu":
        return f"leaky ReLU with scale {float(attributes(node).get('alpha', 0.01)):g}"  # type: ignore[arg-type]
    if op == "PRelu":
        slopes = g.elements(node.input[1]) if len(node.input) > 1 else 0
        return f"parametric ReLU with {slopes} slopes" if slopes else "parametric ReLU"
    if op == "Clip":
        low, high = _clip_bounds(node, g)
        if low == 0.0:
            return "ReLU" if high is None else f"clipped ReLU (ceiling {high:g})"
        bounds = [-np.inf if low is None else low, np.inf if high is None else high]
        return f"clip to {_vector(bounds)}"
    return "ReLU"


def _dropout(node: NodeProto, g: GraphInfo) -> str:
    ratio: object = attributes(node).get("ratio", 0.5)
    if len(node.input) > 1 and node.input[1]:
        value = g.const(node.input[1])
        ratio = 0.5 if value is None else float(value)
    return f"{float(ratio) * 100:g}% dropout"  # type: ignore[arg-type]


def _channels(node: NodeProto, g: GraphInfo, what: str) -> str:
    shape = g.shape(node.input[1]) if len(node.input) > 1 else None
    return f"{what} with {shape[0]} channels" if shape and shape[0] else what


def _quantize(node: NodeProto, g: GraphInfo) -> str:
    scale = g.const(node.input[1]) if len(node.input) > 1 else None
    zero = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    dtype = "uint8" if zero is None else str(zero.dtype)
    if scale is None or scale.size != 1:
        return f"quantize to {dtype}"
    point = 0 if zero is None else int(zero.reshape(-1)[0])
    return f"quantize to {dtype} (scale {float(scale.reshape(-1)[0]):.4g}, zero point {point})"


def _resize(node: NodeProto, g: GraphInfo, attrs: dict[str, object]) -> str:
    """In featvis_torch's words: ``bilinear upsampling by 2``, ``resize to 8x8 (nearest)``."""
    mode = attrs.get("mode", b"nearest")
    mode = mode.decode() if isinstance(mode, bytes) else str(mode)
    rank = len(g.shape(node.input[0]) or ())
    if mode in ("linear", "cubic"):
        mode = {3: "", 4: "bi", 5: "tri"}.get(rank, "") + mode  # torch's bilinear, trilinear
    scales = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if node.op_type == "Upsample" and len(node.input) > 1:
        scales = g.const(node.input[1])
    if scales is not None and scales.size > 2:
        factors = [f"{float(s):g}" for s in scales[2:]]
        shown = factors[0] if len(set(factors)) == 1 else "x".join(factors)
        return f"{mode} upsampling by {shown}"
    sizes = g.const(node.input[3]) if len(node.input) > 3 and node.input[3] else None
    if sizes is not None and sizes.size > 2:
        return f"resize to {'x'.join(str(int(s)) for s in sizes[2:])} ({mode})"
    return f"{mode} resize"


_PAD_MODES = {"constant": "constant", "reflect": "reflection", "edge": "replication"}


def _pad(node: NodeProto, g: GraphInfo, attrs: dict[str, object]) -> str:
    """As featvis_torch words padding modules: ``constant padding [1 1 2 2]``, in torch's
    order (last dimension first, begin then end)."""
    mode = attrs.get("mode", b"constant")
    mode = _PAD_MODES.get(mode.decode() if isinstance(mode, bytes) else str(mode), "circular")
    fill = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if mode == "constant" and (fill is None or not fill.any()):
        mode = "zero"  # torch's ZeroPad2d
    pads = attrs.get("pads")
    if pads is None and len(node.input) > 1:
        value = g.const(node.input[1])
        pads = None if value is None else value.tolist()
    if not pads:
        return f"{mode} padding"
    half = len(pads) // 2  # type: ignore[arg-type]
    begin, end = list(pads[:half]), list(pads[half:])  # type: ignore[index]
    while len(begin) > 1 and begin[0] == end[0] == 0:  # drop untouched leading dims (N, C)
        begin, end = begin[1:], end[1:]
    order = [p for b, e in zip(reversed(begin), reversed(end)) for p in (b, e)]
    return f"{mode} padding {_vector(order)}"


_SIMPLE = {
    "Sigmoid": "sigmoid",
    "Tanh": "tanh",
    "HardSigmoid": "hard sigmoid",
    "HardSwish": "hard swish",
    "Gelu": "GELU",
    "FastGelu": "GELU",
    "Selu": "SELU",
    "Softplus": "softplus with beta 1",
    "Softsign": "softsign",
    "Mish": "mish",
    "Swish": "SiLU (swish)",
    "Softmax": "softmax",
    "LogSoftmax": "log softmax",
    "Flatten": "flatten",
    "Identity": "identity",
    "Squeeze": "squeeze",
    "Unsqueeze": "unsqueeze",
    "DequantizeLinear": "dequantize",
}


def describe(node: NodeProto, g: GraphInfo) -> str:
    """MATLAB-like text for the layer a node makes, e.g. ``3x3 max pooling with stride [2 2]
    and padding [0 0]``; an empty string for operators without a description."""
    op, kind = node.op_type, kind_of(node, g)
    attrs = attributes(node)
    if kind == "conv" and op != "ConvInteger":
        return _conv(node, g)
    if kind == "pool":
        return _pool(node, g)
    if kind == "fc":
        return _fc(node, g)
    if kind == "relu" or op == "Clip":
        return _relu(node, g)
    if op == "Dropout":
        return _dropout(node, g)
    if op in ("BatchNormalization", "InstanceNormalization"):
        return _channels(node, g, f"{'batch' if op[0] == 'B' else 'instance'} normalization")
    if op == "LRN":
        return f"cross channel normalization with {attrs.get('size')} channels per element"
    if op == "GroupNormalization":
        channels = g.elements(node.input[1]) if len(node.input) > 1 else 0
        return f"group normalization with {attrs.get('num_groups')} groups and {channels} channels"
    if op == "LayerNormalization":
        shape = g.shape(node.input[1]) if len(node.input) > 1 else None
        return "layer normalization" + (f" over {_vector(list(shape))}" if shape else "")
    if op in ("Elu", "Celu"):
        return f"{op.upper()} with alpha {float(attrs.get('alpha', 1.0)):g}"  # type: ignore[arg-type]
    if op == "DepthToSpace":
        return f"pixel shuffle by {attrs.get('blocksize')}"
    if op == "QuantizeLinear":
        return _quantize(node, g)
    if kind in ("add", "mul", "concat"):
        count = sum(1 for name in node.input if name)
        if kind == "concat":
            axis = attrs.get("axis")
            return (
                f"depth concatenation of {count} inputs"
                if axis == 1
                else f"concatenation of {count} inputs along axis {axis}"
            )
        return f"element-wise {'addition' if kind == 'add' else 'multiplication'} of {count} inputs"
    if op == "Transpose":
        return f"transpose {_vector(list(attrs.get('perm') or []))}"  # type: ignore[call-overload]
    if op == "Reshape":
        target = g.const(node.input[1]) if len(node.input) > 1 else None
        return "reshape" if target is None else f"reshape to {_vector(target.tolist())}"
    if op in ("Resize", "Upsample"):
        return _resize(node, g, attrs)
    if op == "Pad":
        return _pad(node, g, attrs)
    return _SIMPLE.get(op, "")
