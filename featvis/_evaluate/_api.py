"""featvis.evaluate(): how faithful, stable and model-dependent each method's maps are."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import Randomizable, Scorer, require
from featvis._errors import ArgumentError
from featvis._evaluate import _metrics as m
from featvis._evaluate._evaluation import METRICS, Evaluation
from featvis._explain._api import _display, _prepared, explain
from featvis._explain._common import PERTURBATION_BATCH, progress_bar, upsample
from featvis._explain._explanation import Explanation
from featvis._explain._registry import get_method
from featvis._explain._targets import parse_targets
from featvis._images import Images
from featvis._threads import with_one_blas_thread

__all__ = ["evaluate"]

#: ``fn(backend, images, targets) -> maps``: a method featvis can run again (on noisy copies,
#: for another class, on a randomized model). ``images`` is the prepared ``(N, C, H, W)``
#: batch, ``targets`` the ``(N,)`` classes; it returns ``(N, H, W)`` maps.
MapFn = Callable[[Any, np.ndarray, np.ndarray], np.ndarray]
MethodSpec = str | Mapping[str, Any] | Explanation | np.ndarray | MapFn


@dataclass
class _Entry:
    """One method to evaluate: its maps, and how to make them again (None: a fixed array)."""

    name: str
    maps: np.ndarray
    again: MapFn | None
    class_discriminative: bool = True


def _explainer(name: str, layer: Any, seed: int, batch_size: int | None, **options: Any) -> MapFn:
    spec = get_method(name)

    def run(backend: Any, batch: np.ndarray, targets: np.ndarray) -> np.ndarray:
        target = [int(t) for t in targets] if spec.class_discriminative else None
        kwargs = {"seed": seed, **options}
        where = layer if spec.uses_layer else None
        e = explain(
            backend,
            batch,
            method=spec.name,
            layer=where,
            target=target,
            batch_size=batch_size,
            progress=False,
            **kwargs,
        )
        return e.maps

    return run


def _at_size(maps: np.ndarray, n: int, size: tuple[int, int], name: str) -> np.ndarray:
    array = np.asarray(maps, np.float32)
    if array.ndim != 3 or len(array) != n:
        raise ArgumentError(
            f"The maps of {name!r} have shape {array.shape}; evaluate needs one map per image, "
            f"shape ({n}, H, W)."
        )
    if not np.isfinite(array).all():
        raise ArgumentError(f"The maps of {name!r} hold NaN or infinite values.")
    h, w = array.shape[1:]
    scale_y, scale_x = size[0] / h, size[1] / w
    # a coarser grid (a layer's, an occlusion grid) is resized to the input; one of another
    # shape (transposed, larger, another aspect ratio by more than a cell's rounding) would be
    # stretched into a map of something else
    if h > size[0] or w > size[1] or abs(scale_y - scale_x) > max(scale_y, scale_x) / min(h, w):
        raise ArgumentError(
            f"The maps of {name!r} are {h}x{w}, which is not the input's {size[0]}x{size[1]} "
            "or a coarser grid of the same shape; give maps of the images as the model saw "
            "them (featvis.prepare_images), or at a layer's grid."
        )
    return upsample(array, size)


def _entries(
    methods: Sequence[str] | Mapping[str, MethodSpec],
    backend: Any,
    batch: np.ndarray,
    targets: np.ndarray,
    layer: Any,
    seed: int,
    batch_size: int | None,
) -> list[_Entry]:
    items: list[tuple[str, MethodSpec]]
    if isinstance(methods, str):
        items = [(methods, methods)]
    elif isinstance(methods, Mapping):
        items = [(str(k), v) for k, v in methods.items()]
    else:
        items = [(str(v), str(v)) for v in methods]
    if not items:
        raise ArgumentError("evaluate needs at least one method.")
    size = (batch.shape[2], batch.shape[3])
    entries = []
    for name, spec in items:
        if isinstance(spec, (str, Mapping)):
            options = {"method": spec} if isinstance(spec, str) else dict(spec)
            method = options.pop("method", name)
            own_layer = options.pop("layer", layer)  # a row's own layer= wins over evaluate's
            if isinstance(spec, Mapping) and "layer" in spec and not get_method(method).uses_layer:
                raise ArgumentError(
                    f'Row {name!r}: method {method!r} uses no layer; leave "layer" out.'
                )
            run = _explainer(method, own_layer, seed, batch_size, **options)
            discriminative = get_method(method).class_discriminative
            entries.append(_Entry(name, run(backend, batch, targets), run, discriminative))
        elif isinstance(spec, Explanation):
            asked = spec.targets
            if len(spec) != len(batch):
                raise ArgumentError(
                    f"The explanation {name!r} has {len(spec)} maps for {len(batch)} images."
                )
            if ((asked >= 0) & (asked != targets)).any() or spec.contrast is not None:
                raise ArgumentError(
                    f"The explanation {name!r} explains other classes than the ones evaluated "
                    "(the predicted class, or target=); explain the same targets."
                )
            options = dict(spec.options)
            run = _explainer(spec.method, spec.layer, seed, batch_size, **options)
            discriminative = get_method(spec.method).class_discriminative
            entries.append(
                _Entry(name, _at_size(spec.maps, len(batch), size, name), run, discriminative)
            )
        elif isinstance(spec, np.ndarray):
            entries.append(_Entry(name, _at_size(spec, len(batch), size, name), None))
        elif callable(spec):
            fn: MapFn = spec
            maps = _at_size(fn(backend, batch, targets), len(batch), size, name)

            def again(
                b: Any, x: np.ndarray, t: np.ndarray, fn: MapFn = fn, name: str = name
            ) -> np.ndarray:
                return _at_size(fn(b, x, t), len(x), size, name)

            entries.append(_Entry(name, maps, again))
        else:
            raise ArgumentError(
                f"Method {name!r}: give a method name, a dict of explain() arguments, an "
                f"Explanation, an (N, H, W) array or a function; got {type(spec).__name__}."
            )
    return entries


def _metric_names(metrics: Sequence[str] | str | None, backend: Any) -> tuple[list[str], list[str]]:
    notes = []
    if metrics is None:
        chosen = list(METRICS)
        if not isinstance(backend, Randomizable):
            chosen.remove("sanity")
            notes.append(
                f"sanity was left out: the {getattr(backend, 'name', '?')!r} backend cannot "
                "randomize its weights (featvis.Randomizable; torch and ONNX can)."
            )
        return chosen, notes
    chosen = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [x for x in chosen if x not in METRICS]
    if unknown or not chosen:
        raise ArgumentError(
            f"Unknown metric(s) {', '.join(map(repr, unknown))}; the metrics: {', '.join(METRICS)}."
        )
    if "sanity" in chosen:
        require(
            backend,
            Randomizable,
            needed_for="the sanity metric",
            works="every other metric: " + ", ".join(x for x in METRICS if x != "sanity"),
        )
    return list(dict.fromkeys(chosen)), notes


@with_one_blas_thread
def evaluate(
    backend: Any,
    images: Images,
    methods: Sequence[str] | Mapping[str, MethodSpec] = ("gradcam",),
    *,
    metrics: Sequence[str] | str | None = None,
    target: Any = None,
    layer: Any = None,
    steps: int = 20,
    deletion: str = "mean",
    insertion: str = "blur",
    sigma: float = 5.0,
    percentiles: Sequence[float] = (10, 20, 30, 40, 50, 60, 70, 80, 90),
    road_noise: float = 0.01,
    keep: Sequence[float] = (0.05, 0.1, 0.25, 0.5),
    noise: float = 0.05,
    noise_samples: int = 5,
    randomize: int = 1,
    seed: int = 0,
    batch_size: int | None = PERTURBATION_BATCH,
    progress: bool | None = None,
) -> Evaluation:
    """Score how faithful, stable and model-dependent each method's maps are.

    Every metric's protocol is in :data:`featvis.Evaluation` ``METRICS`` and docs/evaluation.md;
    in short (the score is the target class's probability, the target the predicted class):

    - ``deletion`` (low is good), ``insertion`` (high): the area under the score while the
      map's most salient pixels are removed (replaced by the ``deletion`` substrate) or
      revealed (over the ``insertion`` substrate) in ``steps`` steps (Petsiuk et al., 2018).
    - ``road`` (high): ROAD combined, LeRF minus MoRF over ``percentiles`` with noisy linear
      imputation, halved (Rong et al., 2022; pytorch-grad-cam's ``ROADCombined``).
    - ``drop`` (low), ``increase`` (high): the confidence change when the image is multiplied
      by its map scaled to [0, 1] (Grad-CAM++'s average drop and increase in confidence).
    - ``prediction`` (high): how often the class is still predicted from the top ``keep``
      fraction of the map alone (the rest the ``insertion`` substrate), averaged over ``keep``.
    - ``second_class`` (low): Spearman correlation of the map with the map of the image's
      second most probable class (a map that is the same for every class explains nothing).
    - ``stability`` (low): max-sensitivity (Yeh et al., 2019), the largest relative L2 change
      of the map over ``noise_samples`` copies of the image with Gaussian noise of standard
      deviation ``noise`` times the image's value range.
    - ``sanity`` (low): Spearman correlation of the map with the map of a copy of the model
      whose top ``randomize`` weighted layers are re-drawn (Adebayo et al., 2018; needs
      :class:`featvis.Randomizable`).

    Parameters
    ----------
    backend : Scorer backend, or a model :func:`featvis.load` accepts
    images : image, list of images, or ndarray of shape (N, C, H, W)
    methods : list of str, or dict of name to method
        Names of :func:`featvis.list_methods` (explained with their defaults), or a dict from a
        row name to: a method name; a dict of :func:`featvis.explain` arguments
        (``{"method": "gradcam", "noise": 0.1}``; a ``"layer"`` there is that row's layer, so
        one method can be compared at two layers); an :class:`Explanation` of these images; an
        ``(N, H, W)`` array of maps made by any tool (resized bilinearly to the input size
        when needed; it is fixed, so ``stability`` and ``second_class`` are NaN for it and
        ``sanity`` is 1: it does not depend on the model); or a function
        ``fn(backend, images, targets) -> maps`` that featvis can run again.
    metrics : list of str, optional
        Default: all of them (``sanity`` only where the backend is Randomizable).
    target : optional
        The classes to evaluate, as :func:`featvis.explain` takes them (no contrasts).
        Default: the predicted class of each image.
    layer : str, optional
        The layer of the CAM methods (default: :func:`featvis.default_layer`).
    steps : int
        Steps of deletion and insertion (``steps + 1`` forwards each per image).
    deletion, insertion : {"mean", "blur", "zeros"}
        What replaces removed pixels (see :data:`featvis._evaluate._metrics.SUBSTRATES`).
    sigma : float
        The blur's standard deviation in pixels (RISE: 5).
    percentiles, road_noise
        ROAD's removal percentiles and imputation noise (pytorch-grad-cam's defaults).
    keep : sequence of float
        Fractions of the map kept for ``prediction``.
    noise, noise_samples
        ``stability``'s noise and number of noisy copies.
    randomize : int
        Weighted layers re-drawn for ``sanity``, from the top; the cascade 1..randomize is
        kept in the curves.
    seed : int
        Seeds every random choice (ROAD's noise, the noisy copies, the re-drawn weights, RISE).
    batch_size : int, optional
        Images per forward pass (2, the fastest batch on a CPU here; pass more on a GPU).
    progress : bool, optional
        A progress bar; by default only when stderr is a terminal.

    Returns
    -------
    Evaluation

    Examples
    --------
    >>> import numpy as np, featvis
    >>> from featvis.testing import tiny_cnn
    >>> backend = tiny_cnn(differentiable=True)
    >>> images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    >>> ev = featvis.evaluate(backend, list(images), ["gradcam", "eigencam"],
    ...                       metrics=["deletion", "insertion"], steps=8)
    >>> sorted(ev["gradcam"])
    ['deletion', 'insertion']
    >>> ev.curves["gradcam"]["deletion"].shape
    (2, 9)
    """
    from featvis.plugins import load

    backend = load(backend)
    scorer = require(backend, Scorer, needed_for="featvis.evaluate")
    chosen, notes = _metric_names(metrics, backend)
    for name, kind in (("deletion", deletion), ("insertion", insertion)):
        if kind not in m.SUBSTRATES:
            raise ArgumentError(
                f"{name}={kind!r} is not a substrate; choose one of {', '.join(m.SUBSTRATES)}."
            )
    if not isinstance(steps, int) or steps < 1:
        raise ArgumentError(f"steps must be a positive integer, got {steps!r}.")
    if not keep or any(not 0 < q <= 1 for q in keep):
        raise ArgumentError(f"keep must be fractions in (0, 1], got {keep!r}.")
    if not percentiles or any(not 0 < p < 100 for p in percentiles):
        raise ArgumentError(f"percentiles must lie in (0, 100), got {percentiles!r}.")
    if not isinstance(noise_samples, int) or noise_samples < 1:
        raise ArgumentError(f"noise_samples must be a positive integer, got {noise_samples!r}.")
    if not isinstance(randomize, int) or randomize < 1:
        raise ArgumentError(f"randomize must be a positive integer, got {randomize!r}.")
    batch = _prepared(backend, images)
    n = len(batch)
    clean = m.probability(scorer, batch, batch_size)
    resolved = parse_targets(target, n, backend.categories).resolve(clean)
    if resolved.contrast is not None:
        raise ArgumentError("evaluate scores one class per image; give no contrast (a, b).")
    targets = resolved.classes.astype(np.int64)
    rows = np.arange(n)
    clean_p = clean[rows, targets]
    second = np.argsort(-clean, axis=1, kind="stable")[:, :2]
    seconds = np.where(second[:, 0] == targets, second[:, 1], second[:, 0])

    times: dict[str, dict[str, float]] = {}
    start = time.perf_counter()
    entries = _entries(methods, backend, batch, targets, layer, seed, batch_size)
    explain_time = (time.perf_counter() - start) / len(entries)
    values: dict[str, dict[str, np.ndarray]] = {e.name: {} for e in entries}
    curves: dict[str, dict[str, np.ndarray]] = {e.name: {} for e in entries}
    randomized: dict[int, Backend] = {}
    per_image = {"deletion", "insertion", "road", "prediction", "stability"}
    total = len(entries) * sum(n if x in per_image else 1 for x in chosen)
    with progress_bar(total, progress, "featvis evaluate") as bar:

        def tick(count: int = 1) -> None:
            if bar is not None:
                bar.update(count)

        for entry in entries:
            cost = times.setdefault(entry.name, {"explain": explain_time})
            v, c = values[entry.name], curves[entry.name]
            maps = entry.maps
            clock = time.perf_counter()
            if "deletion" in chosen or "insertion" in chosen:
                parts: dict[str, list[np.ndarray]] = {"deletion": [], "insertion": []}
                for i in rows:
                    got = m.deletion_insertion(
                        scorer,
                        batch[i],
                        maps[i],
                        int(targets[i]),
                        steps=steps,
                        deletion=deletion if "deletion" in chosen else None,
                        insertion=insertion if "insertion" in chosen else None,
                        sigma=sigma,
                        batch_size=batch_size,
                    )
                    for key, curve in got.items():
                        parts[key].append(curve)
                    tick()
                for key, found in parts.items():
                    if found:
                        c[key] = np.stack(found).astype(np.float64)
                        v[key] = m._auc(c[key], batch.shape[2] * batch.shape[3])
                cost["deletion+insertion"] = time.perf_counter() - clock
            if "road" in chosen:
                clock = time.perf_counter()
                morf, lerf = [], []
                for i in rows:
                    got = m.road(
                        scorer,
                        batch[i],
                        maps[i],
                        int(targets[i]),
                        percentiles=percentiles,
                        noise=road_noise,
                        rng=np.random.default_rng([seed, int(i)]),
                        batch_size=batch_size,
                    )
                    morf.append(got["morf"])
                    lerf.append(got["lerf"])
                    tick()
                c["road_morf"] = np.stack(morf).astype(np.float64)
                c["road_lerf"] = np.stack(lerf).astype(np.float64)
                v["road"] = (c["road_lerf"] - c["road_morf"]).mean(axis=1) / 2
                cost["road"] = time.perf_counter() - clock
            if "drop" in chosen or "increase" in chosen:
                clock = time.perf_counter()
                drop, increase, _ = m.confidence_change(
                    scorer, batch, maps, targets, clean_p, batch_size=batch_size
                )
                if "drop" in chosen:
                    v["drop"] = drop.astype(np.float64)
                    tick()
                if "increase" in chosen:
                    v["increase"] = increase.astype(np.float64)
                    tick()
                cost["confidence"] = time.perf_counter() - clock
            if "prediction" in chosen:
                clock = time.perf_counter()
                kept = []
                for i in rows:
                    kept.append(
                        m.kept_prediction(
                            scorer,
                            batch[i],
                            maps[i],
                            int(targets[i]),
                            keep=keep,
                            kind=insertion,
                            sigma=sigma,
                            batch_size=batch_size,
                        )
                    )
                    tick()
                c["prediction"] = np.stack(kept).astype(np.float64)
                v["prediction"] = c["prediction"].mean(axis=1)
                cost["prediction"] = time.perf_counter() - clock
            if "second_class" in chosen:
                clock = time.perf_counter()
                if entry.again is None:
                    v["second_class"] = np.full(n, np.nan)
                elif not entry.class_discriminative:
                    v["second_class"] = np.ones(n)
                else:
                    other = entry.again(backend, batch, seconds)
                    v["second_class"] = np.array([m.spearman(maps[i], other[i]) for i in rows])
                tick()
                cost["second_class"] = time.perf_counter() - clock
            if "stability" in chosen:
                clock = time.perf_counter()
                if entry.again is None:
                    v["stability"] = np.full(n, np.nan)
                    tick(n)
                else:
                    noisy = _noisy_copies(batch, noise, noise_samples, seed)
                    moved = entry.again(backend, noisy, np.repeat(targets, noise_samples))
                    moved = moved.reshape(n, noise_samples, *moved.shape[1:])
                    c["stability"] = np.array(
                        [
                            [m.sensitivity(maps[i], moved[i, j]) for j in range(noise_samples)]
                            for i in rows
                        ]
                    )
                    v["stability"] = c["stability"].max(axis=1)
                    tick(n)
                cost["stability"] = time.perf_counter() - clock
            if "sanity" in chosen:
                clock = time.perf_counter()
                cascade = []
                for k in range(1, randomize + 1):
                    if entry.again is None:
                        cascade.append(np.ones(n))
                        continue
                    if k not in randomized:
                        randomizer = require(backend, Randomizable, needed_for="sanity")
                        randomized[k] = randomizer.randomized(k, seed=seed)
                    other = entry.again(randomized[k], batch, targets)
                    cascade.append(np.array([m.spearman(maps[i], other[i]) for i in rows]))
                c["sanity"] = np.stack(cascade, axis=1)
                v["sanity"] = c["sanity"][:, -1]
                tick()
                cost["sanity"] = time.perf_counter() - clock
    settings = {
        "steps": steps,
        "deletion": deletion,
        "insertion": insertion,
        "sigma": sigma,
        "percentiles": tuple(percentiles),
        "road_noise": road_noise,
        "keep": tuple(keep),
        "noise": noise,
        "noise_samples": noise_samples,
        "randomize": randomize,
        "seed": seed,
    }
    return Evaluation(
        methods=[e.name for e in entries],
        metrics=chosen,
        values=values,
        curves=curves,
        maps={e.name: e.maps for e in entries},
        targets=targets,
        scores=clean_p.astype(np.float32),
        images=_display(batch, backend.preprocess),
        categories=backend.categories,
        settings=settings,
        notes=notes,
        times=times,
    )


def _noisy_copies(batch: np.ndarray, noise: float, samples: int, seed: int) -> np.ndarray:
    """``samples`` copies of each image plus seeded Gaussian noise of standard deviation
    ``noise`` times the image's value range, ``(N * samples, C, H, W)``, image-major."""
    rng = np.random.default_rng([seed, 7])
    spread = batch.max(axis=(1, 2, 3)) - batch.min(axis=(1, 2, 3))
    copies = np.repeat(batch, samples, axis=0)
    sigma = np.repeat(noise * spread, samples)[:, None, None, None]
    return (copies + rng.standard_normal(copies.shape, np.float32) * sigma).astype(np.float32)
