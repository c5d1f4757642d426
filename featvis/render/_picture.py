"""Picture: what montage, pair and overlay return; it saves, converts and shows itself."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from featvis._errors import ArgumentError

__all__ = ["Picture"]

#: zlib level for PNG. Pillow's default (6) made encoding ~70% of "image in, montage PNG out";
#: level 1 is several times faster for files about 10-30% larger (see docs/performance.md).
PNG_COMPRESS_LEVEL = 1
#: JPEG quality for photographs (and figures that contain one) in reports and the demo.
JPEG_QUALITY = 90


class Picture:
    """An 8-bit RGB picture made by featvis.

    ``numpy.asarray(picture)`` gives an ``(H, W, 3)`` uint8 array; :meth:`to_pil` a PIL image;
    :meth:`save` writes a file; Jupyter shows it inline. A montage is stored as palette indices
    (one byte per pixel) and expanded to RGB only when asked, which keeps it fast to build and to
    save.

    Parameters
    ----------
    pixels : ndarray
        ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint8 indices into ``palette``.
    palette : ndarray, shape (256, 3), uint8, optional
        Required with index pixels.

    Examples
    --------
    >>> import numpy as np
    >>> from featvis.render import Picture
    >>> picture = Picture(np.zeros((2, 3, 3), np.uint8))
    >>> picture.size, np.asarray(picture).shape
    ((2, 3), (2, 3, 3))
    """

    __slots__ = ("_palette", "_pixels", "_rgb")

    def __init__(self, pixels: np.ndarray, palette: np.ndarray | None = None) -> None:
        pixels = np.asarray(pixels)
        if pixels.dtype != np.uint8:
            raise ArgumentError(f"Picture pixels must be uint8, got {pixels.dtype}.")
        if palette is None:
            if pixels.ndim != 3 or pixels.shape[2] != 3:
                raise ArgumentError(f"RGB Picture pixels must be (H, W, 3), got {pixels.shape}.")
        else:
            palette = np.asarray(palette, dtype=np.uint8)
            if pixels.ndim != 2 or palette.shape != (256, 3):
                raise ArgumentError(
                    "A palette Picture needs (H, W) indices and a (256, 3) palette, got "
                    f"{pixels.shape} and {palette.shape}."
                )
        # A read-only view: the picture never writes its pixels, and marking the caller's own
        # array read-only would change what the caller has.
        pixels = pixels.view()
        pixels.flags.writeable = False
        self._pixels = pixels
        self._palette = palette
        self._rgb: np.ndarray | None = None if palette is not None else pixels

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` in pixels."""
        return (int(self._pixels.shape[0]), int(self._pixels.shape[1]))

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(height, width, 3)``, the shape of ``numpy.asarray(picture)``."""
        return (*self.size, 3)

    def rgb(self) -> np.ndarray:
        """The picture as a read-only ``(H, W, 3)`` uint8 array."""
        if self._rgb is None:
            assert self._palette is not None
            rgb = self._palette[self._pixels]
            rgb.flags.writeable = False
            self._rgb = rgb
        return self._rgb

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        rgb = self.rgb()
        if dtype is not None and np.dtype(dtype) != rgb.dtype:
            return rgb.astype(dtype)
        return rgb.copy() if copy else rgb

    def to_pil(self) -> Image.Image:
        """A PIL image: mode ``"P"`` for a palette picture, ``"RGB"`` otherwise."""
        if self._palette is None:
            return Image.fromarray(self._pixels, mode="RGB")
        image = Image.fromarray(self._pixels, mode="P")
        image.putpalette(self._palette.tobytes())
        return image

    def save(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write the picture; the format follows the suffix (``.png``, ``.jpg``, ...).

        PNG files use fast compression (zlib level 1) unless ``compress_level`` is given, JPEG
        files quality 90 unless ``quality`` is.
        ``options`` go to :meth:`PIL.Image.Image.save`. Returns the path.
        """
        path = Path(path)
        image = self.to_pil()
        if path.suffix.lower() == ".png":
            options.setdefault("compress_level", PNG_COMPRESS_LEVEL)
        elif image.mode == "P":
            image = image.convert("RGB")  # JPEG and friends have no palettes
        if path.suffix.lower() in (".jpg", ".jpeg"):
            options.setdefault("quality", JPEG_QUALITY)
        try:
            image.save(path, **options)
        except (KeyError, ValueError) as exc:
            raise ArgumentError(f"Cannot save a picture as {str(path)!r}: {exc}") from None
        return path

    def png(self) -> bytes:
        """The picture as PNG bytes: lossless, for maps and montages."""
        buffer = io.BytesIO()
        self.to_pil().save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
        return buffer.getvalue()

    def jpeg(self, quality: int = JPEG_QUALITY) -> bytes:
        """The picture as JPEG bytes: for photographs, a tenth of their PNG size or less."""
        buffer = io.BytesIO()
        self.to_pil().convert("RGB").save(buffer, format="JPEG", quality=quality)
        return buffer.getvalue()

    def _repr_png_(self) -> bytes:
        return self.png()

    def __repr__(self) -> str:
        height, width = self.size
        kind = "palette" if self._palette is not None else "RGB"
        return f"<featvis.Picture {width}x{height} {kind}>"
