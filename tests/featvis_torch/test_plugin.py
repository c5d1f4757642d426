"""The torch plugin as a new user meets it: featvis.load, the montage, imports, install hints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

import featvis
import featvis_torch
from featvis_torch import TorchBackend


def test_load_finds_the_torch_backend_through_its_entry_point() -> None:
    spec = next(spec for spec in featvis.list_backends() if spec.name == "torch")
    assert spec.description == "torch.nn.Module" and spec.extra == "featvis[torch]"
    assert spec.accepts(torch.nn.ReLU()) and not spec.accepts("model.onnx")


def test_a_new_user_montages_alexnet_conv1(astronaut: np.ndarray) -> None:
    model = torchvision.models.alexnet()  # as a user would write it, weights aside
    backend = featvis.load(model)
    assert isinstance(backend, TorchBackend) and backend.model is model
    act1 = backend.activations(astronaut, "conv1")
    assert act1.shape == (1, 64, 55, 55)
    picture = featvis.montage(act1)
    # 64 channels tile as 8 x 8 squares of 55 pixels with 1-pixel separators.
    assert np.asarray(picture).shape == (8 * 56 + 1, 8 * 56 + 1, 3)
    assert model.training, "featvis must not leave a model in eval mode it was not in"


def test_options_reach_the_backend(tiny: torch.nn.Module) -> None:
    pre = featvis.Preprocess(size=(16, 16))
    backend = featvis.load(tiny, preprocess=pre, device="cpu")
    assert isinstance(backend, TorchBackend) and backend.preprocess is pre
    assert backend.layer("conv1").output_shape == (None, 8, 16, 16)
    assert backend.provenance["torch"] == torch.__version__


def test_many_images_run_in_batches_with_a_progress_bar(
    tiny_backend: TorchBackend, images: list[np.ndarray], capsys: pytest.CaptureFixture[str]
) -> None:
    whole = tiny_backend.activations(images, ["conv1", "fc"], progress=False)
    capsys.readouterr()
    batched = tiny_backend.activations(images, ["conv1", "fc"], batch_size=2, progress=True)
    assert "activations" in capsys.readouterr().err
    for name in ("conv1", "fc"):  # convolutions pick their algorithm by batch size
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-5, atol=1e-6)


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)


def test_the_plugin_does_not_import_torch() -> None:
    out = _python(
        "import sys, featvis, featvis_torch; featvis.list_backends(); "
        "print(featvis_torch.register_backends is not None, 'torch' in sys.modules)"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_without_torch_loading_says_what_to_install() -> None:
    out = _python(
        "import sys; sys.modules['torch'] = None\n"
        "import featvis, featvis_torch\n"
        "try:\n"
        "    featvis_torch._load(object())\n"
        "except featvis.MissingDependencyError as exc:\n"
        "    print(exc)\n"
        "try:\n"
        "    featvis_torch.TorchBackend\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__)\n"
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "featvis backend 'torch' needs PyTorch: pip install -e '.[torch]' in a clone of featvis "
        "(docs/install.md says how to get the CPU-only torch)",
        "MissingDependencyError",
    ]


def test_torch_backend_is_reachable_from_the_package() -> None:
    assert featvis_torch.TorchBackend is TorchBackend
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        featvis_torch.Nope  # noqa: B018


@pytest.mark.slow
def test_to_onnx_exports_the_model_in_eval_mode_and_leaves_it_as_it_was(
    tiny_backend: TorchBackend, tmp_path: Path
) -> None:
    import onnxruntime

    path = tiny_backend.to_onnx(tmp_path / "tiny.onnx")
    assert path == tmp_path / "tiny.onnx" and path.is_file()
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    expected = tiny_backend.activations(x, "prob")[:, :, 0, 0]  # eval mode: no dropout
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
