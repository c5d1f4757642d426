"""ExactSum: sums that do not depend on the order of their terms, checked against fractions."""

from fractions import Fraction

import numpy as np
import pytest

from featvis import ArgumentError
from featvis._exact import ExactSum


def _exact(values: np.ndarray) -> Fraction:
    return sum((Fraction(float(v)) for v in values), Fraction(0))


@pytest.mark.parametrize("seed", range(6))
def test_sums_equal_the_exact_sum_correctly_rounded(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = rng.normal(size=500) * 10.0 ** rng.integers(-300, 300, 500)
    if seed == 0:  # subnormals too
        values = rng.normal(size=500) * 1e-310
    cells = rng.integers(0, 3, 500)
    total = ExactSum((3,))
    total.add(cells, values)
    counts = np.bincount(cells, minlength=3)
    for c in range(3):
        exact = _exact(values[cells == c])
        assert total.values()[c] == float(exact)
        assert total.values(counts)[c] == float(exact / int(counts[c]))


def test_order_and_grouping_do_not_matter() -> None:
    rng = np.random.default_rng(7)
    values = rng.normal(size=(40, 5)) * 10.0 ** rng.integers(-20, 20, (40, 5))
    whole = ExactSum((5,))
    whole.add_rows(values)
    shuffled = values[rng.permutation(40)]
    parts = [ExactSum((5,)) for _ in range(3)]
    for part, rows in zip(parts, np.array_split(shuffled, 3)):
        part.add_rows(rows)
    merged = parts[2].merge(parts[0]).merge(parts[1])
    assert np.array_equal(merged.canonical(), whole.canonical())
    assert np.array_equal(merged.values(), whole.values())
    # float64 itself depends on the order here: the reason ExactSum exists
    assert not np.array_equal(shuffled.sum(axis=0), values.sum(axis=0))


def test_a_classic_cancellation() -> None:
    total = ExactSum((1,))
    total.add(np.zeros(3, np.intp), np.array([1e16, 1.0, -1e16]))
    assert total.values()[0] == 1.0
    assert (1e16 + 1.0) - 1e16 != 1.0


def test_a_window_truncates_tiny_parts_and_refuses_huge_values() -> None:
    total = ExactSum((1,), quantum=-100, limit=100)
    total.add(np.zeros(3, np.intp), np.array([1.5, 2.0**-101, -0.25]))
    assert total.values()[0] == 1.25
    with pytest.raises(ArgumentError, match="too large"):
        total.add(np.zeros(1, np.intp), np.array([2.0**101]))
    with pytest.raises(ArgumentError, match="NaN"):
        total.add(np.zeros(1, np.intp), np.array([np.nan]))


def test_many_additions_carry_without_overflow(monkeypatch: pytest.MonkeyPatch) -> None:
    import featvis._exact as exact

    monkeypatch.setattr(exact, "_ADDS_BEFORE_CARRY", 8)  # carry often
    total = ExactSum((1,))
    values = np.full(1000, 2.0**31 - 1.0)
    for chunk in np.split(values, 100):
        total.add(np.zeros(len(chunk), np.intp), chunk)
    assert total.integers()[0] == 1000 * (2**31 - 1) * 2**1074
    assert total.values()[0] == 1000 * (2.0**31 - 1.0)
