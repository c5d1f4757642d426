"""Timing helpers for the benchmarks: ratios against a reference measured in the same run.

A benchmark module ``bench_*.py`` defines ``rows(quick: bool) -> Iterable[Row]``. Each row
times a case and its reference side by side (interleaved, so a noisy neighbour slows both) and
reports the ratio, which is what the targets are about; absolute times only describe this run.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Row:
    group: str
    case: str
    reference: str
    case_s: float
    reference_s: float
    target: float | None = None  # the ratio to stay under, if the issue sets one
    notes: list[str] = field(default_factory=list)

    @property
    def ratio(self) -> float:
        return self.case_s / self.reference_s

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "report"
        return "ok" if self.ratio <= self.target else "OVER"


def compare(
    case: Callable[[], object],
    reference: Callable[[], object],
    *,
    rounds: int = 15,
    min_round_s: float = 0.02,
) -> tuple[float, float]:
    """Median seconds per call of ``case`` and ``reference``, measured alternately.

    Each round times a loop long enough (``min_round_s``) for the clock to be precise; the
    rounds alternate between the two so both see the same machine load.
    """
    case_s, reference_s, _ = compare_rounds(case, reference, rounds=rounds, min_round_s=min_round_s)
    return case_s, reference_s


def compare_rounds(
    case: Callable[[], object],
    reference: Callable[[], object],
    *,
    rounds: int = 15,
    min_round_s: float = 0.02,
) -> tuple[float, float, list[float]]:
    """:func:`compare`, and the ratio of each round (case over the reference timed right after
    it): their spread says how far one run's median ratio can be trusted."""
    case(), reference()  # warm up caches, lazy imports, allocator pools
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            reference()
        if time.perf_counter() - start >= min_round_s or loops >= 1 << 16:
            break
        loops *= 2
    case_times, reference_times = [], []
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(rounds):
            for fn, times in ((case, case_times), (reference, reference_times)):
                start = time.perf_counter()
                for _ in range(loops):
                    fn()
                times.append((time.perf_counter() - start) / loops)
    finally:
        if gc_was_enabled:
            gc.enable()
    ratios = [c / r for c, r in zip(case_times, reference_times)]
    return statistics.median(case_times), statistics.median(reference_times), ratios


def spread(ratios: list[float]) -> str:
    """``"1.05x per round: 1.01-1.09 (p10-p90 of 135)"``, for a row's notes."""
    ordered = sorted(ratios)
    low = ordered[len(ordered) // 10]
    high = ordered[min(len(ordered) - 1, (len(ordered) * 9) // 10)]
    return (
        f"{statistics.median(ordered):.2f}x per round: {low:.2f}-{high:.2f} "
        f"(p10-p90 of {len(ordered)})"
    )


def median_alone(fn: Callable[[], object], rounds: int) -> float:
    """Median seconds per call of ``fn`` run alone (not interleaved), after one untimed call:
    for stage shares, and for what must not run next to another case."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def format_rows(rows: list[Row]) -> str:
    """A Markdown table of rows, as pasted into docs/performance.md."""
    header = "| group | case | reference | case ms | reference ms | ratio | target | |"
    lines = [header, "| --- | --- | --- | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        target = f"<= {row.target:.2f}x" if row.target is not None else ""
        notes = "; ".join(row.notes)
        lines.append(
            f"| {row.group} | {row.case} | {row.reference} | {row.case_s * 1e3:.3f} | "
            f"{row.reference_s * 1e3:.3f} | {row.ratio:.2f}x | {target} | {row.verdict}"
            f"{' (' + notes + ')' if notes else ''} |"
        )
    return "\n".join(lines)
