"""featvis: see what a convolutional network has learned, on any framework.

>>> import featvis
>>> backend = featvis.load(model)                      # doctest: +SKIP
>>> print(featvis.layer_table(backend))                # doctest: +SKIP
>>> act = backend.activations("face.jpg", "conv1")     # doctest: +SKIP
>>> featvis.montage(act, grid=(8, 12)).save("conv1.png")  # doctest: +SKIP
"""

from featvis._backend import Backend, BackendBase, LayerKey, as_nchw
from featvis._capabilities import (
    Differentiable,
    Gradients,
    Objective,
    OnnxExportable,
    Scorer,
    require,
)
from featvis._compare import ComparisonTable, compare
from featvis._errors import (
    AmbiguousLayerError,
    ArgumentError,
    BackendNotFoundError,
    CapabilityError,
    FeatvisError,
    ImageError,
    LayoutError,
    MissingDependencyError,
    ModelError,
    PluginError,
    UnknownLayerError,
)
from featvis._images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, prepare_images, read_image
from featvis._layers import KINDS, Layer, LayerTable, layer_table, number_layers
from featvis._predict import probabilities, top_predictions
from featvis._receptive import ReceptiveField, receptive_field
from featvis._stream import ActivationBatch, ImageInfo
from featvis._survey import ChannelStats, ClassScore, Survey, TopImage, survey
from featvis._version import __version__
from featvis.hookspecs import hookimpl
from featvis.plugins import (
    BackendSpec,
    FeatvisPluginWarning,
    ModelSpec,
    list_backends,
    list_models,
    load,
    load_model,
    requiring,
)
from featvis.render import (
    Picture,
    montage,
    normalize,
    overlay,
    pair,
    resize,
    strongest_channel,
    top_channels,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "ActivationBatch",
    "AmbiguousLayerError",
    "ArgumentError",
    "Backend",
    "BackendBase",
    "BackendNotFoundError",
    "BackendSpec",
    "CapabilityError",
    "ChannelStats",
    "ClassScore",
    "ComparisonTable",
    "Differentiable",
    "FeatvisError",
    "FeatvisPluginWarning",
    "Gradients",
    "ImageError",
    "ImageInfo",
    "Layer",
    "LayerKey",
    "LayerTable",
    "LayoutError",
    "MissingDependencyError",
    "ModelError",
    "ModelSpec",
    "Objective",
    "OnnxExportable",
    "Picture",
    "PluginError",
    "Preprocess",
    "ReceptiveField",
    "Scorer",
    "Survey",
    "TopImage",
    "UnknownLayerError",
    "__version__",
    "as_nchw",
    "compare",
    "hookimpl",
    "layer_table",
    "list_backends",
    "list_models",
    "load",
    "load_model",
    "montage",
    "normalize",
    "number_layers",
    "overlay",
    "pair",
    "prepare_images",
    "probabilities",
    "read_image",
    "receptive_field",
    "require",
    "requiring",
    "resize",
    "strongest_channel",
    "survey",
    "top_channels",
    "top_predictions",
]
