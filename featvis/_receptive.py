"""Receptive fields measured through the backend: which input pixels each output can depend on.

Framework-free on purpose: the field is found by perturbing the input and watching the layer's
output change, through the backend's own :meth:`~featvis.Backend.activations`, so it is right
for any backend (PyTorch, ONNX, a third party's) and any architecture, padding or dilation.
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from featvis._backend import Backend, LayerKey
from featvis._errors import ArgumentError

__all__ = ["ReceptiveField", "image_box", "receptive_field"]


@dataclass(frozen=True, eq=False)
class ReceptiveField:
    """The input rows and columns that each output row and column of a layer can depend on.

    Attributes
    ----------
    layer : str
        The layer's name.
    input_size : (int, int)
        ``(height, width)`` of the model input the field was measured at.
    rows : ndarray, shape (Ho, 2), int64
        For output row ``y``, the input rows ``rows[y, 0] <= r < rows[y, 1]`` that can change it.
    cols : ndarray, shape (Wo, 2), int64
        The same for output columns.

    Examples
    --------
    >>> import featvis
    >>> from featvis.testing import tiny_cnn
    >>> field = featvis.receptive_field(tiny_cnn(), "conv1")  # a 3x3 convolution, padding 1
    >>> field.box(0, 5), field.box(10, 10)
    ((0, 4, 2, 7), (9, 9, 12, 12))
    """

    layer: str
    input_size: tuple[int, int]
    rows: np.ndarray
    cols: np.ndarray

    @property
    def output_size(self) -> tuple[int, int]:
        """``(Ho, Wo)`` of the layer's output."""
        return (len(self.rows), len(self.cols))

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the field of output position ``(y, x)``, in model
        input pixels, half-open: rows ``top <= r < bottom``, columns ``left <= c < right``."""
        return (
            int(self.rows[y, 0]),
            int(self.cols[x, 0]),
            int(self.rows[y, 1]),
            int(self.cols[x, 1]),
        )

    @property
    def size(self) -> tuple[int, int]:
        """The largest extent of a field, ``(rows, columns)``, clipped to the input."""
        return (
            int((self.rows[:, 1] - self.rows[:, 0]).max()),
            int((self.cols[:, 1] - self.cols[:, 0]).max()),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ReceptiveField):
            return NotImplemented
        return (
            self.layer == other.layer
            and self.input_size == other.input_size
            and np.array_equal(self.rows, other.rows)
            and np.array_equal(self.cols, other.cols)
        )

    def __repr__(self) -> str:
        return (
            f"ReceptiveField({self.layer!r}: {self.output_size[0]}x{self.output_size[1]} "
            f"outputs over a {self.input_size[0]}x{self.input_size[1]} input, fields up to "
            f"{self.size[0]}x{self.size[1]} pixels)"
        )


_cache: weakref.WeakKeyDictionary[Any, dict[tuple[Any, ...], ReceptiveField]] = (
    weakref.WeakKeyDictionary()
)


def receptive_field(
    backend: Backend,
    layer: LayerKey,
    *,
    input_size: tuple[int, int] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
) -> ReceptiveField:
    """Measure which input pixels each output position of ``layer`` can depend on.

    The field of an output position is its theoretical receptive field, clipped to the input:
    every input pixel that can change it, however little, for some input. It is measured, not
    derived from the architecture, so it holds for any backend and any layer type: starting
    from a random input (a random one, so that a ReLU that happens to be off does not hide a
    dependency), whole input rows are replaced by other random values and the output rows that
    change (by any amount, in any channel or column) are recorded; the same for columns. Rows
    spaced further apart than a field (estimated from one row first) are perturbed together in
    one image, so a layer with small fields needs few images; a deep layer needs one image per
    input row and one per column (about 450 forward passes at 224x224: 25 s for
    EfficientNet-Lite0's ``_blocks.8`` on 2 CPU cores). Each batch also
    runs the unperturbed input twice, so that a backend whose results depend on the batch is
    detected and its noise tolerated. Finally, where the layer has an integer stride, the field
    is made the same for every output (the widest seen, clipped to the input): a conv layer's
    field does not depend on where it is, so a dependency hidden at one position still counts.

    The field of position ``(y, x)`` is ``rows[y] x cols[x]`` (exact for convolution, pooling
    and elementwise layers, whose fields are rectangles).

    Results are cached per backend, layer, input size and seed.

    Parameters
    ----------
    backend : Backend
    layer : str or Layer
    input_size : (int, int), optional
        ``(height, width)`` of the model input; default the backend's ``preprocess.size``.
    seed : int
        Seed of the random inputs.
    batch_size : int, optional
        Images per forward pass (default 32).

    Returns
    -------
    ReceptiveField
    """
    size = input_size or backend.preprocess.size
    if size is None:
        raise ArgumentError(
            "The backend's Preprocess has no fixed size; pass input_size=(height, width)."
        )
    height, width = int(size[0]), int(size[1])
    name = backend.layer(layer).name
    key = (name, height, width, seed)
    try:
        cached = _cache.setdefault(backend, {})
    except TypeError:  # a backend that cannot be weakly referenced: no cache
        cached = {}
    if key in cached:
        return cached[key]
    probe = _Probe(backend, name, (backend.preprocess.channels, height, width), seed, batch_size)
    rows = _axis(probe, axis=0)
    cols = _axis(probe, axis=1)
    field = ReceptiveField(name, (height, width), rows, cols)
    cached[key] = field
    return field


class _Probe:
    """Runs perturbed copies of one random input and says which output rows/columns changed."""

    def __init__(
        self,
        backend: Backend,
        layer: str,
        shape: tuple[int, int, int],
        seed: int,
        batch_size: int | None,
    ) -> None:
        self.backend = backend
        self.layer = layer
        self.shape = shape
        self.rng = np.random.default_rng(seed)
        self.base = self.rng.normal(0.0, 1.0, shape).astype(np.float32)
        self.batch = max(3, batch_size or 32)
        first = self._run(np.stack([self.base, self.base]))
        self.output_size = first.shape[2:]

    def _run(self, inputs: np.ndarray) -> np.ndarray:
        out = self.backend.activations(inputs, self.layer, batch_size=len(inputs))
        return np.asarray(out, dtype=np.float32)

    def changed(self, perturbed: list[np.ndarray], axis: int) -> np.ndarray:
        """``(len(perturbed), output size along axis)`` booleans: which output rows (axis 0)
        or columns (axis 1) differ from the unperturbed input's."""
        results = []
        step = self.batch - 2
        for begin in range(0, len(perturbed), step):
            part = perturbed[begin : begin + step]
            out = self._run(np.stack([self.base, *part, self.base]))
            reference = out[0]
            noise = float(np.abs(out[-1] - reference).max())
            tolerance = 4.0 * noise  # 0 when the backend does not depend on the batch
            diff = np.abs(out[1:-1] - reference[None]) > tolerance
            # (n, C, Ho, Wo) -> (n, Ho) or (n, Wo)
            results.append(diff.any(axis=(1, 3) if axis == 0 else (1, 2)))
        return np.concatenate(results)

    def perturbed(self, lines: list[np.ndarray], axis: int) -> list[np.ndarray]:
        """Copies of the base with the input rows (axis 0) or columns (axis 1) given for each
        copy replaced by fresh random values."""
        out = []
        channels, height, width = self.shape
        for chosen in lines:
            x = self.base.copy()
            if axis == 0:
                x[:, chosen, :] = self.rng.normal(0.0, 2.0, (channels, len(chosen), width))
            else:
                x[:, :, chosen] = self.rng.normal(0.0, 2.0, (channels, height, len(chosen)))
            out.append(x)
        return out


def _axis(probe: _Probe, axis: int) -> np.ndarray:
    """``(n_out, 2)`` half-open input intervals along one axis (0: rows, 1: columns)."""
    n_in = probe.shape[1 + axis]
    n_out = int(probe.output_size[axis])
    scale = n_in / n_out
    # One line in the middle tells roughly how far a field reaches.
    middle = probe.changed(probe.perturbed([np.array([n_in // 2])], axis), axis)[0]
    hit = np.flatnonzero(middle)
    reach = (hit.max() - hit.min() + 1) * scale if len(hit) else scale
    margin = 2 * math.ceil(scale) + 2
    # The first guess, then a wider one, then one line per image (always right).
    for spacing in (int(reach + margin), int(2 * reach + margin), n_in):
        if spacing * 2 > n_in:
            spacing = n_in  # no gain from sharing images
        fields = _measure(probe, axis, n_in, n_out, spacing)
        if fields is not None:
            return _uniform(fields, n_in, n_out)
    raise AssertionError("unreachable: one line per image always attributes")


def _measure(probe: _Probe, axis: int, n_in: int, n_out: int, spacing: int) -> np.ndarray | None:
    """Perturb lines ``j, j + spacing, ...`` in image ``j``; ``None`` if the spacing proved too
    small to tell which line changed which output (never for ``spacing == n_in``)."""
    groups = [np.arange(j, n_in, spacing) for j in range(spacing)]
    changed = probe.changed(probe.perturbed(groups, axis), axis)  # (spacing, n_out)
    centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # where an output sits, roughly
    low = np.full(n_out, n_in, np.int64)
    high = np.full(n_out, -1, np.int64)
    for lines, hits in zip(groups, changed):
        outputs = np.flatnonzero(hits)
        if not len(outputs):
            continue
        distance = np.abs(lines[None, :] - centre[outputs, None])  # (outputs, lines)
        nearest = lines[distance.argmin(axis=1)]
        low[outputs] = np.minimum(low[outputs], nearest)
        high[outputs] = np.maximum(high[outputs], nearest)
    seen = high >= 0
    if spacing < n_in and seen.any():
        widest = int((high[seen] - low[seen]).max()) + 1
        off_centre = np.abs(np.stack([low, high]) - centre)[:, seen].max()
        if widest + 2 * math.ceil(n_in / n_out) + 2 > spacing or 2 * off_centre >= spacing:
            return None
    # An output no input line changed (a constant layer) depends on nothing: an empty field.
    low[~seen] = 0
    high[~seen] = -1
    return np.stack([low, high + 1], axis=1)


def _uniform(fields: np.ndarray, n_in: int, n_out: int) -> np.ndarray:
    """Give every output the widest field seen relative to its position, when the layer has an
    integer stride (a convolution's field does not depend on where it is)."""
    if n_in % n_out or n_out < 2:
        return fields
    stride = n_in // n_out
    offsets = np.arange(n_out) * stride
    low, high = fields[:, 0], fields[:, 1]
    nonempty = high > low
    inner_low = nonempty & (low > 0)  # not clipped by the input's first line
    inner_high = nonempty & (high < n_in)
    if not (inner_low.any() and inner_high.any()):
        return fields
    reach_low = int((low - offsets)[inner_low].min())
    reach_high = int((high - offsets)[inner_high].max())
    out = fields.copy()
    out[:, 0] = np.where(nonempty, np.minimum(low, np.clip(offsets + reach_low, 0, n_in)), low)
    out[:, 1] = np.where(nonempty, np.maximum(high, np.clip(offsets + reach_high, 0, n_in)), high)
    return out


def image_box(
    box: tuple[int, int, int, int], image_size: tuple[int, int], input_size: tuple[int, int]
) -> tuple[int, int, int, int]:
    """A box of model input pixels as a box of the image's own pixels.

    :class:`featvis.Preprocess` resizes the whole image to the input size with Pillow's
    bilinear filter (nothing is cropped), so input pixel ``i`` is a weighted mean of the image
    pixels Pillow's filter reaches from it: ``centre = (i + 0.5) * scale``, reaching
    ``max(scale, 1)`` pixels either side (``scale = image / input``). The box returned holds every
    image pixel that reaches an input pixel of ``box``, clipped to the image; with no resizing
    ``box`` is kept as it is along an axis whose size stays.

    Parameters
    ----------
    box : (top, left, bottom, right)
        Half-open, in model input pixels.
    image_size, input_size : (height, width)

    Examples
    --------
    >>> from featvis._receptive import image_box
    >>> image_box((0, 0, 4, 4), (448, 448), (224, 224))
    (0, 0, 9, 9)
    """
    top, left, bottom, right = box
    if bottom <= top or right <= left:
        return (0, 0, 0, 0)
    (h, w), (hi, wi) = image_size, input_size
    t, b = _span(top, bottom, h, hi)
    lf, r = _span(left, right, w, wi)
    return (t, lf, b, r)


def _span(start: int, stop: int, n_image: int, n_input: int) -> tuple[int, int]:
    if n_image == n_input:  # Pillow does not resample an axis whose size stays
        return start, stop
    scale = n_image / n_input
    support = max(scale, 1.0)  # the bilinear filter's reach, as Pillow computes it
    first = int((start + 0.5) * scale - support + 0.5)
    last = int((stop - 1 + 0.5) * scale + support + 0.5)
    return max(first, 0), min(last, n_image)
