"""The order the survey sums a map in: written out, so any backend can follow it bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from featvis._reduce import map_sums, summarize


def pairwise_by_hand(values: list[float]) -> float:
    """The documented order, in plain Python floats (IEEE float64 additions)."""
    while len(values) > 1:
        half = len(values) // 2
        paired = [values[i] + values[i + half] for i in range(half)]
        values = paired + values[2 * half :]
    return values[0]


def spread_values(rng: np.random.Generator, n: int) -> np.ndarray:
    """float32 values over 60 binary orders of magnitude: their float64 sum depends on the
    order of the additions."""
    return (rng.standard_normal(n) * 2.0 ** rng.integers(-30, 30, n)).astype(np.float32)


@pytest.mark.parametrize("length", [1, 2, 3, 7, 8, 9, 49, 128, 129, 196, 784, 3136])
def test_map_sums_follow_the_written_out_order(length: int) -> None:
    rng = np.random.default_rng(length)
    maps = spread_values(rng, 5 * length).reshape(5, length)
    got = map_sums(maps.astype(np.float64))
    want = [pairwise_by_hand([float(v) for v in row]) for row in maps]
    assert got.tolist() == want


def test_the_order_matters_for_such_values() -> None:
    # What makes the test above able to fail: left-to-right sums of the same rows differ.
    maps = spread_values(np.random.default_rng(0), 20 * 784).reshape(20, 784)
    sequential = [float(np.cumsum(row.astype(np.float64))[-1]) for row in maps]
    assert map_sums(maps.astype(np.float64)).tolist() != sequential


def test_summarize_sums_each_map_in_that_order() -> None:
    acts = spread_values(np.random.default_rng(1), 2 * 3 * 7 * 5).reshape(2, 3, 7, 5)
    summary = summarize(acts)
    for i in range(2):
        for c in range(3):
            want = pairwise_by_hand([float(v) for v in acts[i, c].ravel()])
            assert summary.sums[i, c] == want
