"""One self-contained HTML report: figures inlined as PNG, nothing fetched, opens offline."""

from __future__ import annotations

import base64
import datetime
import html
import platform
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._layers import Layer, layer_table
from featvis._predict import top_predictions
from featvis._version import __version__
from featvis.cli._inputs import for_display
from featvis.render import Picture, montage, pair, strongest_channel

__all__ = ["Figure", "Section", "layer_sections", "normalization_caption", "write_report"]

_NORMALIZATION = {
    "global": "normalized over all channels together (MATLAB's mat2gray): the same gray means "
    "the same value in every tile",
    "channel": "each channel normalized alone: tiles cannot be compared with each other",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #444; max-width: 560px; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
details { margin: 1em 0; } .provenance td:first-child { font-weight: bold; }
"""


def normalization_caption(normalize: str) -> str:
    """The sentence written under a figure about how its values were scaled."""
    return _NORMALIZATION.get(normalize, f"normalization: {normalize}")


@dataclass
class Figure:
    title: str
    picture: Picture
    caption: str = ""


@dataclass
class Section:
    title: str
    figures: list[Figure] = field(default_factory=list)
    html: str = ""  # tables and text shown before the figures


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.picture.png()).decode("ascii")
    return (
        f'<figure><img alt="{html.escape(figure.title)}" src="data:image/png;base64,{data}">'
        f"<figcaption><b>{html.escape(figure.title)}</b><br>{html.escape(figure.caption)}"
        "</figcaption></figure>"
    )


def _provenance(backend: Backend, extra: dict[str, str]) -> dict[str, str]:
    rows = {
        "featvis": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        **backend.provenance,
        **extra,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(
            Path(sys.argv[0]).name if i == 0 else a for i, a in enumerate(sys.argv)
        ),
    }
    return rows


def write_report(
    path: str | Path,
    *,
    title: str,
    backend: Backend,
    sections: Iterable[Section],
    provenance: dict[str, str] | None = None,
) -> Path:
    """Write the report: title, provenance, the layer table, then each section's figures."""
    path = Path(path)
    rows = _provenance(backend, provenance or {})
    prov = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>" for k, v in rows.items()
    )
    body = [
        f"<h1>{html.escape(title)}</h1>",
        f'<table class="provenance">{prov}</table>',
    ]
    layers = backend.layers()
    body.append(
        f"<details><summary>The network's {len(layers)} layers (like MATLAB's net.Layers)"
        f"</summary>{layer_table(layers)._repr_html_()}</details>"
    )
    for section in sections:
        body.append(f"<h2>{html.escape(section.title)}</h2>{section.html}")
        body.extend(_figure_html(figure) for figure in section.figures)
    document = (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )
    path.write_text(document, encoding="utf-8")
    return path


def predictions_html(predictions: Sequence[tuple[str, float]]) -> str:
    items = "".join(
        f"<li>{html.escape(name)}: {probability:.1%}</li>" for name, probability in predictions
    )
    return f"<p>Top-{len(predictions)} prediction:</p><ol>{items}</ol>"


def called(layer: Layer) -> str:
    """``conv1 (features.0)``; ``conv1 (conv2d, module _conv_stem)`` for an exported layer."""
    module = f", module {layer.source}" if layer.source and layer.source != layer.name else ""
    return f"{layer.alias} ({layer.name}{module})"


def describe(layer: Layer, acts: np.ndarray) -> str:
    """``conv1 (features.0): 64 channels of 55x55``."""
    _, channels, height, width = acts.shape
    return f"{called(layer)}: {channels} channels of {height}x{width}"


def montage_figure(layer: Layer, acts: np.ndarray, normalize: str = "global") -> Figure:
    """Every channel of one image's activations ``(C, H, W)``, with what and how it shows."""
    return Figure(
        f"{layer.alias}: all {len(acts)} channels",
        montage(acts, normalize=normalize),
        f"{describe(layer, acts[None])}, tiled row by row from channel 0; "
        f"{normalization_caption(normalize)}.",
    )


def layer_sections(
    backend: Backend,
    images: Sequence[tuple[str, Any]],
    layers: Sequence[Layer],
    *,
    normalize: str = "global",
    progress: Any = None,
) -> list[Section]:
    """Per image: the prediction, and per layer a montage and the strongest channel's pair."""
    sections = []
    for label, image in images:
        shown = for_display(image)  # the figures' copy; the model gets the full image
        section = Section(f"Image: {label}")
        if backend.categories:
            section.html = predictions_html(top_predictions(backend, image, k=5)[0])
        outputs = backend.activations(image, [layer.name for layer in layers])
        for layer in layers:
            acts = outputs[layer.name]
            section.figures.append(montage_figure(layer, acts[0], normalize))
            strongest = strongest_channel(acts[0])
            section.figures.append(
                Figure(
                    f"{layer.alias}: strongest channel {strongest}",
                    pair(shown, acts[0, strongest]),
                    f"Channel {strongest} (MATLAB's {strongest + 1}) holds the layer's largest "
                    "activation; it is normalized alone (mat2gray), resized to the image and "
                    "shown beside it.",
                )
            )
            if progress is not None:
                progress.update(1)
        sections.append(section)
    return sections
