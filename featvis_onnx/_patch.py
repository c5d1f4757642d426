"""A sub-model that starts at a layer (:class:`featvis.Patchable`) and the weights of a fully
connected head (:class:`featvis.LinearHead`), for the ONNX backend.

For a layer tensor ``T``, the *rest* of the model is the nodes the score output needs that
depend on ``T``, plus the shape computations and constants they read (recomputed inside, so a
shape follows the batch of replacements). Any other tensor that rest reads is a *crossing*
tensor: computed before the cut and read after it, like a residual connection around the
layer. The rest becomes its own model whose inputs are ``T`` and the crossing tensors; the part
before the cut runs once per image (one run of the sub-model that ends at ``T`` and the
crossing tensors), and its crossing values are repeated along the batch for every batch of
replacements. The cut is exact whether it is clean or not.

A model exported with a fixed batch of one may have the batch size baked into the rest (a
Reshape to ``[1, 1280]`` before the classifier, as torch.onnx exports ``flatten``). Such a
Reshape is rewritten to take its first dimension from its input (``Shape(x)[:1]``), which is
the same at a batch of one and follows a batch of replacements. Whether the rest then runs
several replacements at once is checked once per layer: two different replacements in one
run must score as each alone. A rest that fails the check (another operator with the batch
baked in) is run one replacement at a time, still without running the part before the cut
again.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from featvis import ArgumentError, CapabilityError, Layer, ModelError
from featvis._capabilities import as_scores, patch_request
from featvis_onnx._graph import GraphInfo, attributes

if TYPE_CHECKING:
    from featvis_onnx._backend import OnnxBackend

__all__ = ["linear_head", "patched_scores", "rest_of"]


@dataclass
class Rest:
    """The model after a cut: its session, and the tensors it is fed."""

    session: ort.InferenceSession
    cut: str
    crossing: list[str]  # computed before the cut (not graph inputs)
    graph_inputs: list[str]  # graph inputs the rest reads
    batched: bool | None = None  # whether it runs several replacements at once (None: untried)


_rests: weakref.WeakKeyDictionary[Any, dict[str, Rest]] = weakref.WeakKeyDictionary()


def rest_of(g: GraphInfo, cut: str, output: str) -> tuple[onnx.ModelProto, list[str]]:
    """The model computing ``output`` from ``cut`` and the crossing tensors, and the inputs
    (``cut`` first)."""
    users: dict[str, list[int]] = {}
    for i, reads in enumerate(g.reads):
        for name in reads:
            users.setdefault(name, []).append(i)
    after: set[int] = set()
    stack = [cut]
    while stack:
        for i in users.get(stack.pop(), []):
            if i not in after:
                after.add(i)
                stack.extend(name for name in g.nodes[i].output if name)
    needed: set[int] = set()
    stack = [output]
    while stack:
        name = stack.pop()
        index = None if name == cut else g.producer.get(name)  # the cut is fed, not computed
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(g.reads[index])
    if g.producer.get(output) not in after:
        raise CapabilityError(
            f"The model's scores ({output!r}) do not depend on tensor {cut!r}: replacing it "
            "changes nothing."
        )

    def recomputed(i: int) -> bool:
        outputs = [name for name in g.nodes[i].output if name]
        return i in after or all(n in g.static or n in g.plumbing for n in outputs)

    rest = sorted(i for i in needed if recomputed(i))
    produced = {name for i in rest for name in g.nodes[i].output if name}
    weights: set[str] = set(g.initializers) | {
        t.values.name for t in g.loaded.proto.graph.sparse_initializer
    }
    inputs = [cut]
    for i in rest:
        for name in g.reads[i]:
            if name not in produced and name not in weights and name not in inputs:
                inputs.append(name)
    proto = g.loaded.proto
    model = onnx.ModelProto()
    model.ir_version = proto.ir_version
    model.opset_import.extend(proto.opset_import)
    model.functions.extend(proto.functions)
    graph = model.graph
    graph.name = "featvis-rest"
    graph.node.extend(g.nodes[i] for i in rest)
    read = {name for i in rest for name in g.reads[i]}
    graph.initializer.extend(t for t in proto.graph.initializer if t.name in read)
    graph.sparse_initializer.extend(
        t for t in proto.graph.sparse_initializer if t.values.name in read
    )
    for name in inputs:
        graph.input.append(
            onnx.helper.make_tensor_value_info(name, g.elem_type(name) or TensorProto.FLOAT, None)
        )
    value = graph.output.add()
    value.name = output
    if g.elem_type(output) is not None:
        value.type.tensor_type.elem_type = g.elem_type(output)
    return model, inputs


def _batch_following(model: onnx.ModelProto, g: GraphInfo) -> None:
    """Rewrite, in place, each Reshape of ``model`` to a constant shape ``[1, ...]`` of a
    tensor whose first dimension is 1 so that it takes that dimension from the tensor: the
    same result at a batch of one, and the batch's own size at a larger one."""
    graph = model.graph
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:  # Slice with tensor inputs, Shape, Concat: any opset >= 13 has them
        return
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        shape = (
            g.const(node.input[1]) if node.op_type == "Reshape" and len(node.input) == 2 else None
        )
        dims = g.shape(node.input[0]) if shape is not None else None
        if shape is None or shape.ndim != 1 or len(shape) < 1 or int(shape[0]) != 1:
            nodes.append(node)
            continue
        if not dims or dims[0] != 1:
            nodes.append(node)
            continue
        prefix = f"featvis_batch_{len(graph.initializer)}"
        for name, value in (("start", [0]), ("end", [1]), ("tail", [int(d) for d in shape[1:]])):
            graph.initializer.append(
                numpy_helper.from_array(np.asarray(value, np.int64), f"{prefix}_{name}")
            )
        nodes += [  # just before the Reshape: its input is computed by then
            onnx.helper.make_node("Shape", [node.input[0]], [f"{prefix}_shape"]),
            onnx.helper.make_node(
                "Slice", [f"{prefix}_shape", f"{prefix}_start", f"{prefix}_end"], [f"{prefix}_n"]
            ),
            onnx.helper.make_node(
                "Concat", [f"{prefix}_n", f"{prefix}_tail"], [f"{prefix}_dims"], axis=0
            ),
        ]
        node.input[1] = f"{prefix}_dims"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)


