"""Plugin discovery: one pluggy PluginManager, the ``featvis`` entry points, and backend lookup.

Entry points are loaded lazily, the first time backends are listed or a model is loaded, and
only once. A plugin that fails to import is skipped with a :class:`FeatvisPluginWarning` that
names it; set the environment variable ``FEATVIS_STRICT_PLUGINS=1`` to make that an error.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from typing import Any

import pluggy

from featvis import hookspecs
from featvis._backend import Backend
from featvis._errors import BackendNotFoundError, MissingDependencyError, ModelError, PluginError

__all__ = [
    "ENTRY_POINT_GROUP",
    "PICKLE_SUFFIXES",
    "STRICT_ENV",
    "BackendSpec",
    "FeatvisPluginWarning",
    "ModelSpec",
    "install_hint",
    "lazy_exports",
    "list_backends",
    "list_models",
    "load",
    "load_model",
    "load_plugins",
    "pm",
    "requiring",
]

ENTRY_POINT_GROUP = "featvis"
STRICT_ENV = "FEATVIS_STRICT_PLUGINS"

pm = pluggy.PluginManager("featvis")
pm.add_hookspecs(hookspecs)

_lock = threading.Lock()
_loaded = False


class FeatvisPluginWarning(UserWarning):
    """A plugin failed to load or misbehaved; featvis carries on without it."""


@dataclass(frozen=True)
class BackendSpec:
    """A backend as a plugin registers it.

    Parameters
    ----------
    name : str
        Short unique name, used as ``featvis.load(model, backend=name)``.
    accepts : callable
        ``accepts(model) -> bool``: whether this backend can inspect ``model``. It must be cheap
        and must never import a framework the user has not imported (test ``sys.modules``).
    load : callable
        ``load(model, **options) -> Backend``. This is where the framework is imported.
    description : str
        What the backend accepts, for people: ``"torch.nn.Module"``.
    requires : tuple of str
        Top-level modules the backend needs (``("torch",)``); used to say whether it is usable.
    extra : str or None
        The pip requirement that installs what it needs: ``"featvis[torch]"`` (for featvis's
        own extras, messages say the command that works from a clone).
    priority : int
        When several backends accept a model, the highest priority wins (then the first
        registered). Built-in backends use 0.
    """

    name: str
    accepts: Callable[[Any], bool]
    load: Callable[..., Backend]
    description: str = ""
    requires: tuple[str, ...] = ()
    extra: str | None = None
    priority: int = 0

    @property
    def available(self) -> bool:
        """Whether the modules in :attr:`requires` are installed (found without importing)."""
        return all(importlib.util.find_spec(module) is not None for module in self.requires)

    def summary(self) -> str:
        """One line: name, what it accepts, and whether it is usable or how to make it so."""
        state = (
            "ready"
            if self.available
            else "missing "
            + ", ".join(m for m in self.requires if importlib.util.find_spec(m) is None)
        )
        install = f"; {install_hint(self.extra)}" if self.extra and not self.available else ""
        return f"{self.name} ({self.description or 'no description'}; {state}{install})"


@dataclass(frozen=True)
class ModelSpec:
    """A model that can be asked for by name, as a plugin registers it.

    Parameters
    ----------
    name : str
        The name, e.g. ``"efficientnet_lite0"``; with ``prefix=True`` a prefix that a family of
        names shares, e.g. ``"torchvision:"``.
    load : callable
        ``load(name) -> Backend``, given the full name asked for. It returns a backend ready to
        use: its preprocessing set, and ``categories`` (class names) when the model has them.
    description : str
        One line for ``featvis models``.
    prefix : bool
        Whether ``name`` is a prefix rather than a whole name.
    """

    name: str
    load: Callable[[str], Backend]
    description: str = ""
    prefix: bool = False

    def matches(self, name: str) -> bool:
        """Whether this spec serves ``name``."""
        return name.startswith(self.name) if self.prefix else name == self.name


def install_hint(requirement: str) -> str:
    """The command that installs ``requirement``: for featvis's own extras (``featvis[torch]``)
    the one that works today, from a clone, since featvis is not on PyPI yet."""
    if requirement.startswith("featvis[") and requirement.endswith("]"):
        return f"pip install -e '.[{requirement[8:-1]}]' in a clone of featvis"
    return f"pip install '{requirement}'"


@contextlib.contextmanager
def requiring(message: str, modules: Iterable[str]) -> Iterator[None]:
    """Within the block, failing to import one of ``modules`` raises
    :class:`MissingDependencyError` with ``message`` (which says what to install).

    For plugins, around the import of the module that needs the framework. An ImportError of
    any other module (a bug in the plugin) propagates as it is.

    Examples
    --------
    >>> import featvis
    >>> with featvis.requiring("needs nosuchnet: pip install featvis-nosuchnet", ["nosuchnet"]):
    ...     import nosuchnet.layers
    Traceback (most recent call last):
    ...
    featvis._errors.MissingDependencyError: needs nosuchnet: pip install featvis-nosuchnet
    """
    wanted = set(modules)
    try:
        yield
    except MissingDependencyError:
        raise
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in wanted:
            raise MissingDependencyError(message) from exc
        raise


def lazy_exports(
    package: str, exports: Mapping[str, str], *, missing: str, requires: Iterable[str]
) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562) that imports each of ``exports`` on first use.

    For a plugin package whose ``__init__.py`` must not import its framework: the names it
    exports are imported from their modules when first asked for, inside :func:`requiring`, so
    a missing framework is a :class:`MissingDependencyError` with ``missing`` as its message.

    Parameters
    ----------
    package : str
        The package's ``__name__``, for the error about a name it does not export.
    exports : mapping of str to str
        Attribute name -> the module that defines it (``{"TorchBackend":
        "featvis_torch._backend"}``).
    missing : str
        The message when one of ``requires`` cannot be imported; say what to install.
    requires : iterable of str
        The top-level modules the exports need (``("torch",)``).

    Examples
    --------
    In the plugin's ``__init__.py``::

        __getattr__ = featvis.lazy_exports(
            __name__,
            {"MyBackend": "featvis_mynet._backend"},
            missing="featvis backend 'mynet' needs mynet: pip install featvis-mynet",
            requires=["mynet"],
        )

    >>> import featvis
    >>> getattr_ = featvis.lazy_exports(
    ...     "featvis", {"NoSuch": "nosuchnet.layers"}, missing="pip install nosuchnet",
    ...     requires=["nosuchnet"])
    >>> getattr_("NoSuch")
    Traceback (most recent call last):
    ...
    featvis._errors.MissingDependencyError: pip install nosuchnet
    """
    table = dict(exports)
    needed = tuple(requires)

    def __getattr__(name: str) -> Any:
        module_name = table.get(name)
        if module_name is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        with requiring(missing, needed):
            module = importlib.import_module(module_name)
        return getattr(module, name)  # imported once: later calls find it in sys.modules

    return __getattr__


