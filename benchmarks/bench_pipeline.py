"""The whole job: image file in, montage PNG out (AlexNet conv1, batch 1), stage by stage.

The reference is the pipeline people write by hand: scikit-image to read and resize, a hook
that keeps conv1's output while the whole network runs, a per-channel mat2gray loop,
``skimage.util.montage``, and Pillow's default PNG compression.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from harness import Row, compare, median_alone
from PIL import Image

import featvis
from featvis._images import _load, _normalize_into, _resize_rgb


def rows(quick: bool) -> Iterator[Row]:
    import skimage.data
    import skimage.io
    import skimage.transform
    import skimage.util
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    backend = featvis.load(model)
    folder = Path(tempfile.mkdtemp(prefix="featvis-bench-"))
    image_path = folder / "astronaut.jpg"
    Image.fromarray(skimage.data.astronaut()).save(image_path, quality=90)
    out = folder / "conv1.png"

    def featvis_job() -> None:
        acts = backend.activations(image_path, "conv1")
        featvis.montage(acts).save(out)

    mean = torch.tensor(featvis.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(featvis.IMAGENET_STD).view(1, 3, 1, 1)

    def naive_job() -> None:
        image = skimage.io.imread(image_path)
        resized = skimage.transform.resize(image, (224, 224), order=1, anti_aliasing=True)
        x = (torch.from_numpy(resized).permute(2, 0, 1)[None].float() - mean) / std
        kept: list[torch.Tensor] = []
        handle = model.features[0].register_forward_hook(lambda m, i, o: kept.append(o.clone()))
        try:
            with torch.inference_mode():
                model(x)
        finally:
            handle.remove()
        acts = kept[0][0].numpy()
        scaled = np.stack([(c - acts.min()) / (acts.max() - acts.min()) for c in acts])
        tiles = skimage.util.montage(scaled, fill=0.0, padding_width=1)
        Image.fromarray((tiles * 255).astype(np.uint8)).save(out.with_name("naive.png"))

    rounds = 5 if quick else 15
    case_s, reference_s = compare(featvis_job, naive_job, rounds=rounds)
    row = Row(
        "pipeline",
        "image file -> conv1 montage PNG (AlexNet, batch 1)",
        "hand-written pipeline",
        case_s,
        reference_s,
    )

    # Where featvis's time goes, stage by stage.
    loaded = _load(image_path)
    size = backend.preprocess.size
    prepared = backend.preprocess(image_path)
    acts = backend.activations(prepared, "conv1")
    picture = featvis.montage(acts)
    buffer = np.empty(prepared.shape[1:], np.float32)
    stages = {
        "decode": lambda: _load(image_path),
        "preprocess": lambda: _normalize_into(
            buffer, _resize_rgb(loaded, size), backend.preprocess
        ),
        "forward": lambda: backend.activations(prepared, "conv1"),
        "normalize+montage": lambda: featvis.montage(acts),
        "encode PNG": lambda: picture.save(out),
    }
    timed = {name: median_alone(fn, rounds) * 1e3 for name, fn in stages.items()}
    total = sum(timed.values())
    row.notes.append(
        "; ".join(f"{name} {ms:.2f} ms ({ms / total:.0%})" for name, ms in timed.items())
    )
    yield row
