"""Per-slice targets on tiny hand-made examples."""

import numpy as np

from napari_wsseg.annotations import (
    Annotations,
    allowed_classes_per_slice,
    box_masks,
    default_classes,
    point_targets,
    sizes_for_slice,
    tag_matrix,
)


def ann(n_classes=3, **kinds):
    return Annotations(default_classes(n_classes), **kinds)


def test_allowed_classes_follow_the_tags_of_the_slice():
    annotations = ann(tags=[[1, 2], [1, 0], [1, 2], [2, 1]])
    assert allowed_classes_per_slice(annotations, 0).tolist() == [True, True, True]
    assert allowed_classes_per_slice(annotations, 1).tolist() == [True, False, True]
    assert allowed_classes_per_slice(annotations, 2).tolist() == [False, True, False]


def test_tag_matrix_agrees_with_allowed_classes_per_slice():
    annotations = ann(tags=[[1, 2], [1, 0], [3, 1]])
    tagged, allowed = tag_matrix(annotations, 4)
    assert tagged.tolist() == [False, True, False, True]
    for z in range(4):
        np.testing.assert_array_equal(allowed[z], allowed_classes_per_slice(annotations, z))


def test_point_targets_from_points_only():
    annotations = ann(points=[[0, 0, 1, 2], [0, 2, 3, 0], [1, 1, 1, 1]])
    expected = np.full((3, 4), -1)
    expected[0, 1], expected[2, 3] = 2, 0
    np.testing.assert_array_equal(point_targets(annotations, 0, (3, 4)), expected)
    assert point_targets(annotations, 0, (3, 4)).dtype == np.int64


def test_point_targets_combine_mask_and_points():
    masks = np.zeros((2, 2, 3), dtype=np.uint8)
    masks[1, 0, :] = 3  # class 2
    annotations = ann(points=[[1, 1, 2, 0]], masks=masks)
    np.testing.assert_array_equal(point_targets(annotations, 1, (2, 3)), [[2, 2, 2], [-1, -1, 0]])
    np.testing.assert_array_equal(point_targets(annotations, 0, (2, 3)), np.full((2, 3), -1))


def test_box_masks_union_per_class_with_inclusive_corners():
    boxes = [
        [0, 0, 0, 1, 1, 0],  # 2x2 at the top-left
        [0, 1, 1, 2, 2, 0],  # overlaps the first: union, not count
        [0, 2, 3, 2, 3, 2],  # single pixel at the bottom-right corner
        [1, 0, 0, 2, 3, 1],  # another slice: ignored for z=0
    ]
    masks = box_masks(ann(boxes=boxes), 0, (3, 4))
    assert masks.shape == (3, 3, 4) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0].astype(int), [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 0]])
    assert not masks[1].any()
    np.testing.assert_array_equal(np.argwhere(masks[2]), [[2, 3]])


def test_box_masks_match_slicing_for_random_boxes():
    rng = np.random.default_rng(0)
    y = np.sort(rng.integers(0, 20, (30, 2)), axis=1)
    x = np.sort(rng.integers(0, 25, (30, 2)), axis=1)
    boxes = np.column_stack(
        [np.zeros(30, int), y[:, 0], x[:, 0], y[:, 1], x[:, 1], rng.integers(0, 3, 30)]
    )
    expected = np.zeros((3, 20, 25), dtype=bool)
    for _, y0, x0, y1, x1, c in boxes:
        expected[c, y0 : y1 + 1, x0 : x1 + 1] = True
    np.testing.assert_array_equal(box_masks(ann(boxes=boxes), 0, (20, 25)), expected)


def test_box_masks_without_boxes_are_empty():
    assert not box_masks(ann(points=[[0, 0, 0, 0]]), 0, (4, 4)).any()


def test_sizes_for_slice_renormalise_and_fill_missing_classes_with_zero():
    annotations = ann(sizes=[[0, 0, 0.5], [0, 2, 0.3], [1, 1, 1.0]])
    np.testing.assert_allclose(sizes_for_slice(annotations, 0), [0.625, 0.0, 0.375])
    np.testing.assert_allclose(sizes_for_slice(annotations, 1), [0.0, 1.0, 0.0])
    assert sizes_for_slice(annotations, 2) is None
