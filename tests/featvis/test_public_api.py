"""The public surface: what `import featvis` gives, and what it must never import."""

import subprocess
import sys

import featvis


def _isort_key(name: str) -> tuple[int, str]:
    # ruff's RUF022 order: SCREAMING_CASE, then CamelCase, then the rest.
    if name.isupper():
        return (0, name)
    if name[:1].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_complete() -> None:
    assert featvis.__all__ == sorted(featvis.__all__, key=_isort_key)
    for name in featvis.__all__:
        assert hasattr(featvis, name), name
    public = {n for n in vars(featvis) if not n.startswith("_") and n.islower() is False}
    missing = {n for n in public if n[:1].isupper() and n not in featvis.__all__}
    assert not missing, f"public classes not in __all__: {missing}"


def test_import_featvis_imports_no_framework() -> None:
    code = (
        "import sys, featvis, featvis.testing, featvis.render; featvis.list_backends(); "
        "print(sorted(m for m in ('torch', 'onnxruntime', 'onnx', 'torchvision') "
        "if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_errors_share_one_base_and_the_fitting_builtin() -> None:
    pairs = {
        featvis.ArgumentError: ValueError,
        featvis.ImageError: ValueError,
        featvis.ModelError: ValueError,
        featvis.LayoutError: ValueError,
        featvis.UnknownLayerError: KeyError,
        featvis.AmbiguousLayerError: KeyError,
        featvis.BackendNotFoundError: LookupError,
        featvis.MissingDependencyError: ImportError,
        featvis.PluginError: RuntimeError,
    }
    for error, builtin in pairs.items():
        assert issubclass(error, featvis.FeatvisError)
        assert issubclass(error, builtin)


def test_unknown_layer_message_is_not_quoted_like_a_key_error() -> None:
    message = "Unknown layer 'x'."
    assert str(featvis.UnknownLayerError(message)) == message


def test_import_featvis_leaves_scipy_for_when_it_is_needed() -> None:
    # scipy.sparse (ROAD's solver) costs 0.3 s of the start of every command; a newcomer's
    # `featvis layers` must not pay for it.
    code = "import sys, featvis; print('scipy' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"
