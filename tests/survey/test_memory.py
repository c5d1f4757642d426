"""Bounded memory: surveying 2,000 images takes no more memory than surveying 500."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status"),
]

#: Run in a fresh process, which prints its resident memory before the survey and its peak
#: during it (Linux's VmHWM, reset just before), in kB.
SCRIPT = """
import sys, torch, featvis
from torch import nn
from featvis.samples import SAMPLES, SampleImages, sample

torch.manual_seed(0)
torch.set_num_threads(1)
model = nn.Sequential(
    nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
    nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
    nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
).eval()
backend = featvis.load(model)
images = SampleImages(int(sys.argv[1]))  # 224x224, made one at a time as they are read
backend.activations(images[:2], ["1", "5"])
def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])
for name in SAMPLES:  # the scikit-image samples the images are cut from (25 MB), loaded once
    sample(name)
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
result = featvis.survey(backend, images, ["1", "5"], k=9, batch_size=32,
                        receptive_fields=False, progress=False)
assert result.images == int(sys.argv[1])
print(before, status("VmHWM"))
"""


def survey_peak_mib(count: int) -> tuple[float, float]:
    """(resident memory before the survey, peak growth during it) of a fresh process, MiB."""
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(count)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr
    before, after = (int(v) / 1024 for v in done.stdout.split()[-2:])
    return before, after - before


def test_peak_memory_does_not_grow_with_the_collection() -> None:
    _, small = survey_peak_mib(500)
    _, large = survey_peak_mib(2000)
    # 2,000 prepared 224x224 images are 1.1 GiB, their layer "1" activations 3.1 GiB: holding
    # any of it would show. What is held: one batch of input and activations, the images
    # prepared ahead, the model's working memory for a batch and the decoding threads' malloc
    # arenas: 250-310 MiB measured, whatever the count (100, 500 or 2,000 images). Keeping as
    # little as 40 kB per image would add 60 MiB from 500 to 2,000.
    budget = 400
    assert small < budget and large < budget, (small, large)
    assert large < small + 60, (small, large)
