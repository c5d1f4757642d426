"""The PyTorch backend against its floors, on torchvision models with random (seeded) weights.

- AlexNet ``conv1``: against running only the modules up to conv1 (``features[0]``): what an
  extraction that stops at the right place cannot beat; and against a hand-written forward hook
  that raises to stop the pass, the least any hook-based extraction does.
- ResNet-50's last conv layer: against a plain ``model(x)`` under ``torch.inference_mode``.
- ResNet-50, every leaf layer: against a plain ``model(x)`` plus one copy of every returned
  byte into fresh memory (one new numpy array per layer, as featvis allocates them). At batch
  16 a call allocates and frees ~2 GiB, and with glibc's default, adaptive malloc how much of
  it the next call finds still mapped depends on what ran before: the same code measured
  0.64x to 1.20x its floor with only the order of the calls changed (page faults cost ~0.3
  ms/MiB here). So this row runs in a child process whose malloc has a fixed mmap threshold
  (``GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072``): every large block is fresh memory
  on every call, for both sides alike, which is what the floor's definition says. Peak memory
  is measured in a fresh process per side: Linux's peak-RSS counter is reset
  (``/proc/self/clear_refs``) after the model is built and its layers listed, and the growth
  of ``VmHWM`` over the resident size at that point is what one call needs.

``torch.set_num_threads`` is left at its default. Run ``python benchmarks/run.py torch``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from harness import Row, compare, compare_rounds, spread

import featvis

BATCHES = (1, 16)


def _model(arch: str) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return getattr(torchvision.models, arch)(weights=None).eval()


def _input(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def _every_leaf(batch: int) -> tuple[object, object]:
    """The every-leaf case and its floor, as two callables on one ResNet-50."""
    model = _model("resnet50")
    backend = featvis.load(model)
    names = [layer.name for layer in backend.layers()]
    shapes = [(batch, *layer.output_shape[1:]) for layer in backend.layers()]  # type: ignore[misc]
    biggest = max(int(np.prod(shape)) for shape in shapes)
    source = torch.randn(biggest)
    x = _input(batch)

    def case() -> object:
        return backend.activations(x, names)

    def floor() -> object:
        with torch.inference_mode():
            model(x)
        copies = []
        for shape in shapes:
            fresh = np.empty(shape, np.float32)  # as featvis allocates its results
            torch.from_numpy(fresh).view(-1).copy_(source[: fresh.size])
            copies.append(fresh)
        return copies

    return case, floor


class _Stop(BaseException):
    pass


def _hand_written_hook(model: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor) -> object:
    """One layer's output the way a careful script takes it: a forward hook that keeps the
    output and raises to end the forward pass (no eval-mode or hook bookkeeping, no checks)."""
    kept: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: object, output: torch.Tensor) -> None:
        kept.append(output)
        raise _Stop

    handle = layer.register_forward_hook(hook)
    try:
        with torch.inference_mode():
            model(x)
    except _Stop:
        pass
    finally:
        handle.remove()
    return kept[0].numpy()


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_peak(which: str, batch: int) -> float:
    """Extra peak resident memory (MiB) of one call, in this fresh process."""
    case, floor = _every_leaf(batch)
    job = case if which == "case" else floor
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    result = job()  # type: ignore[operator]
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) / 1024


def _fresh_process(*args: str) -> object:
    """Run this file with ``args`` in a new process with a fixed mmap threshold (see the
    module docstring); returns what it printed, as JSON."""
    tunables = "glibc.malloc.mmap_threshold=131072"
    env = dict(os.environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES"), tunables]))
    command = [sys.executable, str(Path(__file__).resolve()), *args]
    out = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    return json.loads(out.stdout)


def _every_leaf_row(batch: int, rounds: int, layers: int, quick: bool) -> Row:
    case_s, floor_s = _fresh_process("--compare", str(batch), str(rounds))  # type: ignore[misc]
    row = Row(
        "torch",
        f"ResNet-50 every leaf ({layers} layers), batch {batch}",
        "model(x) + copy of every byte",
        case_s,
        floor_s,
        1.15,
        notes=["malloc with a fixed mmap threshold"],
    )
    if not quick:
        peaks = [_fresh_process("--peak", side, str(batch)) for side in ("case", "floor")]
        row.notes.append(f"peak +{peaks[0]:.0f} MiB vs floor +{peaks[1]:.0f} MiB")
    return row


def rows(quick: bool) -> Iterator[Row]:
    rounds = 3 if quick else 7
    alexnet = _model("alexnet")
    alex = featvis.load(alexnet)
    resnet = _model("resnet50")
    res = featvis.load(resnet)
    last_conv = [layer for layer in res.layers() if layer.kind == "conv"][-1]
    for batch in BATCHES[:1] if quick else BATCHES:
        x = _input(batch)

        def prefix(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return alexnet.features[0](x)

        def conv1(x: torch.Tensor = x) -> object:
            return alex.activations(x, "conv1")

        def hand_hook(x: torch.Tensor = x) -> object:
            return _hand_written_hook(alexnet, alexnet.features[0], x)

        # A millisecond-scale case on a shared machine: many short rounds, each featvis call
        # timed right next to its reference, and the spread of the per-round ratios reported.
        case_s, floor_s, ratios = compare_rounds(conv1, prefix, rounds=rounds * 9)
        yield Row(
            "torch",
            f"AlexNet conv1, batch {batch}",
            "conv1 alone",
            case_s,
            floor_s,
            notes=[spread(ratios)],
        )
        # The target: featvis within 1.15x of the least a hook-based extraction does.
        case_s, hook_s, ratios = compare_rounds(conv1, hand_hook, rounds=rounds * 27)
        yield Row(
            "torch",
            f"AlexNet conv1, batch {batch}",
            "a hand-written hook that stops the forward",
            case_s,
            hook_s,
            1.15,
            notes=["no hygiene, no checks, no copy", spread(ratios)],
        )

        def plain(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return resnet(x)

        def last(x: torch.Tensor = x) -> object:
            return res.activations(x, last_conv.name)

        case_s, plain_s = compare(last, plain, rounds=rounds)
        yield Row(
            "torch",
            f"ResNet-50 last conv ({last_conv.name}), batch {batch}",
            "model(x), inference_mode",
            case_s,
            plain_s,
            1.05,
        )

        yield _every_leaf_row(batch, rounds, len(res.layers()), quick)


if __name__ == "__main__" and sys.argv[1:2] == ["--peak"]:
    print(json.dumps(_measure_peak(sys.argv[2], int(sys.argv[3]))))
elif __name__ == "__main__" and sys.argv[1:2] == ["--compare"]:
    print(json.dumps(compare(*_every_leaf(int(sys.argv[2])), rounds=int(sys.argv[3]))))  # type: ignore[arg-type]
