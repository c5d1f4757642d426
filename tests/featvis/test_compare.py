"""featvis.compare on framework-free backends: matching rules, tolerance policy, the table."""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pytest

import featvis
from featvis import Layer, Preprocess, number_layers
from featvis.testing import ArrayBackend, Step, tiny_cnn

IMAGES = [np.full((32, 32, 3), 90, np.uint8), np.eye(32, dtype=np.uint8)[:, :, None] * 200]


class Sourced(ArrayBackend):
    """An ArrayBackend whose layers carry sources, as an exported model's do."""

    def __init__(self, steps: Sequence[Step], sources: dict[str, str], **options: object) -> None:
        super().__init__(steps, **options)  # type: ignore[arg-type]
        self.sources = sources

    def _list_layers(self) -> list[Layer]:
        return number_layers(
            dataclasses.replace(layer, source=self.sources.get(layer.name))
            for layer in super()._list_layers()
        )


def step(name: str, fn: Callable[[np.ndarray], np.ndarray], kind: str) -> Step:
    return Step(name, lambda x: fn(x).astype(np.float32), kind)


def conv(x: np.ndarray) -> np.ndarray:
    return x * 2.0 - 0.5


def bn(x: np.ndarray) -> np.ndarray:
    return x * 3.0 + 1.0


def relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0.0)


def torch_like() -> Sourced:
    steps = [
        step("conv", conv, "conv"),
        step("bn", bn, "bn"),
        step("act#1", relu, "relu"),
        step("drop", lambda x: x, "drop"),
        step("act#2", lambda x: relu(x - 2.0), "relu"),
    ]
    return Sourced(steps, {s.name: s.name for s in steps})


def test_identical_backends_match_by_name_and_pass() -> None:
    table = featvis.compare(tiny_cnn(), tiny_cnn(), IMAGES)
    assert len(table) == 8 and {row.how for row in table} == {"name"}
    assert table[0].why == "the same tensor name 'stem' in both"
    assert table.all_matched and table.passed and table.ok
    assert all(row.max_abs == 0 and row.cosine == pytest.approx(1.0) for row in table)


def test_different_weights_fail() -> None:
    table = featvis.compare(tiny_cnn(seed=0), tiny_cnn(seed=1), IMAGES)
    assert table.all_matched and not table.passed and not table.ok
    assert not table[0].passed and table[0].max_rel > 0.1 and table[0].cosine < 0.99
    assert str(table).endswith("Verdict: FAILED: 8 of 8 pairs beyond tolerance.")


@pytest.mark.parametrize("legacy", [True, False])
def test_batchnorm_folded_at_export_is_matched_to_the_batchnorm(legacy: bool) -> None:
    # The TorchScript exporter names the folded Conv after the conv module (legacy); the
    # newer one after the BatchNorm. Either way its value is the BatchNorm's output.
    folded_source = "conv" if legacy else "bn"
    exported = Sourced(
        [
            step("c", lambda x: bn(conv(x)), "conv"),
            step("r1", relu, "relu"),
            step("r2", lambda x: relu(x - 2.0), "relu"),
        ],
        {"c": folded_source, "r1": "act#1", "r2": "act#2"},
    )
    table = featvis.compare(torch_like(), exported, IMAGES)
    assert [(row.layer_a.name, row.layer_b.name, row.how) for row in table] == [
        ("bn", "c", "folded" if legacy else "source"),
        ("act#1", "r1", "source"),
        ("act#2", "r2", "source"),
    ]
    assert table.passed and table.all_matched
    reasons = {u.layer.name: u.reason for u in table.unmatched_a}
    assert "folded at export into the BatchNorm" in reasons["conv"] and "dropout" in reasons["drop"]
    assert "no BatchNorm for 'bn'" in table[0].why if legacy else "'bn'" in table[0].why
    # Matching the folded Conv with the torch conv, as its name says, would be wrong:
    a = torch_like().activations(IMAGES, "conv")
    b = exported.activations(IMAGES, "c")
    assert np.abs(a - b).max() > 1.0


def test_folding_is_recognized_from_either_side() -> None:
    exported = Sourced([step("c", lambda x: bn(conv(x)), "conv")], {"c": "conv"})
    table = featvis.compare(exported, torch_like(), IMAGES, layers=["c"])
    assert [(row.layer_a.name, row.layer_b.name, row.how) for row in table] == [
        ("c", "bn", "folded")
    ]
    assert table.passed


