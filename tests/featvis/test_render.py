"""Rendering matches MATLAB's semantics on hand-computed arrays, and handles odd input."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis import montage, normalize, overlay, pair, resize, strongest_channel, top_channels
from featvis.render import COLORMAPS, Picture, colormap

SEPARATOR = [40, 90, 160]


# -- normalize --------------------------------------------------------------------------------


def test_global_normalize_is_mat2gray() -> None:
    a = np.array([[[-2.0, 0.0], [2.0, 6.0]], [[1.0, 1.0], [3.0, 4.0]]])
    expected = (a + 2.0) / 8.0  # (A - min(A(:))) / (max(A(:)) - min(A(:)))
    np.testing.assert_allclose(normalize(a), expected, rtol=1e-6)


def test_channel_normalize_scales_each_map_alone() -> None:
    a = np.array([[[[0.0, 10.0]], [[5.0, 6.0]]]])  # (1, 2, 1, 2)
    np.testing.assert_allclose(normalize(a, scope="channel"), [[[[0.0, 1.0]], [[0.0, 1.0]]]])


def test_clip_uses_percentiles_and_limits_fix_the_range() -> None:
    a = np.arange(101.0).reshape(1, 101)
    clipped = normalize(a, clip=10)
    assert clipped[0, 0] == 0.0 and clipped[0, 100] == 1.0
    assert clipped[0, 55] == pytest.approx(0.5625)  # (55 - 10) / (90 - 10)
    np.testing.assert_allclose(normalize(a, limits=(0, 200))[0, [0, 100]], [0.0, 0.5])
    np.testing.assert_allclose(normalize(a, limits=(50, 60))[0, [0, 55, 100]], [0.0, 0.5, 1.0])


def test_constant_input_maps_to_zero() -> None:
    assert not normalize(np.full((3, 3), 7.0)).any()
    out = normalize(np.array([[[1.0, 2.0]], [[5.0, 5.0]]]), scope="channel")
    assert out[1].tolist() == [[0.0, 0.0]]


def test_nan_and_infinity_are_left_out_of_the_range() -> None:
    a = np.array([[np.nan, 1.0, 3.0, np.inf, -np.inf]])
    out = normalize(a)
    assert np.isnan(out[0, 0])
    assert out[0, 1:].tolist() == [0.0, 1.0, 1.0, 0.0]
    assert np.isnan(normalize(np.full((2, 2), np.nan))).all()
    constant = normalize(np.array([[5.0, np.inf]]))
    assert constant.tolist() == [[0.0, 1.0]]


def test_normalize_never_modifies_its_input_and_returns_float32() -> None:
    a = np.arange(12, dtype=np.int64).reshape(3, 4)
    before = a.copy()
    out = normalize(a)
    np.testing.assert_array_equal(a, before)
    assert out.dtype == np.float32


@pytest.mark.parametrize(
    "kwargs",
    [
        {"scope": "image"},
        {"clip": (90, 10)},
        {"limits": (1, 1)},
        {"clip": 5, "limits": (0, 1)},
        {"scope": "channel", "limits": (0, 1)},
    ],
)
def test_normalize_rejects_bad_options(kwargs: dict) -> None:
    with pytest.raises(featvis.ArgumentError):
        normalize(np.ones((2, 2)), **kwargs)


# -- montage ----------------------------------------------------------------------------------


def _gray(picture: Picture) -> np.ndarray:
    rgb = np.asarray(picture)
    return rgb[:, :, 0].astype(int)


def test_montage_fills_an_8x12_grid_row_by_row() -> None:
    acts = np.arange(96, dtype=np.float32)[None, :, None, None] * np.ones((1, 96, 3, 5))
    picture = montage(acts, grid=(8, 12), padding=1)
    assert picture.size == (8 * 4 + 1, 12 * 6 + 1)
    rgb = np.asarray(picture)
    for channel in (0, 11, 12, 95):
        row, col = divmod(channel, 12)
        tile = rgb[1 + row * 4 : 4 + row * 4, 1 + col * 6 : 6 + col * 6]
        level = round(channel / 95 * 254)  # mat2gray, then 255 gray levels
        assert (tile == round(level * 255 / 254)).all(), channel
    # separators: every 4th row and 6th column, in the separator color
    assert (rgb[::4, :] == SEPARATOR).all() and (rgb[:, ::6] == SEPARATOR).all()


def test_montage_uses_mat2gray_over_all_channels() -> None:
    acts = np.array([[[[0.0]], [[1.0]], [[4.0]]]])
    assert _gray(montage(acts, grid=(1, 3), padding=0)).tolist() == [[0, 64, 255]]
    by_channel = montage(acts, grid=(1, 3), padding=0, scope="channel")
    assert _gray(by_channel).tolist() == [[0, 0, 0]]  # each 1x1 tile is constant


def test_empty_tiles_show_the_separator_not_the_data_mean() -> None:
    acts = np.ones((1, 5, 2, 2))
    rgb = np.asarray(montage(acts, grid=(2, 3), padding=0))
    assert (rgb[2:, 4:] == SEPARATOR).all()  # the sixth tile is empty
    assert (rgb[:2, :2] == 0).all()  # constant data: level 0


def test_default_grid_is_near_square_and_fits_all_channels() -> None:
    for channels, grid in [
        (96, (8, 12)),
        (64, (8, 8)),
        (1, (1, 1)),
        (2048, (32, 64)),
        (32, (4, 8)),
        (1280, (32, 40)),
    ]:
        picture = montage(np.zeros((channels, 7, 7)), padding=0)
        assert picture.size == (grid[0] * 7, grid[1] * 7)


def test_grid_with_one_side_open() -> None:
    assert montage(np.zeros((10, 2, 2)), grid=(2, None), padding=0).size == (4, 10)
    assert montage(np.zeros((10, 2, 2)), grid=(None, 3), padding=0).size == (8, 6)
    with pytest.raises(featvis.ArgumentError, match="holds 6 tiles, but there are 10 channels"):
        montage(np.zeros((10, 2, 2)), grid=(2, 3))


@pytest.mark.parametrize(
    ("tile", "padding"),
    # A tile row plus its gap of 2, 4 or 8 bytes takes the machine-word fast path, the
    # others the general one; NaN pixels and empty tiles are in every case.
    [((7, 7), 1), ((3, 3), 1), ((5, 1), 1), ((4, 8), 0), ((2, 2), 0), ((7, 7), 2), ((6, 5), 3)],
)
def test_every_tile_lands_in_its_cell_with_separators_around(
    tile: tuple[int, int], padding: int
) -> None:
    h, w = tile
    rng = np.random.default_rng(h * 10 + w)
    acts = rng.standard_normal((37, h, w)).astype(np.float32)
    acts[3, 0, 0] = np.nan
    picture = np.asarray(montage(acts, grid=(5, 8), padding=padding, separator=(0, 0, 255)))
    low, high = np.nanmin(acts), np.nanmax(acts)
    # mat2gray over all channels, 255 gray levels; a misplaced pixel is off by far more than 1
    gray_levels = np.round(np.round((acts - low) / (high - low) * 254) * 255 / 254)
    blue = np.array([0, 0, 255], np.uint8)
    expected = np.broadcast_to(blue, (5 * (h + padding) + padding, 8 * (w + padding) + padding, 3))
    expected = expected.copy()
    for channel in range(37):
        r, c = divmod(channel, 8)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        gray = np.nan_to_num(gray_levels[channel]).astype(np.uint8)
        expected[top : top + h, left : left + w] = gray[:, :, None]
        nan = np.isnan(gray_levels[channel])
        expected[top : top + h, left : left + w][nan] = blue
    np.testing.assert_allclose(picture.astype(int), expected.astype(int), atol=1, rtol=0)


def test_montage_of_nan_and_constant_input() -> None:
    acts = np.array([[[np.nan, 1.0]], [[2.0, np.inf]]])
    rgb = np.asarray(montage(acts, grid=(1, 2), padding=0))
    assert rgb[0, 0].tolist() == SEPARATOR  # NaN shows as "no data"
    assert [rgb[0, 1, 0], rgb[0, 2, 0], rgb[0, 3, 0]] == [0, 255, 255]
    assert (np.asarray(montage(np.full((3, 2, 2), 5.0), padding=0)) != SEPARATOR).all(
        -1
    ).sum() == 12


def test_montage_takes_one_image_and_leaves_it_alone() -> None:
    acts = np.random.default_rng(0).standard_normal((1, 4, 3, 3)).astype(np.float32)
    before = acts.copy()
    montage(acts)
    np.testing.assert_array_equal(acts, before)
    assert montage(acts[0]).size == montage(acts).size
    assert montage(acts[0, 0]).size == (5, 5)  # one (H, W) map
    with pytest.raises(featvis.ArgumentError, match="batch of 2.*acts\\[i\\]"):
        montage(np.zeros((2, 4, 3, 3)))


def test_montage_colormap_and_options() -> None:
    acts = np.linspace(0, 1, 4).reshape(4, 1, 1)
    rgb = np.asarray(montage(acts, cmap="viridis", padding=0, grid=(1, 4)))
    assert rgb[0, 0].tolist() == colormap("viridis")[0].tolist()
    assert rgb[0, 3].tolist() == colormap("viridis")[255].tolist()
    with pytest.raises(featvis.ArgumentError, match="Unknown colormap"):
        montage(acts, cmap="parula")
    with pytest.raises(featvis.ArgumentError, match="padding"):
        montage(acts, padding=-1)
    raw = np.asarray(montage(np.array([[[0.5, 2.0]]]), scope=None, padding=0))
    assert raw[0, :, 0].tolist() == [128, 255]  # taken as [0, 1], clipped above


# -- strongest channel ------------------------------------------------------------------------


def test_strongest_channel_is_matlabs_max_max_max() -> None:
    acts = np.zeros((1, 96, 5, 5), np.float32)
    acts[0, 31, 2, 3] = 9.0  # MATLAB's channel 32
    acts[0, 50] = 8.5
    assert strongest_channel(acts) == 31
    assert strongest_channel(acts, by="mean") == 50
    assert strongest_channel(acts, by="l2") == 50


def test_ties_go_to_the_lowest_channel_and_nan_is_ignored() -> None:
    acts = np.zeros((4, 2, 2))
    acts[1, 0, 0] = acts[3, 1, 1] = 2.0
    acts[2] = np.nan
    assert strongest_channel(acts) == 1
    assert top_channels(acts, 3) == [1, 3, 0]
    with pytest.raises(featvis.ArgumentError, match="every activation is NaN"):
        strongest_channel(np.full((2, 2, 2), np.nan))


def test_top_channels() -> None:
    acts = np.array([1.0, 5.0, 3.0, 4.0]).reshape(4, 1, 1)
    assert top_channels(acts, 2) == [1, 3]
    assert top_channels(acts, 10) == [1, 3, 2, 0]
    with pytest.raises(featvis.ArgumentError, match="positive"):
        top_channels(acts, 0)
    with pytest.raises(featvis.ArgumentError, match="one image"):
        strongest_channel(np.zeros((2, 3, 1, 1)))


# -- resize, pair, overlay --------------------------------------------------------------------


def test_resize_aligns_pixel_centres_and_extends_edges() -> None:
    up = resize(np.array([[0.0, 1.0]]), (1, 4))
    np.testing.assert_allclose(up, [[0.0, 0.25, 0.75, 1.0]], atol=1e-6)
    down = resize(np.array([[0.0, 1.0, 2.0, 3.0]]), (1, 2))
    # Shrinking widens the triangle by the scale (antialiasing, as MATLAB's imresize): output 0
    # centred at x=1 weighs x=0.5, 1.5, 2.5 by 0.75, 0.75, 0.25; the tap outside is dropped.
    np.testing.assert_allclose(down, [[1.25 / 1.75, 4.0 / 1.75]], atol=1e-6)
    nearest = resize(np.array([[0.0, 1.0]]), (1, 4), method="nearest")
    assert nearest.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def test_bicubic_does_not_overshoot() -> None:
    step = np.zeros((8, 8), np.float32)
    step[:, 4:] = 1.0
    out = resize(step, (32, 32), method="bicubic")
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_resize_takes_the_size_of_an_image() -> None:
    image = np.zeros((30, 40, 3), np.uint8)
    assert resize(np.ones((5, 5)), image).shape == (30, 40)
    assert resize(np.ones((5, 5)), Image.new("RGB", (40, 30))).shape == (30, 40)
    assert resize(np.ones((2, 5, 5)), (3, 4)).shape == (2, 3, 4)
    with pytest.raises(featvis.ArgumentError, match=r"\(height, width\)"):
        resize(np.ones((5, 5)), "big")  # type: ignore[arg-type]


def test_pair_montage_puts_the_resized_channel_next_to_the_image() -> None:
    image = np.full((4, 4, 3), 200, np.uint8)
    channel = np.array([[0.0, 2.0], [2.0, 0.0]])
    rgb = np.asarray(pair(image, channel, method="nearest"))
    assert rgb.shape == (4, 8, 3)
    np.testing.assert_array_equal(rgb[:, :4], image)
    assert rgb[:, 4:, 0].tolist() == [[0, 0, 255, 255]] * 2 + [[255, 255, 0, 0]] * 2


def test_pair_blend_and_falsecolor_follow_imshowpair() -> None:
    image = np.zeros((1, 2, 3), np.uint8)
    image[0, 1] = 255
    channel = np.array([[1.0, 0.0]])  # normalized: [1, 0]
    blend = np.asarray(pair(image, channel, mode="blend"))
    assert blend[0, :, 0].tolist() == [128, 128]  # 0.5 * gray + 0.5 * map
    false = np.asarray(pair(image, channel, mode="falsecolor"))
    assert false[0].tolist() == [[255, 0, 255], [0, 255, 0]]  # map magenta, image green


def test_overlay_blends_a_heat_map() -> None:
    image = np.full((2, 2, 3), 100, np.uint8)
    channel = np.array([[0.0, 1.0], [1.0, 0.0]])
    jet = colormap("jet")
    only_map = np.asarray(overlay(image, channel, alpha=1.0, method="nearest"))
    assert (
        only_map[0, 0].tolist() == jet[0].tolist() and only_map[0, 1].tolist() == jet[255].tolist()
    )
    np.testing.assert_array_equal(np.asarray(overlay(image, channel, alpha=0.0)), image)
    half = np.asarray(pair(image, channel, mode="overlay", method="nearest"))
    assert half[0, 1].tolist() == np.round((100 + jet[255]) / 2).astype(int).tolist()


def test_pair_rejects_a_whole_layer_and_bad_modes() -> None:
    image = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(featvis.ArgumentError, match="one channel"):
        pair(image, np.zeros((3, 2, 2)))
    with pytest.raises(featvis.ArgumentError, match="mode"):
        pair(image, np.zeros((2, 2)), mode="diff")  # type: ignore[arg-type]
    assert pair(image, np.zeros((1, 1, 2, 2))).size == (4, 8)  # acts[:, k:k+1] works too


# -- Picture ----------------------------------------------------------------------------------


def test_picture_saves_and_converts(tmp_path: Path) -> None:
    picture = montage(np.random.default_rng(0).standard_normal((6, 5, 5)))
    path = picture.save(tmp_path / "m.png")
    with Image.open(path) as saved:
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(picture))
    picture.save(tmp_path / "m.jpg")  # palette pictures become RGB for JPEG
    assert picture._repr_png_().startswith(b"\x89PNG")
    assert picture.to_pil().mode == "P"
    assert Image.open(io.BytesIO(picture.png())).size == picture.size[::-1]
    rgb = pair(np.zeros((2, 2, 3), np.uint8), np.eye(2))
    assert rgb.to_pil().mode == "RGB"
    with pytest.raises(featvis.ArgumentError, match="Cannot save"):
        picture.save(tmp_path / "m.unknown-format")


def test_picture_array_is_read_only_and_copies_on_request() -> None:
    picture = montage(np.zeros((4, 2, 2)))
    view = np.asarray(picture)
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0, 0] = 1
    copy = np.array(picture)
    copy[0, 0, 0] = 1  # a copy is writable
    assert np.asarray(picture, dtype=np.float32).dtype == np.float32


def test_every_colormap_runs_from_dark_or_blue_to_light() -> None:
    for name in COLORMAPS:
        table = colormap(name)
        assert table.shape == (256, 3) and table.dtype == np.uint8
    assert colormap("jet")[0].tolist() == [0, 0, 128] and colormap("jet")[255].tolist() == [
        128,
        0,
        0,
    ]


# -- the fenced fast paths against their plain twins -------------------------------------------


@pytest.mark.parametrize(
    ("shape", "scope"),
    [
        ((96, 55, 55), "global"),
        ((2048, 7, 7), "global"),
        ((37, 3, 3), "channel"),
        ((5, 4, 8), None),
        ((10, 2, 2), "global"),
    ],
)
def test_fast_levels_equal_the_plain_normalize_then_round(
    shape: tuple[int, int, int], scope: str | None
) -> None:
    from featvis.render import _fast, _tiles

    rng = np.random.default_rng(sum(shape))
    a = rng.standard_normal(shape).astype(np.float32)
    if scope is None:
        a = (a - a.min()) / (a.max() - a.min())
    a.flat[::97] = np.nan
    a.flat[5] = np.inf
    plain = _tiles.levels(a, scope, None, None)  # type: ignore[arg-type]
    fast = _fast.levels(a, scope, None, None)  # type: ignore[arg-type]
    assert plain.dtype == fast.dtype == np.uint8
    assert ((plain == _tiles.NODATA) == (fast == _tiles.NODATA)).all()  # NaN: no data, in both
    difference = np.abs(plain.astype(int) - fast.astype(int))
    # Both round the same values; the fused arithmetic may land the other side of a .5 boundary
    # for a value within float32's precision of it, never further.
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


@pytest.mark.parametrize(
    ("count", "tile", "padding", "grid"),
    [
        (2048, (7, 7), 1, (32, 64)),  # a tile row + gap of 8 bytes: the machine-word path
        (37, (3, 3), 1, (5, 8)),  # 4 bytes, with a short last row
        (5, (1, 1), 1, (2, 3)),  # 2 bytes
        (96, (55, 55), 1, (8, 12)),  # the plain path
        (7, (4, 8), 0, (3, 3)),  # 8 bytes without padding, two empty tiles
    ],
)
def test_fast_tiling_equals_the_plain_twin(
    count: int, tile: tuple[int, int], padding: int, grid: tuple[int, int]
) -> None:
    from featvis.render import _fast, _tiles

    a = np.random.default_rng(count).standard_normal((count, *tile)).astype(np.float32)
    levels = _fast.levels(a, "global", None, None)  # with the spare bytes the fast path needs
    np.testing.assert_array_equal(
        _fast.tile(levels, *grid, padding), _tiles.tile(levels.copy(), *grid, padding)
    )


# -- grids, enlarged tiles ---------------------------------------------------------------------


def test_a_grid_must_not_leave_rows_or_columns_empty() -> None:
    from featvis.render import grid_shape

    assert grid_shape((4, 8), 30) == (4, 8)
    with pytest.raises(featvis.ArgumentError, match="100x100 grid for 32 channels leaves whole"):
        montage(np.zeros((32, 2, 2)), grid=(100, 100))
    with pytest.raises(featvis.ArgumentError, match="1x40 grid .* 1x32 holds them all"):
        grid_shape((1, 40), 32)
    with pytest.raises(featvis.ArgumentError, match="at least one row"):
        grid_shape((0, None), 32)
    with pytest.raises(featvis.ArgumentError, match="two whole numbers"):
        grid_shape(("a", 3), 32)  # type: ignore[arg-type]


def test_scale_draws_each_value_as_a_block() -> None:
    acts = np.arange(8.0).reshape(2, 2, 2)
    big = np.asarray(montage(acts, grid=(1, 2), padding=1, scale=3))
    small = np.asarray(montage(acts, grid=(1, 2), padding=1))
    assert big.shape == (1 + 6 + 1, 1 + 2 * (6 + 1), 3)
    # every value of the small montage is a 3x3 block in the big one
    np.testing.assert_array_equal(big[1:7, 1:7], small[1:3, 1:3].repeat(3, 0).repeat(3, 1))
    with pytest.raises(featvis.ArgumentError, match="scale must be a positive integer"):
        montage(acts, scale=0)


def test_readable_scale_enlarges_small_tiles_within_the_size_limit() -> None:
    from featvis._figures import readable_scale

    assert readable_scale((1280, 7, 7)) == 3  # 32x40 tiles of 21 px: 881 px wide
    assert readable_scale((1280, 7, 7), max_size=None) == 5  # 35 px tiles, no limit
    assert readable_scale((1280, 7, 7), max_size=300) == 1  # 321 px already
    assert readable_scale((32, 112, 112)) == 1
    assert readable_scale((256, 13, 13)) == 3  # AlexNet conv5: 16x16 tiles of 39 px


# -- ties, cmap per mode, renamed keywords -----------------------------------------------------


def test_ties_for_the_strongest_channel_are_broken_by_the_mean_and_reported() -> None:
    relu6 = np.zeros((4, 3, 3), np.float32)
    relu6[[0, 1, 3], 0, 0] = 6.0  # three channels reach the ceiling
    relu6[3, 1:, :] = 0.5  # channel 3 has the largest mean of them
    relu6[2] = 5.0  # the largest mean overall, but not the largest value
    assert featvis.strongest_channel(relu6) == 3
    assert featvis.tied_channels(relu6) == [3, 0, 1]
    assert featvis.top_channels(relu6, 4) == [3, 0, 1, 2]
    assert featvis.strongest_channel(relu6, by="mean") == 2
    assert featvis.tied_channels(relu6, by="mean") == [2]
    from featvis._figures import strongest

    assert strongest(relu6) == (
        3,
        "the largest mean of the 3 channels that tie for the layer's largest single value, 6",
    )
    assert strongest(relu6[2:3]) == (0, "the layer's largest single value, 5")


def test_pair_takes_a_cmap_where_it_draws_one_and_refuses_it_elsewhere() -> None:
    image = np.full((4, 4, 3), 128, np.uint8)
    channel = np.eye(2)
    gray_overlay = np.asarray(featvis.pair(image, channel, mode="overlay", cmap="gray"))
    assert (gray_overlay[..., 0] == gray_overlay[..., 2]).all()  # gray, not replaced by jet
    assert not np.array_equal(
        gray_overlay, np.asarray(featvis.pair(image, channel, mode="overlay"))
    )  # the default heat map is jet
    for mode in ("blend", "falsecolor"):
        with pytest.raises(featvis.ArgumentError, match=f"mode='{mode}' draws fixed colors"):
            featvis.pair(image, channel, mode=mode, cmap="jet")  # type: ignore[arg-type]


def test_renamed_keywords_still_work_for_one_release_with_a_warning() -> None:
    acts = np.random.default_rng(0).standard_normal((3, 4, 4)).astype(np.float32)
    image = np.zeros((8, 8, 3), np.uint8)
    with pytest.warns(DeprecationWarning, match=r"montage\(normalize=...\) .* use montage\(scope"):
        old = montage(acts, normalize="channel")
    np.testing.assert_array_equal(np.asarray(old), np.asarray(montage(acts, scope="channel")))
    with pytest.warns(DeprecationWarning, match=r"resize\(map=...\) .* use resize\(a=...\)"):
        resized = featvis.resize(map=acts[0], size=(8, 8))  # type: ignore[call-arg]
    np.testing.assert_array_equal(resized, featvis.resize(acts[0], (8, 8)))
    with pytest.warns(DeprecationWarning, match=r"use pair\(a=...\)"):
        featvis.pair(image, map=acts[0])  # type: ignore[call-arg]
    with pytest.warns(DeprecationWarning, match=r"use overlay\(scope=...\)"):
        featvis.overlay(image, acts[0], normalize=None)  # type: ignore[call-arg]
    with pytest.raises(featvis.ArgumentError, match="got both normalize= and scope="):
        montage(acts, normalize="global", scope="global")  # type: ignore[call-arg]


def test_an_empty_map_is_refused() -> None:
    with pytest.raises(featvis.ArgumentError, match="empty"):
        montage(np.zeros((0, 3, 3)))
    with pytest.raises(featvis.ArgumentError, match="empty map"):
        featvis.resize(np.zeros((0, 3)), (4, 4))


def test_a_picture_of_the_callers_array_leaves_that_array_writable() -> None:
    pixels = np.zeros((2, 3, 3), np.uint8)
    picture = Picture(pixels)
    pixels[0, 0, 0] = 7  # still the caller's to change
    assert pixels.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        np.asarray(picture)[0, 0, 0] = 1  # what the picture hands out is read-only
    palette = np.zeros((256, 3), np.uint8)
    indices = np.zeros((2, 2), np.uint8)
    Picture(indices, palette).rgb()
    assert indices.flags.writeable and palette.flags.writeable
