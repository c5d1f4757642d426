"""The evaluation leaderboard (docs/evaluation.md) and the cost rows of featvis.evaluate.

``python benchmarks/bench_evaluate.py [--quick] [--images N] [--out DIR]`` evaluates every
featvis method, pytorch-grad-cam's Grad-CAM and captum's Occlusion (their own code, their own
maps), a random map and a centred Gaussian (no model at all) on the same images of
:class:`featvis.samples.SampleImages` with EfficientNet-Lite0, every metric, in PyTorch; then the
gradient-free rows again on the model's ONNX export. It writes ``leaderboard.md`` (means, paired
differences against Grad-CAM with standard errors, "better" = more than two standard errors),
``curves.png``, ``maps.png`` and ``results.json`` into DIR.

``rows(quick)`` (for ``benchmarks/run.py``) times deletion + insertion at k steps against the
2(k + 1) batched forwards they need, ROAD per image, and Grad-CAM fused over three stages
against 14 x 14 occlusion.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pickle
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Row, compare

import featvis
from featvis._evaluate import METRICS
from featvis._evaluate._metrics import deletion_insertion, probability, road
from featvis._explain._common import PERTURBATION_BATCH
from featvis.samples import SampleImages

REFERENCE = "gradcam"

#: The rows, in the table's order (cheapest first); ``_methods`` builds them.
ROWS = [
    "gradcam",
    "pytorch-grad-cam GradCAM",
    "random map",
    "centred Gaussian",
    "gradcampp",
    "layercam",
    "eigencam",
    "hirescam",
    "xgradcam",
    "cam",
    "smooth gradcam",
    "gradcam 14x14",
    "gradcam stages",
    "captum Occlusion 14x14",
    "occlusion",
    "scorecam",
    "ablationcam",
    "rise",
]


#: The leaderboard's images (``--seed`` draws another set, to confirm a lead found on them).
SEED = 14


def _images(count: int, seed: int = SEED) -> list[np.ndarray]:
    return list(SampleImages(count, seed=seed))


def _pgc_gradcam(model: Any, layer: str) -> Any:
    """pytorch-grad-cam's GradCAM, its own code, as a function evaluate can run again."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    def run(backend: Any, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        net = backend.model if hasattr(backend, "model") else model
        module = dict(net.named_modules())[layer]
        with GradCAM(net, [module]) as cam:
            return cam(torch.from_numpy(x), [ClassifierOutputTarget(int(t)) for t in targets])

    return run


def _captum_occlusion(model: Any) -> Any:
    """captum's Occlusion, 16x16 windows at stride 16 (14x14 on 224), baseline 0."""
    import torch
    from captum.attr import Occlusion

    def run(backend: Any, x: np.ndarray, targets: np.ndarray) -> np.ndarray:
        net = backend.model if hasattr(backend, "model") else model
        out = []
        for i in range(len(x)):
            with torch.no_grad():
                a = Occlusion(net).attribute(
                    torch.from_numpy(x[i : i + 1]),
                    target=int(targets[i]),
                    sliding_window_shapes=(3, 16, 16),
                    strides=(3, 16, 16),
                    baselines=0.0,
                    perturbations_per_eval=PERTURBATION_BATCH,  # batching only: same result
                )
            out.append(a.sum(dim=1)[0].numpy())
        return np.stack(out)

    return run


def _gaussian(n: int, size: int = 224) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    g = np.exp(-(yy**2 + xx**2) / (2 * (size / 4) ** 2)).astype(np.float32)
    return np.repeat(g[None], n, axis=0)


def _methods(backend: Any, n: int, quick: bool, rise_masks: int | None = None) -> dict[str, Any]:
    """Every method, cheapest first (so a run cut short still has the reference and peers)."""
    layer = featvis.default_layer(backend).name
    methods = {
        "gradcam": "gradcam",
        "pytorch-grad-cam GradCAM": _pgc_gradcam(backend.model, layer),
        "random map": np.random.default_rng(0).random((n, 224, 224)).astype(np.float32),
        "centred Gaussian": _gaussian(n),
        "gradcampp": "gradcampp",
        "layercam": "layercam",
        "eigencam": "eigencam",
        "hirescam": "hirescam",
        "xgradcam": "xgradcam",
        "cam": "cam",
        "smooth gradcam": {"method": "gradcam", "noise": 0.1, "samples": 4},
        # the last 14 x 14 layer (the first expansion of the 7 x 7 stage): finer than _relu1
        "gradcam 14x14": {"method": "gradcam", "layer": "_blocks.11._relu0"},
        # fused over the last layer of each of the last three grids (7x7, 14x14, 28x28)
        "gradcam stages": {
            "method": "gradcam",
            "layer": [layer.name for layer in featvis.stage_layers(backend)],
        },
        "captum Occlusion 14x14": _captum_occlusion(backend.model),
        "occlusion": "occlusion",
        "scorecam": {"method": "scorecam", "channels": 128 if quick else 256},
        "ablationcam": "ablationcam",
        "rise": {"method": "rise", "masks": rise_masks or (500 if quick else 2000)},
    }
    assert list(methods) == ROWS, "ROWS names the rows _methods builds, in its order"
    return methods


