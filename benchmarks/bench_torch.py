"""The PyTorch backend against its floors, on torchvision models with random (seeded) weights.

- AlexNet ``conv1``: against running only the modules up to conv1 (``features[0]``): what an
  extraction that stops at the right place cannot beat; and against a hand-written forward hook
  that raises to stop the pass, the least any hook-based extraction does.
- ResNet-50's last conv layer: against a plain ``model(x)`` under ``torch.inference_mode``.
- ResNet-50, every leaf layer: against a plain ``model(x)`` plus one copy of every returned
  byte into fresh memory (one new numpy array per layer, as featvis allocates them). Peak memory
  is measured in a fresh process per side: Linux's peak-RSS counter is reset
  (``/proc/self/clear_refs``) after the model is built and its layers listed, and the growth
  of ``VmHWM`` over the resident size at that point is what one call needs.

``torch.set_num_threads`` is left at its default. Run ``python benchmarks/run.py torch``.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torchvision
from harness import Row, compare

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


def _peak_mib(which: str, batch: int) -> float:
    """Extra peak resident memory of one call, measured in a fresh process."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--peak", which, str(batch)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip())


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _measure_peak(which: str, batch: int) -> float:
    case, floor = _every_leaf(batch)
    job = case if which == "case" else floor
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    result = job()  # type: ignore[operator]
    peak = _status_kib("VmHWM")
    del result
    return (peak - before) / 1024


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

        # A millisecond-scale case on a shared machine: many rounds for a steady median.
        case_s, floor_s = compare(conv1, prefix, rounds=rounds * 9)
        yield Row("torch", f"AlexNet conv1, batch {batch}", "conv1 alone", case_s, floor_s, 1.15)
        case_s, hook_s = compare(conv1, hand_hook, rounds=rounds * 9)
        yield Row(
            "torch",
            f"AlexNet conv1, batch {batch}",
            "a hand-written hook that stops the forward",
            case_s,
            hook_s,
            notes=["the least a hook-based tool does: no hygiene, no checks"],
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

        case, floor = _every_leaf(batch)
        case_s, floor_s = compare(case, floor, rounds=rounds)  # type: ignore[arg-type]
        row = Row(
            "torch",
            f"ResNet-50 every leaf ({len(res.layers())} layers), batch {batch}",
            "model(x) + copy of every byte",
            case_s,
            floor_s,
            1.15,
        )
        if not quick:
            row.notes.append(
                f"peak +{_peak_mib('case', batch):.0f} MiB vs floor +"
                f"{_peak_mib('floor', batch):.0f} MiB"
            )
        yield row


if __name__ == "__main__" and sys.argv[1:2] == ["--peak"]:
    print(f"{_measure_peak(sys.argv[2], int(sys.argv[3])):.1f}")
