"""Layers: the shared kind vocabulary, canonical aliases, name resolution and the layer table."""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from featvis._errors import AmbiguousLayerError, ArgumentError, UnknownLayerError
from featvis._table import Table

__all__ = [
    "CALL_SEPARATOR",
    "KINDS",
    "Layer",
    "LayerIndex",
    "LayerTable",
    "layer_table",
    "number_layers",
]

#: The kinds every backend sorts its layers into. A layer's alias is its kind followed by a
#: counter over the layers of that kind, in execution order (``conv1``, ``relu1``, ``pool1``...),
#: so the same network gets the same aliases whatever framework runs it.
KINDS: dict[str, str] = {
    "conv": "convolution (any dimension, transposed too)",
    "relu": "ReLU family: ReLU, ReLU6 / clipped ReLU, leaky and parametric ReLU",
    "act": "any other elementwise activation: sigmoid, tanh, GELU, SiLU, hard-swish, ELU, ...",
    "pool": "max, average, adaptive and global pooling",
    "bn": "batch normalization",
    "norm": "other normalization: cross channel (LRN), layer, group, instance",
    "fc": "fully connected (linear, Gemm, MatMul with a weight)",
    "drop": "dropout",
    "add": "elementwise addition (residual connections)",
    "mul": "elementwise multiplication (gating, squeeze-excitation)",
    "concat": "concatenation",
    "flatten": "flatten",
    "reshape": "reshape, transpose, squeeze and other layout changes",
    "prob": "softmax and log-softmax",
    "resize": "upsampling and resizing",
    "pad": "padding",
    "identity": "identity",
    "other": "anything else",
}

#: Joins a module name and a call number for a module that runs several times in one forward
#: pass: ``layer1.0.relu#2`` is the second call of ``layer1.0.relu`` (calls count from 1).
CALL_SEPARATOR = "#"


@dataclass(frozen=True, kw_only=True)
class Layer:
    """One layer of a model, as a backend reports it.

    Backends build layers without ``index`` and ``alias`` and pass them through
    :func:`number_layers`, which gives every backend the same canonical aliases.

    Attributes
    ----------
    name : str
        The backend-native name, unique in the model (a PyTorch module's qualified name, an ONNX
        tensor name). A module that runs ``k`` times has one layer per call, named ``name#1`` ...
        ``name#k``.
    kind : str
        One of :data:`KINDS`.
    type : str
        The native type, e.g. ``"Conv2d"`` or ``"Conv"``.
    output_shape : tuple of (int or None), or None
        The NCHW shape of the layer's output; ``None`` for a dimension that is dynamic (the batch)
        or a shape that is unknown.
    params : int
        Number of learned parameters the layer owns.
    description : str
        Human text in the spirit of MATLAB's ``net.Layers``, such as
        ``"96 11x11x3 convolutions with stride [4 4] and padding [0 0]"``.
    source : str or None
        Where the layer comes from in the framework the model was written in, when the backend
        knows it: the PyTorch module path an ONNX exporter recorded, for example. Used to match
        layers between backends.
    index : int
        Position in execution order, from 0.
    alias : str
        Canonical MATLAB-style name: the kind and a per-kind counter (``conv1``, ``relu5``...).
    layout : str
        How featvis reads the native tensor, one letter per axis: ``N`` the batch, ``C`` a
        channel axis, ``H`` and ``W`` spatial, ``L`` a sequence or token grid (``"NCHW"``,
        ``"NHWC"``, ``"LNC"`` for an LSTM's ``(T, N, H)``; see :mod:`featvis._axes`). Empty
        when the backend does not say.
    unavailable : str or None
        Why featvis cannot return this layer's activations (its axes cannot be placed), or
        ``None``. Asking for it raises :class:`featvis.LayoutError` with this reason.
    same_as : str or None
        The name of an earlier layer whose output this layer returns unchanged, the very same
        tensor (an ``nn.Identity``, an empty ``nn.Sequential``, a dropout in eval mode).
    fused : tuple of str
        Module paths an exporter fused into this layer, as the export records it (a BatchNorm
        folded into the convolution before it): the layer's value is the last one's output.
    """

    name: str
    kind: str
    type: str
    output_shape: tuple[int | None, ...] | None = None
    params: int = 0
    description: str = ""
    source: str | None = None
    index: int = -1
    alias: str = ""
    layout: str = ""
    unavailable: str | None = None
    same_as: str | None = None
    fused: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ArgumentError(
                f"Layer {self.name!r} has kind {self.kind!r}; use one of {', '.join(KINDS)}."
            )


