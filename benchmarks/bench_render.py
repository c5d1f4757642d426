"""normalize + montage against the floor: one min/max pass plus one copy of the same bytes."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from harness import Row, compare

import featvis

SHAPES = [(1, 96, 55, 55), (1, 64, 112, 112), (1, 2048, 7, 7)]


def rows(quick: bool) -> Iterator[Row]:
    rng = np.random.default_rng(0)
    for shape in SHAPES[:1] if quick else SHAPES:
        acts = rng.standard_normal(shape).astype(np.float32)

        def floor(a: np.ndarray = acts) -> object:
            return a.min(), a.max(), a.copy()

        def job(a: np.ndarray = acts) -> object:
            return featvis.montage(a)  # scope="global" is the default

        case_s, floor_s = compare(job, floor, rounds=5 if quick else 15)
        yield Row("render", f"montage(normalize) {shape}", "min/max + copy", case_s, floor_s, 4.0)
