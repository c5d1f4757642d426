"""featvis.maximize side by side with lucent (torch-lucent 0.1.8, Lucid's PyTorch port) on the
embedded EfficientNet-Lite0 at 224 x 224, channels of ``_blocks.6._expand_conv``.

Both use the same parameterization (Fourier 1/f, decorrelated color, sigmoid, Lucid's
constants), Adam at lr 0.05, and Lucid's standard transforms (pad 12, jitter 8, scale
0.9-1.1, rotation -10..10 degrees, jitter 4), then the model's own mean/std (lucent's
``preprocess=False`` with a Normalize of Lite0's 0.498/0.502 added to its transforms). What
differs: featvis composes the transforms into one warp and keeps the view at 248 px; lucent's
scale step grows the view up to 273 px; featvis stops the forward pass after the layer.
lucent runs on its own copy of the model (it leaves its hooks on every module).

Rows:

- steps per second, one channel: featvis against lucent (target <= 1.0: at least as fast);
- the final objective after the same steps, both images measured by the same forward pass
  without transforms (the ratio is lucent's objective over featvis's; target <= 1.0);
- 32 channels in one batch against 32 single-channel steps (target <= 1/8), featvis, and the
  same for lucent for reference.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterator

import numpy as np
import torch
from harness import Row

import featvis

LAYER = "_blocks.6._expand_conv"
LUCENT_LAYER = LAYER.replace(".", "_")
SIZE = 224


def _lucent(model: torch.nn.Module, channels: list[int], steps: int, mean, std) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from lucent.optvis import objectives, param, render, transform
        from torchvision.transforms import Normalize

        normalize = Normalize(mean=list(mean), std=list(std))
        objective = objectives.channel(LUCENT_LAYER, channels[0], batch=0)
        for i, c in enumerate(channels[1:], 1):
            objective = objective + objectives.channel(LUCENT_LAYER, c, batch=i)
        images = render.render_vis(
            model,
            objective,
            param_f=lambda: param.image(SIZE, batch=len(channels)),
            transforms=[*transform.standard_transforms, normalize],
            thresholds=(steps,),
            preprocess=False,
            progress=False,
            show_image=False,
        )
    return np.asarray(images[-1], np.float32)


def _featvis(backend, channels: list[int], steps: int) -> np.ndarray:
    return featvis.maximize(backend, LAYER, channels, size=SIZE, steps=steps, progress=False).images


def _objective(backend, images: np.ndarray, channels: list[int]) -> float:
    pre = backend.preprocess
    x = images.transpose(0, 3, 1, 2)
    x = (x - np.asarray(pre.mean, np.float32)[:, None, None]) / np.asarray(pre.std, np.float32)[
        :, None, None
    ]
    acts = backend.activations(np.ascontiguousarray(x, np.float32), LAYER).mean(axis=(2, 3))
    return float(acts[np.arange(len(channels)), channels].mean())


def _timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def rows(quick: bool) -> Iterator[Row]:
    torch.manual_seed(0)
    backend = featvis.load_model("efficientnet_lite0")
    lucent_model = copy.deepcopy(backend.model).eval()
    mean, std = backend.preprocess.mean, backend.preprocess.std
    steps = 8 if quick else 16
    one = [1]
    # one channel: alternate lucent and featvis, twice, and keep each one's faster run
    times: dict[str, list[float]] = {"featvis": [], "lucent": []}
    finals: dict[str, np.ndarray] = {}
    for _ in range(1 if quick else 2):
        t, finals["lucent"] = _timed(lambda: _lucent(lucent_model, one, steps, mean, std))
        times["lucent"].append(t / steps)
        t, finals["featvis"] = _timed(lambda: _featvis(backend, one, steps))
        times["featvis"].append(t / steps)
    yield Row(
        "maximize",
        f"1 channel, {steps} steps: featvis s/step",
        "lucent s/step",
        min(times["featvis"]),
        min(times["lucent"]),
        target=1.0,
        notes=[
            f"featvis {1 / min(times['featvis']):.2f} steps/s, lucent "
            f"{1 / min(times['lucent']):.2f} steps/s"
        ],
    )
    ours = _objective(backend, finals["featvis"], one)
    theirs = _objective(backend, finals["lucent"], one)
    yield Row(
        "maximize",
        f"objective after {steps} steps: lucent",
        "featvis",
        theirs,
        ours,
        target=1.0,
        notes=[f"channel mean: featvis {ours:.2f}, lucent {theirs:.2f} (values, not seconds)"],
    )
    many = list(range(0, 64, 2))  # 32 channels
    batch_steps = 2 if quick else 3
    t, _ = _timed(lambda: _featvis(backend, many, batch_steps))
    batch = t / batch_steps
    yield Row(
        "maximize",
        "32 channels in one batch: featvis s/step",
        "32 single-channel steps",
        batch,
        32 * min(times["featvis"]),
        target=1 / 8,
        notes=[f"{32 / batch:.1f} channel-steps/s against {1 / min(times['featvis']):.2f}"],
    )
    t, _ = _timed(lambda: _lucent(lucent_model, many, batch_steps, mean, std))
    yield Row(
        "maximize",
        "32 channels in one batch: lucent s/step",
        "32 single-channel lucent steps",
        t / batch_steps,
        32 * min(times["lucent"]),
        notes=["for reference: lucent batches too"],
    )