def _rest(backend: OnnxBackend, layer: Layer) -> Rest:
    try:
        cache = _rests.setdefault(backend, {})
    except TypeError:
        cache = {}
    found = cache.get(layer.name)
    if found is None:
        g = backend._graph
        model, inputs = rest_of(g, layer.name, backend.score_output)
        _batch_following(model, g)
        options = backend._sessions.options()
        options.log_severity_level = 4  # the batch check below may fail on purpose: quiet
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), options, providers=backend._sessions.providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CapabilityError(
                f"ONNX Runtime cannot run the part of the model after {layer.name!r} on its "
                f"own: {exc}"
            ) from None
        graph_inputs = {v.name for v in g.inputs}
        found = cache[layer.name] = Rest(
            session,
            layer.name,
            [n for n in inputs[1:] if n not in graph_inputs],
            [n for n in inputs[1:] if n in graph_inputs],
        )
    return found


def patched_scores(
    backend: OnnxBackend,
    image: Any,
    layer: str | Layer,
    activations: np.ndarray | Callable[[np.ndarray], np.ndarray],
    *,
    batch_size: int | None = None,
) -> np.ndarray:
    """:meth:`featvis.Patchable.patched_scores` for an :class:`OnnxBackend`."""
    found, batch = patch_request(backend, image, layer, batch_size)
    tensor_plan = backend._plans[found.name]
    if tensor_plan.quantization is not None:
        raise CapabilityError(
            f"Layer {found.name!r} is quantized; featvis replaces float activations only."
        )
    image_size = (int(batch.shape[2]), int(batch.shape[3]))
    rest = _rest(backend, found)
    before = backend._run_tensors(batch, [rest.cut, *rest.crossing])  # the part before, once
    own = before[0]
    placement = tensor_plan.placement_for(own, 1, image_size, found)
    if isinstance(placement, Exception):
        raise placement
    converted = placement.apply(own, 1, image_size)
    if callable(activations):
        activations = activations(converted)
    rows = np.asarray(activations, np.float32)
    if rows.ndim != 4 or len(rows) == 0:
        raise ArgumentError(
            f"Replacements are an (M, C, H, W) array as activations() returns, got {rows.shape}."
        )
    if converted.shape[1:] != rows.shape[1:]:
        raise ArgumentError(
            f"Replacements of shape {rows.shape} do not fit layer {found.name!r}, whose "
            f"activations are {converted.shape}."
        )
    feeds_image = backend._inputs.feeds(batch)
    fixed = {name: feeds_image[name] for name in rest.graph_inputs}
    fixed.update(zip(rest.crossing, before[1:]))

    def native(part: np.ndarray) -> np.ndarray:
        """Replacements in the tensor's own layout (its batch axis need not be the first)."""
        try:
            return placement.native(part, own.shape, image_size).astype(own.dtype, copy=False)
        except ArgumentError as exc:
            raise CapabilityError(f"Layer {found.name!r} cannot be replaced: {exc}.") from None

    def run(part: np.ndarray) -> np.ndarray:
        m = len(part)
        feeds = {rest.cut: native(part)}
        feeds.update({name: np.repeat(v, m, axis=0) for name, v in fixed.items()})
        try:
            (out,) = rest.session.run(None, feeds)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(f"ONNX Runtime could not run the rest of the model: {exc}") from None
        return as_scores(out, m, f"Output {backend.score_output!r}")

    if any(v.ndim == 0 or v.shape[0] != 1 for v in fixed.values()):
        rest.batched = False  # a crossing tensor without a batch axis of one: never repeat it
    if rest.batched is None and len(rows) > 1:
        # two different replacements (the same two would hide a batch that mixes them)
        alone = np.concatenate([run(rows[:1]), run(rows[1:2])])
        try:
            two = run(rows[:2])
            tolerance = 1e-5 * max(1.0, float(np.abs(alone).max()))
            rest.batched = bool(np.allclose(two, alone, rtol=1e-5, atol=tolerance))
        except ModelError:
            rest.batched = False
    size = (batch_size or len(rows)) if rest.batched else 1
    parts = [run(rows[s : s + size]) for s in range(0, len(rows), size)]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _array(g: GraphInfo, name: str) -> np.ndarray | None:
    tensor = g.initializers.get(name)
    if tensor is None:
        return g.const(name)
    return numpy_helper.to_array(tensor, base_dir=g.loaded.folder or "")