def number_layers(layers: Iterable[Layer]) -> list[Layer]:
    """Give layers, in execution order, their ``index`` and canonical ``alias``.

    Parameters
    ----------
    layers : iterable of Layer
        In execution order. Their ``index`` and ``alias`` are ignored.

    Returns
    -------
    list of Layer
        New layers numbered from 0, each aliased by its kind and a per-kind counter from 1.

    Raises
    ------
    ArgumentError
        If two layers share a name.

    Examples
    --------
    >>> from featvis import Layer, number_layers
    >>> kinds = ["conv", "relu", "conv", "relu", "pool"]
    >>> layers = number_layers(Layer(name=f"m{i}", kind=k, type="T") for i, k in enumerate(kinds))
    >>> [layer.alias for layer in layers]
    ['conv1', 'relu1', 'conv2', 'relu2', 'pool1']
    """
    counters: dict[str, int] = {}
    numbered: list[Layer] = []
    seen: set[str] = set()
    for index, layer in enumerate(layers):
        if layer.name in seen:
            raise ArgumentError(f"Two layers are named {layer.name!r}; layer names must be unique.")
        seen.add(layer.name)
        counters[layer.kind] = counters.get(layer.kind, 0) + 1
        alias = f"{layer.kind}{counters[layer.kind]}"
        numbered.append(dataclasses.replace(layer, index=index, alias=alias))
    return numbered


class LayerIndex:
    """Finds a layer by its name, its alias or its index, with errors that suggest the closest
    names.

    ``why_not(name)``, when given, explains a name that is no layer but something the model
    has (a weight, a tensor without a batch axis): its sentence replaces the suggestions.
    """

    def __init__(
        self, layers: Sequence[Layer], why_not: Callable[[str], str | None] | None = None
    ) -> None:
        self.layers = list(layers)
        self._why_not = why_not
        self._by_key: dict[str, Layer] = {}
        for layer in self.layers:
            self._by_key[layer.name] = layer
        for layer in self.layers:
            # A name wins over an alias if a model happens to name a module "conv1".
            self._by_key.setdefault(layer.alias, layer)
        self._calls: dict[str, list[Layer]] = {}
        for layer in self.layers:
            base, sep, _ = layer.name.rpartition(CALL_SEPARATOR)
            if sep and base not in self._by_key:
                self._calls.setdefault(base, []).append(layer)

    def __len__(self) -> int:
        return len(self.layers)

    def resolve(self, key: str | int | Layer) -> Layer:
        """Return the layer ``key`` names: a name, an alias, an index in the layer table (an
        ``int``, negative ones counting from the end as in a list; or a string of digits that
        is no layer's name, as the command line passes it), or a :class:`Layer`."""
        if isinstance(key, Layer):
            key = key.name
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            return self._at(int(key))
        if not isinstance(key, str):
            raise ArgumentError(
                "A layer is named by a string (its name or alias) or by its index in the layer "
                f"table (an int), not {type(key).__name__} {key!r}."
            )
        layer = self._by_key.get(key)
        if layer is not None:
            return layer
        calls = self._calls.get(key)
        if calls:
            listed = ", ".join(f"{c.name!r} ({c.alias})" for c in calls)
            raise AmbiguousLayerError(
                f"Layer {key!r} runs {len(calls)} times in one forward pass; "
                f"name the call you want: {listed}."
            )
        if key.isdecimal():  # "--layer 0" on the command line: the table's index column
            return self._at(int(key))
        reason = self._why_not(key) if self._why_not is not None else None
        if reason is not None:
            raise UnknownLayerError(
                f"{reason} (The layers: featvis.layer_table(backend) in Python, "
                "`featvis layers MODEL` in a shell.)"
            )
        raise UnknownLayerError(self._unknown_message(key))

    def _at(self, index: int) -> Layer:
        count = len(self.layers)
        if not -count <= index < count:
            raise UnknownLayerError(
                f"Layer index {index} is out of range: the model has {count} layers, indexed "
                f"0 to {count - 1} (the index column of featvis.layer_table(backend), or of "
                "`featvis layers MODEL` in a shell)."
            )
        return self.layers[index]

    def _unknown_message(self, key: str) -> str:
        keys = [layer.name for layer in self.layers] + [layer.alias for layer in self.layers]
        close = difflib.get_close_matches(key, keys, n=3, cutoff=0.6)
        if close:
            found = [self._by_key[c] for c in close]
            hint = " Did you mean " + " or ".join(
                _called(layer, c) for layer, c in zip(found, close)
            )
            hint += "?"
        else:
            shown = ", ".join(layer.alias for layer in self.layers[:6])
            more = f", ... {self.layers[-1].alias}" if len(self.layers) > 6 else ""
            hint = f" Layers are named by name, alias ({shown}{more}) or index."
        return (
            f"Unknown layer {key!r}.{hint} All {len(self.layers)} layers: "
            "featvis.layer_table(backend) in Python, `featvis layers MODEL` in a shell."
        )


