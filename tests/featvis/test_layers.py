"""Layers: canonical aliases, resolution by name or alias, and the layer table."""

import numpy as np
import pytest

import featvis
from featvis import Layer, number_layers
from featvis._layers import LayerIndex


def _layers(*specs: tuple[str, str]) -> list[Layer]:
    return number_layers(Layer(name=name, kind=kind, type="T") for name, kind in specs)


def test_aliases_count_each_kind_in_execution_order() -> None:
    layers = _layers(
        ("features.0", "conv"),
        ("features.1", "relu"),
        ("features.2", "pool"),
        ("features.3", "conv"),
        ("features.4", "relu"),
        ("classifier.1", "fc"),
        ("classifier.2", "relu"),
        ("classifier.3", "drop"),
        ("classifier.4", "fc"),
    )
    assert [(layer.index, layer.alias) for layer in layers] == [
        (0, "conv1"),
        (1, "relu1"),
        (2, "pool1"),
        (3, "conv2"),
        (4, "relu2"),
        (5, "fc1"),
        (6, "relu3"),
        (7, "drop1"),
        (8, "fc2"),
    ]


def test_duplicate_names_and_unknown_kinds_are_refused() -> None:
    with pytest.raises(featvis.ArgumentError, match="named 'a'"):
        _layers(("a", "conv"), ("a", "relu"))
    with pytest.raises(featvis.ArgumentError, match="kind 'convolution'"):
        Layer(name="a", kind="convolution", type="T")


def test_a_layer_is_found_by_name_alias_or_itself() -> None:
    layers = _layers(("features.0", "conv"), ("features.1", "relu"))
    index = LayerIndex(layers)
    assert index.resolve("features.0") is layers[0]
    assert index.resolve("conv1") is layers[0]
    assert index.resolve(layers[1]) is layers[1]


def test_a_module_name_wins_over_an_alias_it_collides_with() -> None:
    layers = _layers(("conv2", "conv"), ("other", "conv"))  # the second is aliased conv2
    assert LayerIndex(layers).resolve("conv2").name == "conv2"


def test_unknown_layer_suggests_the_closest_first_then_where_to_see_all() -> None:
    layers = _layers(*[(f"features.{i}", k) for i, k in enumerate(["conv", "relu"] * 5)])
    with pytest.raises(featvis.UnknownLayerError) as info:
        LayerIndex(layers).resolve("conv9")
    message = str(info.value)
    assert message.startswith("Unknown layer 'conv9'. Did you mean 'conv5' (features.8)")
    assert message.endswith(
        "All 10 layers: featvis.layer_table(backend) in Python, `featvis layers MODEL` in a shell."
    )
    assert isinstance(info.value, KeyError)


def test_the_unknown_layer_message_stays_short_for_a_big_model() -> None:
    layers = _layers(*[(f"blocks.{i}.conv", "conv") for i in range(300)])
    for key in ("blocks.7.cnv", "nothing like it"):
        with pytest.raises(featvis.UnknownLayerError) as info:
            LayerIndex(layers).resolve(key)
        assert len(str(info.value)) < 300, str(info.value)
        assert "All 300 layers" in str(info.value)
    assert "conv1, conv2, conv3, conv4, conv5, conv6, ... conv300" in str(info.value)


def test_a_module_called_twice_needs_its_call_number() -> None:
    layers = _layers(
        ("layer1.0.relu#1", "relu"), ("layer1.0.conv2", "conv"), ("layer1.0.relu#2", "relu")
    )
    index = LayerIndex(layers)
    with pytest.raises(featvis.AmbiguousLayerError) as info:
        index.resolve("layer1.0.relu")
    assert "'layer1.0.relu#1' (relu1)" in str(info.value)
    assert "'layer1.0.relu#2' (relu2)" in str(info.value)
    assert index.resolve("layer1.0.relu#2").alias == "relu2"


