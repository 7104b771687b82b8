"""Weak targets shared by the crop-trained methods: sizes in A(j) and the tag positives, and the
targets of a 3D box equal to the stacked targets of its slices."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.engine.crops import Crop, Crop3D
from napari_wsseg.engine.weak_targets import AnnotationIndex, CropTargets, collate

SHAPE = (4, 12, 12)


def _annotations(**extra) -> Annotations:
    masks = np.zeros(SHAPE, np.uint8)
    masks[2, 9:11, 1:3] = 1  # a class-0 component in slice 2
    kinds = dict(
        points=[[1, 2, 2, 2], [3, 5, 6, 1]],
        boxes=[[1, 4, 4, 8, 9, 1], [2, 0, 6, 3, 11, 2]],
        tags=[[0, 0], [0, 2]],
        region_tags=[[2, 0, 6, 0, 11, 5], [2, 1, 6, 0, 11, 5]],
        exhaustive_boxes=[[1, 1]],
        sizes=[[3, 0, 0.8], [3, 1, 0.2], [3, 2, 0.0]],
        masks=masks,
    )
    return Annotations(default_classes(3), **(kinds | extra))


def test_a_size_of_zero_makes_the_class_absent_from_its_slice_only():
    index = AnnotationIndex(_annotations(), SHAPE)
    sized = index.crop_targets(Crop(3, 0, 0, 12))
    assert not sized.allowed[2].any()  # fraction 0: absent everywhere in slice 3
    assert sized.allowed[0, 0, 0] and sized.allowed[1, 0, 0]
    assert index.crop_targets(Crop(1, 0, 0, 12)).allowed[2].all()  # other slices keep class 2


def test_a_size_above_zero_is_a_tag_positive_of_a_crop_holding_the_whole_slice():
    index = AnnotationIndex(_annotations(), SHAPE)
    assert index.crop_targets(Crop(3, 0, 0, 12)).tagged.tolist() == [True, True, False]
    assert not index.crop_targets(Crop(3, 0, 0, 8)).tagged.any()  # part of the slice: none
    without = AnnotationIndex(_annotations(sizes=np.zeros((0, 3))), SHAPE)
    unsized = without.crop_targets(Crop(3, 0, 0, 12))
    assert not unsized.tagged.any() and unsized.allowed[:, 0, 0].all()


def _assert_same_targets(a: CropTargets, b: CropTargets) -> None:
    for f in fields(CropTargets):
        np.testing.assert_array_equal(getattr(a, f.name), getattr(b, f.name), err_msg=f.name)


@pytest.mark.parametrize("corner", [(0, 0, 0), (1, 3, 2), (2, 4, 0)])
def test_targets_of_a_3d_box_are_the_stacked_targets_of_its_slices(corner):
    index = AnnotationIndex(_annotations(), SHAPE)
    z, y, x = corner
    box = Crop3D(z, y, x, (3, 8, 8))
    per_slice = index.box_targets(box)
    assert len(per_slice) == 3
    for i, targets in enumerate(per_slice):
        if z + i < SHAPE[0]:
            _assert_same_targets(targets, index.crop_targets(Crop(z + i, y, x, 8)))
    # what the box holds, so the comparison above is not between empty targets
    labelled = sum(int((t.labels >= 0).sum()) for t in per_slice)
    restricted = sum(int((~t.allowed).sum()) for t in per_slice)
    assert labelled > 0 and restricted > 0


def test_slices_of_a_box_past_the_last_slice_are_empty():
    index = AnnotationIndex(_annotations(), SHAPE)
    per_slice = index.box_targets(Crop3D(2, 0, 0, (4, 12, 12)))
    _assert_same_targets(per_slice[1], index.crop_targets(Crop(3, 0, 0, 12)))
    for padded in per_slice[2:]:
        _assert_same_targets(padded, CropTargets.empty(12, 3))
        assert padded.allowed.all() and (padded.labels == -1).all()
    valid = [np.full((12, 12), z < SHAPE[0]) for z in range(2, 6)]
    batch = collate(per_slice, valid)
    assert batch.labels.shape == (4, 12, 12) and batch.allowed.shape == (4, 3, 12, 12)
    assert batch.tagged.tolist()[1] == [True, True, False]


def test_a_box_not_square_in_y_and_x_is_refused():
    with pytest.raises(ValueError, match="square"):
        AnnotationIndex(_annotations(), SHAPE).box_targets(Crop3D(0, 0, 0, (2, 8, 6)))


def test_a_crop_among_many_grid_region_tags_gets_what_all_regions_of_its_slice_allow():
    from napari_wsseg.annotations.region_tags import region_allowed

    rows = [[1, (y + x) % 3, y, x, y + 3, x + 3] for y in range(0, 12, 4) for x in range(0, 12, 4)]
    index = AnnotationIndex(Annotations(default_classes(3), region_tags=rows), SHAPE)
    for y, x, size in ((0, 0, 12), (3, 5, 4), (-2, 9, 6), (5, 0, 8)):
        expected = region_allowed(index.regions, 1, y, x, size, size)
        np.testing.assert_array_equal(index.crop_targets(Crop(1, y, x, size)).allowed, expected)
        assert not expected.all()  # each crop overlaps some cell
