"""Sub-models that end at the requested tensors, and the ONNX Runtime sessions that run them.

For a set of requested tensors featvis builds a new model that keeps only the nodes they depend
on (walking back from them, so asking for AlexNet's ``conv1`` never runs the classifier), whose
outputs are exactly those tensors. Making a tensor a graph output also stops ONNX Runtime from
fusing it away (a Conv's own output survives even though a Relu follows), so each requested
tensor has its own value. Building a session costs far more than running one, so the last few
sessions are kept, keyed by the set of tensors.

External data stays where it is: the sub-model keeps the original ``location`` entries and the
session resolves them against the original model's folder
(``session.model_external_initializers_file_folder_path``), so nothing is copied and no weight
of a model over 2 GB passes through protobuf serialization.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import onnx
import onnxruntime as ort

from featvis import ArgumentError, ModelError
from featvis._threads import available_cpus
from featvis_onnx._graph import GraphInfo

__all__ = ["OPTIMIZATION", "SPIN_US", "Sessions", "available_cpus", "submodel", "thread_options"]

#: Names accepted for ``optimization=``, and ONNX Runtime's levels.
OPTIMIZATION = {
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
}

#: Sessions kept per backend; each holds its own copy of the weights it uses.
CACHE_SIZE = 4


def submodel(g: GraphInfo, outputs: Sequence[str]) -> onnx.ModelProto:
    """A new model computing only ``outputs``, from the nodes they depend on."""
    needed: set[int] = set()
    stack = list(outputs)
    while stack:
        index = g.producer.get(stack.pop())
        if index is not None and index not in needed:
            needed.add(index)
            stack.extend(g.reads[index])
    reads = {name for i in needed for name in g.reads[i]} | set(outputs)
    proto = g.loaded.proto
    model = onnx.ModelProto()
    model.ir_version = proto.ir_version
    model.opset_import.extend(proto.opset_import)
    model.producer_name = proto.producer_name
    model.producer_version = proto.producer_version
    model.functions.extend(proto.functions)
    graph = model.graph
    graph.name = proto.graph.name or "featvis"
    graph.node.extend(g.nodes[i] for i in sorted(needed))
    graph.initializer.extend(t for t in proto.graph.initializer if t.name in reads)
    graph.sparse_initializer.extend(
        t for t in proto.graph.sparse_initializer if t.values.name in reads
    )
    graph.input.extend(v for v in proto.graph.input if v.name in reads)
    for name in outputs:
        value = graph.output.add()
        value.name = name
        elem_type = g.elem_type(name)
        if elem_type is not None:  # an untyped output is fine: ONNX Runtime infers it
            value.type.tensor_type.elem_type = elem_type
    return model


#: How long an intra-op worker spins for more work before it sleeps, in microseconds.
SPIN_US = 20


def thread_options(so: ort.SessionOptions, threads: int) -> ort.SessionOptions:
    """One intra-op pool of ``threads``, no inter-op pool, and short spinning.

    Workers spin at most :data:`SPIN_US` between the operators of one run, then sleep, and
    stop spinning when a run ends (``session.force_spinning_stop``). ORT's default spins far
    longer and keeps spinning after a run, which slows whatever runs next: featvis's own work
    between runs, or a neighbour process. No spinning at all left workers asleep between the
    operators of a run: AlexNet conv1 at batch 1 measured 0.9-1.6x a default session. With
    this, 0.74-1.01x, beside a busy process too (figures in docs/performance.md).
    """
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1")
    so.add_session_config_entry("session.intra_op.spin_duration_us", str(SPIN_US))
    so.add_session_config_entry("session.force_spinning_stop", "1")
    so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return so


def check_providers(providers: Sequence[Any] | None) -> list[Any]:
    """The providers to ask ONNX Runtime for; CPU when none are given."""
    if providers is None:
        return ["CPUExecutionProvider"]
    if isinstance(providers, str):
        providers = [providers]
    available = ort.get_available_providers()
    chosen = list(providers)
    names = [p[0] if isinstance(p, tuple) else p for p in chosen]
    missing = [name for name in names if name not in available]
    if missing or not names:
        raise ArgumentError(
            f"Execution provider {', '.join(missing) or '(none)'} is not available in this "
            f"onnxruntime {ort.__version__}; available: {', '.join(available)}. For CUDA "
            "install onnxruntime-gpu; on CPU leave providers out."
        )
    return chosen


class Sessions:
    """ONNX Runtime sessions for sub-models, the most recently used few kept.

    Parameters
    ----------
    g : GraphInfo
    providers : list
        Passed to ``onnxruntime.InferenceSession`` as they are.
    optimization : str
        A key of :data:`OPTIMIZATION`.
    threads : int
        Threads of the session's intra-op pool.
    """

    def __init__(
        self, g: GraphInfo, *, providers: list[Any], optimization: str, threads: int
    ) -> None:
        self.g = g
        self.providers = providers
        self.optimization = optimization
        self.threads = threads
        self._cache: OrderedDict[frozenset[str], ort.InferenceSession] = OrderedDict()
        #: Sessions built so far (for tests and benchmarks: a cache hit builds none).
        self.built = 0

    def options(self) -> ort.SessionOptions:
        """The session options featvis uses; see the comments for why each is set."""
        so = ort.SessionOptions()
        # ALL: requested tensors are graph outputs, which ORT never fuses away, so full
        # optimization is both correct and fastest (docs/performance.md).
        so.graph_optimization_level = OPTIMIZATION[self.optimization]
        thread_options(so, self.threads)
        so.log_severity_level = 3  # errors only: pruned sub-models trigger harmless warnings
        if self.g.loaded.folder is not None:
            so.add_session_config_entry(
                "session.model_external_initializers_file_folder_path", self.g.loaded.folder
            )
        return so

    def get(self, outputs: Sequence[str]) -> ort.InferenceSession:
        """The session whose outputs are ``outputs`` (any order), built on first use."""
        key = frozenset(outputs)
        session = self._cache.get(key)
        if session is not None:
            self._cache.move_to_end(key)
            return session
        model = submodel(self.g, sorted(key, key=self._order))
        try:
            session = ort.InferenceSession(
                model.SerializeToString(), self.options(), providers=self.providers
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelError(
                f"ONNX Runtime {ort.__version__} cannot run {self.g.loaded.origin}: {_short(exc)}"
            ) from None
        self.built += 1
        self._cache[key] = session
        while len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return session

    def _order(self, name: str) -> int:
        return self.g.producer.get(name, -1)


def _short(exc: BaseException) -> str:
    """ORT's message without the C++ function signature that precedes it."""
    text = str(exc)
    if "onnxruntime_src" in text:
        text = text.rsplit(") ", 1)[-1]
    return text.strip()