def test_calls_of_a_reused_module_match_by_call_not_by_position() -> None:
    # An extra ReLU with no source sits between the two calls, so the aliases shift: relu2 is
    # act#2 in torch_like but "extra" here. Only the sources pair the calls right.
    exported = Sourced(
        [
            step("c", lambda x: bn(conv(x)), "conv"),
            step("first", relu, "relu"),
            step("extra", relu, "relu"),  # the identity on ReLU outputs
            step("second", lambda x: relu(x - 2.0), "relu"),
        ],
        {"c": "bn", "first": "act#1", "second": "act#2"},
    )
    table = featvis.compare(torch_like(), exported, IMAGES)
    pairs = {row.layer_a.name: row.layer_b.name for row in table}
    assert pairs["act#2"] == "second" and table.passed
    assert [layer.alias for layer in exported.layers()][2:] == ["relu2", "relu3"]
    assert [(u.layer.name, u.explained) for u in table.unmatched_b] == [("extra", True)]
    assert table.all_matched


def test_an_unexplained_missing_layer_is_not_all_matched() -> None:
    exported = Sourced([step("c", lambda x: bn(conv(x)), "conv")], {"c": "bn"})
    table = featvis.compare(torch_like(), exported, IMAGES)
    assert not table.all_matched and table.passed and not table.ok
    missing = [u.layer.name for u in table.unmatched_a if not u.explained]
    assert missing == ["act#1", "act#2"]
    assert "no counterpart in b" in str(table)


def _scaled(factor: float, error: float) -> ArrayBackend:
    return ArrayBackend([step("x", lambda x: x * factor + error * factor, "conv")])


@pytest.mark.parametrize("factor", [1e-3, 1.0, 1e4])
def test_the_tolerance_scales_with_the_peak(factor: float) -> None:
    reference = _scaled(factor, 0.0)
    within = featvis.compare(reference, _scaled(factor, 5e-5), IMAGES)
    beyond = featvis.compare(reference, _scaled(factor, 5e-3), IMAGES)
    assert within.passed and not beyond.passed
    assert within[0].max_rel == pytest.approx(5e-5, rel=0.01)
    tighter = featvis.compare(reference, _scaled(factor, 5e-5), IMAGES, rtol=1e-5, atol=0.0)
    assert not tighter.passed


def test_only_the_layers_asked_for() -> None:
    table = featvis.compare(tiny_cnn(), tiny_cnn(), IMAGES, layers=["conv2", "stem"])
    assert [row.layer_a.name for row in table] == ["stem", "block.conv"]
    assert table.unmatched_b == []
    with pytest.raises(featvis.UnknownLayerError):
        featvis.compare(tiny_cnn(), tiny_cnn(), IMAGES, layers=["conv9"])


def test_different_input_sizes_are_refused() -> None:
    other = tiny_cnn(preprocess=Preprocess(size=(16, 16), mean=(0.5,) * 3, std=(0.5,) * 3))
    with pytest.raises(featvis.ArgumentError, match=r"different sizes \(\(32, 32\)"):
        featvis.compare(tiny_cnn(), other, IMAGES)


def test_both_backends_get_the_same_prepared_batch() -> None:
    # Different normalization, same size: the batch prepared by a's Preprocess goes to both.
    other = tiny_cnn(preprocess=Preprocess(size=(32, 32)))  # ImageNet mean and std
    assert featvis.compare(tiny_cnn(), other, IMAGES).passed


def test_nan_in_one_backend_fails_and_layers_of_other_shapes_are_never_paired() -> None:
    a = ArrayBackend([step("x", lambda x: x, "conv"), step("y", lambda x: x[:, :1], "relu")])
    b = ArrayBackend(
        [step("x", lambda x: np.where(x > 0, np.nan, x), "conv"), step("y", lambda x: x, "relu")]
    )
    table = featvis.compare(a, b, IMAGES)
    assert [row.note for row in table] == ["NaN in one backend only"]
    # "y" is 1x32x32 on one side and 3x32x32 on the other: not a pair to fail, a mismatch
    assert [(u.layer.name, u.explained) for u in table.unmatched_a] == [("y", False)]
    assert "shapes differ" in table.unmatched_a[0].reason
    assert not table.passed and not table.ok and "UNMATCHED in a: y" in str(table)


def test_html_is_escaped() -> None:
    steps = [step("<b>x</b>", lambda x: x, "conv")]
    html = featvis.compare(ArrayBackend(steps), ArrayBackend(steps), IMAGES)._repr_html_()
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<b>x</b>" not in html


def _without_sources(backend: Sourced) -> Sourced:
    return Sourced(backend.steps, {})


def test_nothing_paired_is_a_failure() -> None:
    exported = Sourced([step("c", conv, "conv")], {"c": "elsewhere"})
    table = featvis.compare(torch_like(), exported, IMAGES)
    assert len(table) == 0
    assert not table.passed and not table.all_matched and not table.ok
    assert str(table).endswith(
        "Verdict: FAILED: no layers could be paired, so nothing was compared."
    )


