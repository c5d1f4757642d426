"""The one axis rule (featvis._axes): roles in, NCHW out, written out case by case."""

import numpy as np
import pytest

import featvis
from featvis._axes import Merged, Placement, Refusal, place
from featvis._roles import roles_from_traces
from featvis._token_grid import token_grid

RNG = np.random.default_rng(0)


def placed(shape: tuple[int, ...], roles: tuple, **options: object) -> Placement:
    found = place(shape, roles, **options)  # type: ignore[arg-type]
    assert isinstance(found, Placement), found
    return found


@pytest.mark.parametrize(
    ("shape", "roles", "expected", "transform"),
    [
        ((2, 3, 4, 5), ("N", "F", "H", "W"), (2, 3, 4, 5), lambda a: a),
        ((2, 4, 5, 3), ("N", "H", "W", "F"), (2, 3, 4, 5), lambda a: a.transpose(0, 3, 1, 2)),
        # an LSTM's (T, N, H): the batch first, the hidden units the channels, T the width
        ((7, 2, 6), ("W", "N", "F"), (2, 6, 1, 7), lambda a: a.transpose(1, 2, 0)[:, :, None]),
        # ONNX's LSTM (T, dirs, N, H): directions and units fold into C, in that order
        (
            (7, 2, 2, 6),
            ("W", "F", "N", "C"),
            (2, 12, 1, 7),
            lambda a: a.transpose(2, 1, 3, 0).reshape(2, 12, 1, 7),
        ),
        # attention's (N, heads, L, d) on a 4x4 grid: heads * d channels
        (
            (2, 3, 16, 8),
            ("N", "F", "L", "F"),
            (2, 24, 4, 4),
            lambda a: a.transpose(0, 1, 3, 2).reshape(2, 24, 4, 4),
        ),
        ((2, 5), ("N", "F"), (2, 5, 1, 1), lambda a: a[:, :, None, None]),
        ((2,), ("N",), (2, 1, 1, 1), lambda a: a[:, None, None, None]),
        # no spatial axis: the channel axis is the one that is not of size 1 (after pooling)
        ((2, 1, 1, 9), ("N", "F", "F", "F"), (2, 9, 1, 1), lambda a: a.reshape(2, 9, 1, 1)),
        ((2, 6, 7, 7), ("N", "F", "F", "F"), (2, 6, 7, 7), lambda a: a),
        ((2, 3, 2, 4, 5), ("N", "F", "H", "H", "W"), (2, 3, 8, 5), lambda a: a.reshape(2, 3, 8, 5)),
    ],
)
def test_roles_give_nchw(shape: tuple, roles: tuple, expected: tuple, transform: object) -> None:
    array = RNG.normal(size=shape).astype(np.float32)
    placement = placed(shape, roles, image_size=(16, 16))
    out = placement.apply(array, array.shape[roles.index("N")])
    assert out.shape == expected == placement.shape(shape)
    assert out.flags.c_contiguous and out.dtype == np.float32
    np.testing.assert_array_equal(out, transform(array))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("one", "roles"),
    [
        ((1, 3, 4, 5), ("N", "F", "H", "W")),
        ((1, 4, 5, 3), ("N", "H", "W", "F")),
        ((7, 1, 6), ("W", "N", "F")),
        ((7, 2, 1, 6), ("W", "F", "N", "F")),
        ((1, 3, 16, 8), ("N", "F", "L", "F")),
        ((1, 5), ("N", "F")),
        ((3, 5), (Merged("F", True), "F")),  # (N * 3, C), images first
        ((3, 5), (Merged("F", False), "F")),  # (3 * N, C), images last
    ],
)
def test_native_puts_nchw_replacements_back_in_the_layers_own_layout(
    one: tuple, roles: tuple
) -> None:
    """What Ablation-CAM hands back to a model: M rows in NCHW become the tensor of M images
    the model would have made, and reading it again gives the rows."""
    placement = placed(one, roles, image_size=(16, 16), batch=1)
    rows = RNG.normal(size=(4, *placement.shape(one, batch=1)[1:])).astype(np.float32)
    native = placement.native(rows, one, (16, 16))
    grown = [
        4 * size if role == "N" or isinstance(role, Merged) else size
        for size, role in zip(one, roles)
    ]
    assert native.shape == tuple(grown)
    np.testing.assert_array_equal(placement.apply(native, 4, (16, 16)), rows)
    with pytest.raises(featvis.ArgumentError, match="not the layer's NCHW form"):
        placement.native(rows[:, :1, :1], one, (16, 16))