def linear_head(backend: OnnxBackend) -> tuple[np.ndarray, np.ndarray] | None:
    """The Gemm (or MatMul and Add) with constant weights that computes the score output,
    through a final Softmax if there is one."""
    g = backend._graph
    index = g.producer.get(backend.score_output)
    if index is not None and g.nodes[index].op_type in ("Softmax", "LogSoftmax", "Identity"):
        index = g.producer.get(g.nodes[index].input[0])
    if index is None:
        return None
    node = g.nodes[index]
    if node.op_type == "Gemm":
        attrs = attributes(node)
        weight = _array(g, node.input[1])
        if weight is None or attrs.get("transA", 0):
            return None
        alpha, beta = float(attrs.get("alpha", 1.0)), float(attrs.get("beta", 1.0))  # type: ignore[arg-type]
        w = alpha * (weight if attrs.get("transB", 0) else weight.T)
        bias = _array(g, node.input[2]) if len(node.input) > 2 and node.input[2] else None
        b = np.zeros(len(w)) if bias is None else beta * np.broadcast_to(bias, (len(w),))
        return w.astype(np.float32), np.asarray(b, np.float32)
    if node.op_type == "Add":
        for data, other in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
            bias = _array(g, other)
            inner = g.producer.get(data)
            if bias is None or inner is None or g.nodes[inner].op_type != "MatMul":
                continue
            weight = _array(g, g.nodes[inner].input[1])
            if weight is None or weight.ndim != 2:
                return None
            w = weight.T
            return w.astype(np.float32), np.broadcast_to(bias, (len(w),)).astype(np.float32)
    return None
