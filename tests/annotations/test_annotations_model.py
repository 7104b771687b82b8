"""The Annotations model: exhaustive-box statements are normalised, counted and kept by slice."""

import numpy as np

from napari_wsseg.annotations import Annotations, default_classes


def test_exhaustive_boxes_default_empty_and_normalised():
    ann = Annotations(default_classes(3))
    assert ann.exhaustive_boxes.shape == (0, 2)
    assert ann.exhaustive_boxes.dtype == np.int64

    ann = Annotations(default_classes(3), exhaustive_boxes=[[2, 1], [0, 2], [2, 1]])
    assert ann.exhaustive_boxes.tolist() == [[0, 2], [2, 1]]  # sorted, duplicates merged


def test_exhaustive_boxes_counted_and_kept_by_select_slices():
    boxes = [[0, 1, 1, 3, 3, 1], [2, 1, 1, 3, 3, 1]]
    ann = Annotations(default_classes(3), boxes=boxes, exhaustive_boxes=[[0, 1], [2, 1], [5, 2]])
    assert ann.counts()["exhaustive_boxes"].tolist() == [0, 2, 1]
    assert ann.summary()["counts"]["exhaustive_boxes"] == [0, 2, 1]
    # an exhaustive statement with no box says the class is absent there: that is an annotation
    assert 5 in ann.annotated_slices().tolist()
    assert not Annotations(default_classes(3), exhaustive_boxes=[[5, 2]]).is_empty()

    kept = ann.select_slices([2, 5])
    assert kept.exhaustive_boxes.tolist() == [[2, 1], [5, 2]]
    assert kept.boxes[:, 0].tolist() == [2]


def test_added_since_counts_repeated_rows_and_ignores_removed_ones():
    classes = default_classes(2)
    before = Annotations(classes, points=[[0, 1, 1, 0], [0, 1, 1, 0], [0, 9, 9, 1]])
    after = Annotations(classes, points=[[0, 1, 1, 0], [0, 1, 1, 0], [0, 1, 1, 0], [2, 3, 4, 1]])
    assert after.added_since(before).tolist() == [[0, 1, 1], [2, 3, 4]]
    assert before.added_since(before).shape == (0, 3)
    boxes = Annotations(classes, boxes=[[1, 10, 20, 30, 40, 0]])
    assert boxes.added_since(Annotations(classes)).tolist() == [[1, 20, 30]]