def test_native_refuses_a_layer_whose_class_token_was_set_aside() -> None:
    placement = placed((1, 197, 8), ("N", "L", "F"), image_size=(224, 224))
    rows = np.zeros((2, 8, 14, 14), np.float32)
    with pytest.raises(featvis.ArgumentError, match="class token"):
        placement.native(rows, (1, 197, 8), (224, 224))


def test_a_token_grid_becomes_a_map_and_the_class_token_is_set_aside() -> None:
    grid = RNG.normal(size=(2, 14, 14, 8)).astype(np.float32)  # NHWC
    cls = RNG.normal(size=(2, 1, 8)).astype(np.float32)
    tokens = np.concatenate([cls, grid.reshape(2, 196, 8)], axis=1)  # (N, 1 + 14*14, C)
    placement = placed(tokens.shape, ("N", "L", "F"), image_size=(224, 224))
    assert placement.layout == "NLC"
    np.testing.assert_array_equal(placement.apply(tokens, 2), grid.transpose(0, 3, 1, 2))
    # Not a grid of this image (20 tokens of a square image): a sequence, all of it kept.
    sequence = RNG.normal(size=(2, 20, 8)).astype(np.float32)
    out = placed(sequence.shape, ("N", "L", "F"), image_size=(64, 64)).apply(sequence, 2)
    np.testing.assert_array_equal(out, sequence.transpose(0, 2, 1)[:, :, None])


def test_token_grids_follow_the_image() -> None:
    assert token_grid(197, (224, 224)) == (1, 14, 14)
    assert token_grid(196, (224, 224)) == (0, 14, 14)
    assert token_grid(14 * 20, (224, 320)) == (0, 14, 20)
    assert token_grid(1 + 7 * 10, (240, 320)) == (1, 7, 10)  # floor(240 / 32) = 7
    assert token_grid(20, (64, 64)) is None  # 4 x 5 is no patch grid of a square image
    assert token_grid(196, None) is None


def test_a_merged_batch_is_split_in_the_order_it_was_merged() -> None:
    images = RNG.normal(size=(2, 4, 9, 8)).astype(np.float32)  # (N, k, L, C)
    major = images.reshape(8, 9, 8)  # (N*k, L, C): image i is rows 4i..4i+3
    minor = images.transpose(1, 0, 2, 3).reshape(8, 9, 8)  # (k*N, L, C): rows interleave
    expected = images.transpose(0, 1, 3, 2).reshape(2, 32, 3, 3)
    for merged, batch_major in ((major, True), (minor, False)):
        placement = placed(merged.shape, (Merged("F", batch_major), "L", "F"), image_size=(6, 6))
        np.testing.assert_array_equal(placement.apply(merged, 2), expected)
        assert placement.shape(merged.shape, batch=2) == (2, 32, 3, 3)
    refused = place(major.shape, (Merged("F", None), "L", "F"))
    assert isinstance(refused, Refusal) and refused.layer and "order" in refused.reason


@pytest.mark.parametrize(
    ("roles", "layer", "words"),
    [
        (("F", "F", "F"), False, "no axis"),
        (("N", "N", "F"), True, "several axes"),
        (("N", "X", "F"), True, "mixes axes"),
    ],
)
def test_what_cannot_be_placed_says_why(roles: tuple, layer: bool, words: str) -> None:
    refused = place((3, 4, 5), roles)
    assert isinstance(refused, Refusal) and refused.layer is layer and words in refused.reason
    assert isinstance(place((), ()), Refusal)


