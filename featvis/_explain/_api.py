"""featvis.explain(): one call from a backend and images to an :class:`Explanation`."""

from __future__ import annotations

import contextlib
import dataclasses
import weakref
from typing import Any

import numpy as np

from featvis._backend import Backend
from featvis._capabilities import Scorer, require
from featvis._errors import ArgumentError, ModelError
from featvis._explain._common import is_count, upsample
from featvis._explain._explanation import Explanation
from featvis._explain._registry import Method, MethodRequest, MethodResult, get_method, list_methods
from featvis._explain._targets import Resolved, Targets, parse_targets
from featvis._images import Images, Preprocess, prepare_images
from featvis._layers import Layer
from featvis._threads import with_one_blas_thread
from featvis.render import normalize

__all__ = ["default_layer", "explain", "stage_layers"]

_defaults: weakref.WeakKeyDictionary[object, Layer] = weakref.WeakKeyDictionary()


def _grid(shape: tuple[int | None, ...] | None) -> tuple[int, int] | None:
    """The ``(H, W)`` of an NCHW output shape (None: not known from the shape)."""
    if shape is None or len(shape) != 4 or shape[2] is None or shape[3] is None:
        return None
    return int(shape[2]), int(shape[3])


def _blank(backend: Backend) -> np.ndarray:
    """One black image at the model's input size, to run layers whose shape is not known."""
    size = backend.preprocess.size or (224, 224)
    return np.zeros((1, backend.preprocess.channels, *size), np.float32)


def default_layer(backend: Backend) -> Layer:
    """The layer :func:`explain` uses when none is named: the last one, in execution order,
    whose output still has a spatial grid (more than one position), where the classifier's
    evidence is most class-specific and still has a place (EfficientNet-Lite0: ``_relu1``,
    7x7; ResNet: the last block's output).

    Layers whose shape the backend does not know are run once on a blank image to find out.
    """
    try:
        cached = _defaults.get(backend)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    layers = backend.layers()
    found = None
    blank = None
    for layer in reversed(layers):
        grid = _grid(layer.output_shape)
        if grid is None:
            blank = _blank(backend) if blank is None else blank
            grid = _grid(backend.activations(blank, layer).shape)
        if grid is not None and grid[0] * grid[1] > 1:
            found = layer
            break
    if found is None:
        raise ArgumentError(
            "The model has no layer whose output has a spatial grid, so there is nothing for "
            "a class activation map to place. Use a method that needs no layer: occlusion or "
            "rise."
        )
    with contextlib.suppress(TypeError):  # a backend that takes no weak reference
        _defaults[backend] = found
    return found


def stage_layers(backend: Backend, count: int = 3) -> list[Layer]:
    """The last layer of each of the model's last ``count`` grid sizes, deepest first: where
    each stage of the network ends, before the next one halves the grid.

    ``featvis.explain(backend, images, layer=featvis.stage_layers(backend))`` fuses a method's
    maps over them (pytorch-grad-cam's several ``target_layers``): the deepest layer is the
    most class-specific and the coarsest, the earlier ones place the evidence more finely.
    EfficientNet-Lite0: ``_relu1`` (7x7), ``_blocks.11._relu0`` (14x14), ``_blocks.5._relu0``
    (28x28). The first is :func:`default_layer`. Layers whose shape the backend does not know
    are run once, together, on a blank image to find out.

    Raises
    ------
    ArgumentError
        If ``count`` is not a positive integer, or the model has fewer grid sizes.
    """
    if not is_count(count):
        raise ArgumentError(f"count must be a positive integer, got {count!r}.")
    # padding changes the grid without ending a stage (ONNX lists the Pad before each conv)
    layers = [
        layer for layer in backend.layers() if layer.unavailable is None and layer.kind != "pad"
    ]
    grids = {layer.name: _grid(layer.output_shape) for layer in layers}
    unknown = [  # no grid in the listing, but maybe one at run time: run them once, together
        layer.name
        for layer in layers
        if grids[layer.name] is None and len(layer.output_shape or (0, 0, 0, 0)) == 4
    ]
    if unknown:
        outputs = backend.activations(_blank(backend), unknown)
        grids.update((name, _grid(out.shape)) for name, out in outputs.items())
    found: list[Layer] = []
    seen: list[tuple[int, int]] = []
    for layer in reversed(layers):  # the last layer of each grid larger than the ones after it
        grid = grids[layer.name]
        if grid is not None and grid[0] * grid[1] > (seen[-1][0] * seen[-1][1] if seen else 1):
            found.append(layer)
            seen.append(grid)
            if len(found) == count:
                return found
    sizes = ", ".join(f"{h}x{w}" for h, w in seen)
    raise ArgumentError(
        f"The model has {len(found)} grid size(s) ({sizes or 'none'}), fewer than the {count} "
        f"asked; pass count={len(found)} or less."
    )


