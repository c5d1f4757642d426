"""The survey on a Dask LocalCluster of two worker processes: identical to one process, on
PyTorch and on ONNX, and a worker that dies mid-run costs nothing but time."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import featvis
from featvis.samples import SampleImages

pytestmark = pytest.mark.slow

import cloudpickle  # noqa: E402  (featvis[dask], in the test extra)
import distributed  # noqa: E402

# The workers unpickle this module's classes by value: it is not importable there.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


@pytest.fixture(scope="module")
def client() -> Iterator[distributed.Client]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN as an ONNX graph: conv, ReLU, max pool, strided conv, ReLU."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(5)
    w1 = rng.normal(0, 0.5, (6, 3, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.3, (8, 6, 3, 3)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["y"], name="relu2"),
    ]
    graph = helper.make_graph(
        nodes,
        "small",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 8, 8])],
        [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    onnx.save(model, path)
    return path


def test_two_workers_equal_one_process_on_onnx(
    client: distributed.Client, onnx_file: Path, tmp_path: Path
) -> None:
    folder = tmp_path / "images"
    from featvis.samples import write_samples

    write_samples(folder, 150, size=(48, 40), by_sample=True)
    layers = ["relu1", "y"]
    one = featvis.survey(
        str(onnx_file), folder, layers, k=5, labels="folder", batch_size=8, progress=False
    )
    two = featvis.survey(
        str(onnx_file),
        folder,
        layers,
        k=5,
        labels="folder",
        batch_size=8,
        client=client,
        chunk_size=24,
        progress=False,
    )
    assert two.equal(one)
    assert two.fields["y"] == one.fields["y"]  # measured once, on a worker
    assert two.top_classes("y", 3) == one.top_classes("y", 3)


def test_two_workers_equal_one_process_on_torch(client: distributed.Client) -> None:
    images = SampleImages(64, seed=4)
    layer = "_blocks.3._relu1"
    one = featvis.survey(
        "efficientnet_lite0",
        images,
        layer,
        k=4,
        batch_size=16,
        receptive_fields=False,
        progress=False,
    )
    two = featvis.survey(
        "efficientnet_lite0",
        images,
        layer,
        k=4,
        batch_size=16,
        receptive_fields=False,
        client=client,
        chunk_size=16,
        progress=False,
    )
    assert two.equal(one)
    assert one.provenance["backend"] == "torch"


class DiesOnce:
    """The images; reading image ``at`` kills the worker process the first time (a marker file
    says it happened), as a machine lost mid-run would."""

    def __init__(self, images: SampleImages, at: int, marker: Path) -> None:
        self.images, self.at, self.marker = images, at, marker

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> np.ndarray:
        if i == self.at and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(1)
        return self.images[i]


def test_a_worker_that_dies_is_replaced_and_nothing_is_lost_or_counted_twice(
    client: distributed.Client, tmp_path: Path
) -> None:
    images = SampleImages(120, size=(32, 32), seed=9)
    marker = tmp_path / "died"
    dying = DiesOnce(images, 70, marker)
    description = "featvis.testing:tiny_cnn"
    one = featvis.survey(description, images, ["relu1", "relu2"], k=6, batch_size=8, progress=False)
    two = featvis.survey(
        description,
        dying,
        ["relu1", "relu2"],
        k=6,
        batch_size=8,
        client=client,
        chunk_size=16,
        progress=False,
    )
    assert marker.exists(), "the worker did not die: the test tested nothing"
    assert two.images == 120 and two.coverage.intervals == [(0, 120)]
    assert two.equal(one)


def test_a_one_shot_iterator_cannot_be_split(client: distributed.Client) -> None:
    with pytest.raises(featvis.ArgumentError, match="can only be read once"):
        featvis.survey("featvis.testing:tiny_cnn", iter(SampleImages(4)), "conv1", client=client)
