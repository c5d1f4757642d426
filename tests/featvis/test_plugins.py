"""Plugin discovery: entry points, third-party backends, broken plugins, featvis.load."""

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import featvis
from featvis import plugins
from featvis.hookspecs import hookspec
from featvis.testing import tiny_cnn


class Abacus:
    """A 'framework' model type that only the test plugin knows."""


class AbacusPlugin:
    @featvis.hookimpl
    def register_backends(self, register):  # type: ignore[no-untyped-def]
        register(
            featvis.BackendSpec(
                name="abacus",
                accepts=lambda model: isinstance(model, Abacus),
                load=lambda model, **options: tiny_cnn(**options),
                description="test Abacus models",
                extra="featvis-abacus",
            )
        )


@pytest.fixture
def abacus() -> Iterator[AbacusPlugin]:
    plugin = AbacusPlugin()
    plugins.pm.register(plugin, name="abacus-test")
    try:
        yield plugin
    finally:
        plugins.pm.unregister(plugin)


def test_the_built_in_backends_come_from_entry_points() -> None:
    names = [spec.name for spec in featvis.list_backends()]
    assert "torch" in names and "onnx" in names
    assert plugins.pm.get_plugin("torch") is sys.modules["featvis_torch"]
    assert plugins.pm.get_plugin("onnx") is sys.modules["featvis_onnx"]


def test_load_picks_the_backend_that_accepts_the_model(abacus: AbacusPlugin) -> None:
    backend = featvis.load(Abacus())
    assert isinstance(backend, featvis.testing.ArrayBackend)
    assert backend.layers()[0].alias == "conv1"
    named = featvis.load(Abacus(), backend="abacus", preprocess=featvis.Preprocess(size=(8, 8)))
    assert named.preprocess.size == (8, 8)


def test_a_backend_is_returned_as_it_is() -> None:
    backend = tiny_cnn()
    assert featvis.load(backend) is backend


def test_no_match_lists_the_installed_backends_and_how_to_add_one(abacus: AbacusPlugin) -> None:
    with pytest.raises(featvis.BackendNotFoundError) as info:
        featvis.load(3.5)
    message = str(info.value)
    assert "No installed backend accepts a builtins.float" in message
    assert "abacus (test Abacus models; ready)" in message
    assert "torch (torch.nn.Module" in message and "docs/plugins.md" in message
    with pytest.raises(featvis.BackendNotFoundError, match="No backend named 'tensorflow'"):
        featvis.load(Abacus(), backend="tensorflow")


def test_a_missing_framework_is_shown_with_its_extra() -> None:
    spec = featvis.BackendSpec(
        name="x",
        accepts=bool,
        load=lambda m: m,
        description="X models",
        requires=("no_such_module_anywhere",),
        extra="featvis[x]",
    )
    assert not spec.available
    assert (
        spec.summary()
        == "x (X models; missing no_such_module_anywhere; pip install -e '.[x]' in a clone of "
        "featvis)"
    )
    other = featvis.BackendSpec(
        name="y", accepts=bool, load=lambda m: m, requires=("no_such_module",), extra="yy[gpu]"
    )
    assert other.summary().endswith("; pip install 'yy[gpu]')")


def test_a_plugin_that_breaks_only_warns(abacus: AbacusPlugin) -> None:
    class Broken:
        @featvis.hookimpl
        def register_backends(self, register):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    class Picky:
        @featvis.hookimpl
        def register_backends(self, register):  # type: ignore[no-untyped-def]
            def accepts(model: object) -> bool:
                raise ValueError("cannot tell")

            register(featvis.BackendSpec(name="picky", accepts=accepts, load=lambda m: m))

    broken, picky = Broken(), Picky()
    plugins.pm.register(broken, name="broken-test")
    plugins.pm.register(picky, name="picky-test")
    try:
        with pytest.warns(featvis.FeatvisPluginWarning, match="'broken-test' failed.*boom"):
            names = [spec.name for spec in featvis.list_backends()]
        assert "abacus" in names and "picky" in names  # the others still register
        with pytest.warns(featvis.FeatvisPluginWarning) as record:
            assert isinstance(featvis.load(Abacus()), featvis.testing.ArrayBackend)
        with (
            pytest.warns(featvis.FeatvisPluginWarning) as record,
            pytest.raises(featvis.BackendNotFoundError),
        ):
            featvis.load(3.5)
        messages = " ".join(str(w.message) for w in record)
        assert "backend 'picky' raised in accepts(): ValueError: cannot tell" in messages
    finally:
        plugins.pm.unregister(broken)
        plugins.pm.unregister(picky)


def test_strict_mode_turns_plugin_failures_into_errors(
    abacus: AbacusPlugin, monkeypatch: pytest.MonkeyPatch
) -> None:
    class Broken:
        @featvis.hookimpl
        def register_backends(self, register):  # type: ignore[no-untyped-def]
            raise RuntimeError("boom")

    broken = Broken()
    plugins.pm.register(broken, name="broken-test")
    monkeypatch.setenv(plugins.STRICT_ENV, "1")
    try:
        with pytest.raises(featvis.PluginError, match="broken-test.*FEATVIS_STRICT_PLUGINS"):
            featvis.list_backends()
    finally:
        plugins.pm.unregister(broken)


def _install_fake_distribution(root: Path, name: str, module_source: str) -> None:
    """A module plus a dist-info declaring it under the featvis entry-point group."""
    (root / f"{name}.py").write_text(textwrap.dedent(module_source))
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[featvis]\n{name} = {name}\n")


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh folder on sys.path, with entry points loaded again afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(plugins, "_loaded", False)
    before = set(sys.modules)
    try:
        yield tmp_path
    finally:
        for name in ("featvis_slide_rule", "featvis_broken"):
            plugin = plugins.pm.get_plugin(name)
            if plugin is not None:
                plugins.pm.unregister(plugin)
            plugins.pm.unblock(name) if plugins.pm.is_blocked(name) else None
        for module in set(sys.modules) - before:
            del sys.modules[module]


