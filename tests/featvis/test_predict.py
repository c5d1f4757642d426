"""top_predictions: class names and probabilities from the model's last layer."""

import numpy as np
import pytest

import featvis
from featvis.testing import ArrayBackend, Step, tiny_cnn


def test_probabilities_of_a_softmax_layer_are_taken_as_they_are() -> None:
    backend = tiny_cnn()
    backend.categories = [f"c{i}" for i in range(10)]
    image = np.zeros((32, 32, 3), np.uint8)
    probs = backend.activations(image, "prob1")[0, :, 0, 0]
    top = featvis.top_predictions(backend, image, k=3)[0]
    expected = np.argsort(-probs)[:3]
    assert [name for name, _ in top] == [f"c{i}" for i in expected]
    np.testing.assert_allclose([p for _, p in top], probs[expected], rtol=1e-6)


def test_scores_are_turned_into_probabilities() -> None:
    logits = np.log(np.array([0.2, 0.5, 0.3], np.float32))
    backend = ArrayBackend([Step("fc", lambda x: np.tile(logits, (len(x), 1)), "fc")])
    top = featvis.top_predictions(backend, [np.zeros((4, 4)), np.ones((4, 4))], k=2)
    assert len(top) == 2
    assert [name for name, _ in top[0]] == ["1", "2"]  # no class names: indices
    np.testing.assert_allclose([p for _, p in top[1]], [0.5, 0.3], rtol=1e-5)


def test_class_names_must_fit_the_layer() -> None:
    backend = tiny_cnn()
    backend.categories = ["only", "two"]
    with pytest.raises(featvis.ArgumentError, match="has 10 outputs but 2 class names"):
        featvis.top_predictions(backend, np.zeros((32, 32)))
    with pytest.raises(featvis.ArgumentError, match="positive"):
        featvis.top_predictions(backend, np.zeros((32, 32)), k=0)
