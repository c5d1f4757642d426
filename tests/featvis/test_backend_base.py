"""BackendBase through ArrayBackend: the contract suite, exact capture, batching, errors."""

import numpy as np
import pytest

import featvis
from featvis.testing import ArrayBackend, BackendContract, Step, tiny_cnn


class TestArrayBackendContract(BackendContract):
    @pytest.fixture
    def backend(self) -> ArrayBackend:
        return tiny_cnn(seed=1)

    @pytest.fixture
    def images(self) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        return [
            rng.integers(0, 256, (32, 32, 3), np.uint8),
            rng.integers(0, 256, (40, 24, 3), np.uint8),
        ]


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (32, 32, 3), np.uint8)


def test_a_conv_followed_by_an_in_place_relu_keeps_its_own_output(image: np.ndarray) -> None:
    backend = tiny_cnn()
    outs = backend.activations(image, ["conv1", "relu1"])
    assert (outs["conv1"] < 0).any(), "the conv output has negatives the in-place ReLU removes"
    np.testing.assert_array_equal(outs["relu1"], np.maximum(outs["conv1"], 0))


def test_the_chain_stops_after_the_last_layer_asked_for(image: np.ndarray) -> None:
    armed = False

    def explode(x: np.ndarray) -> np.ndarray:
        if armed:
            raise AssertionError("ran a layer after the last one asked for")
        return x

    backend = ArrayBackend([Step("double", lambda x: x * 2), Step("boom", explode)])
    backend.layers()  # listing runs the whole chain once
    armed = True
    assert backend.activations(image, "double").shape == (1, 3, 32, 32)
    with pytest.raises(AssertionError, match="ran a layer after"):
        backend.activations(image, "boom")


def test_non_spatial_outputs_come_back_as_n_c_1_1(image: np.ndarray) -> None:
    backend = tiny_cnn()
    probs = backend.activations([image, image], "prob1")
    assert probs.shape == (2, 10, 1, 1)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_many_images_are_batched_with_the_same_results(image: np.ndarray) -> None:
    backend = tiny_cnn()
    images = [np.roll(image, k, axis=1) for k in range(7)]
    whole = backend.activations(images, ["conv2", "fc1"], batch_size=64)
    batched = backend.activations(images, ["conv2", "fc1"], batch_size=3, progress=False)
    for name in whole:
        np.testing.assert_allclose(batched[name], whole[name], rtol=1e-6, atol=1e-6)


def test_keys_are_the_names_as_given(image: np.ndarray) -> None:
    backend = tiny_cnn()
    layer = backend.layer("conv2")
    outs = backend.activations(image, [layer, "block.conv", "conv2"])
    assert list(outs) == ["block.conv", "conv2"]  # a Layer object is keyed by its name
    assert backend.activations(image, layer).shape == (1, 16, 16, 16)


def test_bad_requests_fail_before_any_work(image: np.ndarray) -> None:
    calls = []

    def counting(x: np.ndarray) -> np.ndarray:
        calls.append(1)
        return x

    backend = ArrayBackend([Step("only", counting)])
    backend.layers()
    calls.clear()
    with pytest.raises(featvis.ArgumentError, match="No layers were asked for"):
        backend.activations(image, [])
    with pytest.raises(featvis.ArgumentError, match="batch_size"):
        backend.activations(image, "only", batch_size=0)
    with pytest.raises(featvis.UnknownLayerError):
        backend.activations(image, ["only", "other"])
    assert not calls


def test_a_backend_returning_the_wrong_shape_is_reported_as_its_bug(image: np.ndarray) -> None:
    class Sloppy(ArrayBackend):
        def _run(self, batch, layers):  # type: ignore[no-untyped-def]
            return [np.zeros((3, 3), np.float32)]

    backend = Sloppy([Step("x", lambda x: x)])
    with pytest.raises(
        RuntimeError, match=r"Sloppy._run returned ndarray \(3, 3\).*a bug in the backend"
    ):
        backend.activations(image, "x")


def test_as_nchw_rule() -> None:
    assert featvis.as_nchw(np.zeros(3)).shape == (3, 1, 1, 1)
    assert featvis.as_nchw(np.zeros((2, 5))).shape == (2, 5, 1, 1)
    assert featvis.as_nchw(np.zeros((2, 5, 7))).shape == (2, 5, 1, 7)
    assert featvis.as_nchw(np.zeros((2, 5, 3, 4, 6))).shape == (2, 5, 12, 6)
    assert featvis.as_nchw(np.zeros((2, 5, 3, 4), np.float64)).dtype == np.float32
    with pytest.raises(featvis.ArgumentError):
        featvis.as_nchw(np.float32(1.0).reshape(()))


def test_repr_and_preprocess_check() -> None:
    backend = tiny_cnn()
    assert "layers not listed yet" in repr(backend)
    backend.layers()
    assert repr(backend) == "<ArrayBackend 'array': 8 layers>"
    with pytest.raises(featvis.ArgumentError, match="featvis.Preprocess"):
        tiny_cnn(preprocess=(224, 224))  # type: ignore[arg-type]


def test_a_layer_is_asked_for_by_its_index_in_the_table() -> None:
    import numpy as np

    from featvis.testing import tiny_cnn

    backend = tiny_cnn()
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
    np.testing.assert_array_equal(
        backend.activations(image, 0), backend.activations(image, "conv1")
    )
    both = backend.activations(image, [-1, "conv1"])
    assert list(both) == [-1, "conv1"] and both[-1].shape == (1, 10, 1, 1)
    assert backend.layer(3).alias == "conv2"


class TestDifferentiableArrayBackendContract(BackendContract):
    @pytest.fixture
    def backend(self) -> ArrayBackend:
        return tiny_cnn(seed=1, differentiable=True)

    @pytest.fixture
    def images(self) -> list[np.ndarray]:
        rng = np.random.default_rng(0)
        return [
            rng.integers(0, 256, (32, 32, 3), np.uint8),
            rng.integers(0, 256, (40, 24, 3), np.uint8),
        ]
