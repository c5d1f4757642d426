"""TorchBackend: exact, fast activations from any ``torch.nn.Module``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featvis import (
    ArgumentError,
    BackendBase,
    BatchSummary,
    FeatvisError,
    ImageError,
    Layer,
    MissingDependencyError,
    ModelError,
    Preprocess,
    number_layers,
    prepare_images,
)
from featvis._capabilities import Gradients, Objective, ScoreKind, as_scores
from featvis_torch._capture import (
    Capture,
    Extraction,
    Plan,
    StopForward,
    Take,
    first_tensor,
    first_weight,
    lock_for,
)
from featvis_torch._listing import Site, layers_from
from featvis_torch._model_checks import as_device, check_modules, inspectable
from featvis_torch._trace import list_calls

__all__ = ["TorchBackend"]


class TorchBackend(BackendBase):
    """Activations of any ``torch.nn.Module``'s layers, exact and from one stopped forward pass.

    The layers are the leaf modules (modules without children) in the order the forward pass
    runs them, named as ``model.named_modules()`` names them. A module that runs ``k`` times
    per forward pass is ``k`` layers, ``name#1`` ... ``name#k``; its bare name is then an
    error that lists the calls.

    Each requested output is copied at the moment its module returns, so an in-place
    operation that follows (``ReLU(inplace=True)``) cannot change it: AlexNet's ``conv5`` is
    the convolution's output, not the ReLU's. The forward pass stops as soon as the last
    requested layer has run, and that last output, if nothing else holds its memory, is
    returned without a copy since nothing runs after it.

    Outputs become ``(N, C, H, W)`` float32 numpy arrays (any dtype and device -> float32 on
    the CPU) by the rule every backend follows, :mod:`featvis._axes`, applied to the output
    itself or the first tensor of a tuple, list or dict output (depth-first). To know each
    output's axes, listing the layers runs the model three times (one image, one of another
    size, two copies of that; see :mod:`featvis_torch._trace`): the axis that follows the batch
    is the batch, wherever it is (an LSTM's ``(T, N, H)``), the axes that follow the image are
    spatial (an NHWC block's H and W, a token sequence), the others are channels. A model that
    runs at one size only falls back to what its modules say (a ``Linear`` or ``LayerNorm``
    keeps channels last, a convolution at axis 1). Modules with no tensor output, a complex
    one, or one without a batch axis are not layers; an output whose axes cannot be placed is
    a layer with :attr:`Layer.unavailable` set, refused when asked for.

    The model is never changed: extraction runs under ``torch.inference_mode`` with every
    module in eval mode, and afterwards each module's ``training`` flag, the hooks, the
    parameters and buffers are as they were, whatever happened. Extractions from one model
    in several threads are serialized and each gets its own results.

    Parameters
    ----------
    model : torch.nn.Module
        Any module taking one ``(N, C, H, W)`` tensor. A ``torch.compile``'d model is used
        through its original module, a ``DataParallel`` or ``DistributedDataParallel`` one
        through the module it wraps (layer names lose the ``module.`` prefix). TorchScript
        modules cannot be inspected (their submodules do not call Python hooks): pass the
        original ``nn.Module``.
    preprocess : featvis.Preprocess, optional
        How images become input. Default: 224x224, ImageNet mean and std. A 4-D float tensor
        or array given to :meth:`activations` is used as it is.
    device : str or torch.device, optional
        Where the input goes. By default the device of the model's parameters (CPU for a
        model without any). The model is never moved: a ``device`` other than the model's is
        an error, unless the model has no parameters or buffers. From a CUDA device, outputs
        are copied without waiting into page-locked host memory, and the device is
        synchronized once per forward pass (:mod:`featvis_torch._cuda`); a half-precision
        model, or one run under the caller's ``torch.autocast``, gives float32 all the same.

    Examples
    --------
    >>> import torch, featvis
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(inplace=True))
    >>> backend = featvis.load(model, preprocess=featvis.Preprocess(size=(16, 16)))
    >>> for layer in backend.layers():
    ...     print(layer.name, layer.alias, layer.output_shape, layer.description)
    0 conv1 (None, 8, 14, 14) 8 3x3x3 convolutions with stride [1 1] and padding [0 0]
    1 relu1 (None, 8, 14, 14) ReLU
    >>> backend.activations(torch.randn(2, 3, 16, 16), "conv1").shape
    (2, 8, 14, 14)
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        preprocess: Preprocess | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__(preprocess=preprocess)
        self.model = inspectable(model)
        self._device = None if device is None else as_device(device)
        self._where(first_weight(self.model))  # fail now for a wrong device or a meta model
        self._sites: dict[str, Site] = {}
        self._not_layers: dict[str, str] = {}
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._lock = lock_for(self.model)
        self._score_kind: ScoreKind | None = None
        self.provenance.update(torch=torch.__version__, model=type(self.model).__name__)

    def to_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Export the model to an ONNX file that ``featvis.load(path)`` opens with the ONNX
        backend (``torch.onnx.export(model, (x,), path, dynamo=True, optimize=False)`` on zeros
        of the preprocess size, in eval mode; the exporter's console output is silenced).

        ``optimize=False`` keeps one ONNX node per module: BatchNorm is not folded into the
        convolution before it, so the ONNX layers carry the same aliases as this backend's for
        the same values (ONNX Runtime still fuses them when it runs the whole model). The model
        is left as it was, as during an extraction. The file's metadata records this backend's
        preprocessing and class names (``featvis.preprocess``, ``featvis.categories``), which
        the ONNX backend reads, so ``featvis.load(path)`` prepares images as this backend does.
        Returns the file's path.
        """
        for needed in ("onnx", "onnxscript"):  # the dynamo exporter imports them lazily
            if importlib.util.find_spec(needed) is None:
                raise MissingDependencyError(
                    f"Exporting to ONNX needs {needed}: "
                    "pip install -e '.[all]' in a clone of featvis"
                )
        path = Path(path)
        x = self._zeros(1)
        with (
            Extraction(self.model, self._lock, grad="enabled"),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            torch.onnx.export(self.model, (x,), path, dynamo=True, optimize=False)
        _record(path, self.preprocess, self.categories)
        return path

    def randomized(self, layers: int, *, seed: int = 0) -> TorchBackend:
        """A new backend on a deep copy of the model whose ``layers`` weighted layers nearest
        the output (convolutions and linear layers, in the order the forward pass runs them)
        have new weights and biases, uniform in ``+-1/sqrt(fan_in)``, seeded by ``seed``
        (see :class:`featvis.Randomizable`). This backend's model is not changed."""
        from featvis_torch._randomize import randomized_model, weighted_modules

        names = weighted_modules(self.model, [layer.name for layer in self.layers()])
        twin = TorchBackend(
            randomized_model(self.model, names, layers, seed),
            preprocess=self.preprocess,
            device=self._device,
        )
        twin.categories = self.categories
        twin._score_kind = self._score_kind
        return twin

    # -- scores --------------------------------------------------------------------------------

    @property
    def score_kind(self) -> ScoreKind:
        """``"probabilities"`` when the model's last layer is a softmax module, else
        ``"logits"`` (set it yourself for a model that applies a softmax in its forward)."""
        if self._score_kind is None:
            layers = self.layers()
            self._score_kind = "probabilities" if layers and layers[-1].kind == "prob" else "logits"
        return self._score_kind

    @score_kind.setter
    def score_kind(self, value: ScoreKind) -> None:
        if value not in ("logits", "probabilities"):
            raise ArgumentError(f"score_kind must be 'logits' or 'probabilities', not {value!r}.")
        self._score_kind = value

    def scores(self, images: Any, *, batch_size: int | None = None) -> np.ndarray:
        """The model's own output for ``images``, as ``(N, K)`` float32 class scores (the first
        tensor of a tuple or dict output), from a plain forward pass in eval mode."""

        def run(batch: Any) -> np.ndarray:
            with Extraction(self.model, self._lock) as extraction:
                x = self._input(batch, extraction.first)
                out = first_tensor(self.model(x))
            if out is None or out.is_complex():
                raise ModelError(
                    f"The model returns {type(out).__name__}, not a tensor of class scores."
                )
            return as_scores(out.detach().to("cpu", torch.float32).numpy(), len(x), "The model")

        return self._batched(images, run, batch_size)

    # -- gradients -----------------------------------------------------------------------------

    def gradients(
        self,
        images: Any,
        layers: Sequence[str | Layer],
        objective: Objective,
        *,
        input: bool = False,
        batch_size: int | None = None,
    ) -> Gradients:
        """Activations of ``layers`` and the gradients of ``objective`` with respect to them
        (and to the prepared input with ``input=True``): see :class:`featvis.Differentiable`.

        ``torch.autograd.grad`` is used, never ``.backward()``: no parameter's ``.grad`` or
        ``requires_grad`` changes. Without ``input=True`` the part of the model before the
        first layer asked for runs without recording a graph, and the backward pass stops
        there. An in-place operation after a layer (``ReLU(inplace=True)``) changes neither its
        activation nor its gradient. Hooks and training flags are restored as for
        :meth:`activations`, also when the model or the objective raises.

        Examples
        --------
        >>> import numpy as np, torch, featvis
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
        ...                             torch.nn.LazyLinear(2))
        >>> _ = model(torch.zeros(1, 3, 8, 8))  # materialize the lazy layer
        >>> backend = featvis.load(model, preprocess=featvis.Preprocess(size=(8, 8)))
        >>> first = featvis.Objective.linear(np.float32([[1.0, 0.0]]))  # the score of class 0
        >>> g = backend.gradients(np.zeros((8, 8, 3), np.uint8), ["0"], first)
        >>> g.activations["0"].shape, g.gradients["0"].shape, g.output.shape
        ((1, 4, 6, 6), (1, 4, 6, 6), (1, 2))
        """
        from featvis_torch._gradients import differentiate

        return differentiate(self, images, layers, objective, input=input, batch_size=batch_size)

    # -- the survey's reduction -----------------------------------------------------------------

    def summaries(self, images: Any, layers: Sequence[str | Layer]) -> list[BatchSummary]:
        """The survey's per-image numbers of ``layers`` for one batch (see
        :class:`featvis.Summarizing`), computed by torch where the activations are: from a GPU
        only the ``(N, C)`` numbers are copied to the host. Equal, bit for bit, to
        ``featvis._reduce.summarize`` of :meth:`activations`.

        Examples
        --------
        >>> import numpy as np, torch, featvis
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU())
        >>> backend = featvis.load(model, preprocess=featvis.Preprocess(size=(8, 8)))
        >>> images = np.random.default_rng(0).integers(0, 256, (2, 8, 8, 3), np.uint8)
        >>> [s] = backend.summaries(list(images), ["1"])
        >>> s.peak.shape, s.spatial, bool((s.low >= 0).all())
        ((2, 4), (6, 6), True)
        """
        from featvis_torch._reduce import summaries

        return summaries(self, images, layers)

    def patched_scores(
        self,
        image: Any,
        layer: str | Layer,
        activations: Any,
        *,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Scores of one image with ``layer``'s output replaced by each row of
        ``activations`` (see :class:`featvis.Patchable`): a forward hook hands the rest of the
        model the replacements as one batch, so the part before the layer runs once per
        ``batch_size`` rows (all at once by default). A skip connection across the layer is
        checked once to broadcast exactly; if it does not, the image is repeated instead."""
        from featvis_torch._patch import patched_scores

        return patched_scores(self, image, layer, activations, batch_size=batch_size)

    def linear_head(self) -> tuple[np.ndarray, np.ndarray] | None:
        """Weight and bias of the last ``nn.Linear`` that runs, if nothing with parameters runs
        after it (see :class:`featvis.LinearHead`); else None."""
        from featvis_torch._patch import linear_head

        return linear_head(self)

    # -- input ---------------------------------------------------------------------------------

    def _where(self, first: torch.Tensor | None) -> tuple[torch.device, torch.dtype]:
        """The device and floating dtype the model's input must have: the one place that
        decides it, from ``first``, the model's first parameter (else buffer,
        :func:`first_weight`), and the ``device`` asked for."""
        if first is None:
            return self._device or torch.device("cpu"), torch.float32
        if first.is_floating_point():
            dtype = first.dtype
        else:  # an integer first buffer (a counter): the first floating tensor, else float32
            tensors = itertools.chain(self.model.parameters(), self.model.buffers())
            dtype = next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)
        device = first.device
        if device.type == "meta":
            raise ModelError(
                "The model's parameters are on the 'meta' device: they hold no values. "
                "Materialize it first, e.g. model.to_empty(device='cpu') then "
                "model.load_state_dict(...)."
            )
        wanted = self._device
        if wanted is not None and not (
            wanted.type == device.type and wanted.index in (None, device.index)
        ):
            raise ArgumentError(
                f"device={str(wanted)!r} but the model is on {str(device)!r}. featvis never "
                f"moves a model: move it yourself with model.to({str(wanted)!r}) first, or leave "
                "device out to use the model where it is."
            )
        return device, dtype

    def _zeros(self, batch: int) -> torch.Tensor:
        """Zeros of the listing size, where the model's input goes (for exporting)."""
        device, dtype = self._where(first_weight(self.model))
        size = self.preprocess.size or (224, 224)
        return torch.zeros((batch, self.preprocess.channels, *size), device=device, dtype=dtype)

    def _prepare(self, images: Any) -> Any:
        if isinstance(images, torch.Tensor):
            if images.dim() != 4 or not images.is_floating_point():
                raise ImageError(
                    f"A tensor is used as a prepared (N, C, H, W) model input and must be 4-D "
                    f"floating point, got shape {tuple(images.shape)} and {images.dtype}. "
                    "For one image add the batch dimension (x.unsqueeze(0)); for raw pixels "
                    "pass (H, W, C) numpy arrays or PIL images."
                )
            return images
        if isinstance(images, (list, tuple)) and any(isinstance(i, torch.Tensor) for i in images):
            raise ImageError(
                "A list of tensors is not a batch: stack them into one (N, C, H, W) tensor "
                "(torch.stack), or pass (H, W, C) numpy arrays or PIL images."
            )
        return prepare_images(images, self.preprocess)

    def _input(self, batch: Any, first: torch.Tensor | None) -> torch.Tensor:
        """The prepared batch as a tensor on the model's device, in its dtype."""
        device, dtype = self._where(first)
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        if x.dtype != dtype or x.device != device:
            x = x.to(device=device, dtype=dtype, non_blocking=False)
        return x

    # -- layers --------------------------------------------------------------------------------

    def _list_layers(self) -> list[Layer]:
        check_modules(self.model)
        names = {module: name for name, module in self.model.named_modules()}
        leaves = [m for m in names if next(m.children(), None) is None]
        size = self.preprocess.size or (224, 224)
        device, dtype = self._where(first_weight(self.model))
        try:
            listing = list_calls(
                self.model,
                leaves,
                channels=self.preprocess.channels,
                size=size,
                device=device,
                dtype=dtype,
                lock=self._lock,
            )
        except Exception as exc:
            raise ModelError(
                f"Listing the layers runs the model on images of shape "
                f"{(1, self.preprocess.channels, *size)} ({dtype}, {device}), and it raised "
                f"{type(exc).__name__}: {exc}. If the model takes another input size or "
                "channel count, pass preprocess=featvis.Preprocess(size=(H, W), mean=..., "
                "std=...)."
            ) from exc
        layers, sites, not_layers = layers_from(listing, names, sized=bool(self.preprocess.size))
        self._sites = sites  # one assignment: a thread that runs meanwhile sees old or new
        self._not_layers = not_layers
        return number_layers(layers)

    def _why_not_a_layer(self, name: str) -> str | None:
        self._layer_index()
        reason = self._not_layers.get(name)
        if reason is not None:
            return reason
        modules = dict(self.model.named_modules())
        module = modules.get(name)
        if module is None or name == "":
            return None
        inside = [layer.name for layer in self.layers() if layer.name.startswith(name + ".")]
        if not inside:
            return f"Module {name!r} ({type(module).__name__}) did not run when listing"
        shown = ", ".join(inside[:6]) + (f", ... ({len(inside)} in all)" if len(inside) > 6 else "")
        return (
            f"Module {name!r} ({type(module).__name__}) is a container; its layers are its "
            f"leaf modules: {shown}"
        )

    # -- activations ---------------------------------------------------------------------------

    def _run(self, batch: Any, layers: list[Layer]) -> list[np.ndarray | FeatvisError]:
        return self._forward(batch, layers)

    def _forward(self, batch: Any, layers: list[Layer], take: Take | None = None) -> list[Any]:
        """One forward pass, stopped after the last of ``layers`` (distinct), each output taken
        by ``take`` as it comes (by default copied to the host: :class:`Capture`); returns
        when the device has done the work queued for it."""
        plan = self._plan(layers)
        with Extraction(self.model, self._lock) as extraction:
            x = self._input(batch, extraction.first)
            capture = Capture(plan, x.shape[0], (int(x.shape[2]), int(x.shape[3])), take)
            for module in plan.modules:
                extraction.handles.append(module.register_forward_hook(capture))
            with contextlib.suppress(StopForward):  # the stop after the last layer
                self.model(x)
        if capture.remaining:  # some outputs were not taken
            missing = [layer.name for layer, out in zip(layers, capture.results) if out is None]
            raise ModelError(
                f"Layer(s) {', '.join(map(repr, missing))} did not run in this forward pass "
                f"of a ({len(batch)}, ...) input, though they ran when the layers were listed: "
                "the model's control flow depends on its input. Ask for layers that always run."
            )
        capture.wait()  # one synchronization, after the last copy was queued
        return capture.results

    def _plan(self, layers: list[Layer]) -> Plan:
        """What to hook for these layers; built once per distinct request."""
        key = tuple([layer.name for layer in layers])
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:
                self._plans.clear()
            sites = [self._sites[name] for name in key]
            plan = self._plans[key] = Plan(
                [(s.module, s.call, s.placement, layer) for s, layer in zip(sites, layers)]
            )
        return plan


def _record(path: Path, preprocess: Preprocess, categories: list[str] | None) -> None:
    """Write ``preprocess`` and ``categories`` into the ONNX file's metadata (its weights, in
    the file or beside it, are left as they are)."""
    import onnx

    from featvis._metadata import entries

    model = onnx.load(path, load_external_data=False)
    written = entries(preprocess, categories)
    kept = [p for p in model.metadata_props if p.key not in written]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, text in written.items():
        model.metadata_props.add(key=key, value=text)
    onnx.save_model(model, path)
