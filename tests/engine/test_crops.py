"""Crop sampling: anchors from every annotation kind, anchored crops (2D and 3D) contain their
anchor, rare classes are drawn as often as common ones, and crops read from numpy or lazy data
agree."""

from __future__ import annotations

import dask.array as da
import numpy as np

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.engine.crops import Crop, Crop3D, CropSampler, SliceStore, annotation_anchors
from napari_wsseg.io.image import as_image
from napari_wsseg.io.normalize import Normalization


def test_anchors_come_from_points_boxes_masks_and_tags(rng):
    masks = np.zeros((3, 20, 20), np.uint8)
    masks[2, 5:8, 5:8] = 2
    ann = Annotations(
        default_classes(4),
        points=[[0, 1, 2, 0]],
        boxes=[[1, 3, 4, 6, 9, 2]],
        tags=[[0, 1], [0, 3]],
        masks=masks,
    )
    anchors = annotation_anchors(ann, (3, 20, 20), rng, max_per_class=50)
    assert [0, 1, 2, 0] in anchors.tolist()
    boxes = anchors[(anchors[:, 0] == 1)]
    assert len(boxes) and (boxes[:, 3] == 2).all()
    assert ((boxes[:, 1] >= 3) & (boxes[:, 1] <= 6) & (boxes[:, 2] >= 4) & (boxes[:, 2] <= 9)).all()
    mask_anchors = anchors[anchors[:, 0] == 2]
    assert len(mask_anchors) == 9 and (mask_anchors[:, 3] == 1).all()
    assert (masks[2, mask_anchors[:, 1], mask_anchors[:, 2]] == 2).all()
    assert (
        (anchors[:, 0] == 0) & (anchors[:, 3] == 3)
    ).any()  # the tag of a class nothing else locates
    assert not (
        (anchors[:, 0] == 0) & (anchors[:, 3] == 1)
    ).any()  # class 1 has mask anchors already


def test_mask_anchors_are_capped_per_class(rng):
    masks = np.ones((1, 50, 50), np.uint8)
    masks[0, :5] = 2
    anchors = annotation_anchors(
        Annotations(default_classes(2), masks=masks), (1, 50, 50), rng, max_per_class=30
    )
    assert np.bincount(anchors[:, 3]).tolist() == [30, 30]


def test_anchored_crops_contain_their_anchor_and_stay_inside(rng):
    anchors = np.array([[0, 5, 5, 0], [1, 90, 70, 1]])
    sampler = CropSampler((2, 100, 80), anchors, 32, rng)
    for crop in sampler.sample(200):
        assert 0 <= crop.y <= 100 - 32 and 0 <= crop.x <= 80 - 32
        inside = [
            (a[0] == crop.z and crop.y <= a[1] < crop.y + 32 and crop.x <= a[2] < crop.x + 32)
            for a in anchors
        ]
        assert any(inside)


def test_rare_classes_are_drawn_as_often_as_common_ones(rng):
    anchors = np.array([[0, 0, 0, 0]] * 1000 + [[1, 0, 0, 1]] * 10)
    crops = CropSampler((2, 64, 64), anchors, 16, rng).sample(2000)
    share_rare = np.mean([c.z == 1 for c in crops])
    assert 0.45 < share_rare < 0.55
    proportional = CropSampler((2, 64, 64), anchors, 16, rng, class_power=1.0).sample(2000)
    assert np.mean([c.z == 1 for c in proportional]) < 0.05


def test_a_focus_takes_its_share_of_the_anchored_crops_and_none_changes_nothing():
    anchors = np.array([[0, 5, 5, 0], [0, 50, 50, 1]])
    focus = np.array([[1, 90, 70]])
    sampler = CropSampler(
        (2, 100, 80), anchors, 16, np.random.default_rng(0), focus=focus, focus_share=0.25
    )
    crops = sampler.sample(800)
    on_focus = [c.z == 1 and c.y <= 90 < c.y + 16 and c.x <= 70 < c.x + 16 for c in crops]
    assert 0.2 < np.mean(on_focus) < 0.3  # a quarter of the anchored crops (all crops here)
    plain, empty = (
        CropSampler((2, 100, 80), anchors, 16, np.random.default_rng(3), **extra).sample(50)
        for extra in ({}, {"focus": np.zeros((0, 3), np.int64), "focus_share": 0.25})
    )
    assert plain == empty  # no focus rows: the same crops as without the option
    outside = CropSampler(
        (2, 100, 80), anchors, 16, np.random.default_rng(0), focus=[[5, 0, 0]], focus_share=0.5
    )
    assert all(c.z == 0 for c in outside.sample(50))  # a focus outside the image is dropped


def test_without_anchors_all_crops_are_random(rng):
    crops = CropSampler((4, 64, 64), np.zeros((0, 4), np.int64), 16, rng).sample(100)
    assert len({c.z for c in crops}) == 4


