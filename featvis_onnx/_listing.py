"""Which tensors of an ONNX graph are layers, and how to read each one's raw output (dequantize,
then make it NCHW): the listing behind :class:`featvis_onnx.OnnxBackend`."""

from __future__ import annotations

import numpy as np
import onnx

from featvis import ArgumentError, FeatvisError, Layer, LayoutError, ModelError, number_layers
from featvis._axes import Placement, Refusal, place
from featvis_onnx._describe import describe, kind_of, param_count
from featvis_onnx._flow import axis_roles
from featvis_onnx._graph import FLOAT_TYPES, GraphInfo
from featvis_onnx._inputs import ModelInputs
from featvis_onnx._layout import UNKNOWN
from featvis_onnx._quant import Quantization, quantizations
from featvis_onnx._source import fused_modules, module_sources

__all__ = ["Conversion", "list_layers", "why_not_a_layer"]


def list_layers(
    g: GraphInfo, inputs: ModelInputs, size: tuple[int, int] | None, origin: str
) -> tuple[list[Layer], dict[str, Conversion], dict[str, str]]:
    """The graph's layers (see :class:`OnnxBackend`), how to read each one's raw output, and
    why each tensor that has no batch axis is not a layer."""
    plans: dict[str, Conversion] = {}
    not_layers: dict[str, str] = {}
    sources = module_sources(g)
    fused = fused_modules(g)
    quant = quantizations(g)
    image = inputs.image
    batch = image.shape[0] if image.shape else None
    roles = axis_roles(g, image.name, image.layout or "NCHW", batch)
    fixed_batch = inputs.batch
    layers: list[Layer] = []
    for i, node in enumerate(g.nodes):
        if not g.dynamic_reads(i):
            continue
        first = True
        for name in node.output:
            if not _is_activation(g, name, node, quant):
                continue
            found = roles.get(name, UNKNOWN)
            dims = g.shape(name)
            placement: Placement | Refusal | None
            if found is None:
                placement = Refusal("nothing in it follows the image input", layer=False)
            elif isinstance(found, tuple) and dims is not None:
                placement = place(dims, found, image_size=size, batch=fixed_batch)
            else:  # placed when it runs: the convention on its shape
                placement = None
            if isinstance(placement, Refusal) and not placement.layer:
                not_layers[name] = placement.reason
                continue
            q = quant.get(name) if g.elem_type(name) not in FLOAT_TYPES else None
            if placement is None:
                plans[name] = Conversion(name, None, q)
                output_shape, layout, unavailable = None, "", None
            elif isinstance(placement, Placement):
                plans[name] = Conversion(name, placement, q)
                nchw = placement.shape(dims, batch=fixed_batch) if dims is not None else None
                output_shape = None if nchw is None else (None, *nchw[1:])
                layout, unavailable = placement.layout, None
            else:
                output_shape, layout, unavailable = None, "", placement.reason
            layers.append(
                Layer(
                    name=name,
                    kind=kind_of(node, g),
                    type=node.op_type,
                    output_shape=output_shape,
                    params=param_count(node, g) if first else 0,
                    description=describe(node, g),
                    source=sources.get(i) if first else None,
                    layout=layout,
                    unavailable=unavailable,
                    fused=fused.get(i, ()) if first else (),
                )
            )
            first = False
    if not layers:
        raise ModelError(
            f"{origin} has no float activations featvis can show (its outputs "
            "are computed from constants, or are integers, sequences or maps)."
        )
    return number_layers(layers), plans, not_layers


def _is_activation(
    g: GraphInfo, name: str, node: onnx.NodeProto, quant: dict[str, Quantization]
) -> bool:
    if not name or name in g.static or name in g.plumbing or not g.is_tensor(name):
        return False
    if node.op_type == "DequantizeLinear" and node.input[0] in quant:
        return False  # the same values as the quantized tensor it reads, which is listed
    elem_type = g.elem_type(name)
    if elem_type is None:  # untyped (a custom operator): trust operators of a known kind
        return kind_of(node, g) != "other" or name in quant
    return elem_type in FLOAT_TYPES or name in quant


