"""validate_annotations: every rule, with the content of its message."""

import warnings

import numpy as np
import pytest

from napari_wsseg.annotations import Annotations, default_classes, validate_annotations
from napari_wsseg.errors import AnnotationError

SHAPE = (3, 8, 10)  # (Z, Y, X)


def ann(n_classes=2, **kinds):
    return Annotations(default_classes(n_classes), **kinds)


def complete(**kinds):
    """Annotations where both classes have a point, plus ``kinds``."""
    points = kinds.pop("points", [[0, 0, 0, 0], [0, 1, 1, 1]])
    return ann(points=points, **kinds)


def error_message(annotations, shape=SHAPE, **kwargs) -> str:
    with pytest.raises(AnnotationError) as err:
        validate_annotations(annotations, shape, **kwargs)
    message = str(err.value)
    assert "\n" not in message
    return message


def assert_parts(message, parts):
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_valid_annotations_give_no_warning():
    annotations = complete(
        boxes=[[1, 0, 0, 7, 9, 0]],
        tags=[[1, 0], [1, 0]],  # duplicate tag rows are fine
        sizes=[[2, 0, 0.6], [2, 1, 0.45]],
        masks=np.zeros(SHAPE, dtype=np.uint8),
    )
    annotations.masks[2, :, :5] = 1
    annotations.masks[2, :, 5:] = 2
    annotations.masks[1, 4:, :] = 1  # slice 1 is tagged 'class0' only
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_annotations(annotations, SHAPE) == []


def test_empty_annotations():
    message = error_message(ann(masks=np.zeros(SHAPE, dtype=np.uint8)), source="layer set 'fib'")
    assert_parts(
        message, ["layer set 'fib': no annotations", "add points, boxes, tags, sizes or a mask"]
    )


@pytest.mark.parametrize(
    "kinds, parts",
    [
        (
            {"points": [[0, 1, 1, 0], [0, 8, 2, 1]]},
            [
                "points row 2 (z=0, y=8, x=2, class=1 'class1')",
                "y=8 is outside the image",
                "y must be 0..7",
                "(Z, Y, X) = (3, 8, 10)",
                "fix the row",
            ],
        ),
        ({"points": [[0, 1, -1, 0], [0, 1, 1, 1]]}, ["points row 1", "x=-1 is outside the image"]),
        ({"points": [[3, 1, 1, 0], [0, 1, 1, 1]]}, ["points row 1", "z=3", "z must be 0..2"]),
        (
            {"boxes": [[0, 0, 0, 2, 10, 0], [0, 0, 0, 1, 1, 1]]},
            [
                "boxes row 1 (z=0, y0=0, x0=0, y1=2, x1=10, class=0 'class0')",
                "x1=10",
                "x1 must be 0..9",
            ],
        ),
        ({"tags": [[5, 0], [0, 1]]}, ["tags row 1 (z=5, class=0 'class0')", "z must be 0..2"]),
        ({"sizes": [[0, 0, 0.5], [0, 1, 0.5], [-1, 0, 1.0]]}, ["sizes row 3", "z=-1"]),
    ],
)
def test_out_of_bounds(kinds, parts):
    assert_parts(error_message(ann(**kinds)), parts)


def test_out_of_bounds_counts_further_rows():
    message = error_message(complete(points=[[0, 9, 0, 0], [0, 9, 1, 1], [0, 9, 2, 1]]))
    assert_parts(message, ["points row 1", "(2 more rows like it)"])


def test_z_must_be_zero_for_a_2d_image():
    message = error_message(complete(points=[[0, 0, 0, 0], [1, 1, 1, 1]]), shape=(8, 10))
    assert_parts(
        message, ["points row 2", "z=1 is outside the image", "z must be 0 for a 2D image"]
    )


