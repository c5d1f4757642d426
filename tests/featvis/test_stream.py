"""Streaming images: collections of every kind, batches, bounded look-ahead, errors, labels."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis import ArgumentError, ImageError
from featvis._pool import prepared_batches
from featvis._stream import as_collection
from featvis.testing import tiny_cnn


def _image(seed: int, size: tuple[int, int] = (32, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """b/2.png, a/1.jpg, a/deeper/0.bmp, a hidden file and folder, and a text file."""
    (tmp_path / "a" / "deeper").mkdir(parents=True)
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    Image.fromarray(_image(1)).save(tmp_path / "a" / "1.JPG")
    Image.fromarray(_image(0)).save(tmp_path / "a" / "deeper" / "0.bmp")
    Image.fromarray(_image(2)).save(tmp_path / "b" / "2.png")
    Image.fromarray(_image(3)).save(tmp_path / ".hidden" / "3.png")
    Image.fromarray(_image(4)).save(tmp_path / ".dot.png")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_a_folder_is_searched_recursively_in_path_order(folder: Path) -> None:
    collection = as_collection(folder)
    assert collection.kind == "folder" and collection.length == 3
    names = [Path(p).relative_to(folder).as_posix() for p in collection]
    assert names == ["a/1.JPG", "a/deeper/0.bmp", "b/2.png"]


def test_an_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ImageError, match="No image files under"):
        as_collection(tmp_path)


def test_every_kind_of_collection_gives_the_same_activations(folder: Path) -> None:
    backend = tiny_cnn()
    paths = [str(p) for p in as_collection(folder)]
    arrays = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    expected = backend.activations(paths, "conv2")
    prepared = backend.preprocess(paths)
    for images in (folder, paths, arrays, iter(arrays), (a for a in arrays), prepared):
        got = np.concatenate(
            [b.activations for b in backend.iter_activations(images, "conv2", batch_size=2)]
        )
        np.testing.assert_array_equal(got, expected)


def test_batches_fall_on_multiples_of_the_batch_size_in_positions() -> None:
    backend = tiny_cnn()
    images = [_image(i) for i in range(10)]
    batches = list(backend.iter_activations(images, ["conv1", "relu2"], batch_size=4, start=6))
    assert [b.positions.tolist() for b in batches] == [[6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    assert list(batches[0].activations) == ["conv1", "relu2"]
    assert [info.position for info in batches[1].images] == [8, 9, 10, 11]
    assert batches[1].images[0].size == (32, 32)


def test_images_are_read_ahead_but_never_much_more_than_a_batch() -> None:
    taken = 0

    def source() -> Iterator[np.ndarray]:
        nonlocal taken
        for i in itertools.count():
            taken += 1
            yield _image(i % 7)

    batches = prepared_batches(
        as_collection(source()), tiny_cnn().preprocess, batch_size=8, threads=2
    )
    for number, batch in enumerate(batches):
        assert len(batch) == 8
        # one batch handed out, at most max(2 * batch, 4 * threads) waiting behind it
        assert taken <= (number + 1) * 8 + 16 + 1
        if number == 20:
            break
    batches.close()


def test_an_unreadable_file_is_named_or_skipped_and_counted(folder: Path) -> None:
    (folder / "b" / "broken.png").write_bytes(b"\x89PNG not really")
    backend = tiny_cnn()
    with pytest.raises(ImageError, match="broken.png"):
        list(backend.iter_activations(folder, "conv1"))
    batches = list(backend.iter_activations(folder, "conv1", on_error="skip", batch_size=2))
    skipped = [s for b in batches for s in b.skipped]
    assert [Path(s.name).name for s in skipped] == ["broken.png"]
    assert skipped[0].position == 3
    assert sum(len(b) for b in batches) == 3


def test_a_batch_of_only_unreadable_images_still_reports_them(tmp_path: Path) -> None:
    for name in ("0.png", "1.png"):
        (tmp_path / name).write_bytes(b"junk")
    Image.fromarray(_image(0)).save(tmp_path / "2.png")
    batches = list(tiny_cnn().iter_activations(tmp_path, "conv1", on_error="skip", batch_size=2))
    assert [len(b) for b in batches] == [0, 1]
    assert [s.position for s in batches[0].skipped] == [0, 1]
    assert batches[0].activations.shape[0] == 0


def test_labels_from_a_sequence_a_function_or_folders(folder: Path) -> None:
    backend = tiny_cnn()

    def labels_of(**options: object) -> list[object]:
        batches = backend.iter_activations(folder, "conv1", **options)  # type: ignore[arg-type]
        return [info.label for b in batches for info in b.images]

    assert labels_of(labels="folder") == ["a", "deeper", "b"]
    assert labels_of(labels=[3, 1, 2]) == [3, 1, 2]
    assert labels_of(labels=lambda position, path: Path(path).suffix) == [".JPG", ".bmp", ".png"]
    with pytest.raises(ArgumentError, match="2 labels were given for 3 images"):
        labels_of(labels=[1, 2])


def test_images_of_different_sizes_need_a_preprocess_size() -> None:
    backend = tiny_cnn(preprocess=featvis.Preprocess(size=None))
    with pytest.raises(ImageError, match="a batch needs one size"):
        list(backend.iter_activations([_image(0, (32, 32)), _image(1, (40, 32))], "conv1"))


def test_an_indexable_object_is_read_by_index_in_the_threads() -> None:
    class Pairs:
        """A Dataset in all but name: (image, label) items by index."""

        def __len__(self) -> int:
            return 5

        def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
            if i == 3:
                raise OSError("disk on fire")
            return _image(i), i * 10

    backend = tiny_cnn()
    with pytest.raises(ImageError, match="item 3 of the dataset.*disk on fire"):
        list(backend.iter_activations(Pairs(), "conv1"))
    batches = list(backend.iter_activations(Pairs(), "conv1", on_error="skip"))
    assert [info.label for b in batches for info in b.images] == [0, 10, 20, 40]
    assert [s.position for b in batches for s in b.skipped] == [3]
