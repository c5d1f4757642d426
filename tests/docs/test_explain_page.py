"""docs/explain.md stays true: its code runs, prints what the page shows, writes its figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_explain_page_runs_and_prints_what_it_shows(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("make_explain", ROOT / "docs" / "make_explain.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    figures = module.run(tmp_path)
    assert len(figures) >= 6
    for figure in figures:
        assert figure.stat().st_size > 10_000, figure
