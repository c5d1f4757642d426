"""Where the batch and the channels are, on small models whose layouts are written out here.

Each expected array is built by hand from a plain forward pass, so a backend that took the
wrong axis for the batch or the channels (an LSTM's (T, N, H) read as batch-first, an NHWC
block read as NCHW) fails on values, not only on shapes.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import featvis
from featvis import Preprocess
from featvis_torch import TorchBackend


def seeded(build: Any, seed: int = 0) -> Any:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build().eval()


def batch_consistent(backend: TorchBackend, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Every layer for the batch, checked image by image against each image alone."""
    names = [layer.name for layer in backend.layers() if layer.unavailable is None]
    together = backend.activations(x, names)
    for i in range(len(x)):
        alone = backend.activations(x[i : i + 1], names)
        for name in names:
            peak = float(np.abs(alone[name]).max(initial=0.0))
            np.testing.assert_allclose(
                together[name][i : i + 1], alone[name], rtol=0, atol=1e-5 * peak + 1e-6,
                err_msg=f"{name}, image {i}",
            )  # fmt: skip
    return dict(together)


class CRNN(nn.Module):
    """conv -> LSTM over the width (sequence first, as nn.LSTM defaults) -> linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d((1, None))  # (N, 6, 1, W)
        self.rnn = nn.LSTM(6, 5, bidirectional=True)
        self.fc = nn.Linear(10, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq = self.pool(self.conv(x)).squeeze(2).permute(2, 0, 1)  # (T, N, C)
        out, _ = self.rnn(seq)  # (T, N, 10)
        return self.fc(out)  # (T, N, 4)


@pytest.mark.parametrize("batch", [4, 3])  # T is 4: the batch equal to T, and not
def test_an_lstm_is_read_sequence_first_whatever_the_batch(batch: int, hygiene: Any) -> None:
    model = hygiene.watch(seeded(CRNN))
    backend = TorchBackend(model, preprocess=Preprocess(size=(6, 4)))
    layers = {layer.name: layer for layer in backend.layers()}
    assert list(layers) == ["conv", "pool", "rnn", "fc"]  # nothing after the LSTM is dropped
    assert layers["rnn"].layout == layers["fc"].layout == "LNC"
    assert layers["rnn"].output_shape == (None, 10, 1, 4)
    x = torch.randn(batch, 3, 6, 4, generator=torch.Generator().manual_seed(1))
    out = batch_consistent(backend, x)
    with torch.inference_mode():
        seq = model.pool(model.conv(x)).squeeze(2).permute(2, 0, 1)
        rnn, _ = model.rnn(seq)
        fc = model.fc(rnn)
    for name, tensor in (("rnn", rnn), ("fc", fc)):  # (T, N, C) -> (N, C, 1, T)
        np.testing.assert_allclose(
            out[name], tensor.permute(1, 2, 0)[:, :, None].numpy(), rtol=1e-6, atol=1e-6
        )


class NHWCBlock(nn.Module):
    """ConvNeXt's block without conv_mlp: LayerNorm and Linear on (N, H, W, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.norm = nn.LayerNorm(6)
        self.fc1 = nn.Linear(6, 12)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(12, 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).permute(0, 2, 3, 1)
        y = self.fc2(self.act(self.fc1(self.norm(y))))
        return y.permute(0, 3, 1, 2)


def test_an_nhwc_block_keeps_its_channels_on_c(hygiene: Any) -> None:
    model = hygiene.watch(seeded(NHWCBlock))
    backend = TorchBackend(model, preprocess=Preprocess(size=(5, 7)))
    layouts = {layer.name: (layer.layout, layer.output_shape) for layer in backend.layers()}
    assert layouts == {
        "conv": ("NCHW", (None, 6, 5, 7)),
        "norm": ("NHWC", (None, 6, 5, 7)),  # 6 channels of 5x7, not 5 "channels" of 7x6
        "fc1": ("NHWC", (None, 12, 5, 7)),
        "act": ("NHWC", (None, 12, 5, 7)),
        "fc2": ("NHWC", (None, 6, 5, 7)),
    }
    x = torch.randn(2, 3, 5, 7, generator=torch.Generator().manual_seed(1))
    out = batch_consistent(backend, x)
    with torch.inference_mode():
        hidden = model.act(model.fc1(model.norm(model.conv(x).permute(0, 2, 3, 1))))
    np.testing.assert_allclose(out["act"], hidden.permute(0, 3, 1, 2).numpy(), atol=1e-6)


