"""Write the figures of docs/maximize.md: optimized images of EfficientNet-Lite0's channels
beside the dataset images that excite them most.

    python docs/make_maximize_figures.py                             # into docs/figures/
    python docs/make_maximize_figures.py OUT_DIR [N [STEPS [SIZE]]]  # into OUT_DIR/figures/

It surveys ``_blocks.6._expand_conv`` (480 channels of 14x14, the middle of the network) of
the embedded EfficientNet-Lite0 over N (default 400) :class:`featvis.samples.SampleImages`,
optimizes one image per channel of :data:`CHANNELS` with :func:`featvis.maximize` (all in one
batch; STEPS steps at SIZE pixels, default 128 and 128, which made the committed figures), and
draws each channel's optimized image left of its four strongest dataset patches. A second
figure compares the Fourier parameterization with plain pixels on one channel. It prints the
numbers the page quotes, and :func:`run` returns them (the docs tests run it small).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageDraw

import featvis
from featvis._atlas import patch_montage
from featvis.samples import SAMPLES, SampleImages, sample

LAYER = "_blocks.6._expand_conv"
CHANNELS = (1, 7, 20, 33, 58, 96)
STEPS = 128
SIZE = 128
CELL = 96


def _tile(image: np.ndarray) -> Image.Image:
    pixels = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(pixels).resize((CELL, CELL), Image.Resampling.LANCZOS)


def beside_figure(result: featvis.Maximization, patches: featvis.Picture) -> Image.Image:
    """Each channel's row: its optimized image, a gap, then its four best dataset patches."""
    rows = Image.fromarray(np.asarray(patches))
    gap, label = 10, 70
    out = Image.new("RGB", (label + CELL + gap + rows.width, rows.height), "white")
    draw = ImageDraw.Draw(out)
    for i, (channel, image) in enumerate(zip(result.channels, result.images)):
        y = i * (CELL + 2)
        draw.text((4, y + CELL // 2 - 12), f"channel {channel}", fill=(0, 0, 0))
        draw.text((4, y + CELL // 2 + 2), f"{result.values[i]:.1f}", fill=(90, 90, 90))
        out.paste(_tile(image), (label, y))
    out.paste(rows, (label + CELL + gap, 0))
    return out


def compare_figure(pixels: featvis.Maximization, fourier: featvis.Maximization) -> Image.Image:
    out = Image.new("RGB", (2 * 2 * CELL + 3 * 4, 2 * CELL + 4 + 16), "white")
    draw = ImageDraw.Draw(out)
    for col, (name, result) in enumerate((("pixels", pixels), ("fourier (default)", fourier))):
        x = col * (2 * CELL + 6)
        draw.text((x + 4, 2), name, fill=(0, 0, 0))
        image = (np.clip(result.images[0], 0, 1) * 255 + 0.5).astype(np.uint8)
        out.paste(Image.fromarray(image).resize((2 * CELL, 2 * CELL)), (x, 16))
    return out


def high_frequency_share(images: np.ndarray) -> float:
    gray = images.mean(axis=3)
    gray = gray - gray.mean(axis=(1, 2), keepdims=True)
    power = np.abs(np.fft.fft2(gray)) ** 2
    f = np.hypot(np.fft.fftfreq(gray.shape[1])[:, None], np.fft.fftfreq(gray.shape[2])[None])
    return float(power[:, f > 0.25].sum() / power.sum())


class Numbers(NamedTuple):
    """What the page quotes, as :func:`run` measured it (a named tuple: the script is loaded
    by path in the tests, outside ``sys.modules``, where a dataclass cannot resolve its types)."""

    figures: list[Path]  #: beside the dataset, pixels against Fourier, the layer view
    optimized: dict[int, float]  #: each channel's mean on its optimized image
    strongest_sample: dict[int, float]  #: the channel's mean on the strongest skimage sample
    high_frequency: dict[str, float]  #: share of energy above 1/4 cycle/pixel, by param.
    objective: dict[str, float]  #: the compared channel's mean, by parameterization
    seconds: float  #: the optimization of :data:`CHANNELS` in one batch


def run(out_dir: Path, count: int = 400, *, steps: int = STEPS, size: int = SIZE) -> Numbers:
    """Write the figures into ``out_dir / "figures"``, print the numbers and return them."""
    out = out_dir / "figures"
    out.mkdir(parents=True, exist_ok=True)
    backend = featvis.load_model("efficientnet_lite0")
    images = SampleImages(count)
    survey = featvis.survey(backend, images, [LAYER], k=4, progress=False)
    start = time.perf_counter()
    result = featvis.maximize(backend, LAYER, list(CHANNELS), steps=steps, size=size)
    took = time.perf_counter() - start
    patches = patch_montage(survey, LAYER, list(CHANNELS), images, cell=CELL, gap=2)
    beside = out / "maximize_beside_dataset.jpg"
    beside_figure(result, patches).save(beside, quality=90)
    natural = backend.activations([sample(s) for s in SAMPLES], LAYER).mean(axis=(2, 3))
    print(f"{len(CHANNELS)} channels, {steps} steps at {size} px in one batch: {took:.0f} s")
    for i, c in enumerate(CHANNELS):
        best = survey.top(LAYER, c)[0]
        print(
            f"channel {c}: optimized mean {result.values[i]:.2f}; strongest scikit-image sample "
            f"mean {natural[:, c].max():.2f}; best surveyed image peak {best.value:.2f}"
        )
    fourier, pixels = (
        featvis.maximize(
            backend, LAYER, [CHANNELS[0]], steps=steps, size=size, seed=1, parameterization=p
        )
        for p in ("fourier", "pixels")
    )
    compare = out / "maximize_pixels_fourier.jpg"
    compare_figure(pixels, fourier).save(compare, quality=90)
    share = {"pixels": high_frequency_share(pixels.images)}
    share["fourier"] = high_frequency_share(fourier.images)
    print(
        f"share of energy above 1/4 cycle/pixel: pixels {share['pixels']:.3f}, "
        f"fourier {share['fourier']:.3f}; objective pixels "
        f"{pixels.values[0]:.2f}, fourier {fourier.values[0]:.2f}"
    )
    layer = out / "maximize_layer.png"
    result.picture(labels=True).save(layer)
    return Numbers(
        figures=[beside, compare, layer],
        optimized={c: float(v) for c, v in zip(CHANNELS, result.values)},
        strongest_sample={c: float(natural[:, c].max()) for c in CHANNELS},
        high_frequency=share,
        objective={"pixels": float(pixels.values[0]), "fourier": float(fourier.values[0])},
        seconds=took,
    )


def main(argv: list[str]) -> None:
    out_dir = Path(argv[0]) if argv else Path(__file__).parent
    numbers = [int(a) for a in argv[1:4]]
    count = numbers[0] if numbers else 400
    steps = numbers[1] if len(numbers) > 1 else STEPS
    size = numbers[2] if len(numbers) > 2 else SIZE
    for path in run(out_dir, count, steps=steps, size=size).figures:
        print(path)


if __name__ == "__main__":
    main(sys.argv[1:])
