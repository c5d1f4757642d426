"""featvis.report: one self-contained HTML file (figures inlined, nothing fetched, opens offline).

A :class:`Report` is a title, the model's provenance and layer table, and a list of
:class:`Section`; :func:`report` builds the standard one (per image: the prediction, and per
layer a montage and the strongest channel beside the image). Other code adds its own sections
(an explanation, an evaluation, a dataset survey) through ``sections=`` or by appending to
:attr:`Report.sections`: a section is a title, some HTML, and figures.
"""

from __future__ import annotations

import base64
import datetime
import html
import os
import platform
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from featvis._backend import Backend, LayerKey
from featvis._capabilities import Scorer
from featvis._errors import ArgumentError
from featvis._figures import MAX_SIZE, Figure, for_display, montage_figure, strongest
from featvis._images import ImageSource
from featvis._layers import Layer, layer_table
from featvis._predict import top_predictions
from featvis._version import __version__
from featvis.render import pair

__all__ = ["Report", "Section", "predictions_html", "report"]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
figure { display: inline-block; margin: 0.5em 1em 1em 0; vertical-align: top; max-width: 100%; }
figure img { max-width: 100%; image-rendering: pixelated; border: 1px solid #ddd; }
figure img.photo { image-rendering: auto; }
figcaption { font-size: 0.85em; color: #444; max-width: 560px; }
table { border-collapse: collapse; font-size: 0.85em; }
td, th { border: 1px solid #ddd; padding: 2px 6px; text-align: left; }
details { margin: 1em 0; } .provenance td:first-child { font-weight: bold; }
"""


@dataclass
class Section:
    """A part of a report: a heading, HTML shown under it (tables, text), then figures.

    ``html`` is inserted as it is: escape what you did not write (``html.escape``).
    """

    title: str
    figures: list[Figure] = field(default_factory=list)
    html: str = ""


def _figure_html(figure: Figure) -> str:
    data = base64.b64encode(figure.data()).decode("ascii")
    css = ' class="photo"' if figure.format == "jpeg" else ""
    return (
        f'<figure><img{css} alt="{html.escape(figure.title)}" '
        f'src="data:{figure.mime};base64,{data}">'
        f"<figcaption><b>{html.escape(figure.title)}</b><br>{html.escape(figure.caption)}"
        "</figcaption></figure>"
    )


@dataclass
class Report:
    """An HTML report: :meth:`save` writes it, :meth:`to_html` returns it, Jupyter shows it.

    Attributes
    ----------
    title : str
    backend : Backend
        Its provenance and layer table head the report.
    sections : list of Section
        In order; append to it to add a section.
    provenance : dict of str to str
        Rows added to the backend's provenance (model name, image, command...).
    """

    title: str
    backend: Backend
    sections: list[Section] = field(default_factory=list)
    provenance: dict[str, str] = field(default_factory=dict)

    def _provenance_rows(self) -> dict[str, str]:
        return {
            "featvis": __version__,
            "python": platform.python_version(),
            "numpy": np.__version__,
            **self.backend.provenance,
            **self.provenance,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def to_html(self) -> str:
        """The whole document, figures inlined as base64 (JPEG photos, PNG maps)."""
        prov = "".join(
            f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
            for k, v in self._provenance_rows().items()
        )
        layers = self.backend.layers()
        body = [
            f"<h1>{html.escape(self.title)}</h1>",
            f'<table class="provenance">{prov}</table>',
            f"<details><summary>The network's {len(layers)} layers (like MATLAB's net.Layers)"
            f"</summary>{layer_table(layers)._repr_html_()}</details>",
        ]
        for section in self.sections:
            body.append(f"<h2>{html.escape(section.title)}</h2>{section.html}")
            body.extend(_figure_html(figure) for figure in section.figures)
        return (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(body)
            + "</body></html>\n"
        )

    def _repr_html_(self) -> str:
        return self.to_html()

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the report to ``path`` (UTF-8 HTML) and return the path."""
        path = Path(path)
        path.write_text(self.to_html(), encoding="utf-8")
        return path


def predictions_html(predictions: Sequence[tuple[str, float]]) -> str:
    """A numbered list of ``(class name, probability)`` pairs."""
    items = "".join(
        f"<li>{html.escape(name)}: {probability:.1%}</li>" for name, probability in predictions
    )
    return f"<p>Top-{len(predictions)} prediction:</p><ol>{items}</ol>"


def _labelled(images: Any) -> list[tuple[str, ImageSource]]:
    if isinstance(images, Mapping):
        pairs = [(str(label), image) for label, image in images.items()]
    else:
        many = isinstance(images, (list, tuple))
        items = list(images) if many else [images]
        pairs = [
            (
                os.path.basename(os.fspath(image))
                if isinstance(image, (str, os.PathLike))
                else f"image {i + 1}",
                image,
            )
            for i, image in enumerate(items)
        ]
    if not pairs:
        raise ArgumentError("report needs at least one image.")
    return pairs


def default_layers(layers: Sequence[Layer]) -> list[Layer]:
    """The layers the seed walkthrough looks at: the first conv, the last conv, and the first
    ReLU after the last conv (AlexNet: conv1, conv5, relu5). A network without convolutions
    gives its first and last layers."""
    convs = [layer for layer in layers if layer.kind == "conv"]
    if not convs:
        return list(dict.fromkeys([layers[0], layers[-1]]))
    chosen = [convs[0], convs[-1]]
    after = [layer for layer in layers[convs[-1].index + 1 :] if layer.kind == "relu"]
    if after:
        chosen.append(after[0])
    return list(dict.fromkeys(chosen))


def report(
    backend: Backend,
    images: ImageSource | Sequence[ImageSource] | Mapping[str, ImageSource],
    layers: Sequence[LayerKey] | None = None,
    *,
    sections: Iterable[Section | str] = (),
    title: str = "featvis report",
    scope: Literal["global", "channel"] = "global",
    max_size: int | None = MAX_SIZE,
    provenance: Mapping[str, str] | None = None,
    progress: Callable[[int], object] | None = None,
) -> Report:
    """A self-contained HTML report of what ``backend``'s layers see in ``images``.

    For each image: the top-5 prediction (when the backend scores classes and knows their
    names), then for each layer a montage of every channel and the strongest channel beside
    the image. The report starts with the model's provenance and layer table.

    Parameters
    ----------
    backend : Backend
    images : image, list of images, or mapping of label to image
        Files (labelled by their name), arrays or PIL images (``image 1``, ...).
    layers : list of layer names, aliases or indices, optional
        Default: the walkthrough's first conv, last conv and the ReLU after it.
    sections : iterable of Section or str
        More sections, after the images' (an evaluation, a survey...). A name builds one of
        featvis's own over ``images``: ``"explain"``, the explanation of each image's predicted
        class (:func:`featvis.explain` with Grad-CAM on a backend with gradients, Ablation-CAM
        or Score-CAM on the others); ``"explain:METHOD"`` with the method named.
    title : str
    scope : {"global", "channel"}
        How montages are normalized (see :func:`featvis.normalize`).
    max_size : int or None
        The longer side of the photos in the figures, in pixels (the model sees them whole);
        montages of small maps are enlarged up to it. ``None``: full size.
    provenance : mapping of str to str, optional
        Rows added to the provenance table (model name, command line...).
    progress : callable, optional
        Called with 1 after each layer of each image (``tqdm(...).update``).

    Returns
    -------
    Report
        ``report(...).save("report.html")`` writes it.

    Examples
    --------
    >>> import numpy as np, featvis
    >>> from featvis.testing import tiny_cnn
    >>> image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    >>> page = featvis.report(tiny_cnn(), [image], ["conv1", "relu2"])
    >>> [section.title for section in page.sections]
    ['Image: image 1']
    >>> [figure.title for figure in page.sections[0].figures][:2]
    ['conv1: all 8 channels', 'conv1: strongest channel 5']
    >>> page.to_html().startswith("<!DOCTYPE html>")
    True
    >>> page = featvis.report(tiny_cnn(), [image], ["conv1"], sections=["explain"])
    >>> [section.title for section in page.sections]
    ['Image: image 1', 'Explain the prediction']
    """
    labelled = _labelled(images)
    chosen = (
        [backend.layer(key) for key in layers]
        if layers is not None
        else default_layers(backend.layers())
    )
    if not chosen:
        raise ArgumentError("report needs at least one layer (or layers=None for the default).")
    built: list[Section] = []
    for label, image in labelled:
        shown = for_display(image, max_size)  # the figures' copy; the model gets the full image
        section = Section(f"Image: {label}")
        if isinstance(backend, Scorer) and backend.categories:
            section.html = predictions_html(top_predictions(backend, image, k=5)[0])
        outputs = backend.activations(image, [layer.name for layer in chosen])
        for layer in chosen:
            acts = outputs[layer.name][0]
            section.figures.append(montage_figure(layer, acts, scope, max_size=max_size))
            k, why = strongest(acts)
            section.figures.append(
                Figure(
                    f"{layer.alias}: strongest channel {k}",
                    pair(shown, acts[k]),
                    f"Channel {k} (MATLAB's {k + 1}) is the strongest: {why}. It is normalized "
                    "alone (mat2gray), resized to the image and shown beside it.",
                    format="jpeg",
                )
            )
            if progress is not None:
                progress(1)
        built.append(section)
    for extra in sections:
        built.append(
            _named_section(extra, backend, labelled, max_size) if isinstance(extra, str) else extra
        )
    return Report(title, backend, built, dict(provenance or {}))


#: The sections :func:`report` builds by name (``sections=["explain"]``).
SECTION_NAMES = ("explain",)


def _named_section(
    name: str,
    backend: Backend,
    labelled: list[tuple[str, ImageSource]],
    max_size: int | None,
) -> Section:
    kind, _, option = name.partition(":")
    if kind == "explain":
        from featvis._explain._section import explain_section

        return explain_section(backend, labelled, method=option or None, max_size=max_size)[0]
    raise ArgumentError(
        f"Unknown report section {name!r}; the named sections are "
        f"{', '.join(map(repr, SECTION_NAMES))} ('explain:METHOD' for another method), or pass "
        "a featvis.Section."
    )
