"""featvis.survey against the same backend's plain batched activations, on EfficientNet-Lite0.

- Throughput: ``featvis.survey`` of a middle layer (``_blocks.5._relu1``, 240 x 14 x 14) over
  images from :class:`featvis.samples.SampleImages`, against calling ``backend.activations``
  batch by batch over the same images (keeping nothing): once with the images as arrays in
  memory, once as JPEG files in a folder. Target: the survey at >= 0.9x the images per second
  of plain activations (time ratio <= 1.11). Receptive fields are measured once per layer and
  cached, so they are not in these rows; their cost has a row of its own.
- Scaling: a survey on a Dask ``LocalCluster`` of two worker processes against one process,
  and the per-image and merge costs the 1,000,000-image estimate in docs/performance.md is
  built from (printed in the notes).
- Peak memory of a survey of 500 and of 2,000 images, each in a fresh process.

Run ``python benchmarks/run.py survey`` (about 10 minutes on 2 cores; ``--quick``: 2).
"""

from __future__ import annotations

import math
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from harness import Row, compare, median_alone

import featvis
from featvis._receptive import _cache as receptive_cache
from featvis.samples import SampleImages, write_samples

LAYER = "_blocks.5._relu1"
BATCH = 32


def rows(quick: bool) -> Iterator[Row]:
    backend = featvis.load_model("efficientnet_lite0")
    count = 64 if quick else 256
    rounds = 2 if quick else 5
    images = list(SampleImages(count, seed=11))
    folder = Path(tempfile.mkdtemp(prefix="featvis-bench-survey-"))
    paths = [str(p) for p in write_samples(folder, count, seed=11)]

    def plain(source: list) -> None:
        for start in range(0, len(source), BATCH):
            backend.activations(source[start : start + BATCH], LAYER)

    def surveyed(source: object) -> featvis.Survey:
        return featvis.survey(backend, source, LAYER, batch_size=BATCH, progress=False)

    for what, source, reference in (
        ("arrays", images, images),
        ("JPEG files", folder, paths),
    ):
        case_s, reference_s = compare(
            lambda s=source: surveyed(s), lambda r=reference: plain(r), rounds=rounds
        )
        row = Row(
            "survey",
            f"survey of {count} images ({what}), {LAYER}",
            "plain batched activations, same images",
            case_s,
            reference_s,
            target=1 / 0.9,
        )
        row.notes.append(
            f"{count / case_s:.1f} img/s vs {count / reference_s:.1f} img/s "
            f"({reference_s / case_s:.2f}x the throughput)"
        )
        yield row

    # The receptive field of the layer, measured once per layer and then cached.
    x = backend.preprocess(images[:BATCH])

    def measure() -> None:
        receptive_cache.pop(backend, None)
        featvis.receptive_field(backend, LAYER)

    field_s = median_alone(measure, 1)
    forward_s = median_alone(lambda: backend.activations(x, LAYER), 3)
    yield Row(
        "survey",
        f"measure the receptive field of {LAYER} (once per layer)",
        f"plain activations of {BATCH} images",
        field_s,
        forward_s,
        notes=[f"{field_s:.1f} s, the cost of {field_s / forward_s * BATCH:.0f} images"],
    )

    yield from _scaling(backend, images, rounds, quick)
    yield _memory(quick)


def _scaling(backend: featvis.Backend, images: list, rounds: int, quick: bool) -> Iterator[Row]:
    from distributed import Client, LocalCluster

    count = len(images)
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):

        def one() -> featvis.Survey:
            return featvis.survey(
                backend, images, LAYER, batch_size=BATCH, receptive_fields=False, progress=False
            )

        def two() -> featvis.Survey:
            return featvis.survey(
                "efficientnet_lite0",
                images,
                LAYER,
                batch_size=BATCH,
                receptive_fields=False,
                client=client,
                chunk_size=BATCH * 2,
                progress=False,
            )

        two_s, one_s = compare(two, one, rounds=max(2, rounds - 2))
    row = Row("survey", f"--workers 2, {count} images", "one process", two_s, one_s)
    row.notes.append(f"{count / two_s:.1f} img/s vs {count / one_s:.1f} img/s")
    yield row

    # The numbers the 1,000,000-image estimate is made of.
    per_image = one_s / count
    a = featvis.survey(backend, images[: count // 2], LAYER, receptive_fields=False, progress=False)
    b = featvis.survey(
        backend,
        images[count // 2 :],
        LAYER,
        start=count // 2,
        receptive_fields=False,
        progress=False,
    )
    merge_s = median_alone(lambda: a.merge(b), 20)
    head = featvis.survey(
        backend, images[:BATCH], "_conv_head", receptive_fields=False, progress=False
    )
    head2 = featvis.survey(
        backend,
        images[BATCH : 2 * BATCH],
        "_conv_head",
        start=BATCH,
        receptive_fields=False,
        progress=False,
    )
    merge_head_s = median_alone(lambda: head.merge(head2), 20)
    state_kb = len(pickle.dumps(a)) / 1024
    head_kb = len(pickle.dumps(head)) / 1024
    total, workers, chunk = 1_000_000, 16, 1024
    parts = math.ceil(total / chunk)
    compute = total * per_image / workers
    merges = (parts - 1) * merge_s / workers + math.ceil(math.log2(parts)) * merge_s
    estimate = Row(
        "survey",
        "merge two surveys of a 240-channel layer (k=9)",
        "survey one image (one process, this machine)",
        merge_s,
        per_image,
    )
    estimate.notes.append(
        f"merge {merge_s * 1e3:.2f} ms ({state_kb:.0f} kB a state); 1280-channel _conv_head "
        f"{merge_head_s * 1e3:.2f} ms ({head_kb:.0f} kB); 1,000,000 images on {workers} "
        f"workers like this machine, {parts} parts of {chunk}: {compute / 3600:.2f} h of "
        f"surveying + {merges:.1f} s of merging"
    )
    yield estimate


_MEMORY = """
import sys, featvis
from featvis.samples import SAMPLES, SampleImages, sample
backend = featvis.load_model("efficientnet_lite0")
images = SampleImages(int(sys.argv[1]), seed=5)
backend.activations(images[:2], "{layer}")
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
for name in SAMPLES:  # the scikit-image samples the images are cut from (25 MB), loaded once
    sample(name)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
featvis.survey(backend, images, "{layer}", receptive_fields=False, progress=False)
print(before, status("VmHWM"))
""".replace("{layer}", LAYER)


def _growth_mib(count: int) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(count)], capture_output=True, text=True, check=True
    )
    before, after = (int(v) / 1024 for v in done.stdout.split()[-2:])
    return after - before


def _memory(quick: bool) -> Row:
    small, large = (50, 200) if quick else (500, 2000)
    start = time.perf_counter()
    small_mib, large_mib = _growth_mib(small), _growth_mib(large)
    row = Row(
        "survey",
        f"peak memory growth, {large} images (MiB, not ms)",
        f"{small} images (MiB, not ms)",
        large_mib / 1e3,
        small_mib / 1e3,
        target=1.25,
    )
    row.notes.append(
        f"+{large_mib:.0f} MiB vs +{small_mib:.0f} MiB of peak RSS (VmHWM) over the RSS "
        f"before the survey ({time.perf_counter() - start:.0f} s)"
    )
    return row
