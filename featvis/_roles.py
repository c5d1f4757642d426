"""The roles of a tensor's axes (:mod:`featvis._axes`) from its shapes in runs of the model:
how a backend that can run its model at other batch and image sizes finds them
(``featvis_torch``; ``featvis_onnx`` follows the graph instead)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from featvis._axes import Merged, Role
from featvis._token_grid import token_grid

__all__ = ["roles_from_traces"]


def roles_from_traces(
    shape: Sequence[int],
    *,
    image_size: tuple[int, int],
    resized: Sequence[int] | None = None,
    resized_image: tuple[int, int] | None = None,
    widened: Sequence[int] | None = None,
    one: Sequence[int] | None = None,
    two: Sequence[int] | None = None,
    batch_major: Sequence[bool | None] | None = None,
) -> tuple[Role, ...]:
    """The roles of a tensor's axes from its shapes in runs of the model.

    ``shape`` is the tensor's shape for one image of ``image_size``; ``resized`` for one image
    of ``resized_image``; ``widened``, when ``resized`` failed, for one image of another width
    only (a model of a fixed height, as an OCR model is); ``one`` and ``two`` for one image and
    for two copies of it at the same size (either size). A run that failed (a model that takes
    one size or one image only) is ``None``.

    An axis is ``N`` when its size doubles from 1 with the second image; :class:`Merged` when
    it doubles from more than 1 (``batch_major`` says per axis how the images are ordered
    there); spatial when the image size changes it: ``L`` when it is a token grid of both
    images (:func:`token_grid`), else ``H``; ``F`` when the image size leaves it; ``?`` when
    the run that would tell failed; ``X`` when it changes with the batch, but not as a batch.

    Examples
    --------
    >>> from featvis._roles import roles_from_traces
    >>> roles_from_traces((56, 1, 96), image_size=(224, 224), resized=(28, 1, 96),
    ...                   resized_image=(112, 112), one=(28, 1, 96), two=(28, 2, 96))
    ('H', 'N', 'F')
    """
    rank = len(shape)

    def usable(run: Sequence[int] | None) -> Sequence[int] | None:
        return run if run is not None and len(run) == rank else None

    resized, widened = usable(resized), usable(widened)
    one, two = usable(one), usable(two)
    batch = one is not None and two is not None
    roles: list[Role] = []
    for axis, size in enumerate(shape):
        growth = "?"
        if resized is not None and resized_image is not None:
            other = resized[axis]
            if other == size:
                growth = "F"
            elif _grids(size, image_size, other, resized_image):
                growth = "L"
            else:
                growth = "H"
        elif widened is not None:
            # only the width changed: what stayed may still follow the height
            growth = "H" if widened[axis] != size else "?"
        if not batch:
            roles.append("?" if size == 1 else growth)  # a size-1 axis may be the batch
            continue
        assert one is not None and two is not None
        if two[axis] == 2 * one[axis]:
            if one[axis] == 1:
                roles.append("N")
            else:
                major = None if batch_major is None else batch_major[axis]
                roles.append(Merged(growth, major))
        elif two[axis] == one[axis]:
            roles.append(growth)
        else:
            roles.append("X")  # changes with the batch, but not as a batch does
    return tuple(roles)


def _grids(size: int, image: tuple[int, int], other: int, other_image: tuple[int, int]) -> bool:
    """Whether an axis is a token grid of both images, with the same class token and grids
    that scale with the images (so a sequence that merely has square lengths is not one)."""
    first, second = token_grid(size, image), token_grid(other, other_image)
    if first is None or second is None or first[0] != second[0]:
        return False
    for grid, grid_other, length, length_other in (
        (first[1], second[1], image[0], other_image[0]),
        (first[2], second[2], image[1], other_image[1]),
    ):
        expected = grid * length_other / length
        if not math.floor(expected) - 1 <= grid_other <= math.ceil(expected) + 1:
            return False
    return True
