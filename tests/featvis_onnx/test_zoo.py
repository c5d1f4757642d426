"""A zoo of timm architectures, PyTorch against its own ONNX export: exact, paired, batch-safe.

Each model gets random weights, then every BatchNorm non-trivial affine parameters and running
statistics measured on natural images (scikit-image's, with flips), as a trained model has: with
timm's defaults a BatchNorm is nearly the identity and a wrong pairing would pass by luck, and
statistics measured on noise leave deep random networks so ill-conditioned that float32 itself
disagrees with float32 from one batch size to the next. The architectures cover what the
layout rules must get right: RegNet and ResNeSt (BatchNormAct2d, attention splits), EfficientNetV2
and GhostNet (squeeze-excitation, empty shortcuts), MobileViT (a batch merged with patch
positions), ConvNeXt with conv_mlp=False (NHWC blocks), a ViT hybrid (tokens, a class token, a
model that runs at one size only), DLA (trees of concatenations).

``docs/make_zoo_table.py`` builds the table in docs/onnx.md from :func:`zoo_row`.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import skimage.data
import timm
import torch
from torch import nn

import featvis
from featvis_torch import TorchBackend

#: name -> (input size, extra arguments of timm.create_model)
ZOO: dict[str, tuple[int, dict[str, Any]]] = {
    "regnetx_002": (64, {}),
    "efficientnetv2_rw_t": (64, {}),
    "mobilevit_xxs": (128, {}),  # at 64 the last stage has one patch per axis
    "convnext_atto": (64, {"conv_mlp": False}),
    "ghostnet_050": (64, {}),
    "vit_tiny_r_s16_p8_224": (64, {"img_size": 64}),
    "resnest14d": (64, {}),
    "dla46_c": (64, {}),
}

#: What some modules' outputs are, by module-path suffix: what the rules must find.
LAYOUTS = {
    "convnext_atto": {"mlp.fc1": "NHWC", "blocks.0.norm": "NHWC", "conv_dw": "NCHW"},
    "vit_tiny_r_s16_p8_224": {"blocks.0.norm1": "NLC", "blocks.0.mlp.fc1": "NLC"},
    "mobilevit_xxs": {"transformer.0.norm1": "(NC)LC"},
    "regnetx_002": {"s1.b1.conv1.conv": "NCHW"},
}


def natural_images(size: int) -> list[np.ndarray]:
    images = [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        np.stack([skimage.data.camera()] * 3, axis=-1),
    ]
    return images + [image[:, ::-1] for image in images]


def calibrate(model: nn.Module, size: int) -> nn.Module:
    """Trained-like BatchNorms: random affine parameters (the one that ends a residual branch,
    timm's BatchNormAct2d without activation, small), running statistics measured on
    :func:`natural_images` in training mode, then eval mode."""
    generator = torch.Generator().manual_seed(0)
    norms = [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats
    ]
    with torch.no_grad():
        for norm in norms:
            if norm.weight is not None:
                last = isinstance(getattr(norm, "act", None), nn.Identity)
                low, high = (0.05, 0.3) if last else (0.3, 0.7)
                norm.weight.uniform_(low, high, generator=generator)
                norm.bias.normal_(0.0, 0.1, generator=generator)
            norm.reset_running_stats()
            norm.momentum = None  # a plain average of what it sees
    batch = featvis.prepare_images(natural_images(size), featvis.Preprocess(size=(size, size)))
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(batch))
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def build(name: str) -> tuple[nn.Module, int]:

    size, options = ZOO[name]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model(name, pretrained=False, num_classes=10, **options)
    return calibrate(model, size), size


def reference(model: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """name (or name#k) -> the leaf module's first output tensor, cloned in its hook."""
    twin = copy.deepcopy(model).eval()
    leaves = {m: n for n, m in twin.named_modules() if not list(m.children())}
    taken: list[tuple[str, torch.Tensor]] = []

    def first(output: Any) -> torch.Tensor | None:
        if isinstance(output, torch.Tensor):
            return output
        if isinstance(output, (tuple, list)):
            return next((t for t in map(first, output) if t is not None), None)
        return None

    def hook(module: nn.Module, _args: Any, output: Any) -> None:
        tensor = first(output)
        if tensor is not None:
            taken.append((leaves[module], tensor.detach().clone()))

    handles = [m.register_forward_hook(hook) for m in leaves]
    try:
        with torch.no_grad():
            twin(x)
    finally:
        for handle in handles:
            handle.remove()
    counts: dict[str, int] = {}
    for name, _ in taken:
        counts[name] = counts.get(name, 0) + 1
    seen: dict[str, int] = {}
    found = {}
    for name, tensor in taken:
        seen[name] = seen.get(name, 0) + 1
        found[f"{name}#{seen[name]}" if counts[name] > 1 else name] = tensor.numpy()
    return found


def rearranged(native: np.ndarray, layout: str, shape: tuple[int, ...]) -> np.ndarray:
    """The test's own reading of a layout string (``NHWC``, ``LNC``, ``(NC)LC``...): the
    batch axis first, the channel axes folded, the spatial ones last; a merged pair in
    parentheses split batch first or last; tokens before a grid of ``shape``'s H x W set
    aside."""
    letters: list[str] = []
    merged: tuple[int, str] | None = None
    i = 0
    while i < len(layout):
        if layout[i] == "(":
            merged = (len(letters), layout[i + 1 : i + 3])
            letters.extend(layout[i + 1 : i + 3])
            i += 4
        else:
            letters.append(layout[i])
            i += 1
    x = native
    n = shape[0]
    if merged is not None:
        axis, pair = merged
        rows = x.shape[axis]
        parts = (n, rows // n) if pair[0] == "N" else (rows // n, n)
        x = x.reshape(*x.shape[:axis], *parts, *x.shape[axis + 1 :])
    order = [letters.index("N")]
    order += [k for k, letter in enumerate(letters) if letter == "C"]
    order += [k for k, letter in enumerate(letters) if letter not in "NC"]
    x = x.transpose(order)
    spatial = [letter for letter in letters if letter not in "NC"]
    if len(spatial) == 1 and shape[2] * shape[3] != x.shape[-1]:
        x = x[..., x.shape[-1] - shape[2] * shape[3] :]  # a class token first
    return x.reshape(shape)


@pytest.fixture(scope="module", params=list(ZOO))
def zoo_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, nn.Module, TorchBackend, Path, int]]:
    name = request.param
    model, size = build(name)
    backend = TorchBackend(model, preprocess=featvis.Preprocess(size=(size, size)))
    path = backend.to_onnx(tmp_path_factory.mktemp("zoo") / f"{name}.onnx")
    yield name, model, backend, path, size


def zoo_row(name: str, backend: Any, onnx_backend: Any, size: int) -> dict[str, object]:
    """The comparison of one zoo model with its export, as docs/onnx.md's table shows it."""
    table = featvis.compare(backend, onnx_backend, natural_images(size)[:3])
    return {
        "model": name,
        "torch layers": len(backend.layers()),
        "onnx layers": len(onnx_backend.layers()),
        "rows": len(table),
        "failed": sum(not row.passed for row in table),
        "worst": max(row.max_rel for row in table),
        "table": table,
    }


@pytest.mark.slow
def test_every_leaf_equals_a_clone_at_hook_reference(
    zoo_model: tuple[str, nn.Module, TorchBackend, Path, int],
) -> None:
    name, model, backend, _, size = zoo_model
    batch = featvis.prepare_images(natural_images(size)[:2], backend.preprocess)
    expected = reference(model, torch.from_numpy(batch))
    layers = backend.layers()
    assert [layer.name for layer in layers] == [k for k in expected if k not in backend._not_layers]
    assert all(layer.unavailable is None for layer in layers), name
    got = backend.activations(batch, [layer.name for layer in layers])
    for layer in layers:
        want = rearranged(expected[layer.name], layer.layout, got[layer.name].shape)
        np.testing.assert_array_equal(got[layer.name], want, err_msg=f"{name} {layer.name}")
    for suffix, layout in LAYOUTS.get(name, {}).items():
        matching = [layer for layer in layers if layer.name.endswith(suffix)]
        assert matching and all(layer.layout == layout for layer in matching), (suffix, name)


@pytest.mark.slow
def test_compare_with_its_export_passes_and_pairs_every_module_with_its_own_tensor(
    zoo_model: tuple[str, nn.Module, TorchBackend, Path, int],
) -> None:
    name, _, backend, path, size = zoo_model
    onnx_backend = featvis.load(path)
    row = zoo_row(name, backend, onnx_backend, size)
    table = row["table"]
    assert isinstance(table, featvis.ComparisonTable)
    assert table.ok and row["failed"] == 0, str(table)
    for pair in table:
        assert pair.layer_a.output_shape == pair.layer_b.output_shape, pair
        if pair.how == "source":  # the export's own record of the module, not a look-alike
            assert pair.layer_b.source == pair.layer_a.name or pair.layer_b.fused, pair
        else:
            assert pair.how == "same value" and pair.layer_a.same_as, pair
    paired = {pair.layer_a.name for pair in table}
    for layer in backend.layers():
        if layer.name not in paired:
            reason = next(u for u in table.unmatched_a if u.layer.name == layer.name)
            assert reason.explained and layer.kind in ("identity", "drop", "conv", "flatten"), (
                layer.name,
                reason,
            )


@pytest.mark.slow
def test_every_listed_layer_comes_in_one_call_and_image_i_is_image_i_alone(
    zoo_model: tuple[str, nn.Module, TorchBackend, Path, int],
) -> None:
    name, _, backend, path, size = zoo_model
    images = natural_images(size)[:2]
    for side in (backend, featvis.load(path)):
        names = [layer.name for layer in side.layers()]
        together = side.activations(images, names)
        assert not together.missing, (name, side.name, together.missing)
        for i, image in enumerate(images):
            alone = side.activations(image, names)
            for layer in names:
                a, b = together[layer][i], alone[layer][0]
                peak = float(np.abs(b[np.isfinite(b)]).max(initial=0.0))  # -inf masks too
                tolerance = 1e-4 * peak + 1e-6
                np.testing.assert_allclose(a, b, atol=tolerance, err_msg=f"{name} {layer}")
