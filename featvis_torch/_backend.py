"""TorchBackend: exact, fast activations from any ``torch.nn.Module``."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import itertools
import os
import sys
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from featvis import (
    ArgumentError,
    BackendBase,
    ImageError,
    Layer,
    LayoutError,
    MissingDependencyError,
    ModelError,
    Preprocess,
    number_layers,
    prepare_images,
)
from featvis._capabilities import Gradients, Objective, ScoreKind, as_scores
from featvis._layers import CALL_SEPARATOR
from featvis_torch._capture import (
    NCL,
    NLC,
    Capture,
    Extraction,
    ModuleTree,
    Plan,
    StopForward,
    all_modules,
    first_tensor,
    first_tensor_of,
    folded_shape,
    lock_for,
    nchw_view,
)
from featvis_torch._describe import describe, is_channels_first_1d, kind_of

__all__ = ["TorchBackend"]


@dataclass(frozen=True)
class _Site:
    """Where a layer's output appears: the ``call``-th call (from 1) of ``module``."""

    module: nn.Module
    call: int
    layout: str


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

    Outputs become ``(N, C, H, W)`` float32 numpy arrays by this rule: the first tensor of a
    tuple, list or dict output (depth-first); ``(N,)`` -> ``(N, 1, 1, 1)``; ``(N, C)`` ->
    ``(N, C, 1, 1)``; 4-D stays (channels_last included); more dimensions fold into H; a 3-D
    output is ``(N, C, L)`` -> ``(N, C, 1, L)`` for 1-d modules (``Conv1d``, ``BatchNorm1d``,
    1-d pooling...) and modules that keep such an input's shape, else a token sequence
    ``(N, L, C)`` -> ``(N, C, 1, L)``; any dtype and device -> float32 on the CPU. Modules
    with no tensor output, or a complex one, are not layers.

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
        an error, unless the model has no parameters or buffers.

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
        self.model = _inspectable(model)
        self._device = None if device is None else _as_device(device)
        self._place(_first_tensor(self.model))  # fail now for a wrong device or a meta model
        self._sites: dict[str, _Site] = {}
        self._plans: dict[tuple[str, ...], Plan] = {}
        self._lock = lock_for(self.model)
        self._tree = ModuleTree(self.model)
        self._score_kind: ScoreKind | None = None
        self.provenance.update(torch=torch.__version__, model=type(self.model).__name__)

    def to_onnx(self, path: str | os.PathLike[str]) -> Path:
        """Export the model to an ONNX file that ``featvis.load(path)`` opens with the ONNX
        backend (``torch.onnx.export(model, (x,), path, dynamo=True, optimize=False)`` on zeros
        of the preprocess size, in eval mode; the exporter's console output is silenced).

        ``optimize=False`` keeps one ONNX node per module: BatchNorm is not folded into the
        convolution before it, so the ONNX layers carry the same aliases as this backend's for
        the same values (ONNX Runtime still fuses them when it runs the whole model). The model
        is left as it was, as during an extraction. Returns the file's path.
        """
        for needed in ("onnx", "onnxscript"):  # the dynamo exporter imports them lazily
            if importlib.util.find_spec(needed) is None:
                raise MissingDependencyError(
                    f"Exporting to ONNX needs {needed}: pip install 'featvis[all]'"
                )
        path = Path(path)
        size = self.preprocess.size or (224, 224)
        device, dtype = self._place(_first_tensor(self.model))
        x = torch.zeros((1, self.preprocess.channels, *size), device=device, dtype=dtype)
        with (
            Extraction(self.model, self._lock, inference=False),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            torch.onnx.export(self.model, (x,), path, dynamo=True, optimize=False)
        return path

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
            with Extraction(self.model, self._lock, tree=self._tree) as extraction:
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

    def _place(self, first: torch.Tensor | None) -> tuple[torch.device, torch.dtype]:
        """The device and floating dtype the model's input must have, from ``first``: the
        model's first parameter (else buffer) found by :func:`first_tensor_of`."""
        if first is None:
            return self._device or torch.device("cpu"), torch.float32
        dtype = first.dtype if first.is_floating_point() else _floating_dtype(self.model)
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
        if (  # the common case, checked first: a tensor already where the model is
            type(batch) is torch.Tensor
            and first is not None
            and self._device is None
            and batch.dtype is first.dtype
            and batch.device == first.device
            and not first.is_meta
        ):
            return batch
        device, dtype = self._place(first)
        x = torch.from_numpy(batch) if isinstance(batch, np.ndarray) else batch
        if x.dtype != dtype or x.device != device:
            x = x.to(device=device, dtype=dtype, non_blocking=False)
        return x

    # -- layers --------------------------------------------------------------------------------

    def _list_layers(self) -> list[Layer]:
        _check_modules(self.model)
        names = {module: name for name, module in self.model.named_modules()}
        leaves = [m for m in names if next(m.children(), None) is None]
        records: list[tuple[nn.Module, int, str, tuple[int, ...] | None]] = []
        calls: dict[nn.Module, int] = {}
        channels_first: dict[int, weakref.ref[torch.Tensor]] = {}
        owner = threading.get_ident()

        def record(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
            if threading.get_ident() != owner:
                return
            call = calls[module] = calls.get(module, 0) + 1
            tensor = first_tensor(output)
            layout = NLC
            if tensor is not None and tensor.dim() == 3:
                # An input that was (N, C, L), passed through with its shape (a ReLU after a
                # Conv1d), keeps its layout.
                source = first_tensor(args)
                ref = channels_first.get(id(source))
                keeps_layout = (
                    ref is not None
                    and source is not None
                    and ref() is source
                    and source.shape == tensor.shape
                )
                if keeps_layout or is_channels_first_1d(module):
                    layout = NCL
                    channels_first[id(tensor)] = weakref.ref(tensor)
            view = nchw_view(tensor, layout)
            shape = folded_shape(tuple(view.shape)) if view is not None else None
            records.append((module, call, layout, shape if shape and shape[0] == 1 else None))

        size = self.preprocess.size or (224, 224)
        device, dtype = self._place(_first_tensor(self.model))
        dummy = torch.zeros((1, self.preprocess.channels, *size), device=device, dtype=dtype)
        with Extraction(self.model, self._lock) as extraction:
            extraction.handles.extend(leaf.register_forward_hook(record) for leaf in leaves)
            try:
                self.model(dummy)
            except Exception as exc:
                raise ModelError(
                    f"Listing the layers runs the model once on zeros of shape "
                    f"{tuple(dummy.shape)} ({dtype}, {device}), and it raised "
                    f"{type(exc).__name__}: {exc}. If the model takes another input size or "
                    "channel count, pass preprocess=featvis.Preprocess(size=(H, W), mean=..., "
                    "std=...)."
                ) from exc
        return number_layers(self._layers_from(records, names, calls))

    def _layers_from(
        self,
        records: list[tuple[nn.Module, int, str, tuple[int, ...] | None]],
        names: dict[nn.Module, str],
        calls: dict[nn.Module, int],
    ) -> list[Layer]:
        layers = []
        sites: dict[str, _Site] = {}
        for module, call, layout, shape in records:
            if shape is None:
                continue
            base = names[module] or type(module).__name__  # a leaf root has the empty name
            name = f"{base}{CALL_SEPARATOR}{call}" if calls[module] > 1 else base
            own = 0 if call > 1 else sum(p.numel() for p in module.parameters(recurse=False))
            text = describe(module)
            if call > 1 and own == 0 and any(True for _ in module.parameters(recurse=False)):
                text += f" (weights of {base}{CALL_SEPARATOR}1)"
            sites[name] = _Site(module, call, layout)
            layers.append(
                Layer(
                    name=name,
                    kind=kind_of(module),
                    type=type(module).__name__,
                    output_shape=(None, *shape[1:]) if self.preprocess.size else None,
                    params=own,
                    description=text,
                    source=name,
                )
            )
        self._sites = sites  # one assignment: a thread that runs meanwhile sees old or new
        return layers

    # -- activations ---------------------------------------------------------------------------

    def _run(self, batch: Any, layers: list[Layer]) -> list[np.ndarray]:
        plan = self._plan(layers)
        capture = self._forward(batch, plan, copy_last=False)
        if not capture.stopped:
            # The model caught our BaseException and carried on, so the last output may have
            # been changed after it was taken: take everything again, copying all of it.
            capture = self._forward(batch, plan, copy_last=True)
        if capture.bad is not None:
            slot, tensor = capture.bad
            raise _layout_error(layers[slot], tensor, len(batch))
        if capture.remaining:  # some outputs were not taken
            missing = [layer.name for layer, out in zip(layers, capture.results) if out is None]
            raise ModelError(
                f"Layer(s) {', '.join(map(repr, missing))} did not run in this forward pass "
                f"of a ({len(batch)}, ...) input, though they ran when the layers were listed: "
                "the model's control flow depends on its input. Ask for layers that always run."
            )
        return capture.results  # type: ignore[return-value]

    def _plan(self, layers: list[Layer]) -> Plan:
        """What to hook for these layers; built once per distinct request."""
        key = tuple([layer.name for layer in layers])
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= 64:
                self._plans.clear()
            sites = [self._sites[name] for name in key]
            plan = self._plans[key] = Plan([(s.module, s.call, s.layout) for s in sites])
        return plan

    def _forward(self, batch: Any, plan: Plan, *, copy_last: bool) -> Capture:
        """One forward pass taking the outputs of ``plan``, stopped after the last one."""
        with Extraction(self.model, self._lock, tree=self._tree) as extraction:
            x = self._input(batch, extraction.first)
            capture = Capture(plan, x.shape[0], copy_last=copy_last)
            for module in plan.modules:
                extraction.handles.append(module.register_forward_hook(capture))
            try:
                self.model(x)
            except StopForward:
                capture.stopped = True
            capture.finish()
        return capture


def _first_tensor(model: nn.Module) -> torch.Tensor | None:
    """The tensor whose device and dtype the input takes (see :func:`first_tensor_of`)."""
    return first_tensor_of(all_modules(model))


def _floating_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the first floating parameter or buffer (float32 if there is none)."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return next((t.dtype for t in tensors if t.is_floating_point()), torch.float32)


def _layout_error(layer: Layer, tensor: torch.Tensor | None, batch: int) -> LayoutError:
    got = (
        f"a tensor of shape {tuple(tensor.shape)} and dtype {tensor.dtype}"
        if tensor is not None
        else "no tensor"
    )
    return LayoutError(
        f"Layer {layer.name!r} returned {got} for a batch of {batch}; featvis needs a real "
        "tensor whose first dimension is the batch (the rule is in TorchBackend's docstring)."
    )


def _as_device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ArgumentError(
            f"device must be a torch device such as 'cpu' or 'cuda:0', got {device!r} ({exc})."
        ) from None


def _is_scripted(module: nn.Module) -> bool:
    return isinstance(module, torch.jit.ScriptModule)


def _compiled_type() -> type | None:
    # Only look if the user has compiled something: importing torch._dynamo is slow.
    eval_frame = sys.modules.get("torch._dynamo.eval_frame")
    return getattr(eval_frame, "OptimizedModule", None)


def _inspectable(model: Any) -> nn.Module:
    """The module to hook: a compiled model's original, a (distributed) data-parallel model's
    wrapped module (whose replicas run in other threads), after checking what ``model`` is."""
    compiled = _compiled_type()
    parallel = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, parallel) or (compiled is not None and isinstance(model, compiled)):
        inner = "module" if isinstance(model, parallel) else "_orig_mod"
        model = getattr(model, inner)
    if _is_scripted(model):
        raise ModelError(
            "This is a TorchScript module: its submodules run as TorchScript and never call "
            "Python forward hooks, so featvis cannot see their outputs. Pass the original "
            "torch.nn.Module instead, e.g. build the model's class again and "
            "model.load_state_dict(scripted.state_dict())."
        )
    if not isinstance(model, nn.Module):
        raise ModelError(f"TorchBackend takes a torch.nn.Module, not {type(model).__name__}.")
    return model


def _check_modules(model: nn.Module) -> None:
    """Refuse submodules whose inside hooks cannot see, and unmaterialized lazy modules."""
    compiled = _compiled_type()
    lazy = nn.modules.lazy.LazyModuleMixin
    for name, module in model.named_modules():
        if _is_scripted(module) or (compiled is not None and isinstance(module, compiled)):
            how = "TorchScript" if _is_scripted(module) else "torch.compile'd"
            raise ModelError(
                f"Submodule {name!r} is {how}: the modules inside it do not call Python hooks "
                "in a way featvis can rely on. Use the original nn.Module for it (for "
                "torch.compile, its ._orig_mod) when you build the model for featvis."
            )
        if isinstance(module, lazy) and module.has_uninitialized_params():  # type: ignore[misc]
            raise ModelError(
                f"Submodule {name!r} ({type(module).__name__}) has not been initialized yet. "
                "Run the model once on a real input (model(x)) before inspecting it; featvis "
                "does not change the model's parameters."
            )
