"""The facts about a graph that layers are built from: order, types, shapes, constants.

:class:`GraphInfo` reads the top-level graph once: nodes in topological order (with the tensors
their subgraphs read from the outer scope), which tensors are static (computed from weights
alone), each tensor's element type and shape (from ONNX shape inference, run on a copy whose
large weights are replaced by declarations so it never serializes them), and the values of small
constants (clip bounds, dropout ratios, quantization scales).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, TypeProto, numpy_helper

from featvis import ModelError
from featvis_onnx._model import LoadedModel

__all__ = ["FLOAT_TYPES", "QUANT_TYPES", "GraphInfo", "attributes", "ints"]

FLOAT_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
)
#: Element types a quantized activation may have.
QUANT_TYPES = frozenset(
    {TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16, TensorProto.UINT16}
)

#: Initializers up to this many elements stay in the shape-inference copy (for shape constants).
_SMALL = 4096
#: Constants up to this many elements are read when a description or rule needs their value.
_READABLE = 1 << 16

Shape = tuple[int | None, ...]


def attributes(node: NodeProto) -> dict[str, object]:
    """A node's attributes as Python values (graphs and tensors left as protos)."""
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def ints(value: object) -> list[int]:
    """An attribute's or a constant's value as a list of ints (``[]`` for ``None``)."""
    if value is None:
        return []
    if isinstance(value, np.ndarray):
        return [int(v) for v in value.reshape(-1).tolist()]
    if isinstance(value, (list, tuple)):
        return [int(v) for v in value]
    return [int(value)]  # type: ignore[call-overload]


def _subgraphs(node: NodeProto) -> Iterator[GraphProto]:
    for attr in node.attribute:
        if attr.type == AttributeProto.GRAPH:
            yield attr.g
        elif attr.type == AttributeProto.GRAPHS:
            yield from attr.graphs


def _defined_inside(graph: GraphProto) -> set[str]:
    """Every tensor name a subgraph defines, its own subgraphs included."""
    names = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    for node in graph.node:
        names.update(node.output)
        for sub in _subgraphs(node):
            names |= _defined_inside(sub)
    return names


