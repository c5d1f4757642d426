"""The hooks a featvis plugin implements, and the markers to implement them with.

A plugin is a module (or object) with functions marked ``@featvis.hookimpl``, named after a hook
below, declared under the entry-point group ``featvis`` in the plugin's ``pyproject.toml``::

    [project.entry-points.featvis]
    mybackend = "featvis_mybackend"

Hooks are called with keyword arguments, so an implementation may take fewer arguments than the
spec; hooks only ever gain arguments. See docs/plugins.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from featvis._explain._registry import Method
    from featvis.plugins import BackendSpec, ModelSpec

__all__ = ["hookimpl", "hookspec", "register_backends", "register_methods", "register_models"]

hookspec = pluggy.HookspecMarker("featvis")
hookimpl = pluggy.HookimplMarker("featvis")


@hookspec
def register_backends(register: Callable[[BackendSpec], None]) -> None:
    """Register the backends this plugin provides.

    Call ``register(BackendSpec(...))`` once per backend. Registering must be cheap and must not
    import a framework: ``BackendSpec.accepts`` decides from ``sys.modules`` and the model's
    type, and ``BackendSpec.load`` imports the framework when a backend is actually built.

    Parameters
    ----------
    register : callable
        Takes one :class:`featvis.BackendSpec`.
    """


@hookspec
def register_models(register: Callable[[ModelSpec], None]) -> None:
    """Register models that people can ask for by name, as ``featvis demo --model NAME``.

    Call ``register(ModelSpec(...))`` once per model, or once per family of models sharing a
    prefix (``torchvision:`` for ``torchvision:alexnet``, ``torchvision:resnet18``...). Loading
    happens only when the name is asked for.

    Parameters
    ----------
    register : callable
        Takes one :class:`featvis.ModelSpec`.
    """


@hookspec
def register_methods(register: Callable[[Method], None]) -> None:
    """Register explanation methods for :func:`featvis.explain` (``method="NAME"``).

    Call ``register(Method(...))`` once per method. ``Method.run`` takes a
    :class:`featvis.MethodRequest` (the prepared images, the layer, the targets, the
    options) and returns a :class:`featvis.MethodResult`; it must talk to the backend
    only through the capabilities listed in ``Method.needs`` (:class:`featvis.Scorer`,
    :class:`featvis.Differentiable`, ...), so that it works on every backend that has them.
    featvis's own methods (Grad-CAM, Score-CAM, occlusion...) are registered through this hook
    too, first; a later method with a name already taken is skipped with a warning.

    Parameters
    ----------
    register : callable
        Takes one :class:`featvis.Method`.
    """
