"""featvis.explain against its floors and its peers, on EfficientNet-Lite0 at 224 px.

Every ratio compares featvis with a floor measured in the same run on the same backend (see
the issue's table), or a peer with a plain forward pass; the layer is ``_relu1`` (the last
with a spatial grid, 1280 x 7 x 7), the images scikit-image's samples, the target each
image's predicted class. Gradient methods run at batch 1 and 8; the perturbation methods,
whose cost is per image, on one image (their ratio does not depend on the batch). The peers
(pytorch-grad-cam, torch-cam, captum: ``pip install -e '.[bench]'``) each run on their own
copy of the model, as their documentation shows them, with their default options unless a
note says otherwise.

Rows:

- Grad-CAM family: ``explain(method=...)`` against one forward pass with the graph recorded
  and ``torch.autograd.grad`` down to the layer (<= 1.15x); Grad-CAM against a plain forward
  pass (<= 1.25x at batch 1); the peers against a plain forward pass. Grad-CAM fused over
  ``featvis.stage_layers`` (``_relu1``, ``_blocks.11._relu0``, ``_blocks.5._relu0``) against
  one forward pass and one ``torch.autograd.grad`` down to all three (<= 1.15x, as one layer).
- CAM, EigenCAM against a plain forward pass (<= 1.05x, <= 1.10x).
- Score-CAM against batched forward passes of the masked images of the channels that vary
  (<= 1.10x); Ablation-CAM against one forward pass to the layer and the rest of the model
  on the ablated copies, by hand (<= 1.10x); occlusion (14 x 14 windows of 16 px) against
  197 batched forward passes (<= 1.10x); RISE with N masks against N batched forward passes
  of the masked images (<= 1.10x).
- Each gradient-free method on the model's ONNX export against the same method on torch
  (<= 0.7x).
- Peak memory of occlusion at batch 1 and 8, featvis and captum, in child processes.
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import skimage.data
import torch
from harness import Row, compare

import featvis
from featvis._explain._common import PERTURBATION_BATCH, bilinear_matrix
from featvis._explain._occlusion import rise_masks

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket", "cat", "immunohistochemistry",
           "retina", "hubble_deep_field")  # fmt: skip
GRADIENT = ("gradcam", "gradcampp", "xgradcam", "layercam", "hirescam")
BATCH = PERTURBATION_BATCH  # featvis.explain's default for perturbed images


def _images() -> list[np.ndarray]:
    out = []
    for name in SAMPLES:
        image = getattr(skimage.data, name)()
        out.append(image if image.ndim == 3 else np.stack([image] * 3, axis=-1))
    return out


def _long(case: Callable[[], object], reference: Callable[[], object], rounds: int) -> tuple:
    """Median seconds of calls that each take seconds: alternated, no warm-up call (the
    setup already ran every lazy path)."""
    cases, references = [], []
    for _ in range(rounds):
        for fn, times in ((case, cases), (reference, references)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return statistics.median(cases), statistics.median(references)


class Lite0:
    """The model, its backends, the prepared images and their predicted classes."""

    def __init__(self, folder: Path) -> None:
        self.torch = featvis.load_model("efficientnet_lite0")
        self.model = self.torch.model
        self.x = featvis.prepare_images(_images(), self.torch.preprocess)
        self.xt = torch.from_numpy(self.x)
        self.classes = [int(c) for c in self.torch.scores(self.x).argmax(axis=1)]
        self.onnx = featvis.load(self.torch.to_onnx(folder / "lite0.onnx"))
        self.layer = self.model._relu1

    def forward(self, n: int) -> Callable[[], object]:
        x = self.xt[:n]

        def run() -> object:
            with torch.inference_mode():
                return self.model(x)

        return run

    def forward_backward(self, n: int) -> Callable[[], object]:
        """One forward pass recording the graph, and the gradient down to the layer only."""
        x, classes = self.xt[:n], self.classes[:n]

        def run() -> object:
            held: list[torch.Tensor] = []
            handle = self.layer.register_forward_hook(lambda m, i, o: held.append(o))
            try:
                out = self.model(x)
            finally:
                handle.remove()
            return torch.autograd.grad(out[range(n), classes].sum(), held[0])

        return run

    def forward_backward_to(self, n: int, names: list[str]) -> Callable[[], object]:
        """One forward pass recording the graph, and the gradient down to several layers in
        one backward pass (down to the shallowest)."""
        x, classes = self.xt[:n], self.classes[:n]
        modules = [self.model.get_submodule(name) for name in names]

        def run() -> object:
            held: list[torch.Tensor] = []
            handles = [m.register_forward_hook(lambda m, i, o: held.append(o)) for m in modules]
            try:
                out = self.model(x)
            finally:
                for handle in handles:
                    handle.remove()
            return torch.autograd.grad(out[range(n), classes].sum(), held)

        return run

    def explain(self, backend: object, n: int, method: str, **options: object) -> Callable:
        x = self.x[:n]
        classes = None if method == "eigencam" else self.classes[:n]
        return lambda: featvis.explain(backend, x, method=method, target=classes, **options)


def _scorecam_floor(lite: Lite0) -> Callable[[], object]:
    """The forward passes of the masked images of the varying channels (and one zero image)."""
    a = lite.torch.activations(lite.x[:1], "_relu1")[0]
    varying = np.flatnonzero(a.max(axis=(1, 2)) > a.min(axis=(1, 2)))
    ry = torch.from_numpy(bilinear_matrix(7, 224, align_corners=True).astype(np.float32))
    at = torch.from_numpy(a[varying])
    x = lite.xt[0]

    def run() -> object:
        with torch.inference_mode():
            for start in range(0, len(at), BATCH):
                masks = ry @ at[start : start + BATCH] @ ry.T
                low = masks.amin(dim=(1, 2), keepdim=True)
                high = masks.amax(dim=(1, 2), keepdim=True)
                lite.model(x[None] * ((masks - low) / (high - low + 1e-8))[:, None])
            return lite.model(torch.zeros_like(x)[None])

    return run


def _ablation_floor(lite: Lite0) -> Callable[[], object]:
    """A forward pass to the layer, then the rest of Lite0 by hand on the ablated copies."""
    m = lite.model
    x = lite.xt[:1]

    def run() -> object:
        held: list[torch.Tensor] = []

        def stop(module: object, args: object, out: torch.Tensor) -> None:
            held.append(out)
            raise StopIteration

        handle = lite.layer.register_forward_hook(stop)
        try:
            with torch.inference_mode(), contextlib.suppress(StopIteration):
                m(x)
        finally:
            handle.remove()
        with torch.inference_mode():
            a = held[0][0]
            live = torch.nonzero(a.flatten(1).any(dim=1)).flatten()
            copies = a.expand(1 + len(live), *a.shape).clone()
            copies[torch.arange(1, 1 + len(live)), live] = 0
            return m._fc(m._dropout(m._flatten(m._avg_pooling(copies))))

    return run


def _occlusion_floor(lite: Lite0, window: int) -> Callable[[], object]:
    x = lite.xt[0]
    corners = [(t, left) for t in range(0, 224, window) for left in range(0, 224, window)]

    def run() -> object:
        with torch.inference_mode():
            lite.model(x[None])
            for start in range(0, len(corners), BATCH):
                part = corners[start : start + BATCH]
                copies = x.expand(len(part), *x.shape).clone()
                for j, (top, left) in enumerate(part):
                    copies[j, :, top : top + window, left : left + window] = 0
                lite.model(copies)
        return None

    return run


def _rise_floor(lite: Lite0, count: int) -> Callable[[], object]:
    masks = torch.from_numpy(rise_masks(count, (224, 224), cells=7, p=0.5, seed=0))
    x = lite.xt[0]

    def run() -> object:
        with torch.inference_mode():
            for start in range(0, count, BATCH):
                lite.model(x[None] * masks[start : start + BATCH, None])
        return None

    return run


@contextlib.contextmanager
def _peers_available() -> Iterator[bool]:
    try:
        import captum  # noqa: F401
        import pytorch_grad_cam  # noqa: F401
        import torchcam  # noqa: F401
    except ImportError:
        print("  (peers not installed: pip install -e '.[bench]')", file=sys.stderr)
        yield False
    else:
        yield True


def _pgc(lite: Lite0, cls_name: str, n: int, **attrs: object) -> Callable[[], object]:
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    twin = copy.deepcopy(lite.model)
    cam = getattr(pytorch_grad_cam, cls_name)(model=twin, target_layers=[twin._relu1])
    for key, value in attrs.items():
        setattr(cam, key, value)
    x = lite.xt[:n]
    targets = [ClassifierOutputTarget(c) for c in lite.classes[:n]]
    return lambda: cam(input_tensor=x, targets=targets)


def _torchcam(lite: Lite0, cls_name: str, n: int) -> Callable[[], object]:
    from torchcam import methods

    twin = copy.deepcopy(lite.model)
    options = {"fc_layer": "_fc"} if cls_name == "CAM" else {}
    extractor = getattr(methods, cls_name)(twin, target_layer="_relu1", **options)
    x = lite.xt[:n]
    classes = lite.classes[:n]

    def run() -> object:
        if cls_name == "CAM":
            with torch.inference_mode():
                scores = twin(x)
        else:
            scores = twin(x)
        return extractor(class_idx=classes, scores=scores)

    return run


def _captum_gradcam(lite: Lite0, n: int) -> Callable[[], object]:
    from captum.attr import LayerGradCam

    twin = copy.deepcopy(lite.model)
    method = LayerGradCam(twin, twin._relu1)
    x, classes = lite.xt[:n], lite.classes[:n]
    return lambda: method.attribute(x, target=classes)


def _captum_occlusion(lite: Lite0) -> Callable[[], object]:
    from captum.attr import Occlusion

    twin = copy.deepcopy(lite.model)
    method = Occlusion(twin)
    x = lite.xt[:1]

    def run() -> object:
        with torch.no_grad():
            return method.attribute(
                x, sliding_window_shapes=(3, 16, 16), strides=(3, 16, 16), target=lite.classes[0]
            )

    return run


_MEMORY = """
import sys, numpy as np, torch, featvis, skimage.data
from pathlib import Path
def status(key):  # kB, from /proc/self/status
    line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(key))
    return int(line.split()[1])
