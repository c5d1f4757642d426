"""Reading an ONNX model safely: what it is, whether this runtime can run it, where its data is.

Every check here runs before ONNX Runtime sees the model, so a bad or hostile file ends in a
:class:`featvis.ModelError` that says what is wrong, never in a crash or a read outside the
model's folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto

from featvis import ModelError

__all__ = ["LoadedModel", "read_model"]


@dataclass(frozen=True)
class LoadedModel:
    """A parsed model, its external data left on disk.

    Attributes
    ----------
    proto : onnx.ModelProto
        The model as read, weights stored in external files not loaded. featvis never modifies
        it: sub-models are new protos.
    folder : str or None
        The folder external data is resolved against (the model file's folder); ``None`` for a
        model given as bytes or as a proto without a path.
    origin : str
        The file path, or how the model was given, for messages and provenance.
    """

    proto: onnx.ModelProto
    folder: str | None
    origin: str

    @property
    def external(self) -> bool:
        """Whether any tensor keeps its data in an external file."""
        return any(_is_external(t) for t in _all_tensors(self.proto))


def read_model(model: Any) -> LoadedModel:
    """Parse ``model`` (path, bytes or ``onnx.ModelProto``) and check it can be run here.

    Raises
    ------
    ModelError
        The file is missing, not ONNX, truncated, newer than the installed onnx can read, or
        references external data that is missing, too short, or outside the model's folder.
    """
    if isinstance(model, onnx.ModelProto):
        loaded = LoadedModel(model, None, "an onnx.ModelProto")
    elif isinstance(model, (bytes, bytearray, memoryview)):
        loaded = LoadedModel(_parse(bytes(model), "the bytes given"), None, "ONNX bytes")
    elif isinstance(model, (str, os.PathLike)):
        loaded = _read_file(Path(model))
    else:
        raise ModelError(
            f"Cannot read an ONNX model from {type(model).__name__}; pass a path to an .onnx "
            "file, its bytes, or an onnx.ModelProto."
        )
    _check_structure(loaded)
    _check_versions(loaded)
    _check_external_data(loaded)
    return loaded


def _read_file(path: Path) -> LoadedModel:
    shown = os.fspath(path)
    if not path.exists():
        raise ModelError(f"No such ONNX file: {shown!r}.")
    if path.is_dir():
        raise ModelError(f"{shown!r} is a folder; pass the .onnx file inside it.")
    with open(path, "rb") as f:
        data = f.read()
    proto = _parse(data, repr(shown))
    return LoadedModel(proto, str(path.resolve().parent), shown)


def _parse(data: bytes, shown: str) -> onnx.ModelProto:
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise ModelError(
            f"{shown} is not a readable ONNX model ({exc}); the file may be truncated, or not "
            "ONNX at all. Export it again, or check the download."
        ) from None
    return proto


def _check_structure(loaded: LoadedModel) -> None:
    """Catch what parses but is not a model: other files, and files cut at a field boundary."""
    proto, shown = loaded.proto, loaded.origin
    graph = proto.graph
    if proto.ir_version <= 0 or not proto.HasField("graph") or not graph.node:
        raise ModelError(
            f"{shown} is not an ONNX model (no IR version or no graph nodes). If it is a "
            "TensorFlow, Keras or PyTorch file, export the model to ONNX first."
        )
    if not graph.output:
        raise ModelError(f"{shown} has no graph outputs; the file may be truncated.")
    if proto.ir_version >= 3 and not proto.opset_import:
        raise ModelError(
            f"{shown} declares no opset (opset_import is empty); the file is probably "
            "truncated (exporters write the opset last)."
        )
    known = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    known |= {t.values.name for t in graph.sparse_initializer}
    known |= {name for node in graph.node for name in node.output}
    for node in graph.node:
        for name in node.input:
            if name and name not in known:
                raise ModelError(
                    f"{shown} is incomplete: node {node.name or node.op_type!r} reads {name!r}, "
                    "which nothing produces. The file is probably truncated."
                )
    for output in graph.output:
        if output.name not in known:
            raise ModelError(
                f"{shown} is incomplete: its output {output.name!r} is never produced; the file "
                "is probably truncated."
            )


def _check_versions(loaded: LoadedModel) -> None:
    """IR and opset newer than what the installed onnx (and so ONNX Runtime) understands."""
    proto, shown = loaded.proto, loaded.origin
    if proto.ir_version > onnx.IR_VERSION:
        raise ModelError(
            f"{shown} uses ONNX IR version {proto.ir_version}; the installed onnx "
            f"{onnx.__version__} reads up to IR version {onnx.IR_VERSION}. Upgrade onnx and "
            "onnxruntime, or export the model with an older IR version."
        )
    newest = onnx.defs.onnx_opset_version()
    for opset in proto.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise ModelError(
                f"{shown} uses opset {opset.version}; the installed onnx {onnx.__version__} "
                f"knows opsets up to {newest}. Upgrade onnx and onnxruntime, or export the model "
                f"with opset_version={newest} or lower."
            )


def _all_tensors(proto: onnx.ModelProto) -> list[TensorProto]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(proto))


def _is_external(tensor: TensorProto) -> bool:
    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def _check_external_data(loaded: LoadedModel) -> None:
    """Every external location must be a file inside the model's folder, long enough."""
    sizes: dict[str, int] = {}
    for tensor in _all_tensors(loaded.proto):
        if not _is_external(tensor):
            continue
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        if loaded.folder is None:
            raise ModelError(
                f"{loaded.origin} keeps tensor {tensor.name!r} in an external file "
                f"({location!r}), which cannot be found without the model's path. Pass the "
                "path of the .onnx file instead (its external data is read from its folder)."
            )
        path = _inside(loaded.folder, location, tensor.name, loaded.origin)
        if path not in sizes:
            if not os.path.isfile(path):
                raise ModelError(
                    f"{loaded.origin} keeps tensor {tensor.name!r} in {location!r}, which does "
                    f"not exist in {loaded.folder}. Copy the data file next to the model."
                )
            sizes[path] = os.path.getsize(path)
        try:
            offset = int(info.get("offset", "0"))
            length = int(info["length"]) if "length" in info else sizes[path] - offset
        except ValueError:
            raise ModelError(
                f"{loaded.origin}: tensor {tensor.name!r} has a malformed external data "
                f"offset or length ({info})."
            ) from None
        if offset < 0 or length < 0 or offset + length > sizes[path]:
            raise ModelError(
                f"{loaded.origin}: tensor {tensor.name!r} needs bytes {offset}..{offset + length} "
                f"of {location!r}, which has {sizes[path]} bytes; the data file is truncated or "
                "belongs to another model."
            )


def _inside(folder: str, location: str, tensor: str, origin: str) -> str:
    """The real path of ``location`` relative to ``folder``, refused if it leaves the folder."""
    refused = (
        f"{origin}: tensor {tensor!r} points to external data at {location!r}, outside the "
        "model's folder. featvis refuses it: a model file must not make a program read other "
        "files. Move the data file next to the model and fix the location."
    )
    if not location or os.path.isabs(location) or Path(location).drive or "\0" in location:
        raise ModelError(refused)
    root = os.path.realpath(folder)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.commonpath([root, path]) != root:
        raise ModelError(refused)
    return path
