"""featvis.explain: class-discriminative maps on every backend.

Framework-free numpy over the capabilities of :mod:`featvis._capabilities`: gradient methods
need :class:`featvis.Differentiable`, the gradient-free ones only :class:`featvis.Scorer`
(and :class:`featvis.Patchable` for Ablation-CAM), so they run on ONNX models and third-party
backends too. Methods are plugins (the ``register_methods`` hook), the built-in ones included.
"""

from featvis._explain._api import default_layer, explain, stage_layers
from featvis._explain._explanation import Explanation
from featvis._explain._registry import (
    Method,
    MethodRequest,
    MethodResult,
    get_method,
    list_methods,
)

__all__ = [
    "Explanation",
    "Method",
    "MethodRequest",
    "MethodResult",
    "default_layer",
    "explain",
    "get_method",
    "list_methods",
    "stage_layers",
]
