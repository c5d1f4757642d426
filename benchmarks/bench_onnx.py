"""The ONNX backend against hand-written ONNX Runtime code on exported AlexNet and ResNet-50.

The models have random weights and a dynamic batch, exported once into a temporary folder with
``torch.onnx.export`` (the default, dynamo exporter). Every reference session is built by hand
with onnx and onnxruntime, with the same session options featvis uses (graph optimization ALL,
``intra_op_num_threads`` = the CPUs available, short spinning: ``thread_options``), so the
ratios measure featvis's own cost; one extra row shows what ORT's default options would change.
bench_busy.py compares featvis with a default session, quiet and beside a busy process.

Cases, each at batch 1 and 16 (``--quick``: batch 1 only):

- conv1 later calls: ``activations(x, "conv1")`` on AlexNet, against running the sub-model that
  ends at conv1 (``onnx.utils.Extractor``), the floor.
- one deep layer: the last ReLU before pooling, against a plain run of the whole model.
- every layer: all layers in one call, against a session on the model with every layer tensor
  added as an output by hand (and, reported, against a plain run).
- first call: a new backend, its layer list, session build and run, against creating a plain
  session and running it.
- ``layers()`` of a fresh backend on a 500-node model, against the issue's bound of 1 s.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from harness import Row, compare, median_alone
from onnx import TensorProto, helper, numpy_helper

import featvis
from featvis_onnx import OnnxBackend
from featvis_onnx._session import available_cpus, thread_options

_FOLDER = Path(tempfile.mkdtemp(prefix="featvis-bench-onnx-"))
atexit.register(shutil.rmtree, _FOLDER, ignore_errors=True)


def _export(arch: str) -> Path:
    import torch
    import torchvision

    path = _FOLDER / f"{arch}.onnx"
    if not path.exists():
        torch.manual_seed(0)
        model = getattr(torchvision.models, arch)(weights=None).eval()
        x = torch.zeros(1, 3, 224, 224)
        with contextlib.redirect_stdout(io.StringIO()):
            torch.onnx.export(model, (x,), path, dynamic_shapes=({0: "batch"},))
    return path


def _options(spinning: bool = False) -> ort.SessionOptions:
    """featvis's session options, or (``spinning``) ORT's defaults."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if not spinning:
        thread_options(so, available_cpus())
    so.log_severity_level = 3
    return so


def _session(model: onnx.ModelProto | Path, spinning: bool = False) -> ort.InferenceSession:
    source = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(source, _options(spinning), providers=["CPUExecutionProvider"])


def _with_outputs(path: Path, names: list[str]) -> onnx.ModelProto:
    model = onnx.load(path)  # weights included: the sessions are built from bytes
    del model.graph.output[:]
    model.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    return model


def _deep(backend: OnnxBackend) -> str:
    relus = [layer for layer in backend.layers() if layer.kind == "relu" and layer.output_shape]
    spatial = [layer for layer in relus if (layer.output_shape or (0, 0, 0))[2] not in (None, 1)]
    return spatial[-1].name