@pytest.mark.parametrize(
    "kinds, parts",
    [
        (
            {"points": [[0, 1, 1, 2]]},
            ["points row 1 (z=0, y=1, x=1, class=2)", "class=2 is an unknown class"],
        ),
        ({"boxes": [[0, 1, 1, 2, 2, -1]]}, ["boxes row 1", "class=-1 is an unknown class"]),
        ({"tags": [[0, 0], [0, 7]]}, ["tags row 2", "class=7"]),
        ({"sizes": [[0, 5, 1.0]]}, ["sizes row 1", "class=5"]),
    ],
)
def test_unknown_class(kinds, parts):
    message = error_message(ann(**kinds))
    assert_parts(
        message, parts + ["class ids are 0..1 (class0, class1)", "add it to the class list"]
    )


def test_non_integer_class_in_sizes():
    message = error_message(ann(sizes=[[0, 0.5, 1.0]]))
    assert_parts(message, ["sizes row 1", "class=0.5 is not an integer"])


@pytest.mark.parametrize("box, axis", [([0, 5, 1, 2, 3, 0], "y"), ([0, 1, 5, 2, 3, 0], "x")])
def test_box_corners_swapped(box, axis):
    message = error_message(complete(boxes=[box]))
    assert_parts(message, ["boxes row 1", f"{axis}1 < {axis}0", "swap them"])


def test_single_pixel_box_is_valid():
    assert validate_annotations(complete(boxes=[[0, 2, 2, 2, 2, 0]]), SHAPE) == []


@pytest.mark.parametrize("fraction", [1.5, -0.1, np.nan])
def test_fraction_outside_0_1(fraction):
    message = error_message(complete(sizes=[[0, 0, fraction], [0, 1, 0.5]]))
    assert_parts(message, ["sizes row 1", "fraction is outside 0..1"])


def test_size_given_twice_for_a_class_and_slice():
    message = error_message(complete(sizes=[[0, 0, 0.5], [0, 1, 0.5], [0, 0, 0.5]]))
    assert_parts(message, ["sizes rows 1 and 3", "class 0 'class0' in slice z=0", "keep one"])


def test_sizes_of_a_slice_must_sum_to_one():
    message = error_message(complete(sizes=[[1, 0, 0.9], [1, 1, 0.1], [2, 0, 0.3], [2, 1, 0.2]]))
    assert_parts(
        message,
        [
            "sizes of slice z=2 (rows 3, 4) sum to 0.5",
            "not 1 ± 0.1",
            "list the fraction of every class present",
            "left out counts as 0",
        ],
    )


def test_size_tolerance_is_configurable():
    annotations = complete(sizes=[[0, 0, 0.5], [0, 1, 0.3]])
    assert validate_annotations(annotations, SHAPE, size_tolerance=0.25) == []
    assert "sum to 0.8" in error_message(annotations, size_tolerance=0.1)


def test_a_single_class_covering_the_slice_is_valid():
    assert validate_annotations(complete(sizes=[[0, 1, 1.0]]), SHAPE) == []


def test_point_excluded_by_tags():
    message = error_message(complete(tags=[[0, 0]]))
    assert_parts(
        message,
        [
            "points row 2 (z=0, y=1, x=1, class=1 'class1')",
            "the tags of slice z=0 (tagged: 'class0') exclude this class",
            "add a tag for the class on that slice or fix the point's class",
        ],
    )


def test_point_on_an_untagged_slice_is_allowed():
    assert validate_annotations(complete(tags=[[2, 0]]), SHAPE) == []


def test_box_excluded_by_tags():
    message = error_message(complete(boxes=[[1, 0, 0, 2, 2, 1]], tags=[[1, 0]]))
    assert_parts(message, ["boxes row 1", "tags of slice z=1", "fix the box's class"])


def test_positive_size_excluded_by_tags():
    message = error_message(complete(tags=[[1, 0]], sizes=[[1, 0, 0.8], [1, 1, 0.2]]))
    assert_parts(message, ["sizes row 2", "tags of slice z=1", "set its fraction to 0"])


