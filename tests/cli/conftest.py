"""The CLI's tests run ``featvis.cli.main([...])`` in this process, on a tiny model that a test
plugin registers through the plugin hook, as a third-party plugin would register its own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import featvis
from featvis.cli import main
from featvis.plugins import load_plugins, pm
from featvis.testing import tiny_cnn

TINY = "tiny-cnn"
TINY_CLASSES = [f"class {i}" for i in range(10)]


class TinyModels:
    """A plugin offering the numpy CNN of featvis.testing by name, with class names."""

    @featvis.hookimpl
    def register_models(self, register: Callable[[featvis.ModelSpec], None]) -> None:
        register(featvis.ModelSpec(name=TINY, load=self.load, description="a tiny numpy CNN"))

    @staticmethod
    def load(name: str) -> featvis.Backend:
        backend = tiny_cnn(preprocess=featvis.Preprocess(size=(32, 32)))
        backend.categories = list(TINY_CLASSES)
        return backend


@pytest.fixture
def tiny() -> Iterator[str]:
    """The name of the tiny model, registered for the test's duration."""
    load_plugins()  # the entry points first, so that the test plugin adds to them
    plugin = TinyModels()
    pm.register(plugin, name="featvis-tests-tiny")
    try:
        yield TINY
    finally:
        pm.unregister(plugin)


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    """A 48x64 RGB photo file."""
    path = tmp_path / "photo.png"
    pixels = np.random.default_rng(0).integers(0, 256, (48, 64, 3), np.uint8)
    Image.fromarray(pixels).save(path)
    return path


class Run:
    """``featvis(*args)`` runs the command in-process: exit status, stdout and stderr."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys

    def __call__(self, *args: str, status: int = 0) -> tuple[str, str]:
        self.capsys.readouterr()
        code = main(list(args))
        out, err = self.capsys.readouterr()
        assert code == status, (code, out, err)
        return out, err

    def error(self, *args: str) -> str:
        """The one line a user error prints (exit status 2, no traceback)."""
        _, err = self(*args, status=2)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("featvis: error: "), err
        return lines[0]


@pytest.fixture
def featvis_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Run:
    """Runs the command in ``tmp_path`` (what it writes lands there)."""
    monkeypatch.chdir(tmp_path)
    return Run(capsys)