def _prepared(backend: Backend, images: Images) -> np.ndarray:
    """``images`` as the model's ``(N, C, H, W)`` float32 input (framework-free: a 4-D
    tensor of any framework that converts to numpy is taken as prepared)."""
    if not isinstance(images, np.ndarray) and getattr(images, "ndim", None) == 4:
        detach = getattr(images, "detach", None)
        array = np.asarray(detach().cpu() if callable(detach) else images)
        return np.ascontiguousarray(array, dtype=np.float32)
    if isinstance(images, np.ndarray) and images.ndim == 4 and images.dtype == np.float32:
        return np.ascontiguousarray(images)  # read only, never written
    return prepare_images(images, backend.preprocess)


def _display(batch: np.ndarray, preprocess: Preprocess) -> np.ndarray | None:
    """The prepared batch as ``(N, H, W, 3)`` uint8 pictures (normalization undone)."""
    channels = batch.shape[1]
    if channels != preprocess.channels or channels not in (1, 3):
        return None
    scale = np.asarray(preprocess.std, np.float32)[:, None, None] * 255.0
    offset = np.asarray(preprocess.mean, np.float32)[:, None, None] * 255.0 + 0.5
    values = batch * scale
    values += offset
    planes = np.clip(values, 0, 255, out=values).astype(np.uint8)
    # channels last one plane at a time: a transposed copy of the whole (N, 3, H, W) array
    # cost 2.8x as much (0.42 against 0.15 ms at 224 x 224, a CAM's largest cost after its
    # forward pass)
    n, _, h, w = batch.shape
    pixels = np.empty((n, h, w, 3), np.uint8)
    for c in range(3):
        pixels[..., c] = planes[:, 0 if channels == 1 else c]
    return pixels


def _check_capabilities(backend: Backend, method: Method) -> None:
    for capability in method.needs:
        if not isinstance(backend, capability):
            works = [m.name for m in list_methods() if m.works_with(backend)]
            require(
                backend,
                capability,
                needed_for=f"method {method.name!r}",
                works=("methods " + ", ".join(works)) if works else "",
            )


def _noisy(batch: np.ndarray, noise: float, samples: int, seed: int) -> np.ndarray:
    """``samples`` copies of each image with Gaussian noise of standard deviation ``noise``
    times the image's value range (SmoothGrad's convention), seeded."""
    rng = np.random.default_rng(seed)
    spread = batch.max(axis=(1, 2, 3)) - batch.min(axis=(1, 2, 3))
    copies = np.repeat(batch, samples, axis=0)
    sigma = np.repeat(noise * spread, samples)[:, None, None, None]
    return (copies + rng.standard_normal(copies.shape, np.float32) * sigma).astype(np.float32)


