"""featvis: see what a convolutional network has learned, on any framework.

``featvis.load(model)`` takes a ``torch.nn.Module``, an ``.onnx`` file, or anything a plugin
accepts; here a small numpy CNN that needs no framework stands in for it:

>>> import numpy as np
>>> import featvis
>>> from featvis.testing import tiny_cnn
>>> backend = featvis.load(tiny_cnn())
>>> print(featvis.layer_table(backend))  # MATLAB's net.Layers   # doctest: +ELLIPSIS
index  name        alias  type           output    params  description
...
    7  softmax     prob1  Softmax        10x1x1            softmax
>>> image = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
>>> act = backend.activations(image, "conv1")  # (images, channels, height, width)
>>> act.shape
(1, 8, 32, 32)
>>> featvis.montage(act, grid=(2, 4)).size
(67, 133)
>>> featvis.pair(image, act[0, featvis.strongest_channel(act)]).size
(48, 128)
"""

from featvis._axes import as_nchw
from featvis._backend import Activations, Backend, LayerKey
from featvis._backend_base import BackendBase
from featvis._capabilities import (
    Differentiable,
    Gradients,
    LinearHead,
    Objective,
    OnnxExportable,
    Patchable,
    Randomizable,
    Scorer,
    Summarizing,
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
    LayerWarning,
    LayoutError,
    MissingDependencyError,
    ModelError,
    PluginError,
    UnknownLayerError,
)
from featvis._evaluate import Evaluation, evaluate
from featvis._explain import (
    Explanation,
    Method,
    MethodRequest,
    MethodResult,
    default_layer,
    explain,
    list_methods,
    stage_layers,
)
from featvis._figures import Figure
from featvis._images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, prepare_images, read_image
from featvis._layers import KINDS, Layer, LayerTable, layer_table, number_layers
from featvis._maximize import Maximization, Transforms, maximize, maximize_section
from featvis._predict import probabilities, top_predictions
from featvis._receptive import ReceptiveField, receptive_field
from featvis._reduce import BatchSummary
from featvis._report import Report, Section, report
from featvis._stream import ActivationBatch, ImageInfo
from featvis._survey import survey
from featvis._survey_result import ChannelStats, ClassScore, Survey, TopImage
from featvis._version import __version__
from featvis.hookspecs import hookimpl
from featvis.plugins import (
    BackendSpec,
    FeatvisPluginWarning,
    ModelSpec,
    install_hint,
    lazy_exports,
    list_backends,
    list_models,
    load,
    load_model,
    requiring,
)
from featvis.render import (
    Picture,
    gallery,
    montage,
    normalize,
    overlay,
    pair,
    resize,
    strongest_channel,
    tied_channels,
    top_channels,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "KINDS",
    "ActivationBatch",
    "Activations",
    "AmbiguousLayerError",
    "ArgumentError",
    "Backend",
    "BackendBase",
    "BackendNotFoundError",
    "BackendSpec",
    "BatchSummary",
    "CapabilityError",
    "ChannelStats",
    "ClassScore",
    "ComparisonTable",
    "Differentiable",
    "Evaluation",
    "Explanation",
    "FeatvisError",
    "FeatvisPluginWarning",
    "Figure",
    "Gradients",
    "ImageError",
    "ImageInfo",
    "Layer",
    "LayerKey",
    "LayerTable",
    "LayerWarning",
    "LayoutError",
    "LinearHead",
    "Maximization",
    "Method",
    "MethodRequest",
    "MethodResult",
    "MissingDependencyError",
    "ModelError",
    "ModelSpec",
    "Objective",
    "OnnxExportable",
    "Patchable",
    "Picture",
    "PluginError",
    "Preprocess",
    "Randomizable",
    "ReceptiveField",
    "Report",
    "Scorer",
    "Section",
    "Summarizing",
    "Survey",
    "TopImage",
    "Transforms",
    "UnknownLayerError",
    "__version__",
    "as_nchw",
    "compare",
    "default_layer",
    "evaluate",
    "explain",
    "gallery",
    "hookimpl",
    "install_hint",
    "layer_table",
    "lazy_exports",
    "list_backends",
    "list_methods",
    "list_models",
    "load",
    "load_model",
    "maximize",
    "maximize_section",
    "montage",
    "normalize",
    "number_layers",
    "overlay",
    "pair",
    "prepare_images",
    "probabilities",
    "read_image",
    "receptive_field",
    "report",
    "require",
    "requiring",
    "resize",
    "stage_layers",
    "strongest_channel",
    "survey",
    "tied_channels",
    "top_channels",
    "top_predictions",
]
