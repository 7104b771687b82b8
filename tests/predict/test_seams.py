"""Seam tests: block-wise prediction equals whole-volume prediction for every registered method,
and methods that need z context (``halo_z > 0``) get it in blocks, ``--slices`` and previews."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import zarr

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import available_methods, get_method
from napari_wsseg.methods.base import FitOptions, Method
from napari_wsseg.predict import blocks
from napari_wsseg.predict.blocks import (
    block_grid,
    block_region,
    model_halo,
    predict_block,
    predict_proba_region,
)
from napari_wsseg.predict.slices import predict_image, predict_slice_proba
from napari_wsseg.predict.volume import predict_volume

# Tiny trainings: a few steps are enough, the seams depend on the network, not on its quality.
FAST_OPTIONS = {
    "rf": {"n_estimators": 10},
    "dsp": {"max_steps": 3},
    "mews": {"backbone": "test_vit", "backbone_weights": "random", "max_steps": 3},
    "size": {"max_steps": 3},
    "rewis3d": {
        "max_steps": 3,
        "depth_2d": 2,
        "depth_3d": 2,
        "width": 4,
        "crop_z": 4,
        "crop_yx": 16,
        "inference": "average",
    },  # both students, z context
    "cpews": {"backbone": "test_vit", "max_steps": 3, "batch_size": 2, "region_size": 32},
}
#: Odd block sizes, so block borders cut through objects and through U-Net pooling cells.
ODD_BLOCK = (3, 23, 29)
#: Float tolerance on probabilities. Convolutions over a block and over the whole slice sum the
#: same products in another order (oneDNN picks its algorithm by input size), so probabilities
#: agree to rounding, not bit for bit; labels are compared exactly where the top two classes are
#: further apart than this.
PROBA_ATOL = 1e-4


def _clicks(labels: np.ndarray, n_classes: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = []
    for z in range(0, labels.shape[0], 2):
        for cls in range(n_classes):
            ys, xs = np.nonzero(labels[z] == cls)
            pick = rng.choice(len(ys), min(3, len(ys)), replace=False) if len(ys) else []
            rows += [[z, ys[i], xs[i], cls] for i in pick]
    return np.array(rows, dtype=np.int64)


@pytest.fixture(scope="module")
def small_volume(phantom_3d):
    image, labels, classes = phantom_3d
    return as_image(np.ascontiguousarray(image[:7, :64, :64])), labels[:7, :64, :64], classes


def _trained(name, volume, options=None) -> Method:
    image, labels, classes = volume
    method = get_method(name)(**(FAST_OPTIONS if options is None else options).get(name, {}))
    annotations = Annotations(classes=classes, points=_clicks(labels, len(classes)))
    method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    return method


def _assert_same_prediction(blockwise: np.ndarray, whole: np.ndarray) -> None:
    """Probabilities within PROBA_ATOL; labels equal wherever the probabilities are bit-equal
    or the argmax is not a near tie (nearly everywhere)."""
    np.testing.assert_allclose(blockwise, whole, atol=PROBA_ATOL, rtol=0)
    top2 = np.sort(whole, axis=0)[-2:]
    checked = ((top2[1] - top2[0]) > 2 * PROBA_ATOL) | (blockwise == whole).all(axis=0)
    assert checked.mean() > 0.99
    np.testing.assert_array_equal(np.argmax(blockwise, 0)[checked], np.argmax(whole, 0)[checked])


# On 64 x 64 slices the y/x halo of dsp, size and mews (>= 64 px) makes every block read whole
# slices, so for them this shows that the halo is large enough; that blocks narrower than the
# slice line up with its pooling grid and ViT tiles (block_align) is tested below on wider slices
# (rewis3d's block_align is exercised here: its halo is 29 px).
@pytest.mark.parametrize("name", available_methods())
def test_block_wise_equals_whole_volume(name, small_volume):
    image = small_volume[0]
    model = _trained(name, small_volume)
    whole = model.predict_proba_block(np.asarray(image.data))  # one call on the whole volume
    blockwise = np.empty_like(whole)
    for index in block_grid(image.shape, ODD_BLOCK):
        region = block_region(index, ODD_BLOCK, image.shape)
        blockwise[(slice(None), *region)] = predict_proba_region(model, image, region)
    _assert_same_prediction(blockwise, whole)


#: Slices wider than an odd block plus its context on both sides, so blocks read part of a
#: slice and their context starts inside it: where ``block_align`` matters.
WIDE_VOLUME = (2, 192, 192)
#: mews with tiles of 3 patches (48 px, stride 16 px), so 192 px slices hold 12 x 12 of them.
ALIGNED_OPTIONS = {
    **FAST_OPTIONS,
    "mews": {**FAST_OPTIONS["mews"], "tile_patches": 3, "halo_patches": 1},
}
#: Aligned blocks equal whole slices to float rounding (measured: U-Nets 4e-7, mews 0, as oneDNN
#: sums the same products in another order); unaligned ones differ by 4e-3 to 1 here.
ALIGNED_ATOL = 1e-5


@pytest.fixture(scope="module")
def wide_volume():
    from napari_wsseg.sample import make_phantom

    image, labels, classes = make_phantom(WIDE_VOLUME, seed=0)
    return as_image(image), labels, classes


@pytest.mark.parametrize(
    "name, options",
    [("dsp", {}), ("size", {}), ("mews", {}), ("mews", {"halo_patches": 0})],
    ids=["dsp", "size", "mews", "mews-tiles-without-halo"],
)
def test_aligned_blocks_equal_whole_slices_tightly(name, options, wide_volume, monkeypatch):
    image = wide_volume[0]
    model = _trained(name, wide_volume, {name: {**ALIGNED_OPTIONS[name], **options}})
    halo, align = blocks.model_halo(model), blocks.model_align(model)
    whole = model.predict_proba_block(np.asarray(image.data))
    blockwise = np.empty_like(whole)
    for index in block_grid(image.shape, ODD_BLOCK):
        region = block_region(index, ODD_BLOCK, image.shape)
        blockwise[(slice(None), *region)] = predict_proba_region(model, image, region)
    np.testing.assert_allclose(blockwise, whole, atol=ALIGNED_ATOL, rtol=0)
    top2 = np.sort(whole, axis=0)[-2:]
    clear = (top2[1] - top2[0]) > 2 * ALIGNED_ATOL
    assert clear.mean() > 0.999
    np.testing.assert_array_equal(np.argmax(blockwise, 0)[clear], np.argmax(whole, 0)[clear])
    # the control: the same block with its context read from an unaligned start differs
    region = block_region((0, 3, 3), ODD_BLOCK, image.shape)  # starts at y 69, x 87
    assert (region[1].start - halo) % align[1] and (region[2].start - halo) % align[2]
    context, _ = blocks.read_block_input(image, region, halo, align=align)
    assert context.shape[1] < WIDE_VOLUME[1] and context.shape[2] < WIDE_VOLUME[2]  # a part
    monkeypatch.setattr(blocks, "model_align", lambda model: (1, 1, 1))
    unaligned = predict_proba_region(model, image, region)
    assert np.abs(unaligned - whole[(slice(None), *region)]).max() > 100 * ALIGNED_ATOL


def test_mews_halo_covers_a_feature_tile(small_volume):
    model = _trained("mews", small_volume)
    assert model_halo(model) == model.config.tile_patches * model.backbone.patch_size > 0
    # with a halo of 0 a block sees only itself and its ViT features change: the halo matters
    region = block_region((1, 1, 1), ODD_BLOCK, small_volume[0].shape)
    whole = model.predict_proba_block(np.asarray(small_volume[0].data))
    alone = model.predict_proba_block(np.asarray(small_volume[0].data[region]))
    assert np.abs(alone - whole[(slice(None), *region)]).max() > 1e-3


# ----------------------------------------------------------------- a method that looks along z
@dataclass(frozen=True)
class _NoOptions:
    pass


class _ZMean(Method):
    """Class 1 where the mean of a slice and its two neighbours (edge-padded) is bright."""

    name, config_class, halo, halo_z = "zmean", _NoOptions, 0, 1

    def predict_proba_slice(self, slice_yxc):  # a slice alone: no neighbours
        return self.predict_proba_block(slice_yxc[None])[:, 0]

    def predict_proba_block(self, block_zyxc):
        values = np.asarray(block_zyxc, np.float32)[..., 0]
        padded = np.concatenate([values[:1], values, values[-1:]])
        mean = (padded[:-2] + padded[1:-1] + padded[2:]) / 3
        p = 1 / (1 + np.exp(-(mean - 0.5) * 8))
        return np.stack([1 - p, p]).astype(np.float32)

    def _fit(self, image, annotations, options): ...
    def _save_weights(self, folder): ...
    def _load_weights(self, folder): ...


@pytest.fixture
def z_model_and_image():
    rng = np.random.default_rng(3)
    volume = rng.random((9, 20, 24)).astype(np.float32)
    model = _ZMean()
    model.classes, model.n_channels = default_classes(2), 1
    image = as_image(volume)
    whole = model.predict_proba_block(np.asarray(image.data))
    return model, image, whole


def test_z_context_in_blocks_slices_and_previews(z_model_and_image):
    model, image, whole = z_model_and_image
    blockwise = np.empty_like(whole)
    for index in block_grid(image.shape, (2, 7, 11)):
        region = block_region(index, (2, 7, 11), image.shape)
        blockwise[(slice(None), *region)] = predict_proba_region(model, image, region)
        labels = predict_block(model, image, region).labels
        np.testing.assert_array_equal(labels, np.argmax(whole[(slice(None), *region)], 0))
    np.testing.assert_allclose(blockwise, whole, atol=1e-6)
    # wsseg predict --slices: only the chosen slices, each with its neighbours
    out = predict_image(model, image, slices=[0, 4, 8])
    np.testing.assert_array_equal(out[[0, 4, 8]], np.argmax(whole[:, [0, 4, 8]], 0))
    assert not out[[1, 2, 3]].any()
    # the preview of a window of the current slice
    window = (slice(3, 11), slice(5, 19))
    preview = predict_slice_proba(model, image, 4, window)
    np.testing.assert_allclose(preview, whole[:, 4, 3:11, 5:19], atol=1e-6)
    # and the neighbours change the answer: a slice alone is not the same
    alone = model.predict_proba_slice(image.slice(4))
    assert np.abs(alone - whole[:, 4]).max() > 0.05


def test_volume_prediction_with_odd_blocks_has_no_z_seams(z_model_and_image, tmp_path):
    model, image, whole = z_model_and_image
    result = predict_volume(model, image, tmp_path / "pred.zarr", block=(2, 7, 11))
    assert result is not None
    group = zarr.open_group(str(tmp_path / "pred.zarr"), mode="r")
    written = np.asarray(group["0"])
    np.testing.assert_array_equal(written, np.argmax(whole, 0))
