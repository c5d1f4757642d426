"""Explanation methods as plugins: the :class:`Method` spec, and the registry behind it.

Every method, the built-in ones included, is registered through the ``register_methods`` hook
(:mod:`featvis.hookspecs`); the built-ins are the plugin :mod:`featvis._explain._builtin`.
"""

from __future__ import annotations

import difflib
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import Scorer
from featvis._errors import ArgumentError
from featvis._explain._targets import Resolved, Targets
from featvis._layers import Layer

__all__ = ["Method", "MethodRequest", "MethodResult", "get_method", "list_methods"]


@dataclass(frozen=True)
class MethodRequest:
    """What a method is asked: explain ``batch`` (prepared, ``(N, C, H, W)`` float32) for
    ``targets`` at ``layer`` (None for a method that uses no layer).

    ``scores`` are the model's ``(N, K)`` scores of the batch when they were needed to resolve
    the targets (a method may reuse them instead of running the model again), else None.
    ``options`` holds the method's own keyword options, already checked against
    :attr:`Method.options`.
    """

    backend: Backend
    batch: np.ndarray
    layer: Layer | None
    targets: Targets
    scores: np.ndarray | None = None
    batch_size: int | None = None
    progress: bool | None = None
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)

    def resolve(self, scores: np.ndarray | None = None) -> Resolved:
        """The targets resolved, with ``scores`` (or those given), running the model if
        nothing else gives them."""
        if scores is None:
            scores = self.scores
        if scores is None and isinstance(self.backend, Scorer):
            scores = self.backend.scores(self.batch, batch_size=self.batch_size)
        return self.targets.resolve(scores)


@dataclass(frozen=True)
class MethodResult:
    """What a method returns.

    Attributes
    ----------
    raw : ndarray, shape (N, h, w)
        The map at the method's own resolution (the layer's grid, the occlusion grid).
    targets : Resolved
        The targets explained.
    scores : ndarray, shape (N,)
        The explained score of each image (the model's, for the unperturbed image).
    maps : ndarray, shape (N, H, W), optional
        The map at the input's resolution; by default ``raw`` resized bilinearly (pixel
        centres aligned).
    """

    raw: np.ndarray
    targets: Resolved
    scores: np.ndarray
    maps: np.ndarray | None = None


@dataclass(frozen=True)
class Method:
    """An explanation method, as a plugin registers it with ``register_methods``.

    Parameters
    ----------
    name : str
        Lower case, e.g. ``"gradcam"``; ``featvis.explain(method=name)``.
    run : callable
        ``run(request) -> MethodResult`` (see :class:`MethodRequest`). Framework-free: it
        talks to the backend only through the capabilities in ``needs``.
    needs : tuple of type
        The capability protocols the backend must have (:class:`featvis.Differentiable`,
        :class:`featvis.Scorer`, ...); checked before ``run`` is called.
    description : str
        One line, with the paper: ``"Grad-CAM (Selvaraju et al., 2017)"``.
    uses_layer : bool
        Whether the method explains through a layer (``layer=`` applies).
    class_discriminative : bool
        Whether the map depends on the target class (EigenCAM's does not).
    options : tuple of str
        The keyword options ``run`` reads from ``request.options`` (others are refused).
    aliases : tuple of str
        Other names, such as ``"grad-cam"``.
    run_layers : callable, optional
        ``run_layers(request, layers) -> [MethodResult per layer]``: the method at several
        layers at once, for ``explain(layer=[...])``, where one pass can serve them all (the
        gradient methods: one forward and one backward pass for every layer). Without it,
        ``explain`` calls ``run`` once per layer, with the targets resolved once.
    """

    name: str
    run: Callable[[MethodRequest], MethodResult]
    needs: tuple[type, ...] = (Scorer,)
    description: str = ""
    uses_layer: bool = True
    class_discriminative: bool = True
    options: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    run_layers: Callable[[MethodRequest, Sequence[Layer]], list[MethodResult]] | None = None

    def works_with(self, backend: object) -> bool:
        """Whether ``backend`` has every capability this method needs."""
        return all(isinstance(backend, capability) for capability in self.needs)


_lock = threading.Lock()
BUILTIN_PLUGIN = "featvis-methods"


def _register_builtins() -> None:
    from featvis._explain import _builtin
    from featvis.plugins import pm

    with _lock:
        if pm.get_plugin(BUILTIN_PLUGIN) is None and not pm.is_blocked(BUILTIN_PLUGIN):
            pm.register(_builtin, name=BUILTIN_PLUGIN)


def list_methods() -> list[Method]:
    """Every registered explanation method, built-in ones first, one per name.

    Examples
    --------
    >>> import featvis
    >>> [m.name for m in featvis.list_methods()][:3]
    ['gradcam', 'gradcampp', 'xgradcam']
    """
    from featvis.plugins import _collect, _unique

    _register_builtins()
    return _unique(_collect("register_methods", Method), "method")


def _key(name: str) -> str:
    return name.lower().replace("-", "").replace("_", "").replace(" ", "").replace("++", "pp")


def get_method(name: str) -> Method:
    """The method called ``name`` (or one of its aliases; case, ``-`` and ``_`` ignored)."""
    if not isinstance(name, str):
        raise ArgumentError(f"method must be a method's name, not {type(name).__name__}.")
    methods = list_methods()
    wanted = _key(name)
    for method in methods:
        if wanted in {_key(method.name), *map(_key, method.aliases)}:
            return method
    names = [m.name for m in methods]
    close = difflib.get_close_matches(name.lower(), names, n=2)
    hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise ArgumentError(
        f"Unknown method {name!r}.{hint} Methods: {', '.join(names)} (featvis.list_methods())."
    )
