"""An ONNX model has no gradients: featvis.maximize says so and names what does work."""

from __future__ import annotations

from pathlib import Path

import pytest

import featvis


def test_maximize_on_onnx_names_what_works(zoo: Path) -> None:
    backend = featvis.load(zoo)
    with pytest.raises(featvis.CapabilityError) as info:
        featvis.maximize(backend, backend.layers()[0].name, [0], steps=1)
    message = str(info.value)
    assert "featvis.maximize needs gradients through the model" in message and "'onnx'" in message
    assert "featvis.survey" in message and "occlusion" in message and "gradcam" not in message
