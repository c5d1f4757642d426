"""A model's inputs: which one takes the image, in what layout and type, and the others' values.

The inputs are the graph inputs ONNX Runtime feeds (the ones ``session.get_inputs()`` lists):
initializers that old exporters also list as inputs are weights, never fed and never
overwritten. The image goes to the first 4-D input the caller did not map in ``inputs=``; every
other input must be mapped, or featvis names the missing ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto

from featvis import ArgumentError, ImageError
from featvis_onnx._graph import GraphInfo
from featvis_onnx._layout import NHWC, input_layout

__all__ = ["InputSpec", "ModelInputs"]

_INTEGER_PIXELS: dict[int, int] = {
    TensorProto.UINT8: 255,
    TensorProto.INT8: 127,
    TensorProto.UINT16: 65535,
}
_FLOATS: set[int] = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE}


@dataclass(frozen=True)
class InputSpec:
    """One graph input as ONNX Runtime sees it.

    Attributes
    ----------
    name : str
    elem_type : int
        The ONNX element type (``onnx.TensorProto.FLOAT``...).
    shape : tuple or None
        Per dimension: an int when fixed, the symbol (str) or ``None`` when dynamic; ``None``
        when the rank is unknown.
    layout : str
        ``"NCHW"`` or ``"NHWC"`` for a 4-D input (NCHW when it cannot be told), else ``""``.
    """

    name: str
    elem_type: int
    shape: tuple[int | str | None, ...] | None
    layout: str

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype the input is fed as."""
        return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(self.elem_type))

    def fixed(self, dim: int) -> int | None:
        """The size of dimension ``dim`` if it is fixed."""
        if self.shape is None or len(self.shape) <= dim:
            return None
        value = self.shape[dim]
        return value if isinstance(value, int) else None


def _spec(value: onnx.ValueInfoProto) -> InputSpec:
    tensor = value.type.tensor_type
    shape: tuple[int | str | None, ...] | None = None
    if tensor.HasField("shape"):
        shape = tuple(
            d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (d.dim_param or None)
            for d in tensor.shape.dim
        )
    ints = None if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
    layout = input_layout(ints) if shape is not None and len(shape) == 4 else ""
    return InputSpec(value.name, tensor.elem_type, shape, layout)


class ModelInputs:
    """The image input, and the arrays fed to the other inputs."""

    def __init__(self, g: GraphInfo, extra: Mapping[str, Any] | None) -> None:
        self.specs = [_spec(v) for v in g.inputs]
        extra = dict(extra or {})
        names = [spec.name for spec in self.specs]
        for name in extra:
            if name in g.initializers:
                raise ArgumentError(
                    f"{name!r} is a weight of the model (an initializer listed as an input); "
                    "featvis never overwrites weights. Inputs: " + (", ".join(names) or "none")
                )
            if name not in names:
                raise ArgumentError(
                    f"The model has no input {name!r}; its inputs are "
                    + (", ".join(repr(n) for n in names) or "none")
                    + "."
                )
        free = [spec for spec in self.specs if spec.name not in extra]
        images = [s for s in free if s.shape is None or len(s.shape) == 4] or free[:1]
        if not images:
            raise ArgumentError(
                "Every input of the model is given in inputs=; leave the image input out "
                f"(inputs: {', '.join(names)})."
            )
        self.image = images[0]
        missing = [s.name for s in free if s is not self.image]
        if missing:
            raise ArgumentError(
                f"The model has inputs besides the image input {self.image.name!r}: "
                f"{', '.join(repr(m) for m in missing)}. Give their values as "
                "inputs={" + ", ".join(f"{m!r}: array" for m in missing) + "}."
            )
        self.extra = {
            spec.name: np.asarray(extra[spec.name], dtype=spec.dtype)
            for spec in self.specs
            if spec.name in extra
        }
        if self.image.elem_type not in _FLOATS | set(_INTEGER_PIXELS):
            raise ArgumentError(
                f"The image input {self.image.name!r} has type "
                f"{TensorProto.DataType.Name(self.image.elem_type)}; featvis feeds images as "
                "float or 8/16-bit integer pixels."
            )

    @property
    def size(self) -> tuple[int, int] | None:
        """The fixed (height, width) of the image input, if both are fixed."""
        h, w = (1, 2) if self.image.layout == NHWC else (2, 3)
        height, width = self.image.fixed(h), self.image.fixed(w)
        return (height, width) if height and width else None

    @property
    def channels(self) -> int | None:
        """The fixed channel count of the image input, if fixed."""
        return self.image.fixed(3 if self.image.layout == NHWC else 1)

    @property
    def batch(self) -> int | None:
        """The fixed batch size of the image input, if fixed (exporters often fix it at 1)."""
        return self.image.fixed(0)

    @property
    def integer_pixels(self) -> int | None:
        """The largest pixel value when the model takes integer pixels (255 for uint8)."""
        return _INTEGER_PIXELS.get(self.image.elem_type)

    def check(self, batch: np.ndarray) -> None:
        """Raise :class:`ImageError` if an NCHW batch cannot be fed to the image input."""
        spec = self.image
        if batch.ndim != 4:
            raise ImageError(f"Model input must be (N, C, H, W); got shape {batch.shape}.")
        if self.channels is not None and batch.shape[1] != self.channels:
            raise ImageError(
                f"Input {spec.name!r} takes {self.channels} channels; the images have "
                f"{batch.shape[1]}. Use a Preprocess with {self.channels} mean and std values."
            )
        if self.size is not None and tuple(batch.shape[2:]) != self.size:
            raise ImageError(
                f"Input {spec.name!r} takes {self.size[0]}x{self.size[1]} images; got "
                f"{batch.shape[2]}x{batch.shape[3]}. Pass images to be resized (files, PIL "
                "images or HxWxC arrays) instead of a prepared array of another size."
            )

    def feeds(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The feeds for one run: the NCHW float32 batch converted, and the extra inputs."""
        spec = self.image
        data = batch.transpose(0, 2, 3, 1) if spec.layout == NHWC else batch
        top = self.integer_pixels
        if top is not None:
            low = -128 if spec.elem_type == TensorProto.INT8 else 0
            if data.size and (data.min() < low - 0.5 or data.max() > top + 0.5):
                raise ImageError(
                    f"Input {spec.name!r} takes {spec.dtype} pixels in [{low}, {top}], but the "
                    f"prepared values span [{data.min():g}, {data.max():g}]. Use "
                    "Preprocess(mean=(0, 0, 0), std=(1/255, 1/255, 1/255)), the default for "
                    "this model."
                )
            data = np.rint(data)
        return {spec.name: np.ascontiguousarray(data, dtype=spec.dtype), **self.extra}
