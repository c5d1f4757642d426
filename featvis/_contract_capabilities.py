"""The contract checks of the capabilities (:mod:`featvis._capabilities`), for every backend.

:class:`featvis.testing.BackendContract` inherits them: a backend that has a capability is
checked on it; for one that lacks it, each check instead makes sure that the methods needing
it refuse the backend with a :class:`featvis.CapabilityError` that names the capability and
the methods that do work (what a user of that backend meets).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from featvis._capabilities import Differentiable, Objective, Patchable, Scorer, Summarizing
from featvis._reduce import BatchSummary, summarize

__all__ = ["CapabilityContract"]


#: A method that needs each capability, to check the refusal of a backend that lacks it.
_NEEDED_BY = {"Differentiable": "gradcam", "Patchable": "ablationcam", "Scorer": "scorecam"}


def _need(backend: Any, capability: type, images: Any) -> Any:
    """``backend`` when it has ``capability``; else None, once its refusal is checked."""
    if isinstance(backend, capability):
        return backend
    import pytest

    from featvis import CapabilityError, explain

    method = _NEEDED_BY[capability.__name__]
    with pytest.raises(CapabilityError) as refused:
        explain(backend, images[0], method=method, progress=False)
    message = str(refused.value)
    assert f"featvis.{capability.__name__}" in message and repr(method) in message, message
    if capability is not Scorer:
        assert "use methods" in message, message  # what does work with this backend
    return None


def _class_objective(classes: list[int], k: int) -> Objective:
    return Objective.linear(np.eye(k, dtype=np.float32)[classes])


def _spatial_layer(backend: Any) -> Any:
    """The last layer with a spatial grid (what the CAMs differentiate)."""
    from featvis._explain import default_layer

    return default_layer(backend)


class CapabilityContract:
    """Checks of Scorer, Differentiable and Patchable (see the module docstring)."""

    # -- Scorer ------------------------------------------------------------------------------

    def test_scores_are_one_float32_row_per_image(self, backend: Any, images: Any) -> None:
        scorer = _need(backend, Scorer, images)
        if scorer is None:
            return
        scores = scorer.scores(images)
        assert isinstance(scores, np.ndarray) and scores.dtype == np.float32
        assert scores.ndim == 2 and scores.shape[0] == len(images) and scores.shape[1] >= 1
        assert np.isfinite(scores).all()
        assert scorer.score_kind in ("logits", "probabilities")
        if scorer.score_kind == "probabilities":
            np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-4)
        if scorer.categories is not None:
            assert len(scorer.categories) == scores.shape[1]

    def test_scores_do_not_depend_on_the_batch(self, backend: Any, images: Any) -> None:
        scorer = _need(backend, Scorer, images)
        if scorer is None:
            return
        whole = scorer.scores(images)
        np.testing.assert_allclose(scorer.scores(images, batch_size=1), whole, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(scorer.scores(images[1]), whole[1:2], rtol=1e-4, atol=1e-5)
        np.testing.assert_array_equal(scorer.scores(images), whole)

    def test_scores_leave_the_images_as_they_were(self, backend: Any, images: Any) -> None:
        scorer = _need(backend, Scorer, images)
        if scorer is None:
            return
        before = [np.array(i, copy=True) if isinstance(i, np.ndarray) else None for i in images]
        first = scorer.scores(images)
        first += 1.0  # the caller's to change
        for image, copy in zip(images, before):
            if copy is not None:
                np.testing.assert_array_equal(image, copy)
        assert not np.array_equal(scorer.scores(images), first)

    # -- Differentiable ----------------------------------------------------------------------

    def test_gradients_give_the_scores_and_matching_shapes(self, backend: Any, images: Any) -> None:
        diff = _need(backend, Differentiable, images)
        if diff is None:
            return
        scores = diff.scores(images)
        k = scores.shape[1]
        classes = [i % k for i in range(len(images))]
        layer = _spatial_layer(diff)
        g = diff.gradients(images, [layer.name], _class_objective(classes, k), input=True)
        np.testing.assert_allclose(g.output, scores, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            g.values, scores[np.arange(len(images)), classes], rtol=1e-4, atol=1e-5
        )
        acts = diff.activations(images, layer.name)
        np.testing.assert_allclose(g.activations[layer.name], acts, rtol=1e-4, atol=1e-5)
        assert g.gradients[layer.name].shape == acts.shape
        assert g.gradients[layer.name].dtype == np.float32
        assert g.input is not None and g.input.shape[0] == len(images) and g.input.ndim == 4
        assert np.abs(g.gradients[layer.name]).max() > 0

    def test_the_gradient_of_a_layer_objective_at_that_layer_is_its_weights(
        self, backend: Any, images: Any
    ) -> None:
        diff = _need(backend, Differentiable, images)
        if diff is None:
            return
        layer = _spatial_layer(diff)
        shape = diff.activations(images[:1], layer.name).shape[1:]
        weights = np.random.default_rng(0).normal(size=(1, *shape)).astype(np.float32)
        g = diff.gradients(images, [layer.name], Objective.linear(weights, layer.name))
        np.testing.assert_allclose(
            g.gradients[layer.name],
            np.broadcast_to(weights, g.gradients[layer.name].shape),
            rtol=1e-5,
            atol=1e-6,
        )
        acts = g.activations[layer.name].reshape(len(images), -1).astype(np.float64)
        np.testing.assert_allclose(g.values, acts @ weights.reshape(-1), rtol=1e-4, atol=1e-4)

    def test_the_input_gradient_predicts_the_change_of_the_score(
        self, backend: Any, images: Any
    ) -> None:
        # Central differences on a piecewise-linear network cross a few kinks, so the check is
        # loose (20%) but catches a wrong sign, scale or path; the median of three directions.
        diff = _need(backend, Differentiable, images)
        if diff is None:
            return
        from featvis._images import prepare_images

        batch = prepare_images(images[:1], diff.preprocess)
        k = diff.scores(batch).shape[1]
        c = int(np.argmax(diff.scores(batch)[0]))
        g = diff.gradients(batch, [], _class_objective([c], k), input=True)
        assert g.input is not None
        rng = np.random.default_rng(0)
        errors = []
        for _ in range(3):
            d = rng.normal(size=batch.shape).astype(np.float32)
            eps = 1e-3 * float(np.abs(batch).max() or 1.0) / float(np.abs(d).max())
            plus = diff.scores(batch + eps * d)[0, c]
            minus = diff.scores(batch - eps * d)[0, c]
            numeric = (float(plus) - float(minus)) / (2 * eps)
            analytic = float((g.input.astype(np.float64) * d).sum())
            errors.append(abs(numeric - analytic) / max(abs(analytic), abs(numeric), 1e-6))
        assert sorted(errors)[1] < 0.2, errors

    def test_gradients_do_not_depend_on_the_batch(self, backend: Any, images: Any) -> None:
        diff = _need(backend, Differentiable, images)
        if diff is None:
            return
        k = diff.scores(images[:1]).shape[1]
        layer = _spatial_layer(diff)
        objective = _class_objective([0] * len(images), k)
        whole = diff.gradients(images, [layer.name], objective)
        parts = diff.gradients(images, [layer.name], objective, batch_size=1)
        np.testing.assert_allclose(
            parts.gradients[layer.name], whole.gradients[layer.name], rtol=1e-4, atol=1e-6
        )

    # -- Patchable ---------------------------------------------------------------------------

    def test_patching_a_layer_with_its_own_output_gives_the_scores(
        self, backend: Any, images: Any
    ) -> None:
        patchable = _need(backend, Patchable, images)
        if patchable is None:
            return
        layer = _spatial_layer(patchable)
        acts = patchable.activations(images[0], layer.name)
        scores = patchable.scores(images[0])
        zeros = np.zeros_like(acts)
        patched = patchable.patched_scores(
            images[0], layer.name, np.concatenate([acts, zeros, acts])
        )
        assert patched.shape == (3, scores.shape[1]) and patched.dtype == np.float32
        np.testing.assert_allclose(patched[0], scores[0], rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(patched[2], scores[0], rtol=1e-4, atol=1e-4)
        alone = patchable.patched_scores(images[0], layer.name, zeros, batch_size=1)
        np.testing.assert_allclose(patched[1], alone[0], rtol=1e-4, atol=1e-4)

    def test_patching_with_a_function_of_the_layers_own_output(
        self, backend: Any, images: Any
    ) -> None:
        patchable = _need(backend, Patchable, images)
        if patchable is None:
            return
        layer = _spatial_layer(patchable)
        acts = patchable.activations(images[1], layer.name)
        seen: list[np.ndarray] = []

        def halves(own: np.ndarray) -> np.ndarray:
            seen.append(own)
            return np.concatenate([own, own * np.float32(0.5)])

        called = patchable.patched_scores(images[1], layer.name, halves)
        assert len(seen) == 1, "called once, with the layer's own output"
        np.testing.assert_allclose(seen[0], acts, rtol=1e-4, atol=1e-5)
        given = patchable.patched_scores(images[1], layer.name, halves(acts))
        np.testing.assert_allclose(called, given, rtol=1e-4, atol=1e-4)

    # -- Summarizing -------------------------------------------------------------------------

    def test_summaries_are_numpys_summaries_of_the_activations_bit_for_bit(
        self, backend: Any, images: Any
    ) -> None:
        if not isinstance(backend, Summarizing):
            # The survey then summarizes the activations in numpy: check it sees them all.
            from featvis import survey

            name = [layer for layer in backend.layers() if layer.unavailable is None][-1].name
            acts = backend.activations(images, name)
            stats = survey(
                backend, images, name, k=1, receptive_fields=False, progress=False
            ).stats(name)
            np.testing.assert_array_equal(stats.max, acts.max(axis=(0, 2, 3)))
            np.testing.assert_allclose(stats.mean, acts.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-6)
            return
        summarizing: Any = backend
        layers = [layer for layer in summarizing.layers() if layer.unavailable is None]
        chosen = [layers[0].name, layers[len(layers) // 2].name, layers[-1].name, layers[0].name]
        got = summarizing.summaries(images, chosen)
        acts = summarizing.activations(images, chosen)  # one batch, as summaries runs it
        assert len(got) == len(chosen)
        for name, summary in zip(chosen, got):
            assert isinstance(summary, BatchSummary)
            want = summarize(acts[name])
            assert summary.spatial == want.spatial, name
            for field in ("peak", "where", "sums", "positive", "low"):
                mine, theirs = getattr(summary, field), getattr(want, field)
                assert mine.dtype == theirs.dtype, (name, field, mine.dtype)
                np.testing.assert_array_equal(mine, theirs, err_msg=f"{name}: {field}")
