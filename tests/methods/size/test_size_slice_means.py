"""Whole-slice mean predictions from crops: the cell cache and cell-aligned crop sampling."""

from __future__ import annotations

import numpy as np
import torch

from napari_wsseg.engine.crops import Crop, CropSampler
from napari_wsseg.methods.size.slice_means import SliceMeanCache, align_crops, uniform_aligned_crops


def _cell_sums(probabilities: np.ndarray, crop: Crop, cell: int) -> np.ndarray:
    """Per-cell sums of a crop window of a (C, Y, X) map, zero-padded beyond the slice."""
    n_classes = probabilities.shape[0]
    window = np.zeros((n_classes, crop.size, crop.size))
    part = probabilities[:, crop.y : crop.y + crop.size, crop.x : crop.x + crop.size]
    window[:, : part.shape[1], : part.shape[2]] = part
    k = crop.size // cell
    return window.reshape(n_classes, k, cell, k, cell).sum(axis=(2, 4))


def test_cache_gives_the_exact_slice_mean_once_every_cell_is_refreshed():
    rng = np.random.default_rng(0)
    shape, cell, size = (40, 52), 8, 16  # slice sides not multiples of the cell or the crop
    probabilities = rng.dirichlet(np.ones(3), size=shape).transpose(2, 0, 1)
    cache = SliceMeanCache(shape, cell, {5: np.array([0.2, 0.3, 0.5])})
    crops = uniform_aligned_crops(np.array([5]), shape, size, cell, 200, rng)
    cache.update(crops, np.stack([_cell_sums(probabilities, c, cell) for c in crops]))
    crop = crops[0]
    inside = torch.tensor(_cell_sums(probabilities, crop, cell).sum(axis=(1, 2)))[None]
    mean = cache.mean_with([crop], inside)
    np.testing.assert_allclose(mean[0].numpy(), probabilities.mean(axis=(1, 2)), rtol=1e-10)


def test_an_untouched_cache_returns_the_initial_distribution_and_gradients_reach_the_crop():
    cache = SliceMeanCache((32, 32), 8, {0: np.array([0.75, 0.25])})
    crop = Crop(0, 8, 16, 16)
    crop_sums = torch.tensor([[0.75 * 256, 0.25 * 256]], requires_grad=True)
    mean = cache.mean_with([crop], crop_sums)
    np.testing.assert_allclose(mean.detach().numpy(), [[0.75, 0.25]])
    mean[0, 1].backward()
    np.testing.assert_allclose(crop_sums.grad.numpy(), [[0.0, 1 / 1024]])


def test_aligned_crops_keep_their_anchor_inside():
    rng = np.random.default_rng(1)
    shape, cell, size = (3, 100, 90), 16, 48
    anchors = np.stack(
        [
            rng.integers(0, 3, 500),
            rng.integers(0, 100, 500),
            rng.integers(0, 90, 500),
            np.zeros(500, int),
        ],
        axis=1,
    )
    for anchor in anchors[:60]:
        sampler = CropSampler(shape, anchor[None], size - cell, rng)
        (crop,) = align_crops(sampler.sample(1), cell, size)
        assert crop.y % cell == 0 and crop.x % cell == 0 and crop.size == size
        assert crop.y <= anchor[1] < crop.y + size and crop.x <= anchor[2] < crop.x + size


def test_uniform_crops_reach_the_slice_end():
    crops = uniform_aligned_crops(np.array([0, 2]), (70, 40), 32, 16, 300, np.random.default_rng(2))
    assert max(c.y + c.size for c in crops) >= 70 and max(c.x + c.size for c in crops) >= 40
    assert {c.z for c in crops} == {0, 2} and all(c.y % 16 == 0 and c.x % 16 == 0 for c in crops)
