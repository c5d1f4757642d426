"""What a model must be for forward hooks to see it: the checks a :class:`TorchBackend` runs on
the model it is given (compiled and data-parallel wrappers unwrapped; TorchScript, compiled
submodules and unmaterialized lazy modules refused) and on the device it is asked for."""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from featvis import ArgumentError, ModelError

__all__ = ["as_device", "check_modules", "inspectable"]


def as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ArgumentError(
            f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} ({exc})."
        ) from None


def _is_scripted(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def _compiled_type() -> type | None:
    # Only look if the user has compiled something: importing torch._dynamo is slow.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def inspectable(model: Any) -> nn.Module:
    """The module to hook: a compiled model's original, a (distributed) data-parallel model's
    wrapped module (whose replicas run in other threads), after checking what ``model`` is."""
    compiled = _compiled_type()
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, parallel) or (compiled is not None and isinstance(model, compiled)):
        inner = "module" if isinstance(model, parallel) else "_orig_mod"
        model = getattr(model, inner)
    if _is_scripted(model):
        raise ModelError(
            "This is a TorchScript module: its submodules run as TorchScript and never call "
            "Python forward hooks, so featvis cannot see their outputs. Pass the original "
            "torch.nn.Module instead, e.g. build the model's class again and "
            "model.load_state_dict(scripted.state_dict())."
        )
    if not isinstance(model, nn.Module):
        raise ModelError(f"TorchBackend takes a torch.nn.Module, not {type(model).__name__}.")
    return model


def check_modules(model: nn.Module) -> None:
    """Refuse submodules whose inside hooks cannot see, and unmaterialized lazy modules."""
    compiled = _compiled_type()
    lazy = nn.modules.lazy.LazyModuleMixin
    for name, module in model.named_modules():
        if _is_scripted(module) or (compiled is not None and isinstance(module, compiled)):
            how = "TorchScript" if _is_scripted(module) else "torch.compile'd"
            raise ModelError(
                f"Submodule {name!r} is {how}: the modules inside it do not call Python hooks "
                "in a way featvis can rely on. Use the original nn.Module for it (for "
                "torch.compile, its ._orig_mod) when you build the model for featvis."
            )
        if isinstance(module, lazy) and module.has_uninitialized_params():  # type: ignore[misc]
            raise ModelError(
                f"Submodule {name!r} ({type(module).__name__}) has not been initialized yet. "
                "Run the model once on a real input (model(x)) before inspecting it; featvis "
                "does not change the model's parameters."
            )
