"""The torch backend's layers, from a trace of the model's calls (``_trace.list_calls``)."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from featvis import Layer
from featvis._axes import Placement
from featvis._layers import CALL_SEPARATOR
from featvis_torch._describe import describe, kind_of
from featvis_torch._trace import Listing

__all__ = ["Site", "layers_from"]


@dataclass(frozen=True)
class Site:
    """Where a layer's output appears: the ``call``-th call (from 1) of ``module``, and how
    that output becomes NCHW."""

    module: nn.Module
    call: int
    placement: Placement


def layers_from(
    listing: Listing, names: dict[nn.Module, str], *, sized: bool
) -> tuple[list[Layer], dict[str, Site], dict[str, str]]:
    """The layers of ``listing`` (one per call of a module that returns one value per image),
    where each one's output appears (by layer name), and why each module that ran is not a
    layer. ``sized``: the backend has a fixed input size, so output shapes are known."""

    def name_of(module: nn.Module, call: int) -> str:
        base = names[module] or type(module).__name__  # a leaf root has the empty name
        return f"{base}{CALL_SEPARATOR}{call}" if listing.counts[module] > 1 else base

    layers = []
    sites: dict[str, Site] = {}
    not_layers: dict[str, str] = {}
    listed: set[tuple[nn.Module, int]] = set()
    for record in listing:
        module, call, placement = record.module, record.call, record.placement
        name = name_of(module, call)
        what = f"Module {name!r} ({type(module).__name__})"
        if record.shape is None:
            not_layers[name] = f"{what} returns no real tensor (None, a number, a complex one)"
            continue
        if placement is None:
            continue
        if not isinstance(placement, Placement) and not placement.layer:
            not_layers[name] = (
                f"{what} returns a tensor of shape {record.shape}, but {placement.reason}: "
                "it does not hold one value per image, so it is not a layer"
            )
            continue
        base = names[module] or type(module).__name__
        own = 0 if call > 1 else sum(p.numel() for p in module.parameters(recurse=False))
        text = describe(module)
        if call > 1 and own == 0 and any(True for _ in module.parameters(recurse=False)):
            text += f" (weights of {base}{CALL_SEPARATOR}1)"
        if isinstance(placement, Placement):
            sites[name] = Site(module, call, placement)
            shape = placement.shape(record.shape, batch=1)
            output_shape = (None, *shape[1:]) if sized else None
            layout, unavailable = placement.layout, None
        else:
            output_shape, layout, unavailable = None, "", placement.reason
        same_as = record.same_as or (None, 0)
        listed.add((module, call))
        layers.append(
            Layer(
                name=name,
                # A module of no known kind that returns its own input, untouched (an
                # empty nn.Sequential), is an identity.
                kind="identity"
                if record.passthrough and kind_of(module) == "other"
                else kind_of(module),
                type=type(module).__name__,
                output_shape=output_shape,
                params=own,
                description=text,
                source=name,
                layout=layout,
                unavailable=unavailable,
                same_as=name_of(*same_as) if same_as in listed else None,
            )
        )
    return layers, sites, not_layers
