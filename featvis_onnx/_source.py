"""The PyTorch module each ONNX tensor came from, as both torch exporters record it.

``torch.onnx.export(..., dynamo=True)`` (the default since PyTorch 2.9) writes each node's module
scopes in its ``pkg.torch.onnx.name_scopes`` metadata, e.g. ``['', 'layer1', 'layer1.0',
'layer1.0.relu', 'relu_1']``: the root, the module paths from outer to inner, and the op.
A module called twice has the same scopes both times, so its calls are told apart by the
graph: the nodes of one call are connected to each other, two calls are not.

The TorchScript exporter (``dynamo=False``) names nodes after their scope instead:
``/layer1/layer1.0/relu_1/Relu``. Each part is a module's unqualified name (see
:func:`_child`); a second call of a module gets a ``_1`` suffix (``relu_1``), a third ``_2``.

Either way a module's output is the output of the *last* node of each call (a ``Pad`` then
``Conv`` module maps to the ``Conv``). A tensor that is the output of several nested modules
gets the innermost; a tensor that is no module's output (an addition inside a block's forward)
gets no source. A module called ``k > 1`` times gets ``path#1`` ... ``path#k`` in
:data:`featvis.CALL_SEPARATOR` convention, as featvis_torch names the calls.
"""

from __future__ import annotations

import ast
import re

from featvis._layers import CALL_SEPARATOR
from featvis_onnx._graph import GraphInfo

__all__ = ["fused_modules", "module_sources"]

_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
#: Where onnxscript's optimizer (``torch.onnx.export(..., optimize=True)``) records the rewrite
#: rules that made a node, e.g. ``FuseBatchNormIntoConv``.
_RULES_KEY = "pkg.onnxscript.rewriter.rule_name"
_SUFFIX = re.compile(r"^(.+)_(\d+)$")
_CALL_MARK = re.compile(r"@\d+$")  # torch.export's own call suffix, if a version writes one

#: (module path, call key): one call of one module.
_Call = tuple[str, object]


def _dynamo_chain(metadata: dict[str, str]) -> list[str] | None:
    raw = metadata.get(_SCOPES_KEY)
    if raw is None:
        return None
    try:
        scopes = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
        return None
    # ['', module paths..., op name]: drop the root and the op.
    return [_CALL_MARK.sub("", s) for s in scopes[1:-1] if s]


def _legacy_chain(name: str, seen: set[str]) -> list[tuple[str, str]]:
    """``/a/a.0/relu_1/Relu`` -> [(path, raw scope)...], outer to inner, call suffixes removed."""
    parts = name.split("/")[1:-1]
    chain: list[tuple[str, str]] = []
    path = ""
    for depth, part in enumerate(parts):
        if not part:
            return []
        match = _SUFFIX.match(part)
        if match and _child(path, match.group(1)) in seen:
            part = match.group(1)  # relu_1 is the second call of relu
        path = _child(path, part)
        chain.append((path, "/".join(parts[: depth + 1])))
    return chain


def _child(parent: str, part: str) -> str:
    """A scope part's full path under ``parent``.

    The TorchScript exporter writes each module's *unqualified* name: its path from the last
    non-numeric atom on (``layer2.0.downsample.0`` -> ``downsample.0``, ``layer1.0`` ->
    ``layer1.0``, ``layer1.0.conv1`` -> ``conv1``).
    """
    if not parent:
        return part
    unqualified = _unqualified(parent)
    if part.startswith(unqualified + "."):
        rest = part[len(unqualified) + 1 :]
        if all(atom.isdigit() for atom in rest.split(".")):
            return f"{parent}.{rest}"
    return f"{parent}.{part}"


def _unqualified(path: str) -> str:
    atoms = path.split(".")
    for i in range(len(atoms) - 1, -1, -1):
        if not atoms[i].isdigit():
            return ".".join(atoms[i:])
    return path


def _calls(g: GraphInfo) -> list[list[_Call]]:
    """For every node, the module calls it belongs to, outer to inner."""
    per_node: list[list[_Call]] = []
    metadata = [{p.key: p.value for p in node.metadata_props} for node in g.nodes]
    if any(_SCOPES_KEY in m for m in metadata):
        chains = [_dynamo_chain(m) or [] for m in metadata]
        return _connected_calls(g, chains)
    if g.producer_name != "pytorch":
        return [[] for _ in g.nodes]
    seen: set[str] = set()
    for node in g.nodes:
        chain = _legacy_chain(node.name, seen) if node.name.startswith("/") else []
        seen.update(path for path, _ in chain)
        per_node.append(list(chain))
    return per_node


def _connected_calls(g: GraphInfo, chains: list[list[str]]) -> list[list[_Call]]:
    """Split each module's nodes into calls: connected groups of its nodes (union-find)."""
    parent: dict[tuple[str, int], tuple[str, int]] = {}

    def find(key: tuple[str, int]) -> tuple[str, int]:
        while parent.setdefault(key, key) != key:
            parent[key] = parent[parent[key]]
            key = parent[key]
        return key

    for i, reads in enumerate(g.reads):
        inner = set(chains[i])
        for name in reads:
            j = g.producer.get(name)
            if j is None:
                continue
            for path in inner.intersection(chains[j]):
                a, b = find((path, i)), find((path, j))
                if a != b:
                    parent[max(a, b)] = min(a, b)  # the earliest node names the call
    return [[(path, find((path, i))) for path in chain] for i, chain in enumerate(chains)]


def module_sources(g: GraphInfo) -> dict[int, str]:
    """Node index -> the module path (with ``#k`` for repeated calls) whose output it makes."""
    calls = _calls(g)
    last: dict[_Call, int] = {}
    order: dict[str, list[object]] = {}  # module path -> its call keys, in order of first node
    for i, node_calls in enumerate(calls):
        for call in node_calls:
            if call not in last:
                order.setdefault(call[0], []).append(call[1])
            last[call] = i
    sources: dict[int, str] = {}
    for i, node_calls in enumerate(calls):
        for path, key in reversed(node_calls):  # innermost first
            if last[(path, key)] != i:
                continue
            keys = order[path]
            sources[i] = path if len(keys) == 1 else f"{path}{CALL_SEPARATOR}{keys.index(key) + 1}"
            break
    return sources


def fused_modules(g: GraphInfo) -> dict[int, tuple[str, ...]]:
    """Node index -> the module paths whose BatchNorm the exporter recorded folding into it.

    onnxscript's optimizer names the rule (``FuseBatchNormIntoConv``...) in the node's
    metadata, and the node keeps the BatchNorm's scopes: the innermost is the module that
    holds the BatchNorm (a ``BatchNorm2d``, or a module with one inside its forward, such as
    timm's ``BatchNormAct2d``). The node's value is that BatchNorm's output.
    """
    found: dict[int, tuple[str, ...]] = {}
    for i, node in enumerate(g.nodes):
        metadata = {p.key: p.value for p in node.metadata_props}
        if "BatchNorm" not in metadata.get(_RULES_KEY, ""):
            continue
        chain = _dynamo_chain(metadata)
        if chain:
            found[i] = (chain[-1],)
    return found