def why_not_a_layer(g: GraphInfo, not_layers: dict[str, str], name: str) -> str | None:
    """Why a tensor of the graph is not a layer, or ``None`` if there is no such tensor."""
    if name in not_layers:
        index = g.producer[name]
        node = g.nodes[index]
        return (
            f"Tensor {name!r} (output of {node.op_type} node {node.name or '(unnamed)'!r}) "
            f"has no batch axis ({not_layers[name]}): it holds values for the whole "
            "batch (a scale, a statistic), not one per image, so it is not a layer."
        )
    owner = g.subgraph_owner.get(name)
    if owner is not None:
        return (
            f"Tensor {name!r} is inside the subgraph of node {owner.name or '(unnamed)'!r} "
            f"({owner.op_type}); featvis shows top-level tensors only. Ask for that node's "
            f"output {owner.output[0]!r} instead."
        )
    if name in g.initializers:
        return f"{name!r} is a weight of the model (an initializer), not an activation."
    if any(v.name == name for v in g.inputs):
        return f"{name!r} is a model input; featvis shows what the layers compute from it."
    found = g.producer.get(name)
    if found is None:
        return None
    index = found
    node = g.nodes[index]
    what = f"Tensor {name!r} (output of {node.op_type} node {node.name or '(unnamed)'!r})"
    if name in g.static:
        return f"{what} is computed from weights and constants only; it is not an activation."
    if name in g.plumbing:
        return f"{what} is computed from tensor shapes; it is not an activation."
    if node.op_type == "DequantizeLinear":
        return f"{what} holds the values of {node.input[0]!r}, listed dequantized; ask for it."
    elem_type = g.elem_type(name)
    if not g.is_tensor(name):
        return f"{what} is a sequence, map or optional value, not a tensor."
    kind = "unknown" if elem_type is None else onnx.TensorProto.DataType.Name(elem_type)
    return f"{what} holds {kind} values; featvis shows float activations."


class Conversion:
    """What to do with one requested tensor's raw output: dequantize, then make it NCHW."""

    def __init__(
        self, name: str, placement: Placement | None, quantization: Quantization | None
    ) -> None:
        self.name = name
        self.placement = placement
        self.quantization = quantization

    def placement_for(
        self, raw: np.ndarray, batch: int, image_size: tuple[int, int], layer: Layer
    ) -> Placement | LayoutError:
        """The placement of the tensor: the one found when the layers were listed, or where
        shape inference lost it, the convention applied to what came back."""
        if self.placement is not None:
            return self.placement
        found = place(raw.shape, ["?"] * raw.ndim, image_size=image_size, batch=batch)
        if not isinstance(found, Placement):
            return LayoutError(
                f"Layer {layer.name!r} ({layer.alias}) gave a tensor of shape "
                f"{raw.shape} for a batch of {batch}: {found.reason}."
            )
        return found

    def convert(
        self, raw: np.ndarray, batch: int, image_size: tuple[int, int], layer: Layer
    ) -> np.ndarray | FeatvisError:
        if raw.dtype.kind in "iu" and self.quantization is not None:
            raw = self.quantization.dequantize(raw)
        elif raw.dtype.kind != "f":
            return ModelError(
                f"Tensor {self.name!r} holds {raw.dtype} values with no known quantization; "
                "featvis shows float activations and dequantizable integer ones."
            )
        placement = self.placement_for(raw, batch, image_size, layer)
        if isinstance(placement, LayoutError):
            return placement
        try:
            return placement.apply(raw, batch, image_size)
        except ArgumentError as exc:
            return LayoutError(
                f"Layer {layer.name!r} ({layer.alias}) gave a tensor of shape {raw.shape} for "
                f"a batch of {batch} ({exc}); its layout was {layer.layout} when the layers "
                "were listed. featvis cannot tell which axis is which (the rule is in "
                "featvis._axes)."
            )