def _strict() -> bool:
    return os.environ.get(STRICT_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _plugin_failed(message: str, exc: BaseException) -> None:
    if _strict():
        raise PluginError(f"{message} ({STRICT_ENV} is set)") from exc
    warnings.warn(f"{message}; featvis carries on without it.", FeatvisPluginWarning, stacklevel=3)


def _describe(ep: EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    origin = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"featvis plugin {ep.name!r} ({ep.value}{origin})"


def load_plugins() -> None:
    """Load the ``featvis`` entry points once. Safe to call any number of times."""
    global _loaded
    with _lock:
        if _loaded:
            return
        _loaded = True
        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
                continue
            try:
                plugin = ep.load()
                pm.register(plugin, name=ep.name)
            except Exception as exc:
                _plugin_failed(f"{_describe(ep)} failed to load: {type(exc).__name__}: {exc}", exc)


def _collect(hook_name: str, kind: type, **arguments: Any) -> list[Any]:
    """Call one registration hook on every plugin, each in isolation, keeping what they give.

    Each implementation gets, by name, the arguments it asks for: ``register`` and any others
    the hook has (``arguments``; a hook evolves by gaining arguments, and an implementation
    may take any subset). A plugin that raises, or asks for an argument the hook does not have,
    is reported and skipped, so one broken plugin cannot hide the rest.
    """
    load_plugins()
    collected: list[Any] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        plugin_name = pm.get_name(impl.plugin) or repr(impl.plugin)
        found: list[Any] = []

        def register(spec: Any, _found: list[Any] = found) -> None:
            if not isinstance(spec, kind):
                raise TypeError(
                    f"register() takes a featvis.{kind.__name__}, not {type(spec).__name__}"
                )
            _found.append(spec)

        given = {**arguments, "register": register}
        try:
            unknown = [name for name in impl.argnames if name not in given]
            if unknown:
                raise TypeError(
                    f"it asks for {', '.join(map(repr, unknown))}, which {hook_name} does not "
                    f"pass (it passes {', '.join(map(repr, sorted(given)))})"
                )
            impl.function(**{name: given[name] for name in impl.argnames})
        except Exception as exc:  # a broken plugin must not break the others
            _plugin_failed(
                f"featvis plugin {plugin_name!r} failed in {hook_name}: "
                f"{type(exc).__name__}: {exc}",
                exc,
            )
            continue
        collected.extend((plugin_name, spec) for spec in found)
    return collected


def _unique(named: list[tuple[str, Any]], what: str) -> list[Any]:
    """One spec per name: the first registered wins, a later duplicate is reported."""
    specs: dict[str, Any] = {}
    for plugin_name, spec in named:
        if spec.name in specs:
            warnings.warn(
                f"featvis plugin {plugin_name!r} registers a {what} named {spec.name!r}, "
                "which another plugin already registered; the first one is kept.",
                FeatvisPluginWarning,
                stacklevel=4,
            )
            continue
        specs[spec.name] = spec
    return list(specs.values())


def _backends() -> list[BackendSpec]:
    """Every registered backend, one per name, highest priority first."""
    specs = _unique(_collect("register_backends", BackendSpec), "backend")
    # get_hookimpls() is in registration order; sorted() is stable.
    return sorted(specs, key=lambda spec: -spec.priority)


def list_backends() -> list[BackendSpec]:
    """The installed backends, in the order :func:`load` tries them.

    Examples
    --------
    >>> import featvis
    >>> [spec.name for spec in featvis.list_backends()]  # doctest: +SKIP
    ['torch', 'onnx']
    >>> print(featvis.list_backends()[0].summary())  # doctest: +SKIP
    torch (torch.nn.Module; ready)
    """
    return _backends()


def _accepts(spec: BackendSpec, model: Any) -> bool:
    try:
        return bool(spec.accepts(model))
    except Exception as exc:
        _plugin_failed(
            f"featvis backend {spec.name!r} raised in accepts(): {type(exc).__name__}: {exc}", exc
        )
        return False


def _listing(specs: list[BackendSpec]) -> str:
    if not specs:
        return f"No backends are installed (reinstall featvis: {install_hint('featvis[all]')})."
    return "Installed backends: " + "; ".join(spec.summary() for spec in specs) + "."


def load(model: Any, *, backend: str | None = None, **options: Any) -> Backend:
    """A backend for ``model``, from the installed plugin that accepts it (or the one named).

    Parameters
    ----------
    model : object
        Anything an installed backend accepts: a ``torch.nn.Module``, a path to an ``.onnx``
        file, ... A :class:`Backend` is returned as it is (when no options are given).
    backend : str, optional
        Use this backend instead of detecting one.
    **options
        Passed to the backend, e.g. ``preprocess=featvis.Preprocess(...)``.

    Returns
    -------
    Backend

    Raises
    ------
    BackendNotFoundError
        No installed backend accepts ``model``, or none is named ``backend``. The message lists
        the installed backends, what each accepts, and what to install for a missing one.
    MissingDependencyError
        The chosen backend's framework is not installed.
    ModelError
        For a pickled model file (``.pt``, ``.pth``...), which featvis refuses to unpickle.

    Examples
    --------
    A ``torch.nn.Module`` or an ``.onnx`` path goes to its backend; a backend (here the numpy
    CNN of :mod:`featvis.testing`) comes back as it is:

    >>> import featvis
    >>> from featvis.testing import tiny_cnn
    >>> backend = featvis.load(tiny_cnn())
    >>> backend.name, len(backend.layers())
    ('array', 8)
    >>> featvis.load("efficientnet_lite0")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    featvis._errors.BackendNotFoundError: 'efficientnet_lite0' is the name of a model, ...
    """
    if backend is None and not options and isinstance(model, Backend):
        return model
    specs = _backends()
    if backend is not None:
        for spec in specs:
            if spec.name == backend:
                return spec.load(model, **options)
        raise BackendNotFoundError(f"No backend named {backend!r}. {_listing(specs)}")
    for spec in specs:
        if _accepts(spec, model):
            return spec.load(model, **options)
    if isinstance(model, (str, os.PathLike)):
        _refuse_path(os.fsdecode(os.fspath(model)))
    kind = type(model).__module__ + "." + type(model).__qualname__
    raise BackendNotFoundError(
        f"No installed backend accepts a {kind}. {_listing(specs)} Other frameworks need a "
        "third-party plugin (see docs/plugins.md), or pass backend='name' to force one."
    )


#: Files that hold pickles: loading one runs whatever code it contains, so featvis refuses them.
PICKLE_SUFFIXES = frozenset(
    {".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".joblib", ".tar", ".pt2"}
)


def pickle_refusal(name: str) -> str:
    """Why featvis does not open the pickled model file ``name``, and what to do instead."""
    return (
        f"featvis does not open pickled model files such as {name!r}: unpickling runs any code "
        "the file contains. Export the model to ONNX (torch.onnx.export) and pass the .onnx "
        "file, or build the model in Python (load its weights with torch.load(..., "
        "weights_only=True)) and pass the module to featvis.load; from a shell, pass "
        "module:callable, a function of yours that returns it (mymodel:build)."
    )


def _refuse_path(text: str) -> None:
    """For a string or path that no backend accepted: the error that says what it is."""
    suffix = os.path.splitext(text)[1].lower()
    if suffix in PICKLE_SUFFIXES:
        raise ModelError(pickle_refusal(text))
    named = [spec for spec in list_models() if spec.matches(text)]
    if named:
        raise BackendNotFoundError(
            f"{text!r} is the name of a model, not a model: featvis.load_model({text!r}) opens "
            "it (featvis.list_models() lists the names)."
        )
    if os.path.isfile(text):
        raise ModelError(
            f"featvis cannot open {text!r}: model files must be ONNX (.onnx). Export the model "
            "to ONNX, or load it in its framework and pass the model object to featvis.load."
        )


def list_models() -> list[ModelSpec]:
    """The models that installed plugins offer by name (``featvis models`` prints them)."""
    return _unique(_collect("register_models", ModelSpec), "model")


def load_model(name: str) -> Backend:
    """A ready backend for the model called ``name`` (see :func:`list_models`).

    Raises
    ------
    BackendNotFoundError
        No installed plugin offers ``name``; the message lists the names that exist.
    """
    specs = list_models()
    for spec in specs:
        if spec.matches(name):
            return spec.load(name)
    known = ", ".join(spec.name + ("NAME" if spec.prefix else "") for spec in specs) or "none"
    raise BackendNotFoundError(f"No model named {name!r}. Models by name: {known}.")