@with_one_blas_thread
def explain(
    backend: Any,
    images: Images,
    *,
    method: str = "gradcam",
    layer: str | Layer | None = None,
    target: Any = None,
    noise: float = 0.0,
    samples: int = 8,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool | None = None,
    **options: Any,
) -> Explanation:
    """Explain what in each image makes the model score a class: a class activation map.

    Parameters
    ----------
    backend : Backend, or a model :func:`featvis.load` accepts
    images : image, list of images, or ndarray of shape (N, C, H, W)
        As for :meth:`featvis.Backend.activations`.
    method : str
        One of :func:`featvis.list_methods`. On any :class:`featvis.Differentiable` backend:
        ``gradcam`` (default), ``gradcampp``, ``xgradcam``, ``layercam``, ``hirescam``. On any
        :class:`featvis.Scorer` backend (ONNX included): ``scorecam``, ``ablationcam`` (also
        :class:`featvis.Patchable`), ``occlusion``, ``rise``, ``eigencam`` (not
        class-discriminative), and ``cam`` (a model ending in global average pooling and one
        fully connected layer, :class:`featvis.LinearHead`).
    layer : str or Layer, or a list of them, optional
        The layer to explain at. Default: the last layer whose output has a spatial grid
        (:func:`default_layer`); the result says which. Occlusion and RISE use no layer.
        A list fuses the method's maps at those layers as pytorch-grad-cam fuses several
        ``target_layers``: each layer's map scaled to [0, 1] and resized to the input, their
        mean scaled to [0, 1] again (``.raw`` is then ``.maps``, ``.layer`` a tuple).
        :func:`stage_layers` gives the last layer of each stage.
    target : optional
        What to explain. ``None``: the class the model predicts for each image. A class index
        or a name from ``backend.categories`` (``"Egyptian cat"``): that class. A tuple of
        two, ``("Egyptian cat", "tabby")``: the difference of their scores, "why this class
        rather than that one". A list of those: one per image.
    noise : float
        SmoothGrad-style stability, for every method: when above 0, the map is the mean of the
        method's maps over ``samples`` copies of each image with Gaussian noise of standard
        deviation ``noise`` times the image's value range (0.1 to 0.2 is usual), for the
        target of the clean image. Costs ``samples`` times as much.
    samples : int
        Noisy copies per image (with ``noise``).
    seed : int
        Seeds the noise and the random masks of RISE: the same seed gives the same map.
    batch_size : int, optional
        Images per pass through the model (gradients: 32; perturbed images: 2, the fastest
        batch on a CPU here; pass more on a GPU). Ablation-CAM's ablated copies of the layer
        are not images: they go through the rest of the model in passes of up to 512 MB.
    progress : bool, optional
        A progress bar for long methods; by default only when stderr is a terminal.
    **options
        The method's own options, e.g. ``window=`` and ``stride=`` for occlusion, ``masks=``
        for RISE, ``channels=`` for Score-CAM (see each method's docstring, and
        docs/explain.md).

    Returns
    -------
    Explanation

    Raises
    ------
    CapabilityError
        The backend lacks what the method needs (an ONNX model has no gradients); the message
        names the methods that do work with it.
    UnknownLayerError, ArgumentError
        Before any work is done, for a bad layer, target, method or option.

    Examples
    --------
    >>> import numpy as np, featvis
    >>> from featvis.testing import tiny_cnn
    >>> backend = tiny_cnn(differentiable=True)
    >>> e = featvis.explain(backend, np.zeros((32, 32, 3), np.uint8))
    >>> e.method, e.layer, e.maps.shape, e.raw.shape
    ('gradcam', 'block.relu', (1, 32, 32), (1, 16, 16))
    >>> featvis.explain(backend, np.zeros((32, 32)), method="occlusion", window=8).raw.shape
    (1, 4, 4)
    """
    from featvis.plugins import load

    backend = load(backend)
    spec = get_method(method)
    unknown = sorted(set(options) - set(spec.options))
    if unknown:
        takes = ", ".join(spec.options) or "none"
        raise ArgumentError(
            f"Method {spec.name!r} takes no option {', '.join(map(repr, unknown))}; its "
            f"options: {takes}."
        )
    _check_capabilities(backend, spec)
    if not isinstance(noise, (int, float)) or noise < 0:
        raise ArgumentError(f"noise must be a number >= 0, got {noise!r}.")
    if not is_count(samples):
        raise ArgumentError(f"samples must be a positive integer, got {samples!r}.")
    if batch_size is not None and not is_count(batch_size):
        raise ArgumentError(f"batch_size must be a positive integer, got {batch_size!r}.")
    fused = isinstance(layer, (list, tuple))
    if isinstance(layer, (list, tuple)):
        chosen: list[Layer | None] = list(_fused_layers(backend, spec, layer))
    elif spec.uses_layer:
        chosen = [backend.layer(layer) if layer is not None else default_layer(backend)]
    elif layer is not None:
        raise ArgumentError(f"Method {spec.name!r} uses no layer; leave layer= out.")
    else:
        chosen = [None]
    if not spec.class_discriminative and target is not None:
        raise ArgumentError(
            f"{spec.name} is not class-discriminative: its map does not depend on a target "
            "class. Leave target= out, or use a class-discriminative method (gradcam, "
            "scorecam, ...)."
        )
    batch = _prepared(backend, images)
    targets = parse_targets(target, len(batch), backend.categories)

    def request(x: np.ndarray, t: Targets, scores: np.ndarray | None) -> MethodRequest:
        return MethodRequest(
            backend, x, chosen[0], t, scores, batch_size, progress, seed, dict(options)
        )

    def run(req: MethodRequest) -> list[MethodResult]:
        return _at_layers(spec, req, chosen)

    if noise > 0:
        results = _smoothed(
            spec, backend, batch, targets, request, run, float(noise), samples, seed
        )
    else:
        results = run(request(batch, targets, None))
    size = batch.shape[2:]
    used = dict(options)
    if noise > 0:
        used.update(noise=float(noise), samples=samples, seed=seed)
    elif spec.name == "rise":
        used.update(seed=seed)
    result = results[0]
    if fused:
        # each map alone to [0, 1], a constant one to 0: pytorch-grad-cam's scale_cam_image
        scaled = [
            upsample(normalize(np.maximum(r.raw, 0.0), scope="channel"), size) for r in results
        ]
        maps = normalize(np.maximum(np.stack(scaled), 0.0).mean(axis=0), scope="channel")
        raw = maps.copy()
    else:
        maps = result.maps if result.maps is not None else upsample(result.raw, size)
        raw = result.raw
    names = [one.name for one in chosen if one is not None]
    aliases = [one.alias for one in chosen if one is not None]
    return Explanation(
        maps=np.ascontiguousarray(maps, np.float32),
        raw=np.ascontiguousarray(raw, np.float32),
        targets=result.targets.classes.astype(np.int64),
        scores=np.asarray(result.scores, np.float32),
        method=spec.name,
        layer=tuple(names) if fused else (names[0] if names else None),
        layer_alias=tuple(aliases) if fused else (aliases[0] if aliases else None),
        default_layer=not fused and bool(names) and layer is None,
        contrast=result.targets.contrast,
        categories=backend.categories,
        images=_display(batch, backend.preprocess),
        options=used,
    )


