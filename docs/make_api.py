"""Write docs/api.md from the docstrings of featvis's public names, so the reference stays true.

python docs/make_api.py          # rewrite docs/api.md
python docs/make_api.py --check  # exit 1 if docs/api.md is out of date (a test runs this)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

import featvis
import featvis.testing

API = Path(__file__).with_name("api.md")

GROUPS = {
    "Models and backends": [
        "load",
        "load_model",
        "list_backends",
        "list_models",
        "Backend",
        "BackendBase",
        "BackendSpec",
        "ModelSpec",
        "Preprocess",
        "hookimpl",
        "requiring",
        "lazy_exports",
        "install_hint",
    ],
    "Capabilities": [
        "Scorer",
        "Differentiable",
        "Objective",
        "Gradients",
        "Patchable",
        "LinearHead",
        "OnnxExportable",
        "Summarizing",
        "Randomizable",
        "require",
    ],
    "Evaluation (see [evaluation.md](evaluation.md))": ["evaluate", "Evaluation"],
    "Explanations (see [explain.md](explain.md))": [
        "explain",
        "Explanation",
        "default_layer",
        "stage_layers",
        "list_methods",
        "Method",
        "MethodRequest",
        "MethodResult",
    ],
    "Feature visualization (see [maximize.md](maximize.md))": [
        "maximize",
        "maximize_section",
        "Maximization",
        "Transforms",
    ],
    "Layers": ["Layer", "KINDS", "number_layers", "layer_table", "LayerTable"],
    "Images in": ["read_image", "prepare_images", "IMAGENET_MEAN", "IMAGENET_STD"],
    "Rendering": [
        "normalize",
        "montage",
        "gallery",
        "strongest_channel",
        "tied_channels",
        "top_channels",
        "resize",
        "pair",
        "overlay",
        "Picture",
    ],
    "Reports": ["report", "Report", "Section", "Figure"],
    "Surveys of image collections": [
        "survey",
        "Survey",
        "TopImage",
        "ChannelStats",
        "ClassScore",
        "receptive_field",
        "ReceptiveField",
        "ImageInfo",
        "ActivationBatch",
        "BatchSummary",
    ],
    "Predictions and comparison": [
        "probabilities",
        "top_predictions",
        "compare",
        "ComparisonTable",
    ],
    "Errors and warnings": [
        "FeatvisError",
        "ArgumentError",
        "ImageError",
        "ModelError",
        "LayoutError",
        "UnknownLayerError",
        "AmbiguousLayerError",
        "BackendNotFoundError",
        "CapabilityError",
        "MissingDependencyError",
        "PluginError",
        "FeatvisPluginWarning",
        "LayerWarning",
    ],
    "Helpers for backends": ["Activations", "as_nchw", "LayerKey"],
}


def _summary(obj: object) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.split("\n\n")[0].replace("\n", " ")


def _signature(name: str, obj: object) -> str:
    if inspect.isclass(obj) or inspect.isfunction(obj):
        try:
            return f"{name}{inspect.signature(obj)}"  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return name
    return name


def render() -> str:
    listed = {name for names in GROUPS.values() for name in names}
    missing = sorted(set(featvis.__all__) - listed - {"__version__"})
    if missing:
        raise SystemExit(f"docs/make_api.py: add {missing} to GROUPS")
    lines = [
        "# API reference",
        "",
        "Everything below is importable from `featvis`. This page is generated from the",
        "docstrings by `docs/make_api.py`; `help(featvis.NAME)` shows the full text.",
        "",
    ]
    for group, names in GROUPS.items():
        lines += [f"## {group}", ""]
        for name in names:
            if name not in featvis.__all__:
                continue
            obj = getattr(featvis, name)
            lines += [f"### `{_signature(name, obj)}`", ""]
            summary = _summary(obj) if callable(obj) or inspect.isclass(obj) else ""
            if summary:
                lines += [summary, ""]
    lines += [
        "## featvis.testing",
        "",
        "For backend authors (see [plugins.md](plugins.md)).",
        "",
    ]
    for name in featvis.testing.__all__:
        obj = getattr(featvis.testing, name)
        lines += [f"### `{_signature(name, obj)}`", "", _summary(obj), ""]
    lines += _backends()
    return "\n".join(lines).rstrip() + "\n"


def _backends() -> list[str]:
    """The built-in backends' own classes (``featvis.load`` returns them)."""
    from featvis_onnx import OnnxBackend
    from featvis_torch import TorchBackend, models

    lines = [
        "## The built-in backends",
        "",
        "`featvis.load(model)` returns one of these; build one directly for its options.",
        "",
    ]
    entries = [
        ("featvis_torch.TorchBackend", TorchBackend),
        ("featvis_torch.TorchBackend.to_onnx", TorchBackend.to_onnx),
        ("featvis_torch.TorchBackend.gradients", TorchBackend.gradients),
        ("featvis_torch.TorchBackend.patched_scores", TorchBackend.patched_scores),
        ("featvis_torch.models.efficientnet_lite0", models.efficientnet_lite0),
        ("featvis_onnx.OnnxBackend", OnnxBackend),
        ("featvis_onnx.OnnxBackend.patched_scores", OnnxBackend.patched_scores),
    ]
    for name, obj in entries:
        signature = _signature(name, obj)
        lines += [f"### `{signature}`", "", _summary(obj), ""]
    return lines


def main() -> int:
    text = render()
    if "--check" in sys.argv:
        if API.read_text(encoding="utf-8") != text:
            print("docs/api.md is out of date: run python docs/make_api.py", file=sys.stderr)
            return 1
        return 0
    API.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