def test_a_layer_is_named_by_a_string_or_its_index_in_the_table() -> None:
    layers = _layers(("a", "conv"), ("b", "relu"), ("c", "pool"))
    index = LayerIndex(layers)
    assert index.resolve(0) is layers[0]
    assert index.resolve(np.int64(2)) is layers[2]
    assert index.resolve(-1) is layers[2]  # as in a list
    assert index.resolve("1") is layers[1]  # the command line's --layer 1
    with pytest.raises(featvis.UnknownLayerError, match="index 3 is out of range: .* 0 to 2"):
        index.resolve(3)
    with pytest.raises(featvis.UnknownLayerError, match="index 7 is out of range"):
        index.resolve("7")
    with pytest.raises(featvis.ArgumentError, match="not float 1.0"):
        index.resolve(1.0)  # type: ignore[arg-type]
    with pytest.raises(featvis.ArgumentError, match="not bool"):
        index.resolve(True)  # type: ignore[arg-type]


def test_a_layer_named_with_digits_wins_over_the_index() -> None:
    layers = _layers(("1", "conv"), ("0", "relu"))  # an nn.Sequential names its modules so
    assert LayerIndex(layers).resolve("0").name == "0"
    assert LayerIndex(layers).resolve(0).name == "1"  # an int is always the index


def test_layer_table_reads_like_matlab_net_layers() -> None:
    layers = number_layers(
        [
            Layer(
                name="features.0",
                kind="conv",
                type="Conv2d",
                output_shape=(None, 64, 55, 55),
                params=23296,
                description="64 11x11x3 convolutions with stride [4 4] and padding [2 2]",
            ),
            Layer(
                name="features.1",
                kind="relu",
                type="ReLU",
                output_shape=(None, 64, 55, 55),
                description="ReLU",
            ),
            Layer(name="head", kind="fc", type="Linear", output_shape=None, params=10),
        ]
    )
    table = featvis.layer_table(layers)
    lines = str(table).splitlines()
    assert lines[0].split() == ["index", "name", "alias", "type", "output", "params", "description"]
    assert lines[2].split()[:6] == ["0", "features.0", "conv1", "Conv2d", "64x55x55", "23,296"]
    assert lines[2].endswith("64 11x11x3 convolutions with stride [4 4] and padding [2 2]")
    assert lines[4].split()[:5] == ["2", "head", "fc1", "Linear", "?"]
    assert len(table) == 3 and table[1].alias == "relu1"
    html = table._repr_html_()
    assert html.count("<tr>") == 4 and "<td>conv1</td>" in html


def test_layer_table_escapes_html() -> None:
    layers = number_layers([Layer(name="<b>", kind="other", type="T")])
    assert "&lt;b&gt;" in featvis.layer_table(layers)._repr_html_()


def test_layer_table_takes_a_backend() -> None:
    from featvis.testing import tiny_cnn

    assert [row.alias for row in featvis.layer_table(tiny_cnn())][:2] == ["conv1", "relu1"]
    with pytest.raises(featvis.ArgumentError, match="takes a backend"):
        featvis.layer_table("resnet")


def test_a_slice_of_the_table_is_a_table() -> None:
    from featvis.testing import tiny_cnn

    table = featvis.layer_table(tiny_cnn())
    head = table[:2]
    assert isinstance(head, featvis.LayerTable) and len(head) == 2
    assert str(head).splitlines()[2].split()[:3] == ["0", "stem", "conv1"]


def test_layer_table_shows_the_module_an_exported_layer_came_from() -> None:
    layers = number_layers(
        [
            Layer(name="conv2d", kind="conv", type="Conv", params=864, source="_conv_stem"),
            Layer(name="add", kind="add", type="Add"),  # no module computed it alone
        ]
    )
    lines = str(featvis.layer_table(layers)).splitlines()
    assert lines[0].split() == [
        "index", "name", "alias", "module", "type", "output", "params", "description"
    ]  # fmt: skip
    assert lines[2].split() == ["0", "conv2d", "conv1", "_conv_stem", "Conv", "?", "864"]
    assert lines[3].split() == ["1", "add", "add1", "Add", "?"]
    # A torch layer's source is its own name: no column that repeats the name.
    same = number_layers(
        [Layer(name="features.0", kind="conv", type="Conv2d", source="features.0")]
    )
    assert "module" not in str(featvis.layer_table(same)).splitlines()[0]
