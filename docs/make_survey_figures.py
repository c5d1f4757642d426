"""Write the figures of docs/survey.md: a survey of EfficientNet-Lite0 over 2,000 images.

    python docs/make_survey_figures.py                 # figures into docs/figures/
    python docs/make_survey_figures.py OUT_DIR [N]     # into OUT_DIR/figures/, N images

It surveys ``_blocks.5._bn1`` (240 channels of 14x14, the layer before a ReLU6) of the embedded
EfficientNet-Lite0 over :class:`featvis.samples.SampleImages`, labelled by the scikit-image
sample each image was cut from, writes the atlas into a temporary folder (not committed: 2,160
thumbnails; its path is printed), and draws two figures from it. It prints the numbers the page
quotes.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

import featvis
from featvis.samples import SampleImages

LAYER = "_blocks.5._bn1"
#: Channels shown in the patch figure (looked at in the atlas; see docs/survey.md).
CHANNELS = (2, 7, 8, 12, 87, 91, 94, 95)
#: The channel whose best images are drawn whole, with their boxes.
BOXED = 7


def boxes_figure(result: featvis.Survey, images: SampleImages, channel: int) -> Image.Image:
    """The channel's four best images, whole, each with the patch its peak sees outlined."""
    tiles = []
    for entry in result.top(LAYER, channel)[:4]:
        picture = Image.fromarray(images[entry.position])
        draw = ImageDraw.Draw(picture)
        top, left, bottom, right = entry.box  # type: ignore[misc]
        draw.rectangle([left, top, right - 1, bottom - 1], outline=(255, 0, 0), width=3)
        tiles.append(picture.resize((192, 192), Image.Resampling.LANCZOS))
    canvas = Image.new("RGB", (4 * 192 + 3 * 4, 192), (255, 255, 255))
    for i, tile in enumerate(tiles):
        canvas.paste(tile, (i * 196, 0))
    return canvas


def run(out_dir: Path, count: int = 2000) -> list[Path]:
    figures = out_dir / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    backend = featvis.load_model("efficientnet_lite0")
    images = SampleImages(count)
    result = featvis.survey(backend, images, LAYER, labels=images.labels, progress=False)
    atlas = Path(tempfile.mkdtemp(prefix="featvis-survey-atlas-"))
    print(f"atlas: {result.save(atlas)}")
    stats = result.stats(LAYER)
    print(result)
    print(f"never active: {stats.dead}; tied: {len(result.tied(LAYER))}")
    print(f"fraction active: {stats.positive.min():.3f} to {stats.positive.max():.3f}")
    field = result.fields[LAYER]
    print(f"receptive field: {field}")
    for channel in CHANNELS:
        classes = ", ".join(
            f"{c.label} {c.mean:.2f}" for c in result.top_classes(LAYER, channel, 3)
        )
        print(
            f"channel {channel}: mean {stats.mean[channel]:.3f}, max {stats.max[channel]:.2f}, "
            f"active {stats.positive[channel]:.1%}; classes {classes}"
        )
    first = result.top(LAYER, BOXED)[0]
    print(f"channel {BOXED} best: {first}")
    patches = figures / "survey_patches.png"
    channels = [c for c in CHANNELS if c < result.channels(LAYER)]
    result.montage(LAYER, channels).save(patches)
    boxed = figures / "survey_boxes.png"
    boxes_figure(result, images, BOXED).save(boxed)
    np.asarray(Image.open(boxed))  # readable
    return [patches, boxed]


if __name__ == "__main__":
    here = Path(__file__).resolve().parent
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else here
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
    for path in run(target, n):
        print(path)