def _settings(quick: bool) -> dict[str, Any]:
    return {
        "steps": 20,
        "percentiles": (20, 50, 80) if quick else (10, 20, 30, 40, 50, 60, 70, 80, 90),
        "noise_samples": 3 if quick else 5,
        "randomize": 1,
    }


def _markdown(ev: featvis.Evaluation, title: str) -> str:
    lines = [
        f"### {title}",
        "",
        "| method | "
        + " | ".join(f"{k} {'↑' if METRICS[k][0] else '↓'}" for k in ev.metrics)
        + " |",
    ]
    lines.append("|---" * (len(ev.metrics) + 1) + "|")
    best = {}
    for k in ev.metrics:
        with contextlib.suppress(featvis.ArgumentError):  # no row has a value (fixed maps)
            best[k] = ev.best(k)
    for method in ev.methods:
        cells = []
        for k in ev.metrics:
            mu, se = ev.mean(method, k), ev.se(method, k)
            text = "n/a" if not np.isfinite(mu) else f"{mu:.3f} ± {se:.3f}"
            defined = int(np.isfinite(ev.values[method][k]).sum())
            if np.isfinite(mu) and defined < len(ev):
                text += f" ({defined} of {len(ev)})"  # the mean of fewer images: say so
            cells.append(f"**{text}**" if best.get(k) == method else text)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if REFERENCE in ev.methods:
        lines += [
            "",
            f"Paired differences against {REFERENCE} (mean ± SE over the images; "
            "`+` better, `-` worse by more than 2 SE):",
            "",
            "| method | " + " | ".join(ev.metrics) + " |",
            "|---" * (len(ev.metrics) + 1) + "|",
        ]
        for method in ev.methods:
            if method == REFERENCE:
                continue
            cells = []
            for k in ev.metrics:
                d, se = ev.paired(REFERENCE, k)[method]
                if not np.isfinite(d):
                    cells.append("n/a")
                    continue
                good = d if METRICS[k][0] else -d
                mark = (
                    " +"
                    if se > 0 and good > 2 * se
                    else (" -" if se > 0 and -good > 2 * se else "")
                )
                both = np.isfinite(ev.values[method][k]) & np.isfinite(ev.values[REFERENCE][k])
                pairs = f" ({int(both.sum())} of {len(ev)})" if both.sum() < len(ev) else ""
                cells.append(f"{d:+.3f} ± {se:.3f}{mark}{pairs}")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    seconds = {m: sum(t.values()) / len(ev) for m, t in ev.times.items()}
    lines += [
        "",
        "Seconds per image (making the maps and every metric): "
        + ", ".join(f"{m} {s:.1f}" for m, s in seconds.items()),
        "",
        ev.protocol(),
        "",
    ]
    return "\n".join(lines)


def _merged(parts: list[featvis.Evaluation]) -> featvis.Evaluation:
    """One evaluation from several of the same images and settings, one method each."""
    first = parts[0]
    return dataclasses.replace(
        first,
        methods=[m for p in parts for m in p.methods],
        values={k: v for p in parts for k, v in p.values.items()},
        curves={k: v for p in parts for k, v in p.curves.items()},
        maps={k: v for p in parts for k, v in p.maps.items()},
        times={k: v for p in parts for k, v in p.times.items()},
    )


def _saved(folders: list[Path]) -> list[featvis.Evaluation]:
    """The rows saved under ``folders``, in the table's order."""
    parts = []
    for folder in folders:
        for path in sorted((folder / "rows").glob("*.pkl")):
            with open(path, "rb") as f:
                parts.append(pickle.load(f))
    if not parts:
        raise SystemExit(f"no rows saved under {', '.join(map(str, folders))}")
    parts.sort(key=lambda p: ROWS.index(p.methods[0]) if p.methods[0] in ROWS else len(ROWS))
    return parts


def _merge(out: Path, folders: list[Path], seed: int) -> None:
    """The leaderboard of every row saved under ``folders`` (the same images and settings)."""
    parts = _saved(folders)
    ev = _merged(parts)
    text = _write_table(out, ev, f"merged from {len(parts)} rows", seed)
    _curves(out, ev)
    print("\n".join(text))