def _called(layer: Layer, key: str) -> str:
    """``'conv5' (features.10)``: a suggested key with the layer's other name."""
    other = layer.name if key == layer.alias else layer.alias
    return f"{key!r} ({other})" if other and other != key else repr(key)


def _format_shape(shape: tuple[int | None, ...] | None) -> str:
    if shape is None:
        return "?"
    # The batch dimension is the same for every layer; show C x H x W like MATLAB.
    return "x".join("?" if d is None else str(d) for d in shape[1:])


class LayerTable(Sequence[Layer]):
    """A model's layers as a table, like MATLAB's ``net.Layers``.

    ``str(table)`` is a text table; Jupyter shows it as HTML. It is also a sequence of
    :class:`Layer`. When layers come from an exported model and know the module that computed
    them (:attr:`Layer.source` differs from the name, as for an ONNX file exported by PyTorch),
    a ``module`` column shows it.
    """

    def __init__(self, layers: Sequence[Layer]) -> None:
        self.layers = list(layers)
        self._modules = any(layer.source and layer.source != layer.name for layer in self.layers)

    @property
    def columns(self) -> tuple[str, ...]:
        """The column names, in the order of :meth:`rows`."""
        module = ("module",) if self._modules else ()
        return ("index", "name", "alias", *module, "type", "output", "params", "description")

    def __len__(self) -> int:
        return len(self.layers)

    @overload
    def __getitem__(self, i: int) -> Layer: ...

    @overload
    def __getitem__(self, i: slice) -> LayerTable: ...

    def __getitem__(self, i: int | slice) -> Layer | LayerTable:
        if isinstance(i, slice):
            return LayerTable(self.layers[i])
        return self.layers[i]

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def rows(self) -> list[tuple[str, ...]]:
        """The table's cells as strings, one tuple per layer, in :attr:`columns` order."""
        return [
            (
                str(layer.index),
                layer.name,
                layer.alias,
                *((layer.source or "",) if self._modules else ()),
                layer.type,
                _format_shape(layer.output_shape),
                f"{layer.params:,}" if layer.params else "",
                layer.description,
            )
            for layer in self.layers
        ]

    def _table(self) -> Table:
        right = {self.columns.index("index"), self.columns.index("params")}  # numbers
        return Table(self.columns, self.rows(), right, css="featvis-layers")

    def __str__(self) -> str:
        return self._table().text()

    __repr__ = __str__

    def _repr_html_(self) -> str:
        return self._table().html()


def layer_table(backend_or_layers: object) -> LayerTable:
    """The layers of a backend (or a list of layers) as a table, like MATLAB's ``net.Layers``.

    Parameters
    ----------
    backend_or_layers : Backend or sequence of Layer

    Returns
    -------
    LayerTable
        Prints as a text table (index, name, alias, type, output C x H x W, parameters,
        description) and shows as HTML in Jupyter.

    Examples
    --------
    >>> import featvis
    >>> from featvis.testing import tiny_cnn
    >>> print(featvis.layer_table(tiny_cnn()))  # doctest: +NORMALIZE_WHITESPACE
    index  name        alias  type           output    params  description
    -----  ----------  -----  -------------  --------  ------  ------------------------------...
        0  stem        conv1  Conv           8x32x32      224  8 3x3x3 convolutions with stride [1 1] and padding [1 1]
        1  stem.relu   relu1  ReLU           8x32x32           ReLU
        2  stem.pool   pool1  MaxPool        8x16x16           2x2 max pooling with stride [2 2]
        3  block.conv  conv2  Conv           16x16x16   1,168  16 3x3x8 convolutions with stride [1 1] and padding [1 1]
        4  block.relu  relu2  ReLU           16x16x16          ReLU
        5  gap         pool2  GlobalAvgPool  16x1x1            global average pooling
        6  head        fc1    Linear         10x1x1       170  10 fully connected layer
        7  softmax     prob1  Softmax        10x1x1            softmax
    """
    layers = getattr(backend_or_layers, "layers", None)
    if callable(layers):
        return LayerTable(layers())
    if isinstance(backend_or_layers, Sequence) and all(
        isinstance(x, Layer) for x in backend_or_layers
    ):
        return LayerTable(backend_or_layers)
    raise ArgumentError(
        "layer_table takes a backend (from featvis.load) or a list of Layer, "
        f"not {type(backend_or_layers).__name__}."
    )