def _model_rows(arch: str, batches: list[int], rounds: int) -> Iterator[Row]:
    path = _export(arch)
    backend = OnnxBackend(path)
    names = [layer.name for layer in backend.layers()]
    sessions = {
        "plain": _session(path),
        "spinning": _session(path, spinning=True),
        "everything": _session(_with_outputs(path, names)),
    }
    if arch == "alexnet":
        conv1 = backend.layer("conv1").name
        inputs = [backend.image_input.name]
        sub = onnx.utils.Extractor(onnx.load(path)).extract_model(inputs, [conv1])
        sessions["conv1"] = _session(sub)
    for n in batches:
        yield from _batch_rows(f"{arch} batch {n}", backend, sessions, n, rounds)
    x = np.zeros((1, 3, 224, 224), np.float32)
    deep = _deep(backend)

    def first_call() -> object:
        return OnnxBackend(path).activations(x, deep)

    def first_plain() -> object:
        return _session(path).run(None, {backend.image_input.name: x})

    case_s, ref_s = compare(first_call, first_plain, rounds=max(3, rounds // 3), min_round_s=0.0)
    yield Row(
        "onnx", f"{arch}: first call (load, session, run)", "session creation + run", case_s, ref_s
    )


def _batch_rows(
    tag: str,
    backend: OnnxBackend,
    sessions: dict[str, ort.InferenceSession],
    n: int,
    rounds: int,
) -> Iterator[Row]:
    x = np.random.default_rng(0).normal(size=(n, 3, 224, 224)).astype(np.float32)
    feeds = {backend.image_input.name: x}
    names = [layer.name for layer in backend.layers()]
    plain, everything = sessions["plain"], sessions["everything"]
    if "conv1" in sessions:
        conv1 = backend.layer("conv1").name
        floor = sessions["conv1"]
        case_s, ref_s = compare(
            lambda: backend.activations(x, "conv1"),
            lambda: floor.run([conv1], feeds),
            rounds=rounds,
        )
        yield Row(
            "onnx",
            f"{tag}: conv1, later calls",
            "sub-model to conv1 (the floor)",
            case_s,
            ref_s,
            1.15,
        )
    deep = _deep(backend)
    case_s, ref_s = compare(
        lambda: backend.activations(x, deep), lambda: plain.run(None, feeds), rounds=rounds
    )
    yield Row(
        "onnx",
        f"{tag}: one deep layer ({deep}), later calls",
        "plain session.run",
        case_s,
        ref_s,
        1.10,
    )
    case_s, ref_s = compare(
        lambda: backend.activations(x, names), lambda: everything.run(names, feeds), rounds=rounds
    )
    every = f"{tag}: every layer ({len(names)}), later calls"
    yield Row("onnx", every, "hand-built all-outputs session", case_s, ref_s, 1.05)
    case_s, ref_s = compare(
        lambda: backend.activations(x, names), lambda: plain.run(None, feeds), rounds=rounds
    )
    why = "ORT cannot fuse a requested tensor away nor reuse its memory"
    yield Row("onnx", every, "plain session.run", case_s, ref_s, notes=[why])
    # Not interleaved: a spinning pool keeps its workers busy after each run, which slows
    # whatever runs next on the same cores (the very reason featvis stops spinning after a run).
    spinning = sessions["spinning"]
    ours_s = median_alone(lambda: plain.run(None, feeds), rounds)
    spin_s = median_alone(lambda: spinning.run(None, feeds), rounds)
    time.sleep(0.5)
    yield Row(
        "onnx",
        f"{tag}: plain run, featvis's options",
        "ORT defaults (spinning), alone",
        ours_s,
        spin_s,
    )


def _chain(nodes: int) -> Path:
    """A ``nodes``-node model: a stem conv, then conv, ReLU and residual addition blocks."""
    path = _FOLDER / f"chain{nodes}.onnx"
    rng = np.random.default_rng(0)

    def weight(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.1, shape).astype(np.float32), name)

    weights = [weight("stem", (8, 3, 3, 3))]
    graph_nodes = [helper.make_node("Conv", ["x", "stem"], ["s"], name="/stem/Conv", pads=[1] * 4)]
    x = "s"
    i = 0
    while len(graph_nodes) + 3 <= nodes:
        weights.append(weight(f"w{i}", (8, 8, 3, 3)))
        graph_nodes += [
            helper.make_node(
                "Conv", [x, f"w{i}"], [f"c{i}"], name=f"/b{i}/conv/Conv", pads=[1] * 4
            ),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"/b{i}/relu/Relu"),
            helper.make_node("Add", [f"r{i}", x], [f"a{i}"], name=f"/b{i}/Add"),
        ]
        x, i = f"a{i}", i + 1
    while len(graph_nodes) < nodes:
        graph_nodes.append(helper.make_node("Relu", [x], [f"t{len(graph_nodes)}"]))
        x = graph_nodes[-1].output[0]
    graph = helper.make_graph(
        graph_nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, None)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.producer_name = "pytorch"  # node names are parsed for module paths, as for exports
    onnx.save_model(model, path)
    return path


def _seconds(fn: Callable[[], object], repeat: int) -> float:
    """The fastest of ``repeat`` timed calls (after one untimed call)."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def rows(quick: bool) -> Iterator[Row]:
    rounds = 5 if quick else 25  # this machine is shared: more rounds, steadier medians
    batches = [1] if quick else [1, 16]
    yield from _model_rows("alexnet", batches, rounds)
    yield from _model_rows("resnet50", batches, rounds)
    path = _chain(500)
    preprocess = featvis.Preprocess(size=(16, 16))
    seconds = _seconds(lambda: OnnxBackend(path, preprocess=preprocess).layers(), 3 if quick else 7)
    yield Row(
        "onnx",
        "layers() of a new backend, 500-node model (seconds)",
        "1 s (the issue's bound)",
        seconds,
        1.0,
        1.0,
    )
