"""What a PyTorch module is, for people: its featvis kind and a MATLAB-like description.

:func:`kind_of` sorts a module into the core's :data:`featvis.KINDS`, so that aliases
(``conv1``, ``relu5``...) agree with every other backend. ReLU6 and ``Hardtanh(0, x)`` are
``"relu"``: ONNX exports them as ``Clip(0, x)``, which the ONNX backend also calls ``"relu"``.
:func:`describe` writes the text of MATLAB's ``net.Layers``, e.g.
``"96 11x11x3 convolutions with stride [4 4] and padding [2 2]"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from featvis_torch.models import Conv2dSame

__all__ = ["channel_axis", "describe", "kind_of"]

_CONV = (nn.modules.conv._ConvNd,)
_RELU = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.RReLU)
_ACT = (
    nn.Sigmoid,
    nn.Tanh,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.Mish,
    nn.Softplus,
    nn.Softsign,
    nn.Tanhshrink,
    nn.LogSigmoid,
    nn.Threshold,
    nn.GLU,
    nn.Hardshrink,
    nn.Softshrink,
)
_POOL = (
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._LPPoolNd,
    nn.modules.pooling._MaxUnpoolNd,
    nn.FractionalMaxPool2d,
    nn.FractionalMaxPool3d,
)
_BN = (nn.modules.batchnorm._NormBase,)  # BatchNorm1d/2d/3d, SyncBatchNorm (not InstanceNorm)
_NORM = (nn.LocalResponseNorm, nn.LayerNorm, nn.GroupNorm, nn.CrossMapLRN2d) + (
    (nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()  # torch >= 2.4
)
_FC = (nn.Linear, nn.Bilinear)
_DROP = (nn.modules.dropout._DropoutNd,)
_FLATTEN = (nn.Flatten, nn.Unflatten)
_PROB = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)
_RESIZE = (nn.Upsample,)
_RESHAPE = (nn.PixelShuffle, nn.PixelUnshuffle, nn.ChannelShuffle, nn.Fold, nn.Unfold)
_PAD = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)

# What the module types say about the channel axis of their output: what featvis_torch falls back
# to where it cannot trace the model at another size (see featvis._axes).
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,  # BatchNorm and InstanceNorm
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    *_POOL,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.Upsample,
    nn.PixelShuffle,
    nn.PixelUnshuffle,
    nn.ChannelShuffle,
    nn.Softmax2d,
    *_PAD,
)
_CHANNELS_LAST = (
    nn.Linear,
    nn.Bilinear,
    nn.LayerNorm,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNNBase,
    nn.TransformerEncoderLayer,
    nn.TransformerDecoderLayer,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)


def channel_axis(module: nn.Module) -> int | None:
    """The axis of ``module``'s output that holds channels, by the module's type: 1 for
    convolutions, pooling, BatchNorm...; -1 (the last) for ``Linear``, ``LayerNorm``, RNNs,
    attention; ``None`` when the type does not say (an activation works on any layout)."""
    if isinstance(module, _CHANNELS_FIRST):
        return 1
    if isinstance(module, _CHANNELS_LAST):
        return -1
    return None


def _is_instance_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.instancenorm._InstanceNorm)


def _is_clipped_relu(module: nn.Module) -> bool:
    """ReLU6, and Hardtanh with a floor of 0: both are ``Clip(0, max)`` in ONNX."""
    return isinstance(module, nn.Hardtanh) and float(module.min_val) == 0.0


def kind_of(module: nn.Module) -> str:
    """The featvis kind of a module (one of :data:`featvis.KINDS`).

    Examples
    --------
    >>> from torch import nn
    >>> kind_of(nn.Conv2d(3, 8, 3)), kind_of(nn.ReLU6()), kind_of(nn.SiLU())
    ('conv', 'relu', 'act')
    """
    if isinstance(module, _CONV):
        return "conv"
    if isinstance(module, _RELU) or _is_clipped_relu(module):
        return "relu"
    for kinds, kind in (
        (_ACT, "act"),
        (_POOL, "pool"),
        (_FC, "fc"),
        (_DROP, "drop"),
        (_FLATTEN, "flatten"),
        (_PROB, "prob"),
        (_RESIZE, "resize"),
        (_RESHAPE, "reshape"),
        (_PAD, "pad"),
        (_NORM, "norm"),
    ):
        if isinstance(module, kinds):
            return kind
    if _is_instance_norm(module):
        return "norm"
    if isinstance(module, _BN):
        return "bn"
    if isinstance(module, nn.Identity):
        return "identity"
    return "other"


def _seq(value: Any) -> str:
    """``(4, 4)`` -> ``"[4 4]"``, as MATLAB prints strides and paddings."""
    values = value if isinstance(value, Sequence) and not isinstance(value, str) else (value,)
    return "[" + " ".join(str(v) for v in values) + "]"


def _dims(value: Any, n: int) -> tuple[Any, ...]:
    if isinstance(value, Sequence) and not isinstance(value, str):
        return tuple(value)
    return (value,) * n


def _x(values: Sequence[Any]) -> str:
    return "x".join("*" if v is None else str(v) for v in values)


def _conv(module: Any) -> str:
    n = len(module.kernel_size)
    transposed = bool(module.transposed)
    per_group = (module.out_channels if transposed else module.in_channels) // module.groups
    what = "transposed convolutions" if transposed else "convolutions"
    text = (
        f"{module.out_channels} {_x((*module.kernel_size, per_group))} {what} "
        f"with stride {_seq(module.stride)}"
    )
    word = "cropping" if transposed else "padding"
    if isinstance(module, Conv2dSame) or module.padding == "same":
        text += f" and {word} 'same'"
    elif module.padding == "valid":
        text += f" and {word} {_seq((0,) * n)}"
    else:
        text += f" and {word} {_seq(module.padding)}"
    if any(d != 1 for d in module.dilation):
        text += f" and dilation {_seq(module.dilation)}"
    if module.groups > 1:
        text += f" ({module.groups} groups)"
    return text


def _spatial_dims(module: nn.Module) -> int:
    """1, 2 or 3: how many spatial dimensions a pooling module works on."""
    for n, names in ((1, "1d"), (3, "3d")):
        if any(cls.__name__.endswith(names) for cls in type(module).__mro__):
            return n
    return 2


def _pool(module: Any) -> str:
    n = _spatial_dims(module)
    adaptive = (nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)
    if isinstance(module, adaptive):
        what = "average" if isinstance(module, nn.modules.pooling._AdaptiveAvgPoolNd) else "max"
        size = _dims(module.output_size, n)
        if all(s == 1 for s in size):
            return f"global {what} pooling"
        return f"adaptive {what} pooling to {_x(size)}"
    if isinstance(module, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd)):
        what = "max" if isinstance(module, nn.modules.pooling._MaxPoolNd) else "average"
        kernel = _dims(module.kernel_size, n)
        stride = _dims(module.stride or module.kernel_size, n)
        text = (
            f"{_x(kernel)} {what} pooling with stride {_seq(stride)} "
            f"and padding {_seq(_dims(module.padding, n))}"
        )
        dilation = _dims(getattr(module, "dilation", 1), n)
        if any(d != 1 for d in dilation):
            text += f" and dilation {_seq(dilation)}"
        return text + (" (ceil mode)" if module.ceil_mode else "")
    if isinstance(module, nn.modules.pooling._LPPoolNd):
        kernel = _dims(module.kernel_size, n)
        stride = _dims(module.stride or module.kernel_size, n)
        return (
            f"{_x(kernel)} power-average pooling (p={module.norm_type:g}) "
            f"with stride {_seq(stride)}"
        )
    return "max unpooling" if isinstance(module, nn.modules.pooling._MaxUnpoolNd) else "max pooling"


def _upsample(module: Any) -> str:
    mode = module.mode
    if module.size is not None:
        size = module.size if isinstance(module.size, Sequence) else (module.size,)
        return f"resize to {_x(size)} ({mode})"
    factor = module.scale_factor
    factors = factor if isinstance(factor, Sequence) else (factor,)
    return f"{mode} upsampling by {_x([f'{float(f):g}' for f in factors])}"


def _activation(module: Any) -> str:
    if isinstance(module, nn.ReLU6):
        return "clipped ReLU (ceiling 6)"
    if _is_clipped_relu(module):
        return f"clipped ReLU (ceiling {float(module.max_val):g})"
    if isinstance(module, nn.ReLU):
        return "ReLU"
    if isinstance(module, nn.LeakyReLU):
        return f"leaky ReLU with scale {module.negative_slope:g}"
    if isinstance(module, nn.PReLU):
        return f"parametric ReLU with {module.num_parameters} slopes"
    if isinstance(module, nn.RReLU):
        return f"randomized leaky ReLU with scale in [{module.lower:g}, {module.upper:g}]"
    names = {
        nn.Sigmoid: "sigmoid",
        nn.Tanh: "tanh",
        nn.SiLU: "SiLU (swish)",
        nn.Hardswish: "hard swish",
        nn.Hardsigmoid: "hard sigmoid",
        nn.SELU: "SELU",
        nn.Mish: "mish",
        nn.Softsign: "softsign",
        nn.LogSigmoid: "log sigmoid",
    }
    for cls, text in names.items():
        if isinstance(module, cls):
            return text
    if isinstance(module, nn.GELU):
        return "GELU" + (" (tanh approximation)" if module.approximate == "tanh" else "")
    if isinstance(module, (nn.ELU, nn.CELU)):
        return f"{type(module).__name__} with alpha {module.alpha:g}"
    if isinstance(module, nn.Softplus):
        return f"softplus with beta {module.beta:g}"
    if isinstance(module, nn.Hardtanh):
        return f"hard tanh clipped to [{float(module.min_val):g}, {float(module.max_val):g}]"
    return type(module).__name__


def _norm(module: Any) -> str:
    if isinstance(module, (nn.LocalResponseNorm, nn.CrossMapLRN2d)):
        return f"cross channel normalization with {module.size} channels per element"
    if isinstance(module, nn.LayerNorm):
        return f"layer normalization over {_seq(module.normalized_shape)}"
    if isinstance(module, nn.GroupNorm):
        return (
            f"group normalization with {module.num_groups} groups "
            f"and {module.num_channels} channels"
        )
    if isinstance(module, _NORM):
        return f"RMS normalization over {_seq(module.normalized_shape)}"
    if _is_instance_norm(module):
        return f"instance normalization with {module.num_features} channels"
    return f"batch normalization with {module.num_features} channels"


def _dropout(module: Any) -> str:
    percent = f"{module.p * 100:g}%"
    if isinstance(module, (nn.AlphaDropout, nn.FeatureAlphaDropout)):
        return f"{percent} alpha dropout"
    if isinstance(module, (nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)):
        return f"{percent} channel dropout"
    return f"{percent} dropout"


def describe(module: nn.Module) -> str:
    """A MATLAB-like description of a module, e.g. ``"4096 fully connected layer"``.

    Examples
    --------
    >>> from torch import nn
    >>> describe(nn.Conv2d(3, 96, 11, stride=4))
    '96 11x11x3 convolutions with stride [4 4] and padding [0 0]'
    >>> describe(nn.MaxPool2d(3, 2))
    '3x3 max pooling with stride [2 2] and padding [0 0]'
    >>> describe(nn.Dropout()), describe(nn.ReLU6())
    ('50% dropout', 'clipped ReLU (ceiling 6)')
    """
    kind = kind_of(module)
    if kind == "conv":
        return _conv(module)
    if kind in ("relu", "act"):
        return _activation(module)
    if kind == "pool":
        return _pool(module)
    if kind in ("bn", "norm"):
        return _norm(module)
    if kind == "drop":
        return _dropout(module)
    if isinstance(module, nn.Linear):
        return f"{module.out_features} fully connected layer"
    if isinstance(module, nn.Bilinear):
        return f"{module.out_features} bilinear fully connected layer"
    if isinstance(module, nn.Upsample):
        return _upsample(module)
    if isinstance(module, (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.Softmax2d)):
        return {"Softmax": "softmax", "LogSoftmax": "log softmax", "Softmin": "softmin"}.get(
            type(module).__name__, "softmax over channels"
        )
    if isinstance(module, nn.Flatten):
        return "flatten"
    if isinstance(module, nn.Unflatten):
        return f"unflatten to {_x(module.unflattened_size)}"
    if kind == "pad":
        padding: Any = module.padding
        mode = type(module).__name__.split("Pad")[0].lower()
        return f"{mode} padding {_seq(padding)}"
    if isinstance(module, nn.PixelShuffle):
        return f"pixel shuffle by {module.upscale_factor}"
    if isinstance(module, nn.Identity):
        return "identity"
    return ""