backend = featvis.load_model("efficientnet_lite0")
n, who = int(sys.argv[1]), sys.argv[2]
image = skimage.data.chelsea()
x = featvis.prepare_images([image] * n, backend.preprocess)
x += np.random.default_rng(0).normal(0, 0.01, x.shape).astype(np.float32)  # n distinct images
backend.scores(x[:1])
Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to what is resident now
before = status("VmRSS:")
if who == "featvis":
    featvis.explain(backend, x, method="occlusion", window=16)
else:
    from captum.attr import Occlusion
    with torch.no_grad():
        Occlusion(backend.model).attribute(torch.from_numpy(x), sliding_window_shapes=(3, 16, 16),
                                           strides=(3, 16, 16), target=0)
print(status("VmHWM:") - before)
"""


def _peak_mb(n: int, who: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY, str(n), who], capture_output=True, text=True, check=True
    )
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def _gradient_rows(lite: Lite0, batches: tuple[int, ...], rounds: int) -> Iterator[Row]:
    for n in batches:
        floor = lite.forward_backward(n)
        for method in GRADIENT:
            case_s, ref_s = compare(lite.explain(lite.torch, n, method), floor, rounds=rounds)
            yield Row("Grad-CAM family", f"{method} b{n}", "fwd+bwd to layer", case_s, ref_s, 1.15)
        plain = lite.forward(n)
        case_s, ref_s = compare(lite.explain(lite.torch, n, "gradcam"), plain, rounds=rounds)
        target = 1.25 if n == 1 else None
        yield Row("Grad-CAM family", f"gradcam b{n}", "plain forward", case_s, ref_s, target)
        stages = [layer.name for layer in featvis.stage_layers(lite.torch)]
        case_s, ref_s = compare(
            lite.explain(lite.torch, n, "gradcam", layer=stages),
            lite.forward_backward_to(n, stages),
            rounds=rounds,
        )
        yield Row(
            "Grad-CAM family", f"gradcam, 3 stages b{n}", "fwd+bwd to the 3", case_s, ref_s, 1.15
        )
        case_s, ref_s = compare(lite.explain(lite.torch, n, "cam"), plain, rounds=rounds)
        yield Row("CAM", f"cam b{n}", "plain forward", case_s, ref_s, 1.05)
        case_s, ref_s = compare(lite.explain(lite.torch, n, "eigencam"), plain, rounds=rounds)
        yield Row("EigenCAM", f"eigencam b{n}", "plain forward", case_s, ref_s, 1.10)


def _gradient_peer_rows(lite: Lite0, batches: tuple[int, ...], rounds: int) -> Iterator[Row]:
    for n in batches:
        peers: list[tuple[str, Callable[..., Callable[[], object]]]] = [
            ("pytorch-grad-cam GradCAM", lambda n=n: _pgc(lite, "GradCAM", n)),
            ("pytorch-grad-cam GradCAMPlusPlus", lambda n=n: _pgc(lite, "GradCAMPlusPlus", n)),
            ("pytorch-grad-cam EigenCAM", lambda n=n: _pgc(lite, "EigenCAM", n)),
            ("torch-cam GradCAM", lambda n=n: _torchcam(lite, "GradCAM", n)),
            ("torch-cam GradCAMpp", lambda n=n: _torchcam(lite, "GradCAMpp", n)),
            ("torch-cam CAM", lambda n=n: _torchcam(lite, "CAM", n)),
            ("captum LayerGradCam", lambda n=n: _captum_gradcam(lite, n)),
        ]
        for label, make in peers:
            case_s, ref_s = compare(make(), lite.forward(n), rounds=rounds)
            yield Row("peers", f"{label} b{n}", "plain forward", case_s, ref_s)


def _perturbation_rows(lite: Lite0, masks: int, rounds: int) -> Iterator[Row]:
    cases = [
        ("Score-CAM", "scorecam", {}, _scorecam_floor(lite), "masked fwds, varying channels"),
        ("Ablation-CAM", "ablationcam", {}, _ablation_floor(lite), "fwd to layer + rest"),
        ("occlusion", "occlusion", {"window": 16}, _occlusion_floor(lite, 16), "197 batched fwds"),
        ("RISE", "rise", {"masks": masks}, _rise_floor(lite, masks), f"{masks} batched fwds"),
    ]
    for group, method, options, floor, what in cases:
        runner = lite.explain(lite.torch, 1, method, **options)
        case_s, ref_s = _long(runner, floor, 5 if method == "ablationcam" else rounds)
        yield Row(group, f"{method} b1 torch", what, case_s, ref_s, 1.10)
    onnx_cases = [("eigencam", {}), ("cam", {}), ("ablationcam", {}), ("scorecam", {}),
                  ("occlusion", {"window": 16}), ("rise", {"masks": masks})]  # fmt: skip
    for method, options in onnx_cases:
        on_onnx = lite.explain(lite.onnx, 1, method, **options)
        on_torch = lite.explain(lite.torch, 1, method, **options)
        if method in ("eigencam", "cam", "ablationcam"):
            case_s, ref_s = compare(on_onnx, on_torch, rounds=7)
        else:
            case_s, ref_s = _long(on_onnx, on_torch, rounds)
        yield Row("ONNX", f"{method} b1 onnx", f"{method} b1 torch", case_s, ref_s, 0.70)


def _perturbation_peer_rows(lite: Lite0, quick: bool) -> Iterator[Row]:
    plain = lite.forward(1)
    peers: list[tuple[str, Callable[[], Callable[[], object]]]] = [
        ("captum Occlusion 14x14", lambda: _captum_occlusion(lite)),
    ]
    if not quick:
        peers += [
            ("pytorch-grad-cam ScoreCAM", lambda: _pgc(lite, "ScoreCAM", 1, batch_size=BATCH)),
            ("pytorch-grad-cam AblationCAM", lambda: _pgc(lite, "AblationCAM", 1)),
        ]
    for label, make in peers:
        peer = make()
        start = time.perf_counter()
        peer()
        peer_s = time.perf_counter() - start
        plain_s = statistics.median(_long(plain, plain, 5))
        yield Row("peers", f"{label} b1", "plain forward", peer_s, plain_s, notes=["one run"])


def _memory_rows() -> Iterator[Row]:
    # Peak memory above the loaded model, in child processes; shown in the "ms" columns as MB.
    # featvis evaluates the windows of one image at a time: flat in the batch.
    one = _peak_mb(1, "featvis")
    eight = _peak_mb(8, "featvis")
    notes = ["MB, not ms"]
    yield Row("memory", "featvis occlusion b8", "featvis occlusion b1", eight / 1e3, one / 1e3,
              notes=notes)  # fmt: skip
    for n, ours in ((1, one), (8, eight)):
        theirs = _peak_mb(n, "captum")
        yield Row("memory", f"captum Occlusion b{n}", f"featvis occlusion b{n}", theirs / 1e3,
                  ours / 1e3, notes=notes)  # fmt: skip


def rows(quick: bool) -> Iterator[Row]:
    folder = Path(tempfile.mkdtemp(prefix="featvis-bench-explain-"))
    with contextlib.redirect_stdout(io.StringIO()):
        lite = Lite0(folder)
    for backend in (lite.torch, lite.onnx):  # every lazy path: sessions, checks, caches
        for method in ("eigencam", "cam", "ablationcam"):
            featvis.explain(backend, lite.x[:1], method=method)
        featvis.explain(backend, lite.x[:1], method="rise", masks=4)
    batches = (1,) if quick else (1, 8)
    rounds = 5 if quick else 15
    yield from _gradient_rows(lite, batches, rounds)
    with _peers_available() as peers:
        if peers:
            yield from _gradient_peer_rows(lite, batches, max(3, rounds // 3))
    yield from _perturbation_rows(lite, 96 if quick else 500, 1 if quick else 2)
    with _peers_available() as peers:
        if peers:
            yield from _perturbation_peer_rows(lite, quick)
            if not quick:
                yield from _memory_rows()
