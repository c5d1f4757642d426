"""featvis.evaluate: how faithful, stable and model-dependent an explanation is.

Framework-free numpy over :class:`featvis.Scorer` (every metric) and
:class:`featvis.Randomizable` (the sanity check), so the metrics run on every backend that
scores classes: PyTorch, ONNX and third-party ones.
"""

from featvis._evaluate._api import evaluate
from featvis._evaluate._evaluation import METRICS, Evaluation

__all__ = ["METRICS", "Evaluation", "evaluate"]
