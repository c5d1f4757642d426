"""Feature visualization by optimization: :func:`featvis.maximize` on any
:class:`featvis.Differentiable` backend, in plain numpy over the capability protocol."""

from featvis._maximize._api import maximize
from featvis._maximize._objectives import OBJECTIVES
from featvis._maximize._result import Maximization
from featvis._maximize._section import maximize_section
from featvis._maximize._transforms import Transforms

__all__ = ["OBJECTIVES", "Maximization", "Transforms", "maximize", "maximize_section"]
