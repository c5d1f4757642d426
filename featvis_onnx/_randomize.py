"""OnnxBackend.randomized: a copy of the graph with its top weighted nodes' initializers
re-drawn (the original ModelProto is never changed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.external_data_helper import load_external_data_for_model

from featvis._errors import ModelError
from featvis._randomize import check_count, redraw

__all__ = ["randomized_proto", "weighted_nodes"]

_WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def _fan_in(node: onnx.NodeProto, shape: tuple[int, ...]) -> int:
    if node.op_type in ("Conv", "ConvTranspose"):
        return int(np.prod(shape[1:]))
    trans_b = any(a.name == "transB" and a.i == 1 for a in node.attribute)
    return int(shape[1] if node.op_type == "Gemm" and trans_b else shape[0])


def weighted_nodes(graph: onnx.GraphProto) -> list[tuple[onnx.NodeProto, str, str | None]]:
    """``(node, weight name, bias name or None)`` of each convolution, Gemm or MatMul whose
    weight is an initializer of two or more axes, in the graph's (topological) order."""
    inits = {init.name: init for init in graph.initializer}
    found = []
    for node in graph.node:
        if node.op_type not in _WEIGHTED or len(node.input) < 2:
            continue
        weight = inits.get(node.input[1])
        if weight is None or len(weight.dims) < 2:
            continue
        bias = node.input[2] if len(node.input) > 2 and node.input[2] in inits else None
        found.append((node, weight.name, bias))
    return found


def randomized_proto(
    model: onnx.ModelProto, folder: str | None, layers: Any, seed: int
) -> onnx.ModelProto:
    """A copy of ``model`` whose last ``layers`` weighted nodes have new weights and biases
    (:func:`featvis._randomize.redraw`, the same values a torch model gets). Weights stored as
    external data are read from ``folder`` into the copy."""
    nodes = weighted_nodes(model.graph)
    count = check_count(layers, len(nodes))
    twin = onnx.ModelProto()
    twin.CopyFrom(model)
    if folder is not None and any(
        i.data_location == onnx.TensorProto.EXTERNAL for i in twin.graph.initializer
    ):
        load_external_data_for_model(twin, folder)
    inits = {init.name: init for init in twin.graph.initializer}
    for position, (node, weight, bias) in enumerate(reversed(nodes[-count:])):
        for which, name in ((0, weight), (1, bias)):
            if name is None:
                continue
            init = inits[name]
            if init.data_location == onnx.TensorProto.EXTERNAL:
                raise ModelError(
                    f"The initializer {name!r} is stored as external data and the model's "
                    "folder is not known; load the model from its file path."
                )
            shape = tuple(int(d) for d in init.dims)
            w_shape = tuple(int(d) for d in inits[weight].dims)
            values = redraw(shape, _fan_in(node, w_shape), seed, position, which)
            dtype = numpy_helper.to_array(init).dtype
            init.CopyFrom(numpy_helper.from_array(values.astype(dtype), name))
    return twin
