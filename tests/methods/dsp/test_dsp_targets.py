"""Per-crop DSP targets: the negative set A(j) for every annotation type, components, boxes."""

from __future__ import annotations

import numpy as np

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.engine.crops import Crop
from napari_wsseg.engine.weak_targets import AnnotationIndex

SHAPE = (3, 10, 10)


def _annotations() -> Annotations:
    masks = np.zeros(SHAPE, np.uint8)
    masks[1, 8, 8] = 1  # one mask pixel of class 0 in slice 1
    return Annotations(
        default_classes(3),
        points=[[0, 1, 1, 2]],
        boxes=[[1, 2, 2, 4, 4, 1]],
        tags=[[0, 0], [0, 2]],
        masks=masks,
    )


def _allowed_sets(allowed: np.ndarray, y: int, x: int) -> set[int]:
    return set(np.flatnonzero(allowed[:, y, x]).tolist())


def test_unannotated_pixels_may_be_any_class():
    targets = AnnotationIndex(_annotations(), SHAPE).crop_targets(Crop(2, 0, 0, 10))
    assert targets.allowed.all()
    assert (targets.labels == -1).all() and not targets.tagged.any()


def test_tagged_slice_allows_its_tags_and_a_point_its_class():
    targets = AnnotationIndex(_annotations(), SHAPE).crop_targets(Crop(0, 0, 0, 10))
    assert _allowed_sets(targets.allowed, 5, 5) == {0, 2}
    assert _allowed_sets(targets.allowed, 1, 1) == {2}
    assert targets.labels[1, 1] == 2 and targets.is_point[1, 1] and targets.is_point.sum() == 1
    assert targets.tagged.tolist() == [True, False, True]


def test_a_crop_of_part_of_a_tagged_slice_keeps_the_constraint_but_not_the_tag_positive():
    part = AnnotationIndex(_annotations(), SHAPE).crop_targets(Crop(0, 2, 2, 6))
    assert _allowed_sets(part.allowed, 3, 3) == {0, 2}  # absent class 1 stays excluded
    assert not part.tagged.any()  # a tagged class need not occur in this part of the slice


def test_a_box_alone_excludes_nothing_outside_it():
    targets = AnnotationIndex(_annotations(), SHAPE).crop_targets(Crop(1, 0, 0, 10))
    assert _allowed_sets(targets.allowed, 3, 3) == {0, 1, 2}
    assert _allowed_sets(targets.allowed, 0, 0) == {0, 1, 2}  # outside the class-1 box: still open
    assert _allowed_sets(targets.allowed, 8, 8) == {0}  # a mask pixel
    assert targets.box_classes.tolist() == [1]  # the box still gives its inside positives


def test_exhaustive_boxes_exclude_their_class_outside_every_box():
    ann = _annotations()
    ann.exhaustive_boxes = np.array([[1, 1]])
    targets = AnnotationIndex(ann, SHAPE).crop_targets(Crop(1, 0, 0, 10))
    assert _allowed_sets(targets.allowed, 3, 3) == {0, 1, 2}  # inside: box class + not excluded
    assert _allowed_sets(targets.allowed, 0, 0) == {0, 2}  # outside the only class-1 box
    assert _allowed_sets(targets.allowed, 8, 8) == {0}  # a mask pixel
    other_slice = AnnotationIndex(ann, SHAPE).crop_targets(Crop(2, 0, 0, 10))
    assert other_slice.allowed.all()  # the statement is about slice 1 only


def test_exhaustive_without_a_box_makes_the_class_absent_from_the_slice():
    ann = _annotations()
    ann.exhaustive_boxes = np.array([[2, 2]])
    targets = AnnotationIndex(ann, SHAPE).crop_targets(Crop(2, 0, 0, 10))
    assert not targets.allowed[2].any() and targets.allowed[:2].all()


def test_boxes_are_clipped_with_row_and_column_validity():
    index = AnnotationIndex(_annotations(), SHAPE)
    whole = index.crop_targets(Crop(1, 0, 0, 10))
    assert (
        whole.boxes.tolist() == [[2, 2, 4, 4]]
        and whole.box_rows_valid[0]
        and whole.box_cols_valid[0]
    )
    # crop rows 3..6, columns 0..3: the box keeps y 3..4 (cut) and x 2..3 (cut)
    cut = index.crop_targets(Crop(1, 3, 0, 4))
    assert cut.boxes.tolist() == [[0, 2, 1, 3]] and cut.box_classes.tolist() == [1]
    assert not cut.box_rows_valid[0] and not cut.box_cols_valid[0]
    # crop rows 0..7, columns 3..10: y extent complete (columns valid), x extent cut
    side = index.crop_targets(Crop(1, 0, 3, 8))
    assert (
        side.boxes.tolist() == [[2, 0, 4, 1]]
        and side.box_cols_valid[0]
        and not side.box_rows_valid[0]
    )
    assert len(index.crop_targets(Crop(1, 6, 6, 4)).boxes) == 0


def test_mask_components_are_per_class_and_connected():
    masks = np.zeros((1, 6, 6), np.uint8)
    masks[0, 0, 0:2] = 1  # class 0 component
    masks[0, 0, 2:4] = 2  # touching, but class 1: its own component
    masks[0, 4:6, 4:6] = 1  # a second class-0 component
    targets = AnnotationIndex(Annotations(default_classes(2), masks=masks), (1, 6, 6)).crop_targets(
        Crop(0, 0, 0, 6)
    )
    assert len(targets.component_classes) == 3
    ids = {
        int(targets.components[0, 0]),
        int(targets.components[0, 2]),
        int(targets.components[4, 4]),
    }
    assert len(ids) == 3 and 0 not in ids
    assert sorted(targets.component_classes.tolist()) == [0, 0, 1]
    assert (targets.components[targets.labels < 0] == 0).all()


def test_crop_past_the_image_edge_is_padded_unlabelled():
    index = AnnotationIndex(_annotations(), SHAPE)
    targets = index.crop_targets(Crop(1, 8, 8, 4))
    assert targets.labels.shape == (4, 4) and targets.labels[0, 0] == 0
    assert (targets.labels[2:, :] == -1).all()
