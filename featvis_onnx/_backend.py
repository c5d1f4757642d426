"""OnnxBackend: the layers and activations of any ONNX model, through ONNX Runtime."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from featvis import (
    ArgumentError,
    BackendBase,
    FeatvisError,
    Layer,
    ModelError,
    Preprocess,
    prepare_images,
)
from featvis import _metadata as metadata
from featvis._capabilities import ScoreKind, as_scores
from featvis._layers import LayerIndex
from featvis_onnx._graph import FLOAT_TYPES, GraphInfo
from featvis_onnx._inputs import InputSpec, ModelInputs
from featvis_onnx._listing import Conversion, list_layers, why_not_a_layer
from featvis_onnx._model import read_model
from featvis_onnx._session import OPTIMIZATION, Sessions, available_cpus, check_providers

__all__ = ["OnnxBackend"]


class OnnxBackend(BackendBase):
    """Layers and activations of an ONNX model, run by ONNX Runtime.

    Layers are the float activations of the graph's top-level nodes, in topological order,
    named by tensor name (see docs/onnx.md: constants, weights, shape computations, integer
    outputs such as MaxPool indices and tensors inside If/Loop/Scan bodies are not layers).
    Each requested set of layers runs a sub-model that ends at them (see :mod:`._session`).

    Parameters
    ----------
    model : str, os.PathLike, bytes or onnx.ModelProto
        The model. External data is read from the model file's folder, so pass a path for a
        model that has it.
    preprocess : Preprocess, optional
        How images become input. A file that featvis exported (``TorchBackend.to_onnx``)
        records it in its metadata (``featvis.preprocess``), and its class names
        (``featvis.categories``, then ``backend.categories``); they are used unless this is
        given. Other ONNX files carry no normalization, so the default is ImageNet's mean and
        std at the model's fixed input size (224x224 when H and W are dynamic), or raw 0-255
        pixels for a model whose input is uint8. For a model with a fixed input size, images
        are always resized to that size.
    providers : list, optional
        ONNX Runtime execution providers, as ``InferenceSession`` takes them
        (``["CUDAExecutionProvider", "CPUExecutionProvider"]``); CPU by default.
    optimization : {"all", "extended", "basic", "disabled"}
        ONNX Runtime's graph optimization level. Requested tensors keep their own values at
        every level; "all" is the fastest.
    inputs : mapping of str to array, optional
        Values for the model's inputs other than the image, fed unchanged to every run.
    threads : int, optional
        Threads for ONNX Runtime's intra-op pool; by default the CPUs this process may use.

    Notes
    -----
    The image goes to the first 4-D input not given in ``inputs``. Its layout is NHWC when its
    shape is ``(N, H, W, 1 or 3)`` and NCHW otherwise (also when it cannot be told). A model
    whose batch size is fixed (exporters often fix it at 1) is run that many images at a time.

    Examples
    --------
    >>> import numpy as np, onnx
    >>> from onnx import helper, TensorProto
    >>> from featvis_onnx import OnnxBackend
    >>> x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    >>> y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])
    >>> graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    >>> backend = OnnxBackend(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    >>> [(layer.name, layer.alias, layer.type) for layer in backend.layers()]
    [('y', 'relu1', 'Relu')]
    >>> backend.activations(np.zeros((8, 8, 3), np.uint8), "relu1").shape
    (1, 3, 8, 8)
    """

    name = "onnx"

    def __init__(
        self,
        model: Any,
        *,
        preprocess: Preprocess | None = None,
        providers: Sequence[Any] | None = None,
        optimization: str = "all",
        inputs: Mapping[str, Any] | None = None,
        threads: int | None = None,
    ) -> None:
        if optimization not in OPTIMIZATION:
            raise ArgumentError(
                f"optimization must be one of {', '.join(map(repr, OPTIMIZATION))}, "
                f"not {optimization!r}."
            )
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ArgumentError(f"threads must be a positive integer, got {threads!r}.")
        chosen = check_providers(providers)
        self._options: dict[str, Any] = {
            "providers": providers,
            "optimization": optimization,
            "inputs": inputs,
        }
        self._threads = threads
        self._loaded = read_model(model)
        self._graph = GraphInfo(self._loaded)
        self._inputs = ModelInputs(self._graph, inputs)
        props = {p.key: p.value for p in self._loaded.proto.metadata_props}
        recorded, categories = metadata.read(props, self._loaded.origin)
        if preprocess is None:
            preprocess = recorded or self._default_preprocess()
        size, channels = self._inputs.size, self._inputs.channels
        if size is not None and preprocess.size != size:
            preprocess = dataclasses.replace(preprocess, size=size)
        if channels is not None and preprocess.channels != channels:
            raise ArgumentError(
                f"The model's input {self._inputs.image.name!r} takes {channels} channels; "
                f"the Preprocess has {preprocess.channels} mean values. Give one mean and "
                "std per channel."
            )
        super().__init__(preprocess=preprocess, categories=categories)
        self._sessions = Sessions(
            self._graph,
            providers=chosen,
            optimization=optimization,
            threads=threads or available_cpus(),
        )
        self._plans: dict[str, Conversion] = {}
        self._not_layers: dict[str, str] = {}
        proto = self._loaded.proto
        self.provenance.update(
            model=self._loaded.origin,
            producer=f"{proto.producer_name} {proto.producer_version}".strip() or "unknown",
            onnxruntime=ort.__version__,
            onnx=onnx.__version__,
            providers=", ".join(p[0] if isinstance(p, tuple) else p for p in chosen),
        )

    def randomized(self, layers: int, *, seed: int = 0) -> OnnxBackend:
        """A new backend on a copy of the graph whose ``layers`` weighted nodes nearest the
        output (Conv, Gemm, MatMul with an initializer weight, in topological order) have new
        weights and biases, uniform in ``+-1/sqrt(fan_in)``, seeded by ``seed`` (see
        :class:`featvis.Randomizable`). This backend's model is not changed."""
        from featvis_onnx._randomize import randomized_proto

        twin = OnnxBackend(
            randomized_proto(self._loaded.proto, self._loaded.folder, layers, seed),
            preprocess=self.preprocess,
            threads=self._threads,
            **self._options,
        )
        twin.categories = self.categories
        return twin

    # -- inputs ------------------------------------------------------------------------------

    @property
    def model(self) -> onnx.ModelProto:
        """The model as read (external data not loaded). Do not modify it."""
        return self._loaded.proto

    @property
    def inputs(self) -> list[InputSpec]:
        """The graph inputs ONNX Runtime feeds: name, type, dims and layout."""
        return list(self._inputs.specs)

    @property
    def image_input(self) -> InputSpec:
        """The input the images are fed to."""
        return self._inputs.image

    def _default_preprocess(self) -> Preprocess:
        """ImageNet normalization at the model's fixed size, or 224x224 (see the class doc)."""
        size = self._inputs.size or (224, 224)
        top = self._inputs.integer_pixels
        channels = self._inputs.channels or 3
        if top is not None:
            return Preprocess(size=size, mean=(0.0,) * channels, std=(1.0 / top,) * channels)
        if channels == 1:
            return Preprocess(size=size, mean=(0.449,), std=(0.226,))  # ImageNet's, averaged
        return Preprocess(size=size)

    def _prepare(self, images: Any) -> np.ndarray:
        if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
            batch = images  # read only, never written: no copy (9.6 MB at batch 16)
        else:
            batch = prepare_images(images, self.preprocess)
        self._inputs.check(batch)
        return batch

    # -- layers ------------------------------------------------------------------------------

    def _list_layers(self) -> list[Layer]:
        layers, self._plans, self._not_layers = list_layers(
            self._graph, self._inputs, self.preprocess.size, self._loaded.origin
        )
        return layers

    def _layer_index(self) -> LayerIndex:
        if self._index is None:
            self._index = _OnnxLayerIndex(self._list_layers(), self._why_not_a_layer)
        return self._index

    def _why_not_a_layer(self, name: str) -> str | None:
        """Why a tensor of the graph is not a layer, or ``None`` if there is no such tensor."""
        return why_not_a_layer(self._graph, self._not_layers, name)

    # -- running -----------------------------------------------------------------------------

    def _run(self, batch: np.ndarray, layers: list[Layer]) -> list[np.ndarray | FeatvisError]:
        conversions = [self._plans[layer.name] for layer in layers]
        image_size = (int(batch.shape[2]), int(batch.shape[3]))
        return self._run_tensors(
            batch,
            [layer.name for layer in layers],
            lambda i, raw, n: conversions[i].convert(raw, n, image_size, layers[i]),
        )

    def _run_tensors(
        self,
        batch: np.ndarray,
        names: list[str],
        convert: Any = None,
    ) -> list[Any]:
        """The values of the tensors ``names`` for a prepared batch, from one sub-model, run in
        pieces of the model's fixed batch size when it has one. ``convert(i, raw, n)`` turns
        the raw value of tensor ``i`` for ``n`` images into what is returned (its batch then
        first); without it the raw values are returned, batch first."""
        session = self._sessions.get(names)
        total = len(batch)
        step = self._inputs.batch or total
        parts: list[list[Any]] = [[] for _ in names]
        for start in range(0, total, step):
            part = batch[start : start + step]
            real = len(part)
            if real < step:  # a fixed batch size: fill the last batch with its last image
                part = np.concatenate([part, np.repeat(part[-1:], step - real, axis=0)])
            feeds = self._inputs.feeds(part)
            try:
                raws = session.run(names, feeds)
            except Exception as exc:  # onnxruntime raises its own exception types
                raise ModelError(
                    f"ONNX Runtime could not run {self._loaded.origin} on a batch of shape "
                    f"{part.shape}: {exc}"
                ) from None
            for i, (collected, raw) in enumerate(zip(parts, raws)):
                out = raw if convert is None else convert(i, raw, step)
                if isinstance(out, FeatvisError) or (collected and collected[0] is None):
                    collected[:] = [out] if not collected or collected[0] is not None else []
                    continue
                collected.append(out[:real] if real < step else out)
        return [_joined(c) for c in parts]

    # -- scores ------------------------------------------------------------------------------

    @property
    def score_output(self) -> str:
        """The graph output that holds the class scores: the first float one."""
        g = self._graph
        floats = [name for name in g.outputs if g.elem_type(name) in (*FLOAT_TYPES, None)]
        if not floats:
            raise ModelError(
                f"{self._loaded.origin} has no float output to read class scores from "
                f"(outputs: {', '.join(g.outputs)})."
            )
        return floats[0]

    @property
    def score_kind(self) -> ScoreKind:
        """``"probabilities"`` when the score output is computed by a Softmax, else
        ``"logits"``."""
        index = self._graph.producer.get(self.score_output)
        op = self._graph.nodes[index].op_type if index is not None else ""
        return "probabilities" if op == "Softmax" else "logits"

    def scores(self, images: Any, *, batch_size: int | None = None) -> np.ndarray:
        """The model's output :attr:`score_output` for ``images``, as ``(N, K)`` float32."""
        name = self.score_output

        def run(batch: np.ndarray) -> np.ndarray:
            (raw,) = self._run_tensors(batch, [name])
            return as_scores(raw, len(batch), f"Output {name!r} of {self._loaded.origin}")

        return self._batched(images, run, batch_size)

    # -- explanations ------------------------------------------------------------------------

    def patched_scores(
        self,
        image: Any,
        layer: str | Layer,
        activations: Any,
        *,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Scores of one image with ``layer``'s output replaced by each row of
        ``activations`` (see :class:`featvis.Patchable`), from a sub-model that starts at the
        layer: the part before it runs once; tensors that cross the cut (a skip connection)
        are computed once and fed to every batch of replacements."""
        from featvis_onnx._patch import patched_scores

        return patched_scores(self, image, layer, activations, batch_size=batch_size)

    def linear_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Weight and bias of the Gemm (or MatMul and Add) with constant weights that computes
        the score output, before a final Softmax (see :class:`featvis.LinearHead`)."""
        from featvis_onnx._patch import linear_head

        return linear_head(self)


class _OnnxLayerIndex(LayerIndex):
    """Also finds a layer by its torch module path (names and aliases come first)."""

    def __init__(self, layers: Sequence[Layer], why_not: Any) -> None:
        super().__init__(layers, why_not)
        self._by_source = {layer.source: layer for layer in layers if layer.source}

    def resolve(self, key: str | int | Layer) -> Layer:
        name = key.name if isinstance(key, Layer) else key
        if isinstance(name, str) and name not in self._by_key:
            layer = self._by_source.get(name)
            if layer is not None:
                return layer
        return super().resolve(key)


def _joined(parts: list[Any]) -> Any:
    """One result from the per-piece results: the arrays joined along the batch, or the first
    error."""
    error = next((p for p in parts if isinstance(p, FeatvisError)), None)
    if error is not None:
        return error
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
