"""The contract suite every backend runs (:class:`BackendContract`, re-exported by
:mod:`featvis.testing`): the ``Backend`` protocol's promises, and through
:class:`featvis._contract_capabilities.CapabilityContract` each capability's."""

from __future__ import annotations

from typing import Any

import numpy as np

from featvis._contract_capabilities import CapabilityContract
from featvis._errors import FeatvisError, UnknownLayerError
from featvis._layers import KINDS, Layer, number_layers

__all__ = ["BackendContract"]


class BackendContract(CapabilityContract):
    """The tests every backend must pass. Subclass it and provide ``backend`` and ``images``.

    ``images`` must be a list of at least two images of any kind the backend reads (arrays are
    best: the suite checks they are not modified). A backend that is a :class:`featvis.Scorer`,
    :class:`featvis.Differentiable` or :class:`featvis.Patchable` is also checked on those
    (a capability it lacks is checked too: the methods that need it must refuse the backend
    with a :class:`featvis.CapabilityError` naming what works).
    """

    def test_layers_are_numbered_with_unique_names_and_aliases(self, backend: Any) -> None:
        layers = backend.layers()
        assert layers, "a backend must list at least one layer"
        assert all(isinstance(layer, Layer) for layer in layers)
        assert [layer.index for layer in layers] == list(range(len(layers)))
        names = [layer.name for layer in layers]
        aliases = [layer.alias for layer in layers]
        assert len(set(names)) == len(names), "layer names must be unique"
        assert len(set(aliases)) == len(aliases), "aliases must be unique"
        assert all(layer.kind in KINDS for layer in layers)
        # aliases are the core's canonical ones, whatever the backend
        assert aliases == [layer.alias for layer in number_layers(layers)]

    def test_layers_returns_a_fresh_list(self, backend: Any) -> None:
        first = backend.layers()
        first.clear()
        assert backend.layers(), "changing the returned list must not change the backend"

    def test_one_layer_gives_nchw_float32_with_the_batch(self, backend: Any, images: Any) -> None:
        layer = backend.layers()[0]
        out = backend.activations(images, layer.name)
        assert isinstance(out, np.ndarray)
        assert out.dtype == np.float32 and out.ndim == 4
        assert out.shape[0] == len(images)
        single = backend.activations(images[0], layer.name)
        assert single.shape[0] == 1

    def test_output_shapes_match_the_layer_table(self, backend: Any, images: Any) -> None:
        layers = backend.layers()
        outs = backend.activations(images[:1], [layer.name for layer in layers])
        for layer in layers:
            out = outs[layer.name]
            assert out.ndim == 4 and out.dtype == np.float32, layer.name
            if layer.output_shape is not None:
                for got, listed in zip(out.shape[1:], layer.output_shape[1:]):
                    assert listed is None or got == listed, (
                        layer.name,
                        out.shape,
                        layer.output_shape,
                    )

    def test_many_layers_keep_the_order_asked(self, backend: Any, images: Any) -> None:
        names = [layer.name for layer in backend.layers()][::-1]
        outs = backend.activations(images, names)
        assert list(outs) == names
        for name in names:
            assert outs[name].shape[0] == len(images)

    def test_names_and_aliases_give_the_same_values(self, backend: Any, images: Any) -> None:
        layer = backend.layers()[-1]
        outs = backend.activations(images, [layer.alias, layer.name])
        assert list(outs) == [layer.alias, layer.name]
        np.testing.assert_array_equal(outs[layer.alias], outs[layer.name])

    def test_one_call_equals_separate_calls(self, backend: Any, images: Any) -> None:
        layers = backend.layers()
        chosen = [layers[0].name, layers[len(layers) // 2].name, layers[-1].name]
        together = backend.activations(images, chosen)
        for name in chosen:
            np.testing.assert_allclose(
                backend.activations(images, name), together[name], rtol=1e-5, atol=1e-6
            )

    def test_image_i_of_a_batch_equals_image_i_alone(self, backend: Any, images: Any) -> None:
        # Every layer: a backend that takes the wrong axis for the batch (an LSTM's (T, N, H)
        # read as (N, T, H)) hands image 0 the time steps of every image, which this catches.
        names = [layer.name for layer in backend.layers() if layer.unavailable is None]
        together = backend.activations(images, names)
        for i, image in enumerate(images):
            alone = backend.activations(image, names)
            for name in names:
                a, b = together[name][i], alone[name][0]
                assert a.shape == b.shape, (name, i, a.shape, b.shape)
                # float32 kernels may sum in another order for another batch size
                peak = float(np.abs(b[np.isfinite(b)]).max(initial=0.0))  # -inf masks too
                tolerance = 1e-4 * peak + 1e-6
                np.testing.assert_allclose(
                    a, b, rtol=0, atol=tolerance, err_msg=f"layer {name!r}, image {i}"
                )

    def test_a_layer_that_cannot_be_placed_is_refused_by_name(
        self, backend: Any, images: Any
    ) -> None:
        import pytest

        for layer in backend.layers():
            if layer.unavailable is None:
                continue
            with pytest.raises(FeatvisError, match=repr(layer.name)):
                backend.activations(images, layer.name)

    def test_batch_size_does_not_change_results(self, backend: Any, images: Any) -> None:
        name = backend.layers()[0].name
        whole = backend.activations(images, name)
        one_by_one = backend.activations(images, name, batch_size=1)
        np.testing.assert_allclose(one_by_one, whole, rtol=1e-5, atol=1e-6)

    def test_repeated_calls_are_identical(self, backend: Any, images: Any) -> None:
        names = [layer.name for layer in backend.layers()]
        first = backend.activations(images, names)
        second = backend.activations(images, names)
        for name in names:
            np.testing.assert_array_equal(first[name], second[name])

    def test_results_are_independent_copies(self, backend: Any, images: Any) -> None:
        name = backend.layers()[0].name
        first = backend.activations(images, name)
        expected = first.copy()
        first += 1.0  # a caller may modify what it got...
        np.testing.assert_array_equal(backend.activations(images, name), expected)  # ...safely

    def test_images_are_not_modified(self, backend: Any, images: Any) -> None:
        before = [
            np.array(image, copy=True) if isinstance(image, np.ndarray) else None
            for image in images
        ]
        backend.activations(images, [layer.name for layer in backend.layers()])
        for image, copy in zip(images, before):
            if copy is not None:
                np.testing.assert_array_equal(image, copy)

    def test_unknown_layer_is_a_key_error_with_suggestions(self, backend: Any, images: Any) -> None:
        import pytest

        alias = backend.layers()[0].alias
        typo = alias + "_x"
        with pytest.raises(UnknownLayerError) as info:
            backend.activations(images, typo)
        assert isinstance(info.value, KeyError)
        assert repr(alias) in str(info.value), "the message must suggest the closest layer"
        with pytest.raises(UnknownLayerError):
            backend.activations(images, [alias, "no such layer"])
