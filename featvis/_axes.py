"""The one rule that turns any layer output into the ``(N, C, H, W)`` array featvis works in.

Every backend describes each axis of a layer's native tensor by its **role** (what its size
follows), and :func:`place` turns the roles into a :class:`Placement`: which axis is the batch,
which are channels, which are spatial, and how the tensor becomes NCHW. Backends find the roles
their own way, and the rule is the same for all of them, so the same tensor has the same shape
on every backend:

- ``featvis_torch`` runs the model with one image and two, and at two image sizes
  (:func:`featvis._roles.roles_from_traces`), and falls back to what the modules say where it
  cannot run another size;
- ``featvis_onnx`` follows every axis through the graph, operator by operator, from the image
  input (its roles are the input's layout: ``N C H W`` or ``N H W C``).

The roles
---------
=======  ==================================================================================
``N``    the batch: its size is the number of images
``H``    follows the image's height (a spatial axis), ``W`` its width
``L``    follows both, the image's area: a flattened grid of positions (a token sequence)
``C``    a feature axis the model says is one (its size comes from weights)
``F``    fixed: its size stays put when the batch and the image size change
``?``    unknown: nothing says what it follows (a model that only runs at one size)
``X``    scrambled: the model mixes this axis with others in a way featvis cannot follow
``Merged``  the batch and another axis in one, ``N*k`` (:class:`Merged`)
=======  ==================================================================================

The rule
--------
1. **The batch.** Exactly one axis follows the batch. A tensor without one is *not a layer*
   (a scale, a shape, a statistic of the whole batch). With several, or a scrambled axis, the
   tensor cannot be placed. A batch merged with one other axis (``N*k`` rows, as a reshape of a
   batch-first tensor makes) is split back into ``N`` and ``k``, in the order the backend saw.
   An axis of unknown role counts as the batch only by convention: axis 0, when its size can
   be the batch's.
2. **Channels and spatial axes.** Every axis that follows the image (``H``, ``W``, ``L``) is
   spatial, in the tensor's own order; every other axis is a channel axis, and several fold into
   one channel axis in their order (``(N, heads, L, d)`` has ``heads * d`` channels). Axes of
   unknown role are resolved first: one becomes the channel axis (the one the model names, else
   the first), the others are spatial. A tensor with no spatial axis at all (``(N, C)``,
   ``(N, C, 1, 1)`` after pooling, ``(N, C, 7, 7)`` after adaptive pooling) has its channel axis
   where the model says (an axis of role ``C``, else the model's hint, else the first) and the
   rest spatial. A tensor with one axis besides the batch is ``(N, C, 1, 1)``.
3. **The shape.** No spatial axis: ``(N, C, 1, 1)``; two: ``(N, C, H, W)``; more: the outer
   ones fold into H, ``(N, C, D*H, W)``. One spatial axis is a sequence ``(N, C, 1, L)``, except
   that a **token grid** becomes ``(N, C, h, w)``: an axis of role ``L`` (or, when nothing is
   known, the middle axis of an ``(N, L, C)`` tensor) whose length is ``h * w``, or ``1 + h * w``
   with a class token first, where ``h x w`` is the grid a patch size cuts the image into
   (:func:`featvis._token_grid.token_grid`). The class token is set aside: it is not part of
   the map.

:func:`as_nchw` is this rule for a tensor whose roles nothing tells: batch first, then channels.

Examples
--------
>>> from featvis._axes import place
>>> nhwc = place((2, 14, 14, 64), ("N", "H", "W", "F"))
>>> nhwc.layout, nhwc.shape((2, 14, 14, 64))
('NHWC', (2, 64, 14, 14))
>>> place((50, 2, 96), ("W", "N", "F")).shape((50, 2, 96))  # an LSTM's (T, N, H)
(2, 96, 1, 50)
>>> place((2, 197, 192), ("N", "L", "F"), image_size=(224, 224)).shape((2, 197, 192))
(2, 192, 14, 14)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featvis._errors import ArgumentError
from featvis._placement import Dim, Placement

__all__ = [
    "SPATIAL",
    "Merged",
    "Placement",
    "Refusal",
    "Role",
    "as_nchw",
    "place",
]

#: Roles of the axes that follow the image.
SPATIAL = frozenset({"H", "W", "L"})


@dataclass(frozen=True)
class Merged:
    """The role of an axis holding the batch and one other axis: ``N * k`` rows.

    Attributes
    ----------
    other : str
        The role of the ``k`` part (``"F"``, ``"H"``, ``"L"``...).
    batch_major : bool or None
        ``True`` when image ``i`` is the ``i``-th block of ``k`` rows (a reshape of a
        batch-first tensor), ``False`` when the rows interleave the images (``k`` outer),
        ``None`` when it cannot be told (the tensor cannot be placed).
    """

    other: str
    batch_major: bool | None


Role = str | Merged


@dataclass(frozen=True)
class Refusal:
    """Why a tensor's axes cannot be placed.

    Attributes
    ----------
    reason : str
        A sentence for people: what is wrong with the tensor.
    layer : bool
        Whether the tensor is still a layer (listed, and refused when asked for); ``False``
        for a tensor that is not a layer at all (it has no batch axis).
    """

    reason: str
    layer: bool


# -- the rule ------------------------------------------------------------------------------


def _letters(rank: int, batch: int, channels: list[int], spatial: list[int], grid: bool) -> str:
    letters = ["C"] * rank
    letters[batch] = "N"
    names = {1: ["L"], 2: ["H", "W"]}.get(len(spatial))
    if names is None:
        names = ["D"] * (len(spatial) - 2) + ["H", "W"]
    for axis, name in zip(spatial, names):
        letters[axis] = name
    return "".join(letters)


def place(
    shape: Sequence[Dim],
    roles: Sequence[Role],
    *,
    image_size: tuple[int, int] | None = None,
    channel_axis: int | None = None,
    batch: int | None = None,
) -> Placement | Refusal:
    """Apply the rule (see the module docstring) to a tensor of ``shape`` whose axes have
    ``roles``.

    Parameters
    ----------
    shape : sequence of int or None
        The native shape, as the backend saw it (``None`` for a size it does not know).
    roles : sequence of str or Merged
        One role per axis.
    image_size : (int, int), optional
        The image's height and width, for token grids.
    channel_axis : int, optional
        The axis the model says holds the channels (a ``Linear``'s last axis, a ``Conv``'s
        axis 1): used only for axes of unknown role and tensors without spatial axes.
    batch : int, optional
        The number of images the shape was seen with, when the backend knows it: the
        convention that makes an unknown axis 0 the batch needs its size to agree.

    Returns
    -------
    Placement or Refusal
    """
    rank = len(shape)
    if rank != len(roles):
        raise ArgumentError(f"{rank} axes but {len(roles)} roles: {tuple(roles)}")
    if rank == 0:
        return Refusal("a scalar, with no batch axis", layer=False)
    roles = list(roles)
    if "X" in roles:
        axes = ", ".join(str(i) for i, r in enumerate(roles) if r == "X")
        return Refusal(
            f"the model reshapes its input in a way that mixes axes featvis cannot follow "
            f"(axis {axes} of a tensor of shape {_shown(shape)})",
            layer=True,
        )
    batches = [i for i, r in enumerate(roles) if r == "N"]
    merged = [i for i, r in enumerate(roles) if isinstance(r, Merged)]
    if len(batches) + len(merged) > 1:
        return Refusal(
            f"several axes of its shape {_shown(shape)} follow the batch "
            f"(axes {', '.join(map(str, batches + merged))})",
            layer=True,
        )
    split: tuple[int, bool] | None = None
    if merged:
        axis = merged[0]
        role = roles[axis]
        assert isinstance(role, Merged)
        if role.batch_major is None:
            return Refusal(
                f"axis {axis} of its shape {_shown(shape)} holds the batch merged with another "
                "axis, in an order featvis cannot tell",
                layer=True,
            )
        split = (axis, role.batch_major)
        parts = ["N", role.other] if role.batch_major else [role.other, "N"]
        roles = [*roles[:axis], *parts, *roles[axis + 1 :]]
        shape = [*shape[:axis], None, None, *shape[axis + 1 :]]
        rank_expanded = rank + 1
        batch_axis = axis if role.batch_major else axis + 1
    else:
        rank_expanded = rank
        if batches:
            batch_axis = batches[0]
        elif roles[0] == "?" and (batch is None or shape[0] in (None, batch)):
            batch_axis = 0  # the convention, where nothing contradicts it
            roles[0] = "N"
        else:
            return Refusal(f"no axis of its shape {_shown(shape)} follows the batch", layer=False)
    rest = [i for i in range(rank_expanded) if i != batch_axis]
    hint = _normalized(channel_axis, rank, split)
    channels, spatial, grid = _split_rest(roles, rest, hint, list(shape))
    order = (batch_axis, *channels, *spatial)
    layout = _letters(rank_expanded, batch_axis, channels, spatial, grid)
    if split is not None:  # show the merged axis as one letter pair, e.g. "(NC)LC"
        axis = split[0]
        layout = f"{layout[:axis]}({layout[axis : axis + 2]}){layout[axis + 2 :]}"
    return Placement(rank, split, order, len(channels), grid, layout, image_size)


def _normalized(axis: int | None, rank: int, split: tuple[int, bool] | None) -> int | None:
    """A native axis index (maybe negative) as an index of the expanded axes."""
    if axis is None or not -rank <= axis < rank:
        return None
    axis %= rank
    if split is not None and axis > split[0]:
        axis += 1
    return axis


def _pick(candidates: list[int], hint: int | None, shape: list[Dim]) -> int:
    """The channel axis among ``candidates``: the model's hint, else the first; an axis of
    size 1 (a pooled one) only when every candidate is."""
    sized = [i for i in candidates if shape[i] != 1] or candidates
    return hint if hint is not None and hint in sized else sized[0]


def _split_rest(
    roles: list[Role], rest: list[int], hint: int | None, shape: list[Dim]
) -> tuple[list[int], list[int], bool]:
    """Step 2 of the rule: (channel axes, spatial axes, token grid)."""
    if len(rest) == 1:
        return rest, [], False  # (N, C): channels, as MATLAB's 'OutputAs', 'channels'
    spatial = [i for i in rest if roles[i] in SPATIAL]
    unknown = [i for i in rest if roles[i] == "?"]
    known_channel = [i for i in rest if roles[i] == "C"]
    chosen: list[int] = []
    if unknown:
        if known_channel:
            spatial += unknown
        else:
            pick = _pick(unknown, hint, shape)
            chosen = [pick]
            spatial += [i for i in unknown if i != pick]
        spatial.sort()
    if not spatial:
        candidates = [i for i in rest if roles[i] in ("C", "F")]
        if known_channel:
            channels = known_channel
        elif chosen:
            channels = chosen
        else:
            channels = [_pick(candidates, hint, shape)] if candidates else []
        spatial = [i for i in rest if i not in channels]
    else:
        channels = [i for i in rest if i not in spatial]
    grid = False
    if len(spatial) == 1:
        axis = spatial[0]
        # Nothing known of it: a token grid only in the transformer's (N, L, C) order, batch
        # first; a (T, N, C) tensor is a recurrent network's sequence.
        batch = min(i for i in range(len(roles)) if i not in rest)
        grid = roles[axis] == "L" or (
            roles[axis] == "?"
            and batch < axis
            and bool(channels)
            and all(c > axis for c in channels)
        )
    return channels, spatial, grid


def _shown(shape: Sequence[Dim]) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


# -- the convention --------------------------------------------------------------------------


def as_nchw(array: np.ndarray) -> np.ndarray:
    """Give an output with a leading batch dimension the NCHW shape featvis works in.

    The rule of :mod:`featvis._axes` for a tensor nothing more is known about: the batch first,
    then the channels. ``(N,)`` becomes ``(N, 1, 1, 1)``; ``(N, C)`` becomes ``(N, C, 1, 1)``
    (as MATLAB's ``'OutputAs','channels'``); ``(N, C, L)`` becomes ``(N, C, 1, L)``;
    ``(N, C, H, W)`` stays; more than four dimensions fold the extra ones into H:
    ``(N, C, D, H, W)`` becomes ``(N, C, D*H, W)``. The result is C-contiguous float32 (a copy
    only when needed).

    Examples
    --------
    >>> import numpy as np
    >>> from featvis import as_nchw
    >>> as_nchw(np.zeros((2, 10))).shape
    (2, 10, 1, 1)
    """
    if array.ndim == 0:
        raise ArgumentError("A layer output needs a batch dimension; got a scalar.")
    roles = ("N", "C", *"H" * (array.ndim - 2))[: array.ndim]
    placement = place(array.shape, roles)
    assert isinstance(placement, Placement)
    return placement.apply(array, array.shape[0])
