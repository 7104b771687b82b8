"""Tiled prediction: tiling must not change the result (no seams) for any slice size."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_wsseg.engine.tiling import predict_tiled, predict_tiled_batch, tile_starts
from napari_wsseg.engine.unet import UNet, UNetConfig


def _conv_fn(seed: int = 0):
    """Two 3x3 convolutions (receptive radius 2) with zero padding, as a numpy tile function."""
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(4, 3, 3, padding=1)
    ).eval()

    def fn(tile):
        with torch.no_grad():
            return net(torch.from_numpy(tile)[None])[0].numpy()

    return fn


@pytest.mark.parametrize("shape", [(50, 70), (33, 97), (16, 16), (8, 40)])
def test_tiled_equals_untiled_for_a_limited_receptive_field(shape):
    image = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    fn = _conv_fn()
    untiled = fn(image)
    tiled = predict_tiled(fn, image, tile=24, overlap=12)  # zero band 3 >= radius 2
    np.testing.assert_allclose(tiled, untiled, atol=1e-5)


def test_batched_tiling_equals_tiling_each_slice():
    images = np.random.default_rng(2).normal(size=(3, 2, 45, 70)).astype(np.float32)
    fn = _conv_fn()
    calls = []

    def batch_fn(tiles):
        calls.append(len(tiles))
        return np.stack([fn(t) for t in tiles])

    batched = predict_tiled_batch(batch_fn, images, tile=24, overlap=12, align=4)
    assert batched.shape == (3, 3, 45, 70) and set(calls) == {3}  # every slice in each call
    for image, out in zip(images, batched):
        np.testing.assert_allclose(
            out, predict_tiled(fn, image, tile=24, overlap=12, align=4), atol=1e-6
        )


def test_unet_tiles_blend_without_seams():
    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, out_channels=2, depth=2, width=4)).eval()

    def fn(tile):
        with torch.no_grad():
            return net(torch.from_numpy(tile)[None])[0].numpy()

    image = np.random.default_rng(1).normal(size=(1, 96, 112)).astype(np.float32)
    untiled = fn(image)
    tiled = predict_tiled(fn, image, tile=64, overlap=48, align=4)
    # the U-Net's receptive radius (27) exceeds the zero band (12): small differences remain,
    # far below the output's own variation
    assert np.abs(tiled - untiled).max() < 0.05 * untiled.std()


def test_constant_function_gives_exact_weights_everywhere():
    image = np.zeros((1, 77, 131), np.float32)
    out = predict_tiled(
        lambda t: np.ones((2, *t.shape[1:]), np.float32), image, tile=32, overlap=16, align=8
    )
    assert out.shape == (2, 77, 131)
    np.testing.assert_allclose(out, 1.0, rtol=1e-6)


def test_tiles_are_aligned_and_multiples_of_align():
    seen = []

    def fn(tile):
        seen.append(tile.shape[1:])
        return tile[:1]

    image = np.random.default_rng(0).normal(size=(1, 45, 70)).astype(np.float32)
    out = predict_tiled(fn, image, tile=30, overlap=10, align=8)  # tile rounded up to 32
    assert all(h % 8 == 0 and w % 8 == 0 for h, w in seen)
    np.testing.assert_allclose(out, image, atol=1e-6)


def test_tile_starts_cover_the_axis():
    assert tile_starts(100, 32, 24) == [0, 24, 48, 68]
    for length in (1, 31, 32, 33, 200):
        starts = tile_starts(length, 32, 16)
        assert starts[0] == 0 and starts[-1] + 32 >= length


def test_overlap_must_be_smaller_than_tile():
    with pytest.raises(ValueError, match="overlap 64 must be smaller than the tile size 64"):
        predict_tiled(lambda t: t, np.zeros((1, 8, 8), np.float32), tile=64, overlap=64)
