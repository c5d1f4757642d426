"""featvis.explain on ONNX models: every gradient-free method on an export equals the same
method on the torch model it came from (the backends agree, so their explanations must), and
on the embedded EfficientNet-Lite0 every class-discriminative method tells a cat from a cup.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
from PIL import Image

import featvis

from .conftest import torchvision_model

SIZE = 64


@pytest.fixture(scope="module")
def pair(
    export_onnx: Callable[..., Path], onnx_dir: Path
) -> tuple[featvis.Backend, featvis.Backend]:
    """ResNet-18 (random weights, batch norms not the identity) in torch and as ONNX."""
    model = torchvision_model("resnet18")
    path = export_onnx(model, onnx_dir / f"resnet18_{SIZE}.onnx", size=SIZE)
    preprocess = featvis.Preprocess(size=(SIZE, SIZE))
    return featvis.load(model, preprocess=preprocess), featvis.load(path, preprocess=preprocess)


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize((SIZE, SIZE)))


def _close(a: featvis.Explanation, b: featvis.Explanation) -> None:
    peak = float(np.abs(a.raw).max())
    assert peak > 0
    np.testing.assert_allclose(b.raw, a.raw, rtol=0, atol=1e-4 * peak)
    np.testing.assert_array_equal(b.targets, a.targets)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "options"),
    [
        ("eigencam", {}),
        ("cam", {}),
        ("scorecam", {}),
        ("ablationcam", {}),
        ("occlusion", {"window": 8}),
        ("rise", {"masks": 300}),
    ],
)
def test_each_gradient_free_method_on_onnx_equals_it_on_torch(
    pair: tuple[Any, Any], photo: np.ndarray, method: str, options: dict[str, Any]
) -> None:
    torch_backend, onnx_backend = pair
    on_torch = featvis.explain(torch_backend, photo, method=method, **options)
    on_onnx = featvis.explain(onnx_backend, photo, method=method, **options)
    _close(on_torch, on_onnx)
    if on_torch.layer is not None:
        assert onnx_backend.layer(on_onnx.layer).source == torch_backend.layer(on_torch.layer).name


@pytest.mark.slow
def test_ablationcam_inside_a_residual_block_on_onnx(
    pair: tuple[Any, Any], photo: np.ndarray
) -> None:
    # The ReLU inside layer4's first block: the block's input crosses the cut to its addition.
    # Ablation-CAM's weights (y - y_k) / y are differences of nearly equal scores, so each
    # float32 backend lands up to 1e-4 of the peak from the exact map (the model in float64):
    # 3.2e-5 (torch) and 9.7e-5 (ONNX Runtime) on the 2-core AMD EPYC, 1.3e-4 apart. Each is
    # held to 2e-4 of the exact map; a wrong cut (the residual input not crossing) is O(1).
    torch_backend, onnx_backend = pair
    on_torch = featvis.explain(torch_backend, photo, method="ablationcam", layer="layer4.0.relu#1")
    layer = onnx_backend.layer("layer4.0.relu#1")  # found by the module it was exported from
    on_onnx = featvis.explain(onnx_backend, photo, method="ablationcam", layer=layer.name)
    exact_backend = featvis.load(
        copy.deepcopy(torch_backend.model).double(), preprocess=torch_backend.preprocess
    )
    exact = featvis.explain(
        exact_backend, photo, method="ablationcam", layer="layer4.0.relu#1",
        target=int(on_torch.targets[0]),
    )  # fmt: skip
    peak = float(np.abs(exact.raw).max())
    for got in (on_torch, on_onnx):
        np.testing.assert_allclose(got.raw, exact.raw, rtol=0, atol=2e-4 * peak)
    np.testing.assert_array_equal(on_onnx.targets, on_torch.targets)
    from featvis_onnx._patch import _rests

    assert _rests[onnx_backend][layer.name].crossing, "the residual input crosses the cut"


@pytest.mark.slow
def test_a_gradient_method_on_onnx_says_what_works(
    pair: tuple[Any, Any], photo: np.ndarray
) -> None:
    with pytest.raises(featvis.CapabilityError) as info:
        featvis.explain(pair[1], photo, method="gradcam")
    message = str(info.value)
    assert "gradients" in message and "'onnx'" in message
    assert "scorecam" in message and "occlusion" in message and "layercam" not in message


# -- EfficientNet-Lite0: a cat on the left, an espresso on the right --------------------------


def _square(image: np.ndarray, side: int) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(image[top : top + s, left : left + s])
    return np.asarray(crop.resize((side, side), Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def cat_and_cup() -> np.ndarray:
    """scikit-image's Chelsea (a tabby) beside its coffee (an espresso), 224 x 448."""
    return np.concatenate(
        [_square(skimage.data.chelsea(), 224), _square(skimage.data.coffee(), 224)], axis=1
    )


