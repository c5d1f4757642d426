"""Scores and predictions: the Scorer capability, probabilities, top_predictions, Objective."""

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


def test_scores_are_the_last_step_and_probabilities_sum_to_one() -> None:
    backend = tiny_cnn()
    images = [np.zeros((32, 32, 3), np.uint8), np.full((32, 32, 3), 200, np.uint8)]
    assert isinstance(backend, featvis.Scorer) and backend.score_kind == "probabilities"
    scores = backend.scores(images)
    prob = backend.activations(images, "prob1")[:, :, 0, 0]
    np.testing.assert_array_equal(scores, prob)  # a softmax head: the scores are probabilities
    np.testing.assert_allclose(featvis.probabilities(backend, images), prob, rtol=1e-6)
    np.testing.assert_array_equal(backend.scores(images, batch_size=1), scores)


def test_a_logit_head_gets_a_softmax() -> None:
    steps = tiny_cnn().steps[:-1]  # without the softmax
    backend = ArrayBackend(steps)
    image = np.full((32, 32, 3), 90, np.uint8)
    logits = backend.scores(image).astype(np.float64)
    assert backend.score_kind == "logits"
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(featvis.probabilities(backend, image), expected, rtol=1e-5)


def test_an_output_that_is_not_one_score_per_class_is_refused() -> None:
    backend = ArrayBackend(tiny_cnn().steps[:2])  # ends on a (N, 8, 32, 32) map
    with pytest.raises(featvis.ModelError, match=r"shape \(1, 8, 32, 32\).*\(N, K\)"):
        backend.scores(np.zeros((32, 32, 3), np.uint8))


def test_a_missing_capability_names_what_works() -> None:
    with pytest.raises(featvis.CapabilityError, match="gradients.*'array' backend.*use eigencam"):
        featvis.require(tiny_cnn(), featvis.Differentiable, needed_for="gradcam", works="eigencam")
    assert featvis.require(tiny_cnn(), featvis.Scorer, needed_for="x") is not None
    assert issubclass(featvis.CapabilityError, TypeError)


def test_a_linear_objective_slices_its_weights_per_batch() -> None:
    weights = np.arange(6, dtype=np.float32).reshape(3, 2)
    objective = featvis.Objective.linear(weights)
    output = np.ones((2, 2), np.float32)
    values, cotangent = objective.fn(output, np.array([1, 2]))
    assert values.tolist() == [5.0, 9.0]
    np.testing.assert_array_equal(cotangent, weights[1:])
    with pytest.raises(featvis.ArgumentError, match="do not fit"):
        objective.fn(np.ones((2, 3), np.float32), np.array([0, 1]))
