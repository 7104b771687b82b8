"""Tags, sizes and all-boxed marks of the Annotate widget's session, without a viewer."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.annotations.marks import SliceMarks
from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.errors import AnnotationError


def test_rows_leave_out_slices_whose_sizes_do_not_sum_to_one():
    marks = SliceMarks()
    marks.set_tag(1, 0, True)
    marks.set_exhaustive(1, 2, True)
    marks.set_size(1, 0, 0.6)
    marks.set_size(1, 1, 0.4)
    marks.set_size(2, 0, 0.5)  # slice 2 sums to 50 %: not used yet
    assert marks.incomplete_size_slices() == [2]
    rows = marks.rows()
    assert rows == {
        "tags": [(1, 0)],
        "sizes": [(1, 0, 0.6), (1, 1, 0.4)],
        "exhaustive_boxes": [(1, 2)],
    }


def test_round_trip_through_annotations_and_class_removal():
    ann = Annotations(
        classes=default_classes(3),
        tags=[[0, 2]],
        sizes=[[0, 1, 0.5], [0, 2, 0.5]],
        exhaustive_boxes=[[4, 2], [4, 0]],
    )
    marks = SliceMarks.from_annotations(ann)
    assert marks.exhaustive == {(4, 0), (4, 2)}
    marks.remove_class(1)
    assert marks.tags == {(0, 1)} and marks.sizes == {(0, 1): 0.5}
    assert marks.exhaustive == {(4, 0), (4, 1)}
    again = Annotations(classes=default_classes(2), **marks.rows())
    np.testing.assert_array_equal(again.exhaustive_boxes, [[4, 0], [4, 1]])


def test_clearing_and_bad_sizes():
    marks = SliceMarks()
    marks.set_size(3, 0, 1.0)
    marks.set_size(3, 0, None)
    assert marks.size_sum(3) is None
    marks.set_size(3, 1, 0.2)
    marks.clear_sizes(3)
    assert marks.sizes == {}
    with pytest.raises(AnnotationError, match="outside \\[0, 1\\]"):
        marks.set_size(0, 0, 1.5)