def test_a_third_party_plugin_is_found_through_its_entry_point(site: Path) -> None:
    _install_fake_distribution(
        site,
        "featvis_slide_rule",
        """
        import featvis
        from featvis.testing import tiny_cnn

        class SlideRule:
            pass

        @featvis.hookimpl
        def register_backends(register):
            register(featvis.BackendSpec(
                name="slide-rule",
                accepts=lambda model: type(model).__name__ == "SlideRule",
                load=lambda model, **options: tiny_cnn(),
                description="slide rules",
            ))
    """,
    )
    specs = {spec.name: spec for spec in featvis.list_backends()}
    assert "slide-rule" in specs and "torch" in specs
    import featvis_slide_rule

    assert isinstance(featvis.load(featvis_slide_rule.SlideRule()), featvis.testing.ArrayBackend)


def test_a_plugin_that_fails_to_import_is_named_and_skipped(site: Path) -> None:
    _install_fake_distribution(site, "featvis_broken", "raise ImportError('needs tensorflow')\n")
    with pytest.warns(featvis.FeatvisPluginWarning) as record:
        names = [spec.name for spec in featvis.list_backends()]
    message = str(record[0].message)
    assert "featvis plugin 'featvis_broken'" in message and "from featvis_broken 1.0" in message
    assert "needs tensorflow" in message
    assert "torch" in names  # the others keep working


def test_loading_entry_points_is_idempotent(site: Path) -> None:
    featvis.list_backends()
    count = len(plugins.pm.get_plugins())
    plugins.load_plugins()
    featvis.list_backends()
    assert len(plugins.pm.get_plugins()) == count


def test_requiring_names_what_to_install_and_lets_other_import_errors_through() -> None:
    message = "needs nosuchnet: pip install featvis-nosuchnet"
    missing = pytest.raises(featvis.MissingDependencyError, match="pip install featvis-nosuchnet")
    with missing, featvis.requiring(message, ["nosuchnet"]):
        import nosuchnet  # type: ignore[import-not-found]  # noqa: F401
    # A module the plugin itself lacks is a bug of the plugin, not a missing framework.
    with pytest.raises(ImportError) as raised, featvis.requiring("needs it", ["nosuchnet"]):
        import featvis_plugin_typo  # type: ignore[import-not-found]  # noqa: F401
    assert not isinstance(raised.value, featvis.MissingDependencyError)


def test_load_explains_strings_no_backend_takes(tmp_path: Path) -> None:
    with pytest.raises(
        featvis.ModelError, match="does not open pickled model files such as 'x.pt'"
    ):
        featvis.load("x.pt")
    with pytest.raises(
        featvis.BackendNotFoundError,
        match=r"'efficientnet_lite0' is the name of a model, not a model: "
        r"featvis.load_model\('efficientnet_lite0'\) opens it",
    ):
        featvis.load("efficientnet_lite0")
    (tmp_path / "weights.h5").write_bytes(b"HDF")
    with pytest.raises(featvis.ModelError, match="model files must be ONNX"):
        featvis.load(tmp_path / "weights.h5")
    with pytest.raises(
        featvis.BackendNotFoundError, match="No installed backend accepts a builtins.str"
    ):
        featvis.load("no such thing")


def test_lazy_exports_import_on_first_use_and_name_a_missing_framework() -> None:
    from featvis.testing import ArrayBackend

    table = featvis.lazy_exports(
        "featvis_fake", {"ArrayBackend": "featvis.testing"}, missing="m", requires=["numpy"]
    )
    assert table("ArrayBackend") is ArrayBackend
    with pytest.raises(AttributeError, match="module 'featvis_fake' has no attribute 'Nope'"):
        table("Nope")
    broken = featvis.lazy_exports(
        "featvis_fake",
        {"X": "no_such_framework.sub"},
        missing="install it",
        requires=["no_such_framework"],
    )
    with pytest.raises(featvis.MissingDependencyError, match="install it"):
        broken("X")


def test_install_hints_say_what_works_from_a_clone() -> None:
    assert (
        featvis.install_hint("featvis[torch]") == "pip install -e '.[torch]' in a clone of featvis"
    )
    assert featvis.install_hint("featvis-mynet") == "pip install 'featvis-mynet'"


class _Evolved:
    """A hook that gained an argument, as the style guide says hooks evolve."""

    @hookspec
    def register_extras(self, register, version):  # type: ignore[no-untyped-def]
        """Register extras; ``version`` is the newer argument."""


class _EvolvedPlugin:
    def __init__(self) -> None:
        self.got: dict[str, object] = {}

    @featvis.hookimpl
    def register_extras(self, version, register):  # type: ignore[no-untyped-def]
        self.got = {"version": version, "register": register}
        register(featvis.ModelSpec(name=f"extra-{version}", load=lambda name: tiny_cnn()))


def test_a_hook_implementation_gets_each_argument_by_its_name() -> None:
    plugins.pm.add_hookspecs(_Evolved)
    plugin = _EvolvedPlugin()
    plugins.pm.register(plugin, name="evolved-test")
    try:
        found = plugins._collect("register_extras", featvis.ModelSpec, version=2)
    finally:
        plugins.pm.unregister(plugin)
    assert plugin.got["version"] == 2 and callable(plugin.got["register"])
    assert [spec.name for _, spec in found] == ["extra-2"]
