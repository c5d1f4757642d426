"""Backend-independent rendering: pure functions over numpy arrays that return new arrays.

Every function takes the activations first and options as keywords, never modifies its input,
and handles constant, NaN and infinite values on purpose.
"""

from featvis.render._colormaps import COLORMAPS, colormap
from featvis.render._gallery import gallery
from featvis.render._montage import default_grid, grid_shape, montage, palette_for
from featvis.render._normalize import (
    TIEBREAK,
    normalize,
    strongest_channel,
    tied_channels,
    top_channels,
)
from featvis.render._pair import overlay, pair, resize
from featvis.render._picture import Picture

__all__ = [
    "COLORMAPS",
    "TIEBREAK",
    "Picture",
    "colormap",
    "default_grid",
    "gallery",
    "grid_shape",
    "montage",
    "normalize",
    "overlay",
    "pair",
    "palette_for",
    "resize",
    "strongest_channel",
    "tied_channels",
    "top_channels",
]
