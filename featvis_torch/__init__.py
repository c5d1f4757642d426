"""featvis plugin: activations of any ``torch.nn.Module``.

This module imports only the standard library and featvis, so that ``import featvis`` (which
loads every plugin to list backends) never imports PyTorch. PyTorch is imported by
:mod:`featvis_torch._backend`, when a backend is actually built. ``TorchBackend`` is reachable
from here too, imported on first use::

    from featvis_torch import TorchBackend
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import featvis

if TYPE_CHECKING:
    from featvis_torch._backend import TorchBackend

__all__ = ["TorchBackend", "register_backends", "register_models"]

_MISSING = (
    "featvis backend 'torch' needs PyTorch: pip install -e '.[torch]' in a clone of featvis "
    "(docs/install.md says how to get the CPU-only torch)"
)
_FRAMEWORK = ("torch", "torchvision")


def _accepts(model: object) -> bool:
    # Never import torch to answer: if the user has not imported it, the model cannot be a
    # torch.nn.Module. TorchScript modules are accepted so that loading one explains itself.
    if "torch" not in sys.modules:
        return False
    import torch

    return isinstance(model, torch.nn.Module)


#: ``featvis_torch.TorchBackend``, imported (with torch) on first use.
__getattr__ = featvis.lazy_exports(
    __name__, {"TorchBackend": "featvis_torch._backend"}, missing=_MISSING, requires=_FRAMEWORK
)


def _load(model: object, **options: Any) -> TorchBackend:
    backend_class: type[TorchBackend] = __getattr__("TorchBackend")
    return backend_class(model, **options)  # type: ignore[arg-type]


@featvis.hookimpl
def register_backends(register: Any) -> None:
    """Register the ``torch`` backend (see :func:`featvis.hookspecs.register_backends`)."""
    register(
        featvis.BackendSpec(
            name="torch",
            accepts=_accepts,
            load=_load,
            description="torch.nn.Module",
            requires=("torch",),
            extra="featvis[torch]",
        )
    )


def _loader(function: str) -> Any:
    """A ``ModelSpec.load`` that imports :mod:`featvis_torch._named` (and torch) when called."""

    def load(name: str) -> TorchBackend:
        with featvis.requiring(_MISSING, _FRAMEWORK):
            from featvis_torch import _named
        return getattr(_named, function)(name)

    return load


@featvis.hookimpl
def register_models(register: Any) -> None:
    """Register the models asked for by name (see :func:`featvis.hookspecs.register_models`)."""
    register(
        featvis.ModelSpec(
            name="efficientnet_lite0",
            load=_loader("efficientnet_lite0_backend"),
            description="EfficientNet-Lite0 with its ImageNet weights (embedded, Apache-2.0)",
        )
    )
    register(
        featvis.ModelSpec(
            name="torchvision:",
            load=_loader("torchvision_backend"),
            description=(
                "torchvision:ARCH, a torchvision ImageNet classifier with its official weights "
                "(from the torch hub cache), or torchvision:ARCH:random"
            ),
            prefix=True,
        )
    )