def _write_table(out: Path, ev: featvis.Evaluation, what: str, seed: int) -> list[str]:
    """Write ``out/leaderboard.md`` with the PyTorch table; its lines."""
    text = [
        f"# Leaderboard: EfficientNet-Lite0, {len(ev)} SampleImages (seed {seed}), {what}",
        "",
        _markdown(ev, "PyTorch"),
    ]
    (out / "leaderboard.md").write_text("\n".join(text), encoding="utf-8")
    return text


def _curves(out: Path, ev: featvis.Evaluation) -> None:
    """Write ``out/curves.png``, where the rows have deletion or insertion curves."""
    if {"deletion", "insertion"} & set(ev.metrics):
        ev.figure().save(out / "curves.png")


ONNX_ROWS = ("eigencam", "cam", "occlusion", "ablationcam", "random map")


def _onnx_rows(
    backend: Any,
    images: list[np.ndarray],
    methods: dict[str, Any],
    settings: dict[str, Any],
    ev: featvis.Evaluation,
    names: tuple[str, ...] = ONNX_ROWS,
) -> tuple[list[str], featvis.Evaluation]:
    """The gradient-free rows ``names``, and Grad-CAM's torch maps, scored on the model's ONNX
    export, with the largest per-image gap to the same rows in ``ev`` (torch)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = backend.to_onnx(Path(tmp) / "lite0.onnx")
        onnx_backend = featvis.load(path)  # preprocessing and class names from its metadata
        free = {k: methods[k] for k in names if k in ev.methods}
        free["gradcam (torch's maps)"] = ev.maps[REFERENCE]
        ev_onnx = featvis.evaluate(onnx_backend, images, free, progress=True, **settings)
    text = [_markdown(ev_onnx, "ONNX Runtime (the same model exported)")]
    gaps = []
    rerun = {"stability", "sanity", "second_class"}  # run the method again: not a fixed map's
    for name in ev_onnx.methods:
        twin = REFERENCE if name == "gradcam (torch's maps)" else name
        for k in ev_onnx.metrics:
            if twin == REFERENCE and k in rerun:
                continue
            a, b = ev_onnx.values[name][k], ev.values[twin][k]
            ok = np.isfinite(a) & np.isfinite(b)
            if ok.any():
                gaps.append((name, k, float(np.abs(a[ok] - b[ok]).max())))
    worst = max(gaps, key=lambda g: g[2])
    text.append(
        f"Largest per-image |ONNX - torch| over those rows and metrics: "
        f"{worst[2]:.2e} ({worst[0]}, {worst[1]}).\n"
    )
    return text, ev_onnx


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="6 images, lighter settings")
    parser.add_argument("--images", type=int, default=None, help="images (default 48; quick 6)")
    parser.add_argument("--out", default="bench-evaluate", help="output folder")
    parser.add_argument("--no-onnx", action="store_true", help="PyTorch rows only")
    parser.add_argument(
        "--seed",
        type=int,
        default=SEED,
        help=f"SampleImages' seed (default {SEED}, the leaderboard's; with --onnx-from, the "
        "torch rows' seed)",
    )
    parser.add_argument("--methods", nargs="*", help="only these rows (names as in the table)")
    parser.add_argument(
        "--metrics", nargs="*", help="only these metrics (with --onnx-from: of the torch rows')"
    )
    parser.add_argument(
        "--rise-masks",
        type=int,
        default=None,
        help="RISE's masks (default 2000; quick 500): its row costs about 8 maps per image",
    )
    parser.add_argument(
        "--merge",
        nargs="*",
        metavar="DIR",
        help="write DIR's leaderboard from the rows earlier runs saved in these folders "
        "(each run keeps its rows in OUT/rows/, so long rows can run as separate jobs)",
    )
    parser.add_argument(
        "--onnx-from",
        nargs="*",
        metavar="DIR",
        help="only the ONNX rows, against the torch rows saved in these folders (they must "
        "hold gradcam and the ONNX rows' torch twins); --methods picks the rows (default: "
        f"{', '.join(ONNX_ROWS)}; give --rise-masks as the torch row had it)",
    )
    args = parser.parse_args(argv)
    n = args.images or (6 if args.quick else 48)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.merge is not None:
        _merge(out, [Path(d) for d in args.merge], args.seed)
        return
    if args.onnx_from is not None:
        ev = _merged(_saved([Path(d) for d in args.onnx_from]))
        images = _images(len(ev), args.seed)
        backend = featvis.load_model("efficientnet_lite0")
        settings = {**_settings(args.quick), "metrics": args.metrics or ev.metrics}
        methods = _methods(backend, len(ev), args.quick, args.rise_masks)
        names = tuple(args.methods) if args.methods else ONNX_ROWS
        text, ev_onnx = _onnx_rows(backend, images, methods, settings, ev, names)
        (out / "leaderboard_onnx.md").write_text("\n".join(text), encoding="utf-8")
        with open(out / "onnx.pkl", "wb") as f:
            pickle.dump(ev_onnx, f)
        print("\n".join(text))
        return
    images = _images(n, args.seed)
    backend = featvis.load_model("efficientnet_lite0")
    methods = _methods(backend, n, args.quick, args.rise_masks)
    settings = _settings(args.quick)
    if args.methods:
        methods = {k: v for k, v in methods.items() if k in args.methods}
    if args.metrics:
        settings["metrics"] = args.metrics
    start = time.perf_counter()
    parts = []
    (out / "rows").mkdir(exist_ok=True)
    for name, method in methods.items():  # one at a time, the table rewritten after each
        parts.append(featvis.evaluate(backend, images, {name: method}, **settings))
        with open(out / "rows" / f"{name}.pkl", "wb") as f:
            pickle.dump(parts[-1], f)
        ev = _merged(parts)
        took = time.perf_counter() - start
        settings_name = "quick" if args.quick else "full"
        text = _write_table(
            out, ev, f"{settings_name} settings; {took / 60:.1f} min so far", args.seed
        )
        print(f"{name}: {ev[name]} ({took / 60:.1f} min)", flush=True)
    _curves(out, ev)
    ev.maps_figure(ev.methods[0], count=6).save(out / "maps.png")
    results = {"torch": {m: ev[m] for m in ev.methods}}
    if not args.no_onnx:
        part, ev_onnx = _onnx_rows(backend, images, methods, settings, ev)
        text += part
        results["onnx"] = {m: ev_onnx[m] for m in ev_onnx.methods}
    (out / "leaderboard.md").write_text("\n".join(text), encoding="utf-8")
    (out / "results.json").write_text(
        json.dumps(results, indent=1, default=float), encoding="utf-8"
    )
    print("\n".join(text))


def rows(quick: bool) -> Iterator[Row]:
    backend = featvis.load_model("efficientnet_lite0")
    images = _images(2)
    batch = featvis.prepare_images(images, backend.preprocess)
    maps = featvis.explain(backend, batch, method="gradcam").maps
    target = int(probability(backend, batch[:1], None).argmax())
    for k in (10,) if quick else (10, 20):
        stack = np.repeat(batch[:1], 2 * (k + 1), axis=0)

        def metric(k: int = k) -> object:
            return deletion_insertion(
                backend,
                batch[0],
                maps[0],
                target,
                steps=k,
                deletion="mean",
                insertion="blur",
                sigma=5.0,
                batch_size=None,
            )

        def forwards(stack: np.ndarray = stack) -> object:
            return backend.scores(stack)

        case, ref = compare(metric, forwards, rounds=3 if quick else 5)
        yield Row(
            "evaluate",
            f"deletion+insertion, {k} steps",
            f"{2 * (k + 1)} batched forwards",
            case,
            ref,
            target=1.15,
        )
    percentiles = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    one = np.zeros((1, *batch.shape[1:]), np.float32)

    targets = probability(backend, batch, None).argmax(axis=1)

    def road_each() -> object:
        return [
            road(
                backend,
                batch[i],
                maps[i],
                int(targets[i]),
                percentiles=percentiles,
                noise=0.01,
                rng=np.random.default_rng(0),
                batch_size=None,
            )
            for i in range(len(batch))
        ]

    def one_second_each() -> object:
        time.sleep(1.0 * len(batch))
        return one

    case, ref = compare(road_each, one_second_each, rounds=1 if quick else 3, min_round_s=0.0)
    yield Row(
        "evaluate",
        f"ROAD, 9 percentiles x 2 orders, {len(batch)} images",
        "1 s per image (the target)",
        case,
        ref,
        target=1.0,
    )
    # issue 14's "Ahead": a map that passes the sanity check and is as faithful as the best,
    # at <= 10 % of 14 x 14 occlusion's time
    stages = featvis.stage_layers(backend)

    def fused() -> object:
        return featvis.explain(backend, batch[:1], layer=stages)

    def occlusion() -> object:
        return featvis.explain(backend, batch[:1], method="occlusion")

    case, ref = compare(fused, occlusion, rounds=1 if quick else 3, min_round_s=0.0)
    yield Row(
        "evaluate",
        "Grad-CAM fused over 3 stages, one image",
        "occlusion 14x14 (197 forwards)",
        case,
        ref,
        target=0.10,
    )


if __name__ == "__main__":
    main()