def test_unknown_roles_take_the_models_word_then_the_convention() -> None:
    # (N, L, C) from a Linear that runs at one size only: channels last, L a token grid
    assert placed((1, 197, 64), ("N", "?", "?"), channel_axis=-1, image_size=(224, 224)).shape(
        (1, 197, 64)
    ) == (1, 64, 14, 14)
    # nothing known: batch first, then channels (the NCHW convention)
    assert placed((1, 8, 5, 5), ("?",) * 4, batch=1).layout == "NCHW"
    # the convention does not take axis 0 for the batch when its size says otherwise
    refused = place((3, 8, 5, 5), ("?",) * 4, batch=1)
    assert isinstance(refused, Refusal) and not refused.layer


def test_roles_come_from_how_sizes_follow_the_batch_and_the_image() -> None:
    big, small = (64, 64), (32, 32)

    def roles(shape: tuple, resized: tuple | None, two: tuple | None, **more: object) -> tuple:
        return roles_from_traces(
            shape, image_size=big, resized=resized, resized_image=small, one=resized, two=two,
            **more,  # type: ignore[arg-type]
        )  # fmt: skip

    assert roles((1, 8, 16, 16), (1, 8, 8, 8), (2, 8, 8, 8)) == ("N", "F", "H", "H")
    assert roles((16, 1, 6), (8, 1, 6), (8, 2, 6)) == ("H", "N", "F")  # an LSTM's (T, N, H)
    assert roles((1, 17, 6), (1, 5, 6), (2, 5, 6)) == ("N", "L", "F")  # 4x4 + 1 -> 2x2 + 1
    merged = roles((4, 16, 6), (4, 4, 6), (8, 4, 6), batch_major=[True, None, None])
    assert merged == (Merged("F", True), "L", "F")
    assert roles((1, 16, 6), (1, 8, 6), (2, 8, 6)) == ("N", "H", "F")  # 16 then 8: no grid
    fixed_size = roles_from_traces(
        (1, 17, 6), image_size=big, one=(1, 17, 6), two=(2, 17, 6)
    )  # the model runs at one size only
    assert fixed_size == ("N", "?", "?")
    one_image = roles_from_traces((1, 8, 4, 4), image_size=big, resized=(1, 8, 2, 2),
                                  resized_image=small)  # fmt: skip
    assert one_image == ("?", "F", "H", "H")  # the batch is then only the convention


def test_as_nchw_is_the_convention() -> None:
    assert featvis.as_nchw(np.zeros(3)).shape == (3, 1, 1, 1)
    assert featvis.as_nchw(np.zeros((2, 5, 7))).shape == (2, 5, 1, 7)
    assert featvis.as_nchw(np.zeros((2, 5, 3, 4, 6))).shape == (2, 5, 12, 6)


def test_a_sequence_first_tensor_of_unknown_axes_is_a_sequence_not_a_grid() -> None:
    # 16 steps would be a 4x4 grid of an 8x8 image, but (T, N, C) is an RNN's order
    lstm = placed((16, 1, 6), ("?", "N", "?"), channel_axis=-1, image_size=(8, 8))
    assert lstm.shape((16, 1, 6)) == (1, 6, 1, 16) and not lstm.grid
    vit = placed((1, 16, 6), ("N", "?", "?"), channel_axis=-1, image_size=(8, 8))
    assert vit.shape((1, 16, 6)) == (1, 6, 4, 4) and vit.grid


def test_a_model_of_fixed_height_is_read_from_another_width() -> None:
    roles = roles_from_traces(
        (16, 1, 6), image_size=(8, 32), widened=(8, 1, 6), one=(16, 1, 6), two=(16, 2, 6)
    )
    assert roles == ("H", "N", "?")  # the sequence follows the width; the rest: the model's word
