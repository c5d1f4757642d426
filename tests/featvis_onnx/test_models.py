"""Opening models: every form featvis.load takes, external data, and bad or hostile files."""

import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest

import featvis
import featvis_onnx
from featvis_onnx import OnnxBackend

RAW = featvis.Preprocess(size=(8, 8), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


@pytest.mark.parametrize("form", ["str", "path", "upper-case suffix", "bytes", "proto"])
def test_load_takes_every_form_of_an_onnx_model(zoo: Path, onnx_dir: Path, form: str) -> None:
    if form == "upper-case suffix":
        model: object = shutil.copy(zoo, onnx_dir / "ZOO.ONNX")
    else:
        model = {
            "str": str(zoo),
            "path": zoo,
            "bytes": zoo.read_bytes(),
            "proto": onnx.load(zoo),
        }[form]
    backend = featvis.load(model, preprocess=RAW)
    assert isinstance(backend, OnnxBackend)
    assert backend.layers()[0].name == "c"


def test_accepts_decides_without_importing_onnx() -> None:
    assert featvis_onnx.accepts("model.onnx") and featvis_onnx.accepts(Path("a/B.Onnx"))
    assert not featvis_onnx.accepts("model.pt") and not featvis_onnx.accepts(b"\x89PNG\r\n")
    assert not featvis_onnx.accepts(42)
    with pytest.raises(featvis.BackendNotFoundError):
        featvis.load(b"not a model at all")


def test_a_missing_runtime_names_the_extra(monkeypatch: pytest.MonkeyPatch, zoo: Path) -> None:
    monkeypatch.delitem(sys.modules, "featvis_onnx._backend")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    with pytest.raises(featvis.MissingDependencyError, match=r"pip install -e '\.\[onnx\]'"):
        featvis.load(zoo)
    with pytest.raises(featvis.MissingDependencyError, match=r"pip install -e '\.\[onnx\]'"):
        featvis_onnx.OnnxBackend  # noqa: B018


def test_external_data_is_read_from_the_model_folder(
    external: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the data file is not in the working directory
    backend = featvis.load(external, preprocess=RAW)
    x = np.random.default_rng(0).normal(size=(2, 3, 8, 8)).astype(np.float32)
    weight = onnx.numpy_helper.to_array(
        onnx.load(external).graph.initializer[0]  # loads weights.bin, with onnx's own reader
    )
    out = backend.activations(x, ["c", "y"])
    assert backend.layers()[0].params == weight.size
    reference = np.einsum(
        "nchwij,ocij->nohw",
        np.lib.stride_tricks.sliding_window_view(
            np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), (3, 3), axis=(2, 3)
        ),
        weight,
    )
    np.testing.assert_allclose(out["c"], reference, rtol=1e-4, atol=1e-4)
    assert not any(p.suffix == ".onnx" for p in tmp_path.iterdir())  # no copies left anywhere
    assert sorted(p.name for p in external.parent.iterdir()) == ["model.onnx", "weights.bin"]


def _with_location(external: Path, folder: Path, location: str) -> Path:
    model = onnx.load(external, load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location":
            entry.value = location
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "hostile.onnx"
    onnx.save_model(model, path)
    return path


@pytest.mark.parametrize("location", ["../../etc/passwd", "/etc/passwd", "sub/../../weights.bin"])
def test_external_data_outside_the_model_folder_is_refused(
    external: Path, tmp_path: Path, location: str
) -> None:
    path = _with_location(external, tmp_path / "a" / "b", location)
    with pytest.raises(featvis.ModelError, match="outside the model's folder"):
        featvis.load(path)


def test_missing_or_short_external_data_is_reported(external: Path, tmp_path: Path) -> None:
    path = _with_location(external, tmp_path, "nowhere.bin")
    with pytest.raises(featvis.ModelError, match="'nowhere.bin', which does not exist"):
        featvis.load(path)
    (tmp_path / "short.bin").write_bytes(b"\0" * 10)
    path = _with_location(external, tmp_path, "short.bin")
    with pytest.raises(featvis.ModelError, match="has 10 bytes; the data file is truncated"):
        featvis.load(path)


def test_external_data_without_a_path_says_to_pass_the_path(external: Path) -> None:
    with pytest.raises(featvis.ModelError, match="Pass the path of the .onnx file"):
        featvis.load(external.read_bytes(), backend="onnx")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not an ONNX model"),
        (
            b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
            "not a readable ONNX model|not an ONNX model",
        ),
        (b"just some text, saved as .onnx\n", "not a readable ONNX model|not an ONNX model"),
    ],
)
def test_a_file_that_is_not_onnx_is_a_model_error(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(featvis.ModelError, match=message):
        featvis.load(path)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.99])
def test_a_truncated_file_is_a_model_error(tmp_path: Path, fraction: float, zoo: Path) -> None:
    data = zoo.read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(featvis.ModelError, match="truncated|not an ONNX model"):
        featvis.load(path).layers()


def test_a_file_cut_between_two_fields_is_a_model_error(zoo: Path, tmp_path: Path) -> None:
    model = onnx.load(zoo)
    data = model.SerializeToString()
    del model.opset_import[:]  # the last field: the file ends where it would start
    head = model.SerializeToString()
    assert data.startswith(head) and len(head) < len(data)
    path = tmp_path / "cut.onnx"
    path.write_bytes(head)
    with pytest.raises(featvis.ModelError, match="declares no opset.*truncated"):
        featvis.load(path)


def test_no_such_file(tmp_path: Path) -> None:
    with pytest.raises(featvis.ModelError, match="No such ONNX file"):
        featvis.load(tmp_path / "missing.onnx")


def test_a_newer_ir_version_is_refused_before_the_runtime_sees_it(
    zoo: Path, save: Callable[..., Path]
) -> None:
    model = onnx.load(zoo)
    model.ir_version = onnx.IR_VERSION + 1
    with pytest.raises(featvis.ModelError, match=f"IR version {onnx.IR_VERSION + 1}.*Upgrade"):
        featvis.load(save(model, "new_ir.onnx"))


def test_a_newer_opset_is_refused(zoo: Path, save: Callable[..., Path]) -> None:
    model = onnx.load(zoo)
    newest = onnx.defs.onnx_opset_version()
    model.opset_import[0].version = newest + 1
    with pytest.raises(featvis.ModelError, match=f"opset {newest + 1}.*opset_version={newest}"):
        featvis.load(save(model, "new_opset.onnx"))


def test_runtime_errors_become_model_errors(zoo: Path, save: Callable[..., Path]) -> None:
    model = onnx.load(zoo)
    conv = next(node for node in model.graph.node if node.op_type == "Conv")
    conv.op_type = "Convolve"  # an operator no runtime has
    backend = featvis.load(save(model, "unknown_op.onnx"), preprocess=RAW)
    with pytest.raises(featvis.ModelError, match="ONNX Runtime .* cannot run .*Convolve"):
        backend.activations(np.zeros((1, 3, 8, 8), np.float32), "r")


def test_a_backend_that_is_gone_frees_its_model(zoo: Path) -> None:
    import gc
    import weakref

    backend = featvis.load(zoo)
    backend.layers()  # reads small constants (descriptions, quantization) through GraphInfo
    assert backend._graph.const("zero") is not None
    graph = weakref.ref(backend._graph)
    del backend
    gc.collect()
    assert graph() is None, "a cache still holds the model after its backend is gone"