def test_crops_match_the_normalised_slice_and_are_padded():
    volume = np.arange(2 * 10 * 12, dtype=np.uint16).reshape(2, 10, 12)
    norm = Normalization(low=(0.0,), high=(100.0,))
    store = SliceStore(as_image(volume), norm)
    pixels, valid = store.crop(Crop(1, 4, 6, 8))
    np.testing.assert_allclose(pixels[0, :6, :6], volume[1, 4:10, 6:12] / 100.0)
    assert valid[:6, :6].all() and not valid[6:].any() and not valid[:, 6:].any()
    assert (pixels[0][~valid] == 0).all()


def test_lazy_data_beyond_the_cache_is_read_as_windows():
    volume = np.random.default_rng(0).integers(0, 255, (3, 16, 16, 2), dtype=np.uint8)
    norm = Normalization(low=(0.0, 10.0), high=(255.0, 200.0))
    cached = SliceStore(as_image(volume, channel_axis=-1), norm)
    lazy = SliceStore(
        as_image(da.from_array(volume, chunks=(1, 8, 8, 2)), channel_axis=-1),
        norm,
        max_cache_bytes=0,
    )
    crop = Crop(2, 3, 5, 8)
    np.testing.assert_allclose(lazy.crop(crop)[0], cached.crop(crop)[0])
    assert not lazy._cache and cached._cache


def test_anchored_3d_boxes_contain_their_anchor_and_stay_inside(rng):
    anchors = np.array([[0, 5, 5, 0], [9, 90, 70, 1], [5, 50, 40, 1]])
    sampler = CropSampler((10, 100, 80), anchors, 32, rng)
    boxes = sampler.sample_3d(300, (4, 24, 16))
    for box in boxes:
        assert box.size_zyx == (4, 24, 16)
        assert 0 <= box.z <= 10 - 4 and 0 <= box.y <= 100 - 24 and 0 <= box.x <= 80 - 16
        assert any(
            box.z <= a[0] < box.z + 4 and box.y <= a[1] < box.y + 24 and box.x <= a[2] < box.x + 16
            for a in anchors
        )
    # the anchor lies at every z offset of the box, not always at the same one
    assert len({5 - b.z for b in boxes if b.z <= 5 < b.z + 4 and b.y <= 50 < b.y + 24}) == 4


def test_3d_boxes_on_rare_classes_and_at_random(rng):
    anchors = np.array([[0, 0, 0, 0]] * 1000 + [[7, 0, 0, 1]] * 10)
    boxes = CropSampler((8, 64, 64), anchors, 16, rng).sample_3d(2000, (1, 16, 16))
    assert 0.45 < np.mean([b.z == 7 for b in boxes]) < 0.55
    free = CropSampler((8, 64, 64), np.zeros((0, 4), np.int64), 16, rng).sample_3d(200, (2, 8, 8))
    assert {b.z for b in free} == set(range(7))  # every corner a 2-slice box can have


def test_3d_boxes_larger_than_the_image_start_at_0_and_are_padded(rng):
    sampler = CropSampler((2, 10, 12), np.array([[1, 3, 4, 0]]), 8, rng)
    assert {(b.z, b.y, b.x) for b in sampler.sample_3d(20, (4, 16, 8))} <= {
        (0, 0, x) for x in range(5)
    }
    volume = np.arange(2 * 10 * 12, dtype=np.uint16).reshape(2, 10, 12)
    store = SliceStore(as_image(volume), Normalization(low=(0.0,), high=(100.0,)))
    pixels, valid = store.crop_3d(Crop3D(0, 2, 4, (4, 16, 8)))
    assert pixels.shape == (1, 4, 16, 8) and valid.shape == (4, 16, 8)
    np.testing.assert_allclose(pixels[0, :2, :8, :8], volume[:, 2:10, 4:12] / 100.0)
    assert valid[:2, :8, :8].all() and valid.sum() == 2 * 8 * 8
    assert (pixels[0][~valid] == 0).all()


def test_3d_crops_from_lazy_data_equal_cached_ones():
    volume = np.random.default_rng(1).integers(0, 255, (5, 16, 16, 2), dtype=np.uint8)
    norm = Normalization(low=(0.0, 10.0), high=(255.0, 200.0))
    cached = SliceStore(as_image(volume, channel_axis=-1), norm)
    lazy = SliceStore(
        as_image(da.from_array(volume, chunks=(1, 8, 8, 2)), channel_axis=-1),
        norm,
        max_cache_bytes=0,
    )
    box = Crop3D(1, 3, 5, (3, 8, 9))
    np.testing.assert_allclose(lazy.crop_3d(box)[0], cached.crop_3d(box)[0])
    expected = np.moveaxis(norm.apply(volume[1:4, 3:11, 5:14]), -1, 0)
    np.testing.assert_allclose(cached.crop_3d(box)[0], expected)