def _outer_reads(graph: GraphProto) -> set[str]:
    """Names a subgraph reads from the enclosing scopes."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    reads: set[str] = set()
    for node in graph.node:
        reads.update(name for name in node.input if name and name not in defined)
        for sub in _subgraphs(node):
            reads |= _outer_reads(sub) - defined
        defined.update(node.output)
    return reads - defined


class GraphInfo:
    """Topology, types, shapes and small constant values of a model's top-level graph."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        proto = loaded.proto
        graph = proto.graph
        self.producer_name = proto.producer_name
        self.initializers: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        #: Graph inputs that are fed at run time (initializers listed as inputs are weights).
        self.inputs = [v for v in graph.input if v.name not in self.initializers]
        self.outputs = [v.name for v in graph.output]
        #: Tensors defined inside If/Loop/Scan bodies -> the top-level node that owns them.
        self.subgraph_owner: dict[str, NodeProto] = {}
        self.reads: list[list[str]] = []  # per node: explicit inputs and outer-scope reads
        nodes = list(graph.node)
        for node in nodes:
            reads = [name for name in node.input if name]
            for sub in _subgraphs(node):
                reads += sorted(_outer_reads(sub) - set(reads))
                for name in _defined_inside(sub):
                    self.subgraph_owner.setdefault(name, node)
            self.reads.append(reads)
        self.nodes, self.reads = self._topological(nodes, self.reads)
        self.producer: dict[str, int] = {}
        for i, node in enumerate(self.nodes):
            for name in node.output:
                if name:
                    self.producer[name] = i
        self._consts: dict[str, np.ndarray | None] = {}
        self.static = self._static_tensors()
        self.plumbing = self._shape_plumbing()
        self.types = self._infer_types(proto)

    # -- topology --------------------------------------------------------------------------

    def _topological(
        self, nodes: list[NodeProto], reads: list[list[str]]
    ) -> tuple[list[NodeProto], list[list[str]]]:
        """The nodes in a topological order: the file's own if it is one, else a stable sort."""
        available = {v.name for v in self.loaded.proto.graph.input} | set(self.initializers)
        available |= {t.values.name for t in self.loaded.proto.graph.sparse_initializer}
        ordered = True
        seen = set(available)
        for node, node_reads in zip(nodes, reads):
            if any(name not in seen for name in node_reads):
                ordered = False
                break
            seen.update(node.output)
        if ordered:
            return nodes, reads
        producer = {name: i for i, node in enumerate(nodes) for name in node.output if name}
        waiting = [0] * len(nodes)
        users: list[list[int]] = [[] for _ in nodes]
        for i, node_reads in enumerate(reads):
            for name in set(node_reads):
                if name not in available:
                    if name not in producer:
                        raise ModelError(
                            f"{self.loaded.origin}: node {nodes[i].name or nodes[i].op_type!r} "
                            f"reads {name!r}, which nothing produces."
                        )
                    waiting[i] += 1
                    users[producer[name]].append(i)
        ready = [i for i, count in enumerate(waiting) if count == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in users[i]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(nodes):
            raise ModelError(
                f"{self.loaded.origin} has a cycle in its graph; it is not valid ONNX."
            )
        return [nodes[i] for i in order], [reads[i] for i in order]

    def _static_tensors(self) -> set[str]:
        """Tensors computed from weights and constants alone, never from a fed input."""
        static = set(self.initializers)
        static |= {t.values.name for t in self.loaded.proto.graph.sparse_initializer}
        for node, reads in zip(self.nodes, self.reads):
            if all(name in static for name in reads) and node.op_type not in _RANDOM:
                static.update(name for name in node.output if name)
        return static

    def _shape_plumbing(self) -> set[str]:
        """Tensors computed from input shapes (Shape, Size) and constants: never activations."""
        plumbing: set[str] = set()
        for node, reads in zip(self.nodes, self.reads):
            values = _value_reads(node, reads)
            fixed = all(name in self.static or name in plumbing for name in values)
            # A node that reads an activation only for its type (CastLike's second input)
            # computes a constant: the exporters' way of casting a clip bound or a scale.
            typed = len(values) < len(reads)
            if node.op_type in _SHAPE_OPS or (
                fixed and (typed or any(name in plumbing for name in values))
            ):
                plumbing.update(name for name in node.output if name)
        return plumbing

    def dynamic_reads(self, index: int) -> list[str]:
        """The inputs of node ``index`` that depend on what is fed."""
        return [name for name in self.reads[index] if name not in self.static]

    # -- types, shapes and constants ---------------------------------------------------------

    def _infer_types(self, proto: onnx.ModelProto) -> dict[str, TypeProto]:
        types: dict[str, TypeProto] = {}
        light = onnx.ModelProto()
        light.ir_version = max(proto.ir_version, 4)  # initializers need not be inputs from IR 4
        light.opset_import.extend(proto.opset_import)
        light.functions.extend(proto.functions)
        graph = light.graph
        graph.node.extend(self.nodes)
        graph.input.extend(proto.graph.input)
        graph.output.extend(proto.graph.output)
        graph.value_info.extend(proto.graph.value_info)
        declared = {v.name for v in proto.graph.input}
        for tensor in proto.graph.initializer:
            small = _elements(tensor.dims) <= _SMALL
            if small and tensor.data_location != TensorProto.EXTERNAL:
                graph.initializer.append(tensor)
            elif tensor.name not in declared:
                graph.input.append(
                    onnx.helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
                )
        try:
            inferred = onnx.shape_inference.infer_shapes(light, strict_mode=False, data_prop=True)
            values = [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]
        except Exception:  # inference is a bonus: shapes become unknown, layers remain
            values = [*proto.graph.input, *proto.graph.value_info, *proto.graph.output]
        for value in values:
            if value.type.WhichOneof("value") is not None:
                types.setdefault(value.name, value.type)
        for tensor in proto.graph.initializer:
            declared_type = TypeProto()
            declared_type.tensor_type.elem_type = tensor.data_type
            for dim in tensor.dims:
                declared_type.tensor_type.shape.dim.add().dim_value = dim
            types[tensor.name] = declared_type
        return types

    def is_tensor(self, name: str) -> bool:
        """Whether ``name`` holds a plain tensor (not a sequence, map or optional)."""
        value = self.types.get(name)
        return value is None or value.WhichOneof("value") == "tensor_type"

    def elem_type(self, name: str) -> int | None:
        """The ONNX element type of ``name``, or ``None`` when unknown."""
        value = self.types.get(name)
        if value is None or value.WhichOneof("value") != "tensor_type":
            return None
        return value.tensor_type.elem_type or None

    def shape(self, name: str) -> Shape | None:
        """The shape of ``name``, ``None`` for a dynamic dimension, ``None`` if rank unknown."""
        value = self.types.get(name)
        if value is None or value.WhichOneof("value") != "tensor_type":
            return None
        if not value.tensor_type.HasField("shape"):
            return None
        return tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in value.tensor_type.shape.dim
        )

    def dims(self, name: str) -> tuple[int | str | None, ...] | None:
        """The shape of ``name`` with symbolic dimensions kept as their names (``"N"``, or the
        ``unk__3`` that shape inference makes up), ``None`` for a dimension that has neither;
        ``None`` if the rank is unknown."""
        value = self.types.get(name)
        if value is None or value.WhichOneof("value") != "tensor_type":
            return None
        if not value.tensor_type.HasField("shape"):
            return None
        return tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in value.tensor_type.shape.dim
        )

    def elements(self, name: str) -> int:
        """Number of elements of a tensor of known static shape, else 0."""
        shape = self.shape(name)
        if shape is None or any(d is None for d in shape):
            return 0
        return _elements(shape)

    def const(self, name: str) -> np.ndarray | None:
        """The value of a small constant: an initializer, a Constant node, or an Identity,
        Cast, CastLike or Reshape of one. ``None`` if ``name`` is not constant or is too large
        to read for a description. Values are cached on this object (not in a cache shared by
        every GraphInfo, which would keep each model alive after its backend is gone)."""
        if name in self._consts:
            return self._consts[name]
        value = self._const(name)
        self._consts[name] = value
        return value

    def _const(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        tensor = self.initializers.get(name)
        if tensor is not None:
            if _elements(tensor.dims) > _READABLE:
                return None
            try:
                return numpy_helper.to_array(tensor, self.loaded.folder or "")
            except Exception:
                return None
        index = self.producer.get(name)
        if index is None:
            return None
        node = self.nodes[index]
        if node.op_type == "Constant":
            return _constant_value(node)
        if node.op_type in ("Identity", "Cast") and node.input:
            value = self.const(node.input[0])
            if value is None or node.op_type == "Identity":
                return value
            to = onnx.helper.tensor_dtype_to_np_dtype(int(attributes(node)["to"]))  # type: ignore[call-overload]
            return value.astype(to)
        if node.op_type == "Reshape" and len(node.input) == 2:  # exporters reshape axes lists
            value, shape = self.const(node.input[0]), self.const(node.input[1])
            if value is None or shape is None:
                return None
            dims = [
                value.shape[i] if d == 0 and i < value.ndim else int(d)
                for i, d in enumerate(shape.tolist())
            ]
            try:
                return value.reshape(dims)
            except ValueError:
                return None
        if node.op_type == "Concat" and node.input:  # exporters build reshape targets so
            parts = [self.const(name) for name in node.input]
            if any(part is None for part in parts):
                return None
            axis = int(attributes(node).get("axis", 0))  # type: ignore[call-overload]
            try:
                return np.concatenate([np.atleast_1d(p) for p in parts], axis=axis)  # type: ignore[arg-type]
            except ValueError:
                return None
        if node.op_type in ("Unsqueeze", "Squeeze") and node.input:
            value = self.const(node.input[0])
            axes = ints(attributes(node).get("axes"))
            if not axes and len(node.input) > 1:
                axes = ints(self.const(node.input[1]))
            if value is None:
                return None
            try:
                if node.op_type == "Unsqueeze":
                    return np.expand_dims(value, tuple(axes))
                return np.squeeze(value, tuple(axes) if axes else None)
            except (ValueError, TypeError):
                return None
        if node.op_type == "CastLike" and len(node.input) == 2:
            value = self.const(node.input[0])
            target = self.elem_type(node.input[1])
            if value is None or target is None:
                return value
            return value.astype(onnx.helper.tensor_dtype_to_np_dtype(target))
        return None


_SHAPE_OPS = frozenset({"Shape", "Size"})
#: Operators that read some inputs only for their element type, by input position.
_TYPE_ONLY = {"CastLike": 1}


def _value_reads(node: NodeProto, reads: list[str]) -> list[str]:
    """The inputs whose values the node uses (``reads`` without type-only inputs)."""
    position = _TYPE_ONLY.get(node.op_type)
    if position is None or len(node.input) <= position or not node.input[position]:
        return reads
    typed = node.input[position]
    if typed in node.input[:position]:
        return reads
    return [name for name in reads if name != typed]


_RANDOM = frozenset(
    {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial"}
)


def _elements(dims: object) -> int:
    count = 1
    for d in dims:  # type: ignore[attr-defined]
        count *= int(d)
    return count


def _constant_value(node: NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            if _elements(attr.t.dims) > _READABLE:
                return None
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int"):
            return np.array(onnx.helper.get_attribute_value(attr))
        if attr.name in ("value_floats", "value_ints"):
            return np.array(list(onnx.helper.get_attribute_value(attr)))
    return None