class Tokens(nn.Module):
    """A ViT's start: 2x2 patches, a class token, LayerNorm and Linear on (N, 1 + h*w, C)."""

    def __init__(self, fixed: bool = False) -> None:
        super().__init__()
        self.fixed = fixed
        self.patch = nn.Conv2d(3, 8, 2, stride=2)
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fixed and x.shape[2:] != (8, 8):
            raise ValueError("this model takes 8x8 images only")  # a position embedding's size
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(len(x), -1, -1), t], dim=1)
        return self.fc(self.norm(t))


@pytest.mark.parametrize("fixed", [False, True])
def test_a_token_grid_comes_back_as_a_map_without_its_class_token(
    fixed: bool, hygiene: Any
) -> None:
    model = hygiene.watch(seeded(lambda: Tokens(fixed)))
    backend = TorchBackend(model, preprocess=Preprocess(size=(8, 8)))
    fc = backend.layer("fc")
    assert fc.layout == "NLC" and fc.output_shape == (None, 5, 4, 4)
    x = torch.randn(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    out = batch_consistent(backend, x)
    with torch.inference_mode():
        tokens = model(x)  # (N, 17, 5)
    grid = tokens[:, 1:].transpose(1, 2).reshape(3, 5, 4, 4)  # the class token set aside
    np.testing.assert_allclose(out["fc"], grid.numpy(), rtol=1e-6, atol=1e-6)


class Passes(nn.Module):
    """An empty nn.Sequential shortcut, an identity, an in-place ReLU."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.shortcut = nn.Sequential()
        self.same = nn.Identity()
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.relu(self.same(y)) + self.shortcut(x).mean()


def test_what_returns_a_value_unchanged_says_so(hygiene: Any) -> None:
    backend = TorchBackend(hygiene.watch(seeded(Passes)), preprocess=Preprocess(size=(6, 6)))
    layers = {layer.name: layer for layer in backend.layers()}
    assert layers["shortcut"].kind == "identity"  # returns its input: an identity
    assert layers["same"].same_as == "conv"  # the conv's output, the very same tensor
    assert layers["relu"].same_as is None  # the same tensor, but changed in place


class Merges(nn.Module):
    """Outputs that hold the batch merged with another axis, in both orders."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 1)
        self.major = Lambda(lambda y: y.flatten(2).transpose(1, 2).reshape(-1, 6))  # (N*L, C)
        self.minor = Lambda(lambda y: y.flatten(2).permute(2, 0, 1).reshape(-1, 6))  # (L*N, C)
        self.stat = Lambda(lambda y: y.mean().expand(4))  # one value for the whole batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        self.stat(y)
        return self.major(y) + self.minor(y)


class Lambda(nn.Module):
    def __init__(self, fn: Any) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_a_batch_merged_with_another_axis_is_split_back(hygiene: Any) -> None:
    model = hygiene.watch(seeded(Merges))
    backend = TorchBackend(model, preprocess=Preprocess(size=(3, 5)))
    assert [layer.name for layer in backend.layers()] == ["conv", "major", "minor"]
    with pytest.raises(featvis.UnknownLayerError, match="'stat' .*no axis.*not a layer"):
        backend.layer("stat")
    x = torch.randn(2, 3, 3, 5, generator=torch.Generator().manual_seed(1))
    out = batch_consistent(backend, x)
    conv = backend.activations(x, "conv")
    # Both are the conv's map, pixel by pixel: (N, L, C) per image, L the 3x5 grid.
    np.testing.assert_allclose(out["major"], conv, atol=1e-6)
    np.testing.assert_allclose(out["minor"], conv, atol=1e-6)


class Ambiguous(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)
        self.rows = Lambda(lambda y: y.new_ones(len(y) * 3, 4))  # which rows are image 1's?

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rows(self.conv(x))


def test_a_layer_that_cannot_be_placed_is_listed_and_refused_alone(hygiene: Any) -> None:
    backend = TorchBackend(hygiene.watch(seeded(Ambiguous)), preprocess=Preprocess(size=(4, 4)))
    rows = backend.layer("rows")
    assert rows.unavailable is not None and "order featvis cannot tell" in rows.unavailable
    x = torch.randn(2, 3, 4, 4)
    with pytest.raises(featvis.LayoutError, match=r"'rows' \(other1\) cannot be returned"):
        backend.activations(x, "rows")
    with pytest.warns(featvis.LayerWarning, match="1 of the 2 layers"):
        partial = backend.activations(x, ["conv", "rows"])
    assert list(partial) == ["conv"] and partial["conv"].shape == (2, 2, 4, 4)
    with pytest.raises(featvis.LayoutError, match="'rows'"):
        partial["rows"]