def test_zero_size_for_an_excluded_class_is_consistent():
    annotations = complete(tags=[[1, 0]], sizes=[[1, 0, 1.0], [1, 1, 0.0]])
    assert validate_annotations(annotations, SHAPE) == []


def test_tagged_class_with_zero_size():
    message = error_message(complete(tags=[[1, 0], [1, 1]], sizes=[[1, 0, 1.0], [1, 1, 0.0]]))
    assert_parts(
        message,
        ["sizes row 2", "tagged present in slice z=1 but its fraction is 0", "remove its tag"],
    )


def test_mask_pixels_excluded_by_tags():
    masks = np.zeros(SHAPE, dtype=np.uint8)
    masks[1, 3:5, 3:5] = 2
    message = error_message(complete(tags=[[1, 0]], masks=masks))
    assert_parts(
        message,
        [
            "mask labels 4 pixels of class 1 'class1' in slice z=1",
            "(tagged: 'class0')",
            "fix the mask",
        ],
    )


def test_two_points_on_one_pixel_with_different_classes():
    message = error_message(
        complete(points=[[0, 0, 0, 0], [0, 1, 1, 1], [1, 2, 2, 1], [0, 0, 0, 1]])
    )
    assert_parts(
        message,
        [
            "points rows 1 and 4",
            "(z, y, x) = (0, 0, 0)",
            "classes 0 'class0' and 1 'class1'",
            "delete one",
        ],
    )


def test_repeated_identical_points_are_fine():
    assert (
        validate_annotations(complete(points=[[0, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]]), SHAPE)
        == []
    )


def test_point_disagreeing_with_the_mask():
    masks = np.zeros(SHAPE, dtype=np.uint8)
    masks[0, 1, 1] = 1
    message = error_message(complete(masks=masks))
    assert_parts(
        message,
        [
            "points row 2",
            "the mask labels this pixel class 0 'class0'",
            "fix the point or the mask",
        ],
    )


def test_mask_shape_must_match_the_image():
    message = error_message(complete(masks=np.zeros((3, 8, 9), dtype=np.uint8)))
    assert_parts(message, ["mask shape (3, 8, 9)", "image shape (Z, Y, X) = (3, 8, 10)"])


def test_a_2d_mask_for_a_2d_image_is_valid():
    masks = np.zeros((8, 10), dtype=np.int32)
    masks[0, 0], masks[5, 5] = 1, 2
    assert validate_annotations(ann(masks=masks), (8, 10)) == []


@pytest.mark.parametrize("value, why", [(3, "is above the class count"), (-1, "is negative")])
def test_mask_values_outside_0_to_c(value, why):
    masks = np.zeros(SHAPE, dtype=np.int16)
    masks[2, 4, 5] = value
    message = error_message(complete(masks=masks))
    assert_parts(
        message, [f"mask value {value} at (z, y, x) = (2, 4, 5) {why}", "k = 1..2 for class k-1"]
    )


def test_float_mask_is_rejected():
    message = error_message(complete(masks=np.zeros(SHAPE, dtype=np.float32)))
    assert_parts(message, ["mask has dtype float32", "integer label image"])


def test_class_without_annotation_warns_and_returns_the_warning():
    annotations = ann(n_classes=3, points=[[0, 0, 0, 0]], sizes=[[0, 0, 1.0], [0, 2, 0.0]])
    with pytest.warns(
        UserWarning, match="has no points, boxes, tags, sizes > 0 or mask pixels"
    ) as record:
        messages = validate_annotations(annotations, SHAPE, source="proj")
    assert len(messages) == 2 and len(record) == 2
    assert messages[0].startswith("proj: class 1 'class1'")
    assert "class 2 'class2'" in messages[1]  # a zero size is no example of the class


