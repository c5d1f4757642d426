"""Images in: files and arrays of every common kind become correct RGB, bad ones clear errors."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis import ImageError, Preprocess, prepare_images, read_image

RED, BLUE = (220, 20, 30), (10, 40, 230)


@pytest.fixture
def halves() -> np.ndarray:
    """4 rows x 6 columns: red on the left half, blue on the right."""
    image = np.zeros((4, 6, 3), np.uint8)
    image[:, :3] = RED
    image[:, 3:] = BLUE
    return image


def test_rgb_png_reads_back_exactly(tmp_path: Path, halves: np.ndarray) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(halves).save(path)
    np.testing.assert_array_equal(read_image(path), halves)
    np.testing.assert_array_equal(read_image(str(path)), halves)


def test_exif_orientation_is_applied(tmp_path: Path, halves: np.ndarray) -> None:
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": red (left) ends up on top
    Image.fromarray(halves).save(path, exif=exif, quality=95)
    image = read_image(path)
    assert image.shape == (6, 4, 3)
    top, bottom = image[:2].reshape(-1, 3).mean(0), image[-2:].reshape(-1, 3).mean(0)
    assert top[0] > 150 > top[2] and bottom[2] > 150 > bottom[0]


def test_grayscale_becomes_rgb(tmp_path: Path) -> None:
    gray = np.array([[0, 128], [200, 255]], np.uint8)
    path = tmp_path / "gray.png"
    Image.fromarray(gray, mode="L").save(path)
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(read_image(path), expected)
    np.testing.assert_array_equal(read_image(gray), expected)


def test_sixteen_bit_gray_keeps_its_scale(tmp_path: Path) -> None:
    deep = np.array([[0, 65535], [32768, 1000]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(deep).save(path)
    expected = np.round(deep / 65535 * 255).astype(np.uint8)
    np.testing.assert_array_equal(read_image(path)[:, :, 1], expected)
    np.testing.assert_array_equal(read_image(deep)[:, :, 1], expected)


def test_transparency_is_composited_over_white(tmp_path: Path) -> None:
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 255)  # opaque red
    rgba[0, 1] = (0, 0, 0, 0)  # fully transparent black: shows white
    rgba[0, 2] = (0, 0, 255, 128)  # half blue over white
    path = tmp_path / "alpha.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = read_image(path)
    assert image[0, 0].tolist() == [255, 0, 0]
    assert image[0, 1].tolist() == [255, 255, 255]
    assert np.abs(image[0, 2].astype(int) - [127, 127, 255]).max() <= 1
    assert np.abs(read_image(rgba).astype(int) - image.astype(int)).max() <= 1


def test_palette_with_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    image.putpixel((0, 0), 0)
    image.putpixel((1, 0), 1)
    image.info["transparency"] = 1
    path = tmp_path / "palette.png"
    image.save(path, transparency=1)
    assert read_image(path).tolist() == [[[255, 0, 0], [255, 255, 255]]]


def test_cmyk_jpeg_becomes_rgb(tmp_path: Path) -> None:
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    pixel = read_image(path)[4, 4].astype(int)
    assert pixel[0] > 200 and pixel[1] < 60 and pixel[2] < 60


def test_arrays_of_each_dtype() -> None:
    assert read_image(np.array([[1.0, 0.5]]))[0, :, 0].tolist() == [255, 128]
    assert read_image(np.array([[True, False]]))[0, :, 0].tolist() == [255, 0]
    assert read_image(np.zeros((2, 2, 1), np.uint8)).shape == (2, 2, 3)
    gray_alpha = np.array([[[0.0, 0.0]]])  # transparent black over white
    assert read_image(gray_alpha).tolist() == [[[255, 255, 255]]]


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((2, 2), 255.0), r"values in \[0, 1\].*Divide by 255"),
        (np.array([[np.nan, 0.0]]), "NaN"),
        (np.zeros((3, 32, 32), np.float32), "channels-first"),
        (np.zeros((8, 8, 5), np.uint8), r"expected \(H, W\)"),
        (np.zeros((4, 4), np.int64), "Unsupported image dtype int64"),
        (np.zeros(4, np.uint8), r"expected \(H, W\)"),
    ],
)
def test_bad_arrays_say_what_to_do(array: np.ndarray, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        read_image(array)


def test_missing_file_folder_and_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="No such image file"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder"):
        read_image(tmp_path)
    text = tmp_path / "notes.png"
    text.write_text("not really a png")
    with pytest.raises(ImageError, match="notes.png.*not an image file"):
        read_image(text)


def test_truncated_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])
    with pytest.raises(ImageError, match="cut.png.*truncated or corrupt"):
        read_image(path)


def test_decompression_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (100, 100)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5000)  # the file has 10000 pixels
    with pytest.raises(ImageError, match="big.png.*too large.*MAX_IMAGE_PIXELS"):
        read_image(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 2000)  # over twice the limit: Pillow errors
    with pytest.raises(ImageError, match="too large"):
        read_image(path)


def test_wrong_kind_of_object() -> None:
    with pytest.raises(ImageError, match="Cannot use dict as an image"):
        read_image({})  # type: ignore[arg-type]
    with pytest.raises(ImageError, match="empty list"):
        prepare_images([], Preprocess())


def test_preprocess_follows_its_documented_recipe(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), np.uint8)
    path = tmp_path / "photo.png"
    Image.fromarray(image).save(path)
    pre = Preprocess(size=(20, 30), mean=(0.4, 0.5, 0.6), std=(0.2, 0.25, 0.3))
    resized = np.asarray(Image.fromarray(image).resize((30, 20), Image.Resampling.BILINEAR))
    expected = ((resized / 255.0 - pre.mean) / pre.std).transpose(2, 0, 1)[None]
    for source in (path, image, Image.fromarray(image)):
        batch = pre(source)
        assert batch.dtype == np.float32 and batch.shape == (1, 3, 20, 30)
        np.testing.assert_allclose(batch, expected, atol=1e-5)


def test_a_list_of_mixed_images_makes_one_batch(tmp_path: Path, halves: np.ndarray) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(halves).save(path)
    batch = prepare_images([path, halves, halves.astype(np.float32) / 255], Preprocess(size=(4, 6)))
    assert batch.shape == (3, 3, 4, 6)
    np.testing.assert_allclose(batch[0], batch[1])
    np.testing.assert_allclose(batch[0], batch[2], atol=1e-5)


def test_float_images_keep_their_precision() -> None:
    ramp = np.linspace(0, 1, 1000, dtype=np.float32).reshape(1, 1000)
    batch = Preprocess(size=None, mean=(0.0,), std=(1.0,))(ramp)
    np.testing.assert_allclose(batch[0, 0], ramp, atol=1e-6)  # not rounded to 8 bits


def test_gray_models_get_one_channel_of_luma() -> None:
    pixel = np.array([[[255, 0, 0]]], np.uint8)
    batch = Preprocess(size=None, mean=(0.0,), std=(1.0,))(pixel)
    assert batch.shape == (1, 1, 1, 1)
    assert batch[0, 0, 0, 0] == pytest.approx(0.299)


def test_prepared_nchw_is_used_as_is_and_never_shared() -> None:
    prepared = np.random.default_rng(0).standard_normal((2, 3, 5, 7))
    batch = prepare_images(prepared, Preprocess())
    assert batch.dtype == np.float32 and batch.shape == (2, 3, 5, 7)
    np.testing.assert_allclose(batch, prepared, rtol=1e-6)
    batch[:] = 0
    assert prepared.any()
    with pytest.raises(ImageError, match="must be float"):
        prepare_images(np.zeros((1, 3, 4, 4), np.uint8), Preprocess())


def test_images_of_different_sizes_need_a_target_size() -> None:
    images = [np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]
    with pytest.raises(ImageError, match="different sizes"):
        prepare_images(images, Preprocess(size=None))
    assert prepare_images(images, Preprocess(size=(3, 3))).shape == (2, 3, 3, 3)


@pytest.mark.parametrize(
    "kwargs",
    [{"size": (0, 4)}, {"size": (4,)}, {"mean": (0.5, 0.5)}, {"std": (0.0, 1.0, 1.0)}],
)
def test_preprocess_validates(kwargs: dict) -> None:
    with pytest.raises(featvis.ArgumentError):
        Preprocess(**kwargs)


def test_inputs_are_not_modified(halves: np.ndarray) -> None:
    before = halves.copy()
    pil = Image.fromarray(halves)
    prepare_images([halves, pil], Preprocess(size=(2, 2)))
    np.testing.assert_array_equal(halves, before)
    np.testing.assert_array_equal(np.asarray(pil), before)


def test_an_empty_image_is_refused() -> None:
    import featvis

    for empty in (np.zeros((0, 0, 3), np.uint8), np.zeros((0, 5), np.float32)):
        with pytest.raises(featvis.ImageError, match=r"is empty \(0x\d pixels\)"):
            featvis.read_image(empty)
        with pytest.raises(featvis.ImageError, match="is empty"):
            featvis.prepare_images([empty], featvis.Preprocess())