def _fused_layers(
    backend: Backend, spec: Method, layers: list[Any] | tuple[Any, ...]
) -> list[Layer]:
    """The layers of ``explain(layer=[...])``, checked: a method with layers, each named once."""
    if not spec.uses_layer:
        raise ArgumentError(f"Method {spec.name!r} uses no layer; leave layer= out.")
    if not layers:
        raise ArgumentError(
            "layer= is an empty list; name the layers to fuse (featvis.stage_layers(backend) "
            "gives one per stage), or leave layer= out for the default layer."
        )
    chosen = [backend.layer(one) for one in layers]
    names = [one.name for one in chosen]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ArgumentError(
            f"Layer(s) {', '.join(map(repr, twice))} named more than once (by name or "
            "alias); name each layer once."
        )
    return chosen


def _at_layers(spec: Method, req: MethodRequest, layers: list[Layer | None]) -> list[MethodResult]:
    """The method's result at each layer: one ``run``, the method's own ``run_layers`` (one
    pass for every layer), or one ``run`` per layer with the targets resolved once."""
    if len(layers) == 1:
        return [spec.run(req)]
    if spec.run_layers is not None:
        results = spec.run_layers(req, [one for one in layers if one is not None])
    else:
        if req.scores is None and spec.class_discriminative and isinstance(req.backend, Scorer):
            req = dataclasses.replace(
                req, scores=req.backend.scores(req.batch, batch_size=req.batch_size)
            )
        results = [spec.run(dataclasses.replace(req, layer=one)) for one in layers]
    if len(results) != len(layers):
        raise ModelError(
            f"Method {spec.name!r} returned {len(results)} result(s) for {len(layers)} layers."
        )
    first = results[0].targets.classes
    for one, result in zip(layers[1:], results[1:]):
        if not np.array_equal(result.targets.classes, first):
            raise ModelError(
                f"Method {spec.name!r} explained different classes for the same images at "
                f"layers {layers[0].name!r} and {one.name!r}: the model's output is not "  # type: ignore[union-attr]
                "deterministic, or the method does not explain the targets it is given, so "
                "there is no one class to fuse the maps of. Pass target= explicitly."
            )
    return results


def _smoothed(
    spec: Method,
    backend: Backend,
    batch: np.ndarray,
    targets: Targets,
    request: Any,
    run: Any,
    noise: float,
    samples: int,
    seed: int,
) -> list[MethodResult]:
    """The method (``run``: a request to a result per layer) over noisy copies of each image,
    averaged, for the clean image's target."""
    n = len(batch)
    if spec.class_discriminative:
        scorer = require(backend, Scorer, needed_for="noise=")
        clean_scores = scorer.scores(batch, batch_size=request(batch, targets, None).batch_size)
        clean = targets.resolve(clean_scores)
        contrast = clean.contrast if clean.contrast is not None else np.full(n, -1, np.int64)
        fixed = Targets(clean.classes, contrast)
    else:
        clean, fixed, clean_scores = None, targets, None
    results = run(request(_noisy(batch, noise, samples, seed), fixed.repeat(samples), None))

    def mean(a: np.ndarray) -> np.ndarray:
        return a.reshape(n, samples, *a.shape[1:]).mean(axis=1, dtype=np.float64).astype(np.float32)

    if clean is None:
        clean = Resolved(np.full(n, -1, np.int64), None, np.zeros((n, 0), np.float32))
        values = np.full(n, np.nan, np.float32)
    else:
        assert clean_scores is not None
        values = clean.values(clean_scores)
    return [
        MethodResult(mean(r.raw), clean, values, None if r.maps is None else mean(r.maps))
        for r in results
    ]
