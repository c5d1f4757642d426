"""A :class:`Placement`: how one layer's native tensor becomes NCHW, once
:func:`featvis._axes.place` has decided where its batch, channel and spatial axes are.

The rule (which axis is which) is in :mod:`featvis._axes`; this module applies its answer, to
numpy arrays (:meth:`Placement.apply`) or, step by step, to a framework's own tensors
(:meth:`Placement.shape`, :meth:`Placement.steps`, :meth:`Placement.native`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from featvis._errors import ArgumentError
from featvis._token_grid import token_grid

__all__ = ["Dim", "Placement"]

#: A dimension: its size, or ``None`` when unknown.
Dim = int | None


@dataclass(frozen=True)
class Placement:
    """Where a tensor's batch, channel and spatial axes are, and how it becomes NCHW.

    A backend builds one per layer from :func:`place` and applies it to every output of that
    layer: :meth:`apply` for numpy arrays, or :meth:`shape` and :meth:`steps` for a framework's
    own tensors (a reshape, a permutation, a slice, then a copy into the NCHW result).

    Attributes
    ----------
    rank : int
        The rank of the native tensor.
    split : tuple of (int, bool) or None
        ``(axis, batch_major)`` when the batch is merged with another axis there: the axis is
        first split into ``(N, k)`` (batch major) or ``(k, N)``; the axes after it shift by one.
    order : tuple of int
        The axes (after the split) in NCHW order: the batch, the channel axes, the spatial axes.
    channels : int
        How many of ``order`` are channel axes (they fold into C).
    grid : bool
        Whether a single spatial axis is a token grid (see :func:`token_grid`).
    layout : str
        The native axes as letters, for people: ``"NCHW"``, ``"NHWC"``, ``"LNC"``...
    image_size : (int, int) or None
        The image size the layers were listed at: the default for token grids.
    """

    rank: int
    split: tuple[int, bool] | None
    order: tuple[int, ...]
    channels: int
    grid: bool
    layout: str
    image_size: tuple[int, int] | None = None

    @property
    def identity(self) -> bool:
        """Whether the native tensor is already NCHW: no reshaping, no permutation."""
        return self.rank == 4 and self.split is None and self.order == (0, 1, 2, 3)

    def steps(
        self, shape: Sequence[int], batch: int, image_size: tuple[int, int] | None = None
    ) -> tuple[tuple[int, ...] | None, tuple[int, ...], int, tuple[int, int, int, int]]:
        """How to turn a native tensor of ``shape`` holding ``batch`` images into NCHW.

        Returns ``(expanded, order, prefix, nchw)``: reshape the tensor to ``expanded`` (or
        leave it when ``None``), permute it by ``order``, drop the first ``prefix`` entries of
        its last axis (a class token), and what remains, in C order, is the ``nchw`` array.

        Raises
        ------
        ArgumentError
            If ``shape`` does not have this placement's rank, or its batch is not ``batch``.
        """
        if len(shape) != self.rank:
            raise ArgumentError(
                f"a tensor of rank {len(shape)} ({tuple(shape)}); it had rank {self.rank} "
                "when the layers were listed"
            )
        expanded: tuple[int, ...] | None = None
        dims = list(shape)
        if self.split is not None:
            axis, batch_major = self.split
            rows = dims[axis]
            if batch <= 0 or rows % batch:
                raise ArgumentError(
                    f"axis {axis} has {rows} rows, not a multiple of the batch of {batch}"
                )
            pair = (batch, rows // batch) if batch_major else (rows // batch, batch)
            dims = [*dims[:axis], *pair, *dims[axis + 1 :]]
            expanded = tuple(dims)
        if dims[self.order[0]] != batch:
            raise ArgumentError(
                f"its batch axis has size {dims[self.order[0]]}, not the batch of {batch}"
            )
        nchw, prefix = _nchw(
            dims, self.order, self.channels, self.grid, image_size or self.image_size
        )
        return expanded, self.order, prefix, nchw  # type: ignore[return-value]

    def shape(
        self,
        shape: Sequence[Dim],
        *,
        batch: int | None = None,
        image_size: tuple[int, int] | None = None,
    ) -> tuple[Dim, Dim, Dim, Dim]:
        """The NCHW shape of a native tensor of ``shape`` (``None`` for unknown sizes); a
        merged batch needs ``batch``, the number of images ``shape`` holds, to be split."""
        dims = list(shape)
        if self.split is not None:
            axis, batch_major = self.split
            rows = dims[axis]
            if batch is None or rows is None or rows % batch:
                pair: tuple[Dim, Dim] = (None, None)
            else:
                pair = (batch, rows // batch) if batch_major else (rows // batch, batch)
            dims = [*dims[:axis], *pair, *dims[axis + 1 :]]
        grid_size = image_size or self.image_size
        return _nchw(dims, self.order, self.channels, self.grid, grid_size)[0]

    def apply(
        self, array: np.ndarray, batch: int, image_size: tuple[int, int] | None = None
    ) -> np.ndarray:
        """``array`` (the native tensor, ``batch`` images) as a new C-contiguous float32
        ``(N, C, H, W)`` array (a copy only when needed)."""
        if self.identity and array.shape[0] == batch:
            return np.ascontiguousarray(array, dtype=np.float32)
        expanded, order, prefix, nchw = self.steps(array.shape, batch, image_size)
        if expanded is not None:
            array = array.reshape(expanded)
        array = array.transpose(order)
        if prefix:
            array = array[..., prefix:]
        return np.ascontiguousarray(array, dtype=np.float32).reshape(nchw)

    def native(
        self,
        rows: np.ndarray,
        shape: Sequence[int],
        image_size: tuple[int, int] | None = None,
        *,
        batch: int = 1,
    ) -> np.ndarray:
        """The inverse of :meth:`apply`: ``rows``, an ``(M, C, H, W)`` array for ``M`` images,
        as the native tensor of ``M`` images, given ``shape``, the layer's native shape for
        ``batch`` images.

        What replaces a layer's output (Ablation-CAM, patched scores) is built in NCHW and
        handed back to the model in its own layout with this.

        Raises
        ------
        ArgumentError
            If ``rows`` is not the NCHW form of this layer's output, or the layer's NCHW form
            drops part of the tensor (a class token), which then cannot be rebuilt.
        """
        expanded, order, prefix, nchw = self.steps(shape, batch, image_size)
        if prefix:
            raise ArgumentError(
                f"the layer's NCHW form leaves out {prefix} entries of its native tensor (a "
                "class token), so a replacement cannot be put back in its place"
            )
        if rows.ndim != 4 or tuple(rows.shape[1:]) != tuple(nchw[1:]):
            raise ArgumentError(
                f"replacements of shape {rows.shape} are not the layer's NCHW form, "
                f"(M, {', '.join(map(str, nchw[1:]))})"
            )
        dims = list(expanded or shape)
        permuted = [len(rows), *(dims[axis] for axis in order[1:])]
        native = rows.reshape(permuted).transpose(np.argsort(order))
        if self.split is not None:
            axis, _ = self.split  # (N, k) or (k, N): merged back as they were split
            merged = native.shape[axis] * native.shape[axis + 1]
            native = native.reshape(*native.shape[:axis], merged, *native.shape[axis + 2 :])
        return np.ascontiguousarray(native)


def _product(dims: Sequence[Dim]) -> Dim:
    total = 1
    for d in dims:
        if d is None:
            return None
        total *= d
    return total


def _nchw(
    dims: Sequence[Dim],
    order: tuple[int, ...],
    channels: int,
    grid: bool,
    image_size: tuple[int, int] | None,
) -> tuple[tuple[Dim, Dim, Dim, Dim], int]:
    """The NCHW shape of the (expanded) native ``dims``, and the tokens set aside."""
    n = dims[order[0]]
    c = _product([dims[i] for i in order[1 : 1 + channels]])
    spatial = [dims[i] for i in order[1 + channels :]]
    if not spatial:
        return (n, c, 1, 1), 0
    if len(spatial) == 1:
        length = spatial[0]
        found = token_grid(length, image_size) if grid and length is not None else None
        if found is None:
            return (n, c, 1, length), 0
        prefix, h, w = found
        return (n, c, h, w), prefix
    if len(spatial) == 2:
        return (n, c, spatial[0], spatial[1]), 0
    return (n, c, _product(spatial[:-1]), spatial[-1]), 0
