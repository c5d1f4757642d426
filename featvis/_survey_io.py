"""A survey's mergeable state as one ``.npz`` file: arrays, plus the rest as JSON (no pickles).

The file holds ``meta`` (a JSON string: settings, layers, coverage, skipped images, the images
the top-k lists hold, labels) and, for layer ``i``, ``L{i}.top_value``, ``L{i}.top_position``,
``L{i}.top_where``, ``L{i}.total`` (exact sums, see :mod:`featvis._exact`), ``L{i}.peak``,
``L{i}.low``, ``L{i}.positive``, ``L{i}.class_totals`` and, when measured, the receptive
field's ``L{i}.field_rows`` and ``L{i}.field_cols``. It is read back bit for bit.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from featvis._errors import ArgumentError
from featvis._exact import ExactSum
from featvis._images import Preprocess
from featvis._receptive import ReceptiveField
from featvis._reduce import CLASS_LIMIT, CLASS_QUANTUM, Coverage, LayerState
from featvis._stream import ImageInfo, Skipped
from featvis._survey import Survey

__all__ = ["read_state", "write_state"]

FORMAT = "featvis-survey"
VERSION = 1


def write_state(survey: Survey, path: Path) -> Path:
    """Write ``survey``'s state to ``path`` (atomically: a reader never sees half a file)."""
    states = list(dict.fromkeys(survey._states.values()))  # distinct, in order
    arrays: dict[str, np.ndarray] = {}
    layers = []
    for i, state in enumerate(states):
        labels = sorted(state.class_totals, key=lambda v: (type(v).__name__, v))
        layers.append(
            {
                "name": state.name,
                "channels": state.channels,
                "spatial": list(state.spatial),
                "images": state.images,
                "classes": [[label, state.class_images[label]] for label in labels],
            }
        )
        arrays[f"L{i}.top_value"] = state.top_value
        arrays[f"L{i}.top_position"] = state.top_position
        arrays[f"L{i}.top_where"] = state.top_where
        arrays[f"L{i}.total"] = state.total.canonical()
        arrays[f"L{i}.peak"] = state.peak
        arrays[f"L{i}.low"] = state.low
        arrays[f"L{i}.positive"] = state.positive
        if labels:
            arrays[f"L{i}.class_totals"] = np.stack(
                [state.class_totals[label].canonical() for label in labels]
            )
        field = survey.fields.get(state.name)
        if field is not None:
            arrays[f"L{i}.field_rows"] = field.rows
            arrays[f"L{i}.field_cols"] = field.cols
            layers[-1]["field_input_size"] = list(field.input_size)
    pre = survey.preprocess
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "keys": [[key, states.index(survey._states[key])] for key in survey._keys],
        "layers": layers,
        "k": survey.k,
        "by": survey.by,
        "input_size": None if survey.input_size is None else list(survey.input_size),
        "preprocess": {
            "size": None if pre.size is None else list(pre.size),
            "mean": list(pre.mean),
            "std": list(pre.std),
        },
        "coverage": [list(iv) for iv in survey.coverage.intervals],
        "skipped": survey.skipped,
        "skipped_details": [[s.position, s.name, s.reason] for s in survey.skipped_details],
        "images": [
            [info.position, info.path, info.label, list(info.size)]
            for info in sorted(survey.infos.values(), key=lambda i: i.position)
        ],
        "fingerprint": survey.fingerprint,
        "provenance": survey.provenance,
        "classes": survey.classes,
    }
    arrays["meta"] = np.array(json.dumps(meta))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)  # type: ignore[arg-type]
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_state(path: Path) -> Survey:
    """Read a state written by :func:`write_state`."""
    if not path.is_file():
        raise ArgumentError(f"No survey state at {os.fspath(path)!r}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArgumentError(f"{os.fspath(path)!r} is not a survey state: {exc}") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except (KeyError, json.JSONDecodeError):
        meta = {}
    if meta.get("format") != FORMAT:
        raise ArgumentError(f"{os.fspath(path)!r} is not a featvis survey state.")
    if meta.get("version") != VERSION:
        raise ArgumentError(
            f"{os.fspath(path)!r} is a survey state of version {meta.get('version')}; this "
            f"featvis reads version {VERSION}."
        )
    k, by = int(meta["k"]), meta["by"]
    states = []
    fields = {}
    for i, layer in enumerate(meta["layers"]):
        state = LayerState(layer["name"], layer["channels"], tuple(layer["spatial"]), k, by)
        state.top_value = arrays[f"L{i}.top_value"]
        state.top_position = arrays[f"L{i}.top_position"]
        state.top_where = arrays[f"L{i}.top_where"]
        state.total = ExactSum.from_limbs(
            arrays[f"L{i}.total"], (state.channels,), state.total.quantum, state.total.limit
        )
        state.images = int(layer["images"])
        state.peak = arrays[f"L{i}.peak"]
        state.low = arrays[f"L{i}.low"]
        state.positive = arrays[f"L{i}.positive"]
        for j, (label, count) in enumerate(layer["classes"]):
            state.class_totals[label] = ExactSum.from_limbs(
                arrays[f"L{i}.class_totals"][j], (state.channels,), CLASS_QUANTUM, CLASS_LIMIT
            )
            state.class_images[label] = int(count)
        if "field_input_size" in layer:
            fields[state.name] = ReceptiveField(
                state.name,
                tuple(layer["field_input_size"]),
                arrays[f"L{i}.field_rows"],
                arrays[f"L{i}.field_cols"],
            )
        states.append(state)
    pre = meta["preprocess"]
    preprocess = Preprocess(
        size=None if pre["size"] is None else tuple(pre["size"]),
        mean=tuple(pre["mean"]),
        std=tuple(pre["std"]),
    )
    survey = Survey(
        [(key, states[index]) for key, index in meta["keys"]],
        k=k,
        by=by,
        preprocess=preprocess,
        input_size=None if meta["input_size"] is None else tuple(meta["input_size"]),
    )
    survey.coverage = Coverage(tuple(iv) for iv in meta["coverage"])
    survey.skipped = int(meta["skipped"])
    survey.skipped_details = [Skipped(p, n, r) for p, n, r in meta["skipped_details"]]
    survey.infos = {
        p: ImageInfo(p, path_, label, (size[0], size[1]))
        for p, path_, label, size in meta["images"]
    }
    survey.fields = fields
    survey.fingerprint = meta["fingerprint"]
    survey.provenance = meta["provenance"]
    survey.classes = meta["classes"]
    return survey
