"""featvis plugin: the layers and activations of any ONNX model, run by ONNX Runtime.

``featvis.load("model.onnx")`` (a path, a :class:`pathlib.Path`, the file's bytes, or an
``onnx.ModelProto``) returns an :class:`OnnxBackend`. This module imports only the standard
library and featvis: onnx and onnxruntime are imported when a model is loaded, so
``import featvis`` stays light and a missing runtime is reported with the command that installs
it.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

import featvis

if TYPE_CHECKING:
    from featvis_onnx._backend import OnnxBackend

__all__ = ["OnnxBackend", "register_backends"]

_MISSING = (
    "featvis backend 'onnx' needs onnxruntime and onnx: pip install -e '.[onnx]' in a clone of "
    "featvis"
)
_DEPENDENCIES = ("onnx", "onnxruntime", "google")  # google.protobuf comes with onnx


def _looks_serialized(data: bytes) -> bool:
    """Whether bytes start like a serialized ModelProto: field 1 (ir_version) first, 1 to 32.

    Every exporter writes ``ir_version`` first, so this is cheap and rarely wrong; bytes that
    pass and still fail to parse get a clear :class:`featvis.ModelError` from the backend, and
    ``featvis.load(data, backend="onnx")`` skips the check.
    """
    return len(data) >= 2 and data[0] == 0x08 and 1 <= data[1] <= 32


def accepts(model: Any) -> bool:
    """Whether ``model`` is an ONNX model featvis can open, decided without importing onnx."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        text = os.fsdecode(path) if isinstance(path, bytes) else path
        return text.lower().endswith(".onnx")
    if isinstance(model, (bytes, bytearray, memoryview)):
        return _looks_serialized(bytes(model[:2]))
    onnx = sys.modules.get("onnx")
    return onnx is not None and isinstance(model, onnx.ModelProto)


#: ``featvis_onnx.OnnxBackend``, imported (with onnx and onnxruntime) on first use.
__getattr__ = featvis.lazy_exports(
    __name__, {"OnnxBackend": "featvis_onnx._backend"}, missing=_MISSING, requires=_DEPENDENCIES
)


def load(model: Any, **options: Any) -> OnnxBackend:
    """An :class:`OnnxBackend` for ``model``; options are its keyword arguments."""
    backend_class: type[OnnxBackend] = __getattr__("OnnxBackend")
    return backend_class(model, **options)


@featvis.hookimpl
def register_backends(register: Any) -> None:
    """Register the ``onnx`` backend."""
    register(
        featvis.BackendSpec(
            name="onnx",
            accepts=accepts,
            load=load,
            description="ONNX model: .onnx path, bytes or onnx.ModelProto",
            requires=("onnx", "onnxruntime"),
            extra="featvis[onnx]",
        )
    )