def test_warnings_can_be_returned_without_emitting_them():
    annotations = ann(n_classes=2, points=[[0, 0, 0, 0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        messages = validate_annotations(annotations, SHAPE, warn=False)
    assert len(messages) == 1 and "class 1 'class1'" in messages[0]


def test_classes_seen_only_in_tags_or_masks_do_not_warn():
    masks = np.zeros(SHAPE, dtype=np.uint8)
    masks[2, 0, 0] = 3
    annotations = ann(n_classes=3, points=[[0, 0, 0, 0]], tags=[[1, 1]], masks=masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert validate_annotations(annotations, SHAPE) == []


def test_empty_class_list():
    annotations = Annotations([], points=[[0, 0, 0, 0]])
    assert "the class list is empty" in error_message(annotations)


def test_bad_image_shape_and_tolerance():
    assert "not a (Z, Y, X) shape" in error_message(complete(), shape=(2, 3, 4, 5))
    assert "tolerance -1 is negative" in error_message(complete(), size_tolerance=-1)


def test_many_rows_are_checked_quickly_and_vectorised():
    rng = np.random.default_rng(0)
    n = 200_000
    points = np.column_stack([rng.integers(0, s, n) for s in (3, 8, 10)] + [np.zeros(n, int)])
    points[:, 3] = (points[:, 1] > 3).astype(int)  # one class per pixel: no conflicts
    assert validate_annotations(ann(points=points), SHAPE) == []


# --------------------------------------------------------------------- exhaustive boxes
def _boxed(**kwargs) -> Annotations:
    """Class 1 boxed once in slice 0 at y 2..4, x 2..4."""
    return Annotations(default_classes(3), boxes=[[0, 2, 2, 4, 4, 1]], **kwargs)


def test_a_point_outside_exhaustive_boxes_of_its_class_is_refused():
    ann = _boxed(points=[[0, 3, 3, 1], [0, 8, 8, 1]], exhaustive_boxes=[[0, 1]])
    with pytest.raises(
        AnnotationError, match=r"points row 2 .*marked exhaustive.*clear the exhaustive"
    ):
        validate_annotations(ann, (2, 10, 10))
    # without the exhaustive mark the same point is fine: a box excludes nothing outside it
    validate_annotations(_boxed(points=[[0, 3, 3, 1], [0, 8, 8, 1]]), (2, 10, 10), warn=False)
    # a point in another slice is not concerned
    validate_annotations(
        _boxed(points=[[1, 8, 8, 1]], exhaustive_boxes=[[0, 1]]), (2, 10, 10), warn=False
    )


def test_mask_pixels_outside_exhaustive_boxes_are_refused():
    masks = np.zeros((2, 10, 10), np.uint8)
    masks[0, 3, 3] = 2  # class 1, inside its box
    validate_annotations(_boxed(masks=masks, exhaustive_boxes=[[0, 1]]), (2, 10, 10), warn=False)
    masks[0, 9, 0] = 2
    with pytest.raises(AnnotationError, match=r"1 pixels of class 1 'class1' in slice z=0 outside"):
        validate_annotations(_boxed(masks=masks, exhaustive_boxes=[[0, 1]]), (2, 10, 10))


def test_exhaustive_without_boxes_contradicts_a_presence_tag():
    ann = _boxed(tags=[[1, 0], [1, 2]], exhaustive_boxes=[[1, 2]])
    with pytest.raises(
        AnnotationError, match=r"exhaustive_boxes row 1 \(z=1, class=2 'class2'\).*tag"
    ):
        validate_annotations(ann, (2, 10, 10))


def test_exhaustive_rows_must_lie_in_the_image_and_class_range():
    with pytest.raises(AnnotationError, match=r"exhaustive_boxes row 1 \(z=5.*outside the image"):
        validate_annotations(_boxed(exhaustive_boxes=[[5, 1]]), (2, 10, 10))
    with pytest.raises(AnnotationError, match=r"exhaustive_boxes row 1 .*class=7.*unknown class"):
        validate_annotations(_boxed(exhaustive_boxes=[[0, 7]]), (2, 10, 10))
