"""The errors featvis raises about what it was given.

Every one derives from :class:`FeatvisError`, and also from the builtin that fits, so
``except KeyError`` keeps working for code that does not know featvis::

    FeatvisError(Exception)
    ├── ArgumentError(ValueError)         a bad argument: grid too small, unknown mode, ...
    ├── ImageError(ValueError)            an image that cannot be read or used
    ├── ModelError(ValueError)            a model a backend cannot run (TorchScript, corrupt ONNX)
    ├── LayoutError(ValueError)           a tensor whose layout cannot be made NCHW
    ├── UnknownLayerError(KeyError)       a layer name or alias that the model does not have
    │   └── AmbiguousLayerError           a name that matches several calls of one module
    ├── BackendNotFoundError(LookupError) no installed backend accepts the model
    ├── CapabilityError(TypeError)        the backend cannot do what a method needs (gradients)
    ├── MissingDependencyError(ImportError) a backend's framework is not installed
    └── PluginError(RuntimeError)         a plugin failed to load (strict mode only)

and one warning, :class:`LayerWarning` (a ``UserWarning``), when some of the layers asked for in
one call could not be returned (the others are).

Bugs in featvis itself, or in a plugin, surface as ordinary exceptions, so catching
``FeatvisError`` never hides them.
"""

from __future__ import annotations

__all__ = [
    "AmbiguousLayerError",
    "ArgumentError",
    "BackendNotFoundError",
    "CapabilityError",
    "FeatvisError",
    "ImageError",
    "LayerWarning",
    "LayoutError",
    "MissingDependencyError",
    "ModelError",
    "PluginError",
    "UnknownLayerError",
]


class FeatvisError(Exception):
    """Base of every error featvis raises about its input."""


class ArgumentError(FeatvisError, ValueError):
    """An argument has a value featvis cannot use."""


class ImageError(FeatvisError, ValueError):
    """An image could not be read, or has a shape or type featvis cannot use."""


class ModelError(FeatvisError, ValueError):
    """A backend cannot inspect this model (corrupt file, unsupported kind of module, ...)."""


class LayoutError(FeatvisError, ValueError):
    """A tensor's layout could not be turned into NCHW without guessing."""


class LayerWarning(UserWarning):
    """Some of the layers asked for in one call could not be returned; the rest were.

    The result (:class:`featvis.Activations`) names them in ``missing``, and asking it for one
    raises the error that says why.
    """


class UnknownLayerError(FeatvisError, KeyError):
    """A layer name or alias that the model does not have."""

    def __str__(self) -> str:
        # KeyError quotes its argument; our messages are sentences, shown as they are.
        return str(self.args[0]) if self.args else ""


class AmbiguousLayerError(UnknownLayerError):
    """A bare module name that ran several times in one forward pass."""


class BackendNotFoundError(FeatvisError, LookupError):
    """No installed backend accepts the model, or the named backend is not installed."""


class CapabilityError(FeatvisError, TypeError):
    """The backend lacks a capability a method needs (see :mod:`featvis._capabilities`)."""


class MissingDependencyError(FeatvisError, ImportError):
    """A backend needs a framework that is not installed."""


class PluginError(FeatvisError, RuntimeError):
    """A plugin failed to load while ``FEATVIS_STRICT_PLUGINS`` is set."""