def test_the_verdict_never_says_matched_above_unmatched_layers() -> None:
    exported = Sourced([step("c", lambda x: bn(conv(x)), "conv")], {"c": "bn"})
    text = str(featvis.compare(torch_like(), exported, IMAGES))
    assert "UNMATCHED in a: act#1, act#2: no counterpart in b." in text
    assert text.splitlines()[-1] == ("Verdict: FAILED: 2 layers without a counterpart or a reason.")
    ok = str(featvis.compare(tiny_cnn(), tiny_cnn(), IMAGES))
    assert ok.splitlines()[-1].startswith("Verdict: OK")


def test_aliases_pair_layers_only_when_a_side_records_no_module_paths() -> None:
    # The export has paths, but its "relu" tensor has none (an exporter-made node): the
    # alias relu1 must not pair it with the torch ReLU.
    exported = Sourced(
        [step("c", lambda x: bn(conv(x)), "conv"), step("made", lambda x: x * 0, "relu")],
        {"c": "bn"},
    )
    table = featvis.compare(torch_like(), exported, IMAGES)
    assert [row.layer_b.name for row in table] == ["c"]
    # A side without any path (a model converted from another framework): aliases it is.
    bare = _without_sources(exported)
    table = featvis.compare(torch_like(), bare, IMAGES)
    pairs = {(row.layer_a.name, row.layer_b.name, row.how) for row in table}
    assert ("act#1", "made", "alias") in pairs
    assert any("records no module paths" in row.why for row in table)


def test_a_model_exported_inside_a_wrapper_still_pairs_by_module_path() -> None:
    mine = torch_like()
    wrapped = Sourced(
        [step(f"t{i}", s.fn, s.kind) for i, s in enumerate(mine.steps) if s.kind != "drop"],
        {f"t{i}": f"model.{s.name}" for i, s in enumerate(mine.steps)},
    )
    table = featvis.compare(mine, wrapped, IMAGES)
    assert {row.how for row in table} == {"source"} and len(table) == 4
    assert all(row.layer_b.source == f"model.{row.layer_a.name}" for row in table)
    assert "the prefix 'model.'" in table[0].why and table.ok


def test_a_layer_that_returns_another_layers_output_pairs_with_that_layers_partner() -> None:
    class Identities(Sourced):
        def _list_layers(self) -> list[Layer]:
            layers = super()._list_layers()
            return [
                dataclasses.replace(x, same_as="act#1") if x.name == "drop" else x for x in layers
            ]

    mine = Identities(torch_like().steps, {s.name: s.name for s in torch_like().steps})
    exported = Sourced(
        [step("c", lambda x: bn(conv(x)), "conv"), step("r1", relu, "relu")],
        {"c": "bn", "r1": "act#1"},
    )
    table = featvis.compare(mine, exported, IMAGES, layers=["drop"])
    assert [(row.layer_b.name, row.how) for row in table] == [("r1", "same value")]
    assert "returns the output of 'act#1' unchanged" in table[0].why and table.passed


def test_no_folding_where_the_export_has_the_batchnorm() -> None:
    # The export kept every BatchNorm (as TorchBackend.to_onnx does), and the reference lists
    # none (it runs inside a non-leaf module): its conv is the export's conv, never its BN.
    reference = Sourced([step("conv", conv, "conv"), step("act", lambda x: relu(bn(x)), "relu")],
                        {"conv": "block.conv", "act": "block.bn.act"})  # fmt: skip
    exported = Sourced(
        [
            step("c", conv, "conv"),
            step("b", bn, "bn"),
            step("r", relu, "relu"),
        ],
        {"c": "block.conv", "b": "block.bn", "r": "block.bn.act"},
    )
    table = featvis.compare(reference, exported, IMAGES)
    assert [(row.layer_a.name, row.layer_b.name, row.how) for row in table] == [
        ("conv", "c", "source"),
        ("act", "r", "source"),
    ]
    assert table.passed


def test_a_batchnorm_the_export_records_fusing_is_paired_by_its_module() -> None:
    class Fused(Sourced):
        def _list_layers(self) -> list[Layer]:
            return [
                dataclasses.replace(x, fused=("bn",)) if x.name == "c" else x
                for x in super()._list_layers()
            ]

    exported = Fused([step("c", lambda x: bn(conv(x)), "conv"), step("r1", relu, "relu")],
                     {"c": "conv", "r1": "act#1"})  # fmt: skip
    table = featvis.compare(torch_like(), exported, IMAGES, layers=["conv", "bn", "act#1"])
    assert [(row.layer_a.name, row.layer_b.name) for row in table] == [("bn", "c"), ("act#1", "r1")]
    assert "fused bn" in table[0].why and table.passed
    assert [u.layer.name for u in table.unmatched_a] == ["conv"]
    assert "folded at export" in table.unmatched_a[0].reason
