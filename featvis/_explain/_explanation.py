"""Explanation: what :func:`featvis.explain` returns, and how it draws itself."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from featvis._errors import ArgumentError
from featvis._images import ImageSource, read_image
from featvis.render import Picture, overlay

__all__ = ["Explanation"]


@dataclass(frozen=True, eq=False)
class Explanation:
    """Class-discriminative maps for a batch of images, one per image.

    Attributes
    ----------
    maps : ndarray, shape (N, H, W), float32
        At the model input's resolution (the preprocessed size), ready for
        :func:`featvis.overlay` (``featvis.overlay(image, e.maps[0])``) and for evaluation.
        Not normalized: maps of one method compare across images and targets.
    raw : ndarray, shape (N, h, w), float32
        At the method's own resolution: the layer's grid for a CAM, the window grid for
        occlusion, the input's for RISE.
    targets : ndarray, shape (N,), int64
        The class explained for each image (-1 for a method that explains no class: EigenCAM).
    scores : ndarray, shape (N,), float32
        The explained score of each unperturbed image: the class's score, or for a contrast
        the difference of the two classes' scores (NaN for EigenCAM).
    method : str
    layer : str, tuple of str, or None
        The backend-native name of the layer explained (None for occlusion and RISE; a tuple
        when the maps of several layers were fused, ``explain(..., layer=[...])``).
    layer_alias : str, tuple, or None
        Its canonical alias (``relu41``), or theirs.
    default_layer : bool
        Whether featvis chose the layer: the last one whose output has a spatial grid.
    contrast : ndarray, shape (N,), int64, or None
        The class each target is explained against (-1 where none), or None if none is.
    categories : list of str or None
        The model's class names, for :meth:`target_names`.
    images : ndarray, shape (N, H, W, 3), uint8, or None
        The images as the model saw them (resized, the normalization undone), for drawing.
    options : dict
        The method's options and the noise settings used, for reports.
    """

    maps: np.ndarray
    raw: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    method: str
    layer: str | tuple[str, ...] | None = None
    layer_alias: str | tuple[str | None, ...] | None = None
    default_layer: bool = False
    contrast: np.ndarray | None = None
    categories: list[str] | None = None
    images: np.ndarray | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, index: int | slice | Sequence[int] | np.ndarray) -> Explanation:
        """The explanation of some of the images, as an :class:`Explanation`."""
        rows = np.arange(len(self))[index]
        rows = np.atleast_1d(rows)
        return dataclasses.replace(
            self,
            maps=self.maps[rows],
            raw=self.raw[rows],
            targets=self.targets[rows],
            scores=self.scores[rows],
            contrast=None if self.contrast is None else self.contrast[rows],
            images=None if self.images is None else self.images[rows],
        )

    def target_names(self) -> list[str]:
        """What each map explains: ``"Egyptian cat"``, ``"Egyptian cat rather than tabby"``,
        or ``"no class"`` (EigenCAM); class indices when the model has no class names."""
        names = []
        for i, t in enumerate(self.targets.tolist()):
            if t < 0:
                names.append("no class")
                continue
            name = _name(t, self.categories)
            other = -1 if self.contrast is None else int(self.contrast[i])
            names.append(
                name if other < 0 else f"{name} rather than {_name(other, self.categories)}"
            )
        return names

    def describe(self, index: int = 0) -> str:
        """One sentence about the map of image ``index``, for a caption."""
        where = ""
        if isinstance(self.layer, tuple):
            where = (
                f" fused over layers {self._fused_layers()} (each scaled to [0, 1], then averaged)"
            )
        elif self.layer is not None:
            alias = f" ({self.layer_alias})" if self.layer_alias else ""
            chosen = ", the last layer with a spatial grid" if self.default_layer else ""
            h, w = self.raw.shape[1:]
            where = f" at layer {self.layer}{alias}{chosen}, {h}x{w}"
        score = float(self.scores[index])
        what = self.target_names()[index]
        value = "" if np.isnan(score) else f" (score {score:.3g})"
        noise = self.options.get("noise")
        smooth = f", averaged over {self.options.get('samples')} noisy copies" if noise else ""
        return f"{self.method} of {what}{value}{where}{smooth}."

    def _fused_layers(self) -> str:
        """``"_relu1 (relu33), _blocks.11._relu0 (relu23)"``: the layers of a fused map."""
        assert isinstance(self.layer, tuple)
        aliases = self.layer_alias if isinstance(self.layer_alias, tuple) else ()
        aliases += (None,) * (len(self.layer) - len(aliases))
        return ", ".join(f"{n} ({a})" if a else n for n, a in zip(self.layer, aliases))

    def __repr__(self) -> str:
        layer = ""
        if isinstance(self.layer, tuple):
            layer = f" fused over layers {self._fused_layers()}"
        elif self.layer is not None:
            layer = f" layer={self.layer!r}" + (
                f" ({self.layer_alias})" if self.layer_alias else ""
            )
            if self.default_layer:
                layer += " [default: the last layer with a spatial grid]"
        names = self.target_names()
        shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        return (
            f"<Explanation {self.method}{layer}: {len(self)} map(s) {self.maps.shape[1]}x"
            f"{self.maps.shape[2]} (raw {self.raw.shape[1]}x{self.raw.shape[2]}); "
            f"targets: {shown}>"
        )

    # -- drawing -------------------------------------------------------------------------------

    def figure(
        self,
        images: Sequence[ImageSource] | None = None,
        *,
        alpha: float = 0.5,
        cmap: str = "jet",
        labels: bool = True,
    ) -> Picture:
        """Each image beside its map laid over it, one row per image.

        Parameters
        ----------
        images : list of images, optional
            The images to draw on (their own size; the map is resized to each). Default: the
            images as the model saw them (:attr:`images`).
        alpha, cmap
            As :func:`featvis.overlay`. Each map is normalized alone (``mat2gray``).
        labels : bool
            Write what each map explains on it.

        Returns
        -------
        Picture
        """
        rows = [np.asarray(p) for p in self._pairs(images, alpha=alpha, cmap=cmap, labels=labels)]
        width = max(row.shape[1] for row in rows)
        padded = [
            np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows
        ]
        return Picture(np.concatenate(padded, axis=0))

    def figures(
        self, images: Sequence[ImageSource] | None = None, *, alpha: float = 0.5, cmap: str = "jet"
    ) -> list[tuple[str, Picture, str]]:
        """``(title, picture, caption)`` per image: what a report section shows (the fields
        of the report's ``Figure``)."""
        pictures = self._pairs(images, alpha=alpha, cmap=cmap, labels=False)
        names = self.target_names()
        return [
            (f"{self.method}: {names[i]}", picture, self.describe(i) + COLOURS)
            for i, picture in enumerate(pictures)
        ]

    def _pairs(
        self, images: Sequence[ImageSource] | None, *, alpha: float, cmap: str, labels: bool
    ) -> list[Picture]:
        if images is None:
            if self.images is None:
                raise ArgumentError("This explanation keeps no images; pass images=[...].")
            sources: list[Any] = list(self.images)
        else:
            many = isinstance(images, (list, tuple)) or (
                isinstance(images, np.ndarray) and images.ndim == 4
            )
            sources = list(images) if many else [images]
            if len(sources) != len(self):
                raise ArgumentError(
                    f"{len(sources)} image(s) given to draw {len(self)} explanation(s)."
                )
        names = self.target_names()
        pictures = []
        for i, source in enumerate(sources):
            rgb = read_image(source)
            heat = np.array(overlay(rgb, self.maps[i], alpha=alpha, cmap=cmap))
            if labels:
                heat = _label(heat, f"{names[i]} ({self.method})")
            pictures.append(Picture(np.concatenate([rgb, heat], axis=1)))
        return pictures

    def _repr_png_(self) -> bytes:
        return self.figure().png()


COLOURS = " Red is where the map is highest; each map is scaled to its own range."


def _name(index: int, categories: list[str] | None) -> str:
    if categories is not None and 0 <= index < len(categories):
        return categories[index]
    return f"class {index}"


def _font(size: int) -> Any:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _label(rgb: np.ndarray, text: str) -> np.ndarray:
    """``text`` in white on a dark band along the top of ``rgb``."""
    image = Image.fromarray(rgb)
    size = max(10, rgb.shape[0] // 18)
    draw = ImageDraw.Draw(image)
    font = _font(size)
    box = draw.textbbox((0, 0), text, font=font)
    band = box[3] - box[1] + size // 2
    draw.rectangle((0, 0, min(rgb.shape[1], box[2] + size), band), fill=(0, 0, 0))
    draw.text((size // 2, size // 4 - box[1]), text, fill=(255, 255, 255), font=font)
    return np.asarray(image)