@pytest.fixture(scope="module")
def lite0(onnx_dir: Path) -> tuple[Any, Any]:
    torch_backend = featvis.load_model("efficientnet_lite0")
    # the export records the preprocessing and the class names: the file opens as it is
    onnx_backend = featvis.load(torch_backend.to_onnx(onnx_dir / "lite0.onnx"))  # type: ignore[attr-defined]
    return torch_backend, onnx_backend


TARGETS = ["Egyptian cat", "espresso", ("Egyptian cat", "espresso")]
CLASS_DISCRIMINATIVE = [
    ("gradcam", {}), ("gradcampp", {}), ("xgradcam", {}), ("layercam", {}), ("hirescam", {}),
    ("cam", {}), ("scorecam", {}), ("ablationcam", {}), ("occlusion", {}),
    ("rise", {"masks": 1000}),
]  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize(("method", "options"), CLASS_DISCRIMINATIVE)
def test_the_cat_map_peaks_on_the_cat_and_the_espresso_map_on_the_cup(
    lite0: tuple[Any, Any], cat_and_cup: np.ndarray, method: str, options: dict[str, Any]
) -> None:
    torch_backend, onnx_backend = lite0
    # Gradient methods run in PyTorch; the gradient-free ones on the ONNX export (one set of
    # perturbed images serves the three targets of the same picture).
    gradient = method in ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
    backend = torch_backend if gradient else onnx_backend
    e = featvis.explain(backend, [cat_and_cup] * 3, method=method, target=TARGETS, **options)
    half = e.maps.shape[2] // 2
    for i, side in enumerate(["cat", "cup", "cat"]):
        m = e.maps[i]
        left, right = float(m[:, :half].mean()), float(m[:, half:].mean())
        column = int(np.unravel_index(np.argmax(m), m.shape)[1])
        where = (
            f"{e.target_names()[i]}: peak at column {column} of {2 * half}, "
            f"means {left:.3g} | {right:.3g}"
        )
        if side == "cat":
            assert left > right, where
        else:
            assert right > left, where
        if method == "occlusion" and i == 2:
            # Hiding the saucer below the cup raises espresso's score, so occlusion's
            # contrast map peaks there; its mass is on the cat (asserted above).
            continue
        assert (column < half) == (side == "cat"), where


@pytest.mark.slow
def test_stage_layers_and_fused_maps_on_onnx_equal_them_on_torch(
    lite0: tuple[Any, Any], photo: np.ndarray
) -> None:
    torch_backend, onnx_backend = lite0
    on_torch, on_onnx = featvis.stage_layers(torch_backend), featvis.stage_layers(onnx_backend)
    assert [layer.name for layer in on_torch] == [
        "_relu1",
        "_blocks.11._relu0",
        "_blocks.5._relu0",
    ]
    # the same layers by their aliases: the Pad the export puts before a conv ends no stage
    assert [layer.alias for layer in on_onnx] == [layer.alias for layer in on_torch]
    x = featvis.prepare_images([photo], torch_backend.preprocess)
    a = featvis.explain(torch_backend, x, method="eigencam", layer=on_torch)
    b = featvis.explain(onnx_backend, x, method="eigencam", layer=on_onnx)
    _close(a, b)


@pytest.mark.slow
def test_eigencam_is_not_class_discriminative(
    lite0: tuple[Any, Any], cat_and_cup: np.ndarray
) -> None:
    # The same map whatever the class: it shows where the layer is most active.
    e = featvis.explain(lite0[1], cat_and_cup, method="eigencam")
    assert e.targets.tolist() == [-1]
    with pytest.raises(featvis.ArgumentError, match="not class-discriminative"):
        featvis.explain(lite0[1], cat_and_cup, method="eigencam", target="espresso")
