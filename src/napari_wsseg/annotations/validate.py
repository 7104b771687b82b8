"""Check weak annotations against the image they belong to, before any training. No Qt.

:func:`validate_annotations` raises :class:`~napari_wsseg.errors.AnnotationError` on the first
problem, with one line naming the kind, the 1-based row (the data row of the CSV it came from),
the values seen and the fix, and returns (and warns about) recoverable surprises. All checks are
vectorised; rows are only looked at one by one to describe the first failing one.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import AnnotationError
from .model import Annotations
from .region_tags import regions_containing, tag_regions
from .targets import box_masks, tag_matrix

_COLUMNS = {
    "points": ("z", "y", "x", "class"),
    "boxes": ("z", "y0", "x0", "y1", "x1", "class"),
    "tags": ("z", "class"),
    "sizes": ("z", "class", "fraction"),
    "exhaustive_boxes": ("z", "class"),
    "region_tags": ("z", "class", "y0", "x0", "y1", "x1"),
}
#: Which image axis (0 z, 1 y, 2 x) each coordinate column indexes.
_AXES = {
    "points": {0: 0, 1: 1, 2: 2},
    "boxes": {0: 0, 1: 1, 2: 2, 3: 1, 4: 2},
    "tags": {0: 0},
    "sizes": {0: 0},
    "exhaustive_boxes": {0: 0},
    "region_tags": {0: 0, 2: 1, 3: 2, 4: 1, 5: 2},
}
#: The class id column of each kind of annotation array.
CLASS_COLUMN = {
    "points": 3,
    "boxes": 5,
    "tags": 1,
    "sizes": 1,
    "exhaustive_boxes": 1,
    "region_tags": 1,
}
#: The (y0, x0, y1, x1) columns of the kinds that hold rectangles.
_CORNERS = {"boxes": (1, 2, 3, 4), "region_tags": (2, 3, 4, 5)}
#: How far a slice's size fractions may sum from 1 (the one value validation and widgets use).
SIZE_SUM_TOLERANCE = 0.1


def validate_annotations(
    ann: Annotations,
    image_shape: Sequence[int],
    *,
    source: str = "annotations",
    files: Mapping[str, object] | None = None,
    size_tolerance: float = SIZE_SUM_TOLERANCE,
    warn: bool = True,
) -> list[str]:
    """Check that ``ann`` is usable for training on an image of shape ``image_shape``.

    Errors (raised): no annotations at all; coordinates outside the image; class ids outside
    ``0..C-1``; boxes with ``y1 < y0`` or ``x1 < x0``; size fractions outside ``[0, 1]``, given
    twice for a class and slice, or not summing to 1 within ``size_tolerance`` per slice; points,
    boxes, mask pixels or positive sizes of a class that the tags of the same slice exclude, and
    a tagged class with size 0; two points on one pixel with different classes, or a point whose
    class differs from the mask at that pixel; a mask that is not an integer label image of the
    image's shape with values ``0..C``; for a (slice, class) whose boxes are exhaustive, a point or
    mask pixel of the class outside all of its boxes, or a tag saying the class is present when
    it has no box there; a region tag whose rectangle has ``y1 < y0`` or ``x1 < x0``, or a point
    inside a tagged region that does not tag the point's class, or mask pixels of such a class.

    Warnings (returned, and emitted with :func:`warnings.warn` unless ``warn`` is False): a class
    with no points, boxes, tags, positive sizes or mask pixels.

    Parameters
    ----------
    ann : Annotations
    image_shape : (Z, Y, X) tuple of int
        Spatial shape of the image; ``(Y, X)`` is read as ``(1, Y, X)``.
    source : str, optional
        Names the annotations in messages. By default ``"annotations"``.
    files : dict, optional
        The file each kind was read from (keys ``points``, ``boxes``, ``tags``, ``sizes``,
        ``masks``): a message about a row or the mask names that file instead of ``source``
        (exhaustive statements name the boxes file, region tags the tags file). By default none.
    size_tolerance : float, optional
        How far a slice's size fractions may sum from 1. By default 0.1.
    warn : bool, optional
        Also emit the warnings with :func:`warnings.warn`. By default True; callers that show
        the returned list themselves pass False.

    Returns
    -------
    list of str
        The warnings, empty when there are none.

    Raises
    ------
    AnnotationError
        On the first error found.

    Examples
    --------
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> ann = Annotations(default_classes(2), points=[[0, 1, 1, 0], [0, 2, 2, 1]])
    >>> validate_annotations(ann, (1, 4, 4))
    []
    >>> validate_annotations(ann, (1, 2, 2))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.AnnotationError: annotations: points row 2 (...): y=2 is outside the ...
    """
    source = _Source(source, files or {})
    shape = _image_shape(image_shape, source)
    if size_tolerance < 0:
        raise AnnotationError(f"size tolerance {size_tolerance} is negative; give a value >= 0")
    if ann.is_empty():
        raise AnnotationError(
            f"{source}: no annotations; add points, boxes, tags, sizes or a mask with labelled "
            "pixels first"
        )
    if ann.n_classes == 0:
        raise AnnotationError(f"{source}: the class list is empty; give the class names")
    for kind in _COLUMNS:
        _check_rows(ann, kind, shape, source)
    _check_boxes_ordered(ann, source)
    _check_sizes(ann, source, size_tolerance)
    _check_masks(ann, shape, source)
    _check_against_tags(ann, shape[0], source)
    _check_point_conflicts(ann, source)
    _check_exhaustive_boxes(ann, shape, source)
    _check_points_against_regions(ann, source)
    _check_masks_against_regions(ann, source)
    messages = _unannotated_classes(ann, source)
    if warn:
        for message in messages:
            warnings.warn(message, UserWarning, stacklevel=2)
    return messages


def _image_shape(image_shape, source: str) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) != 3 or min(shape) < 1:
        raise AnnotationError(
            f"{source}: image shape {tuple(image_shape)} is not a (Z, Y, X) shape; "
            "pass the spatial shape of the image"
        )
    return shape


# ------------------------------------------------------------------------- row descriptions
class _Source:
    """What messages name: the file a kind was read from, else the general source name."""

    _FILE_OF = {"exhaustive_boxes": "boxes", "region_tags": "tags"}

    def __init__(self, name: str, files: Mapping[str, object]) -> None:
        self.name = str(name)
        self.files = {kind: str(path) for kind, path in files.items() if path is not None}

    def __format__(self, spec: str) -> str:
        return format(self.name, spec)

    def of(self, kind: str) -> str:
        """The file ``kind`` came from, or the general name."""
        return self.files.get(self._FILE_OF.get(kind, kind), self.name)


def _describe(ann: Annotations, kind: str, i: int) -> str:
    """``points row 3 (z=0, y=5, x=7, class=1 'mito')`` for 0-based row ``i``."""
    parts = []
    for name, value in zip(_COLUMNS[kind], getattr(ann, kind)[i]):
        if name == "class":
            parts.append(f"class={_class_label(ann, value)}")
        elif name == "fraction":
            parts.append(f"fraction={value:g}")
        else:
            parts.append(f"{name}={_number(value)}")
    return f"{kind} row {i + 1} ({', '.join(parts)})"


def _number(value) -> str:
    """Integers without a decimal point or exponent, other numbers short."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:g}"


def _class_label(ann: Annotations, value) -> str:
    if float(value).is_integer() and 0 <= value < ann.n_classes:
        return f"{int(value)} '{ann.classes[int(value)].name}'"
    return _number(value)


def _first(bad: np.ndarray) -> tuple[int, str]:
    """Index of the first True and a note on how many more there are."""
    rows = np.flatnonzero(bad)
    more = f" ({len(rows) - 1} more rows like it)" if len(rows) > 1 else ""
    return int(rows[0]), more


# ------------------------------------------------------------------------------- row checks
def _check_rows(ann: Annotations, kind: str, shape: tuple[int, int, int], source: str) -> None:
    """Integer values, coordinates inside the image and class ids in ``0..C-1``."""
    array = getattr(ann, kind)
    if not len(array):
        return
    for col, axis in _AXES[kind].items():
        _check_column(ann, kind, col, 0, shape[axis], source, _bound_hint(kind, col, axis, shape))
    _check_column(
        ann,
        kind,
        CLASS_COLUMN[kind],
        0,
        ann.n_classes,
        source,
        f"class ids are 0..{ann.n_classes - 1} ({', '.join(ann.class_names)}); "
        "fix the class or add it to the class list",
    )


def _bound_hint(kind: str, col: int, axis: int, shape: tuple[int, int, int]) -> str:
    name = _COLUMNS[kind][col]
    if axis == 0 and shape[0] == 1:
        bound = "z must be 0 for a 2D image"
    else:
        bound = f"{name} must be 0..{shape[axis] - 1} (image shape (Z, Y, X) = {shape})"
    return f"{bound}; fix the row or use the image it was made on"


def _check_column(ann, kind: str, col: int, low: int, high: int, source: str, hint: str) -> None:
    values = getattr(ann, kind)[:, col]
    name = _COLUMNS[kind][col]
    fractional = values != np.round(values)
    if fractional.any():
        i, more = _first(fractional)
        raise AnnotationError(
            f"{source.of(kind)}: {_describe(ann, kind, i)}: {name}={_number(values[i])} is not an "
            f"integer; use whole numbers{more}"
        )
    outside = (values < low) | (values >= high)
    if outside.any():
        i, more = _first(outside)
        what = "an unknown class" if name == "class" else "outside the image"
        raise AnnotationError(
            f"{source.of(kind)}: {_describe(ann, kind, i)}: {name}={_number(values[i])} is {what}, "
            f"{hint}{more}"
        )


def _check_boxes_ordered(ann: Annotations, source: str) -> None:
    for kind, (y0, x0, y1, x1) in _CORNERS.items():
        rows = getattr(ann, kind)
        for low, high, axis in ((y0, y1, "y"), (x0, x1, "x")):
            flipped = rows[:, high] < rows[:, low]
            if flipped.any():
                i, more = _first(flipped)
                raise AnnotationError(
                    f"{source.of(kind)}: {_describe(ann, kind, i)}: {axis}1 < {axis}0; corners are "
                    f"(y0, x0) top-left and (y1, x1) bottom-right, inclusive; swap them{more}"
                )


def _check_sizes(ann: Annotations, source: str, tolerance: float) -> None:
    sizes = ann.sizes
    if not len(sizes):
        return
    fractions = sizes[:, 2]
    invalid = (fractions < 0) | (fractions > 1) | ~np.isfinite(fractions)
    if invalid.any():
        i, more = _first(invalid)
        raise AnnotationError(
            f"{source.of('sizes')}: {_describe(ann, 'sizes', i)}: fraction is outside 0..1; "
            "give the "
            f"fraction of the slice the class covers (0.25 for a quarter){more}"
        )
    z = sizes[:, 0].astype(np.int64)
    keys = z * ann.n_classes + sizes[:, 1].astype(np.int64)
    unique_keys, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        a, b = np.flatnonzero(keys == unique_keys[np.argmax(counts > 1)])[:2]
        raise AnnotationError(
            f"{source.of('sizes')}: sizes rows {a + 1} and {b + 1} both give the fraction of class "
            f"{_class_label(ann, sizes[a, 1])} in slice z={z[a]}; keep one of them"
        )
    slices, inverse = np.unique(z, return_inverse=True)
    sums = np.bincount(inverse, weights=fractions)
    off = np.abs(sums - 1) > tolerance
    if off.any():
        s = int(np.argmax(off))
        rows = ", ".join(str(r + 1) for r in np.flatnonzero(inverse == s))
        raise AnnotationError(
            f"{source.of('sizes')}: sizes of slice z={slices[s]} (rows {rows}) sum to "
            f"{sums[s]:.3g}, not "
            f"1 ± {tolerance:g}; list the fraction of every class present in that slice "
            "(a class left out counts as 0) so that they add up to 1"
        )


def _check_masks(ann: Annotations, shape: tuple[int, int, int], source: str) -> None:
    masks = ann.masks
    if masks is None:
        return
    if not (np.issubdtype(masks.dtype, np.integer) or masks.dtype == bool):
        raise AnnotationError(
            f"{source.of('masks')}: mask has dtype {masks.dtype}; give an integer label image "
            "(0 unlabeled, k > 0 for class k-1)"
        )
    if masks.shape != shape:
        raise AnnotationError(
            f"{source.of('masks')}: mask shape {masks.shape} is not the image shape "
            f"(Z, Y, X) = {shape}; "
            "give a label image of the same shape as the image"
        )
    low, high = int(masks.min()), int(masks.max())
    if low < 0:
        _raise_mask_value(ann, low, "is negative", source)
    if high > ann.n_classes:
        _raise_mask_value(ann, high, "is above the class count", source)


def _raise_mask_value(ann: Annotations, value: int, why: str, source: str) -> None:
    where = np.unravel_index(int(np.argmax(ann.masks == value)), ann.masks.shape)
    raise AnnotationError(
        f"{source.of('masks')}: mask value {value} at (z, y, x) = {tuple(map(int, where))} "
        f"{why}; use 0 "
        f"for unlabeled and k = 1..{ann.n_classes} for class k-1 ({ann.n_classes} classes)"
    )


# ----------------------------------------------------------------------- cross-kind checks
def _check_against_tags(ann: Annotations, n_slices: int, source: str) -> None:
    if not len(ann.tags):
        return
    tagged, allowed = tag_matrix(ann, n_slices)
    for kind, what in (("points", "point"), ("boxes", "box")):
        rows = getattr(ann, kind)
        excluded = ~allowed[rows[:, 0], rows[:, CLASS_COLUMN[kind]]]
        _raise_first(
            ann,
            kind,
            excluded,
            source,
            _excluded_by_tags(ann, kind, allowed),
            f"add a tag for the class on that slice or fix the {what}'s class",
        )
    z, c = ann.sizes[:, 0].astype(np.int64), ann.sizes[:, 1].astype(np.int64)
    positive = ann.sizes[:, 2] > 0
    _raise_first(
        ann,
        "sizes",
        positive & ~allowed[z, c],
        source,
        _excluded_by_tags(ann, "sizes", allowed),
        "add a tag for the class on that slice or set its fraction to 0",
    )
    _raise_first(
        ann,
        "sizes",
        tagged[z] & ~positive & allowed[z, c],
        source,
        lambda i: f"the class is tagged present in slice z={z[i]} but its fraction is 0",
        "give its approximate fraction or remove its tag",
    )
    _check_masks_against_tags(ann, tagged, allowed, source)


def _excluded_by_tags(ann: Annotations, kind: str, allowed: np.ndarray):
    """Explains, for row ``i`` of ``kind``, which classes the tags of its slice allow."""

    def explain(i: int) -> str:
        z = int(getattr(ann, kind)[i, 0])
        return f"the tags of slice z={z} ({_tagged_names(ann, allowed[z])}) exclude this class"

    return explain


def _tagged_names(ann: Annotations, allowed_row: np.ndarray) -> str:
    return "tagged: " + ", ".join(f"'{n}'" for n, ok in zip(ann.class_names, allowed_row) if ok)


def _raise_first(ann: Annotations, kind: str, bad: np.ndarray, source: str, explain, fix: str):
    if not bad.any():
        return
    i, more = _first(bad)
    raise AnnotationError(
        f"{source.of(kind)}: {_describe(ann, kind, i)}: {explain(i)}; {fix}{more}"
    )


def _check_masks_against_tags(ann, tagged: np.ndarray, allowed: np.ndarray, source: str) -> None:
    if ann.masks is None:
        return
    # One bincount per tagged slice: tags are few, slices are whole images.
    for z in np.flatnonzero(tagged):
        counts = np.bincount(ann.masks[z].ravel(), minlength=ann.n_classes + 1)[1:]
        excluded = (counts > 0) & ~allowed[z]
        if excluded.any():
            c = int(np.argmax(excluded))
            raise AnnotationError(
                f"{source.of('masks')}: the mask labels {counts[c]} pixels of class "
                f"{_class_label(ann, c)} "
                f"in slice z={z} but the tags of that slice ({_tagged_names(ann, allowed[z])}) "
                "exclude it; add a tag for the class on that slice or fix the mask"
            )


def _check_point_conflicts(ann: Annotations, source: str) -> None:
    """Two points on one pixel with different classes, or a point that disagrees with the mask."""
    if len(ann.points) > 1:
        _check_points_on_one_pixel(ann, source)
    if ann.masks is not None and len(ann.points):
        _check_points_against_mask(ann, source)


def _check_points_on_one_pixel(ann: Annotations, source: str) -> None:
    points = ann.points
    pixels, group = np.unique(points[:, :3], axis=0, return_inverse=True)
    group = group.ravel()
    lowest = np.full(len(pixels), np.iinfo(np.int64).max)
    highest = np.full(len(pixels), -1)
    np.minimum.at(lowest, group, points[:, 3])
    np.maximum.at(highest, group, points[:, 3])
    conflicts = lowest != highest
    if not conflicts.any():
        return
    rows = np.flatnonzero(group == int(np.argmax(conflicts)))
    a = rows[0]
    b = rows[np.argmax(points[rows, 3] != points[a, 3])]
    raise AnnotationError(
        f"{source.of('points')}: points rows {a + 1} and {b + 1} mark the same pixel (z, y, x) = "
        f"{tuple(map(int, points[a, :3]))} with classes {_class_label(ann, points[a, 3])} "
        f"and {_class_label(ann, points[b, 3])}; delete one of them"
    )


def _check_points_against_mask(ann: Annotations, source: str) -> None:
    z, y, x, classes = ann.points.T
    labels = ann.masks[z, y, x].astype(np.int64)
    disagree = (labels > 0) & (labels != classes + 1)

    def explain(i: int) -> str:
        return f"the mask labels this pixel class {_class_label(ann, labels[i] - 1)}"

    _raise_first(ann, "points", disagree, source, explain, "fix the point or the mask")


def _check_exhaustive_boxes(ann: Annotations, shape: tuple[int, int, int], source: str) -> None:
    """Nothing of a class lies outside its boxes in a slice where they are exhaustive."""
    if not len(ann.exhaustive_boxes):
        return
    _check_exhaustive_against_tags(ann, source)
    _check_points_inside_exhaustive_boxes(ann, shape[0], source)
    if ann.masks is not None:
        _check_masks_inside_exhaustive_boxes(ann, shape, source)


def _exhaustive_matrix(ann: Annotations, n_slices: int) -> np.ndarray:
    """``(Z, C)`` bool: the boxes of class c in slice z are exhaustive."""
    matrix = np.zeros((n_slices, ann.n_classes), dtype=bool)
    matrix[ann.exhaustive_boxes[:, 0], ann.exhaustive_boxes[:, 1]] = True
    return matrix


def _check_exhaustive_against_tags(ann: Annotations, source: str) -> None:
    boxed = {(int(z), int(c)) for z, c in ann.boxes[:, [0, 5]]}
    tagged = {(int(z), int(c)) for z, c in ann.tags}
    empty = np.array(
        [
            (int(z), int(c)) in tagged and (int(z), int(c)) not in boxed
            for z, c in ann.exhaustive_boxes
        ],
        dtype=bool,
    )

    def explain(i: int) -> str:
        z = ann.exhaustive_boxes[i, 0]
        return (
            f"the class has no box in slice z={z}, so exhaustive boxes say it is absent, "
            "but a tag says it is present"
        )

    _raise_first(
        ann,
        "exhaustive_boxes",
        empty,
        source,
        explain,
        "box its objects, or remove the tag or the exhaustive mark",
    )


def _check_points_inside_exhaustive_boxes(ann: Annotations, n_slices: int, source: str) -> None:
    z, y, x, cls = ann.points.T
    rows = np.flatnonzero(_exhaustive_matrix(ann, n_slices)[z, cls])  # only these need a box
    boxes = ann.boxes
    z, y, x, cls = z[rows, None], y[rows, None], x[rows, None], cls[rows, None]
    inside = (
        (z == boxes[:, 0])
        & (cls == boxes[:, 5])
        & (y >= boxes[:, 1])
        & (y <= boxes[:, 3])
        & (x >= boxes[:, 2])
        & (x <= boxes[:, 4])
    )
    outside = np.zeros(len(ann.points), dtype=bool)
    outside[rows] = ~inside.any(axis=1)

    def explain(i: int) -> str:
        return (
            f"the boxes of this class in slice z={ann.points[i, 0]} are marked exhaustive but "
            "none contains the point"
        )

    _raise_first(
        ann,
        "points",
        outside,
        source,
        explain,
        "box the object it marks, fix the point, or clear the exhaustive mark",
    )


def _check_masks_inside_exhaustive_boxes(ann: Annotations, shape, source: str) -> None:
    # One box mask per exhaustive (slice, class): those rows are few, slices are whole images.
    for z, c in ann.exhaustive_boxes:
        labelled = ann.masks[z] == c + 1
        if not labelled.any():
            continue
        outside = labelled & ~box_masks(ann, int(z), shape[1:])[c]
        if outside.any():
            y, x = np.unravel_index(int(np.argmax(outside)), outside.shape)
            raise AnnotationError(
                f"{source.of('masks')}: the mask labels {int(outside.sum())} pixels of class "
                f"{_class_label(ann, c)} in slice z={z} outside its boxes (first at (y, x) = "
                f"({y}, {x})), but those boxes are marked exhaustive; box that object, fix the "
                "mask, or clear the exhaustive mark"
            )


def _check_points_against_regions(ann: Annotations, source: str) -> None:
    """A point inside a tagged region must be of a class the region tags."""
    if not len(ann.region_tags) or not len(ann.points):
        return
    regions = tag_regions(ann)
    inside = regions_containing(regions, ann.points[:, :3])  # (P, R)
    excluded = inside & ~regions.present[:, ann.points[:, 3]].T
    if not excluded.any():
        return
    i, more = _first(excluded.any(axis=1))
    region = regions.boxes[int(np.argmax(excluded[i]))]
    rows = ann.region_tags
    same = np.all(rows[:, [0, 2, 3, 4, 5]] == region, axis=1)
    j = int(np.argmax(same))
    names = ", ".join(f"'{ann.class_names[int(k)]}'" for k in np.unique(rows[same, 1]))
    raise AnnotationError(
        f"{source.of('points')}: {_describe(ann, 'points', i)} lies in the region of "
        f"{_describe(ann, 'region_tags', j)}, which tags only {names}; add a region tag for the "
        f"point's class there or fix the point's class{more}"
    )


def _check_masks_against_regions(ann: Annotations, source: _Source) -> None:
    """No mask pixel inside a tagged region may be of a class the region does not tag."""
    if ann.masks is None or not len(ann.region_tags):
        return
    regions = tag_regions(ann)
    for r, (z, y0, x0, y1, x1) in enumerate(regions.boxes):  # one window per region, not pixel
        window = np.asarray(ann.masks[z, y0 : y1 + 1, x0 : x1 + 1]).ravel()
        counts = np.bincount(window, minlength=ann.n_classes + 1)[1 : ann.n_classes + 1]
        excluded = (counts > 0) & ~regions.present[r]
        if excluded.any():
            c = int(np.argmax(excluded))
            rows = ann.region_tags[:, [0, 2, 3, 4, 5]]
            j = int(np.argmax(np.all(rows == regions.boxes[r], axis=1)))
            raise AnnotationError(
                f"{source.of('masks')}: the mask labels {counts[c]} pixels of class "
                f"{_class_label(ann, c)} inside the region of {_describe(ann, 'region_tags', j)}, "
                "which does not tag that class; add a region tag for it there or fix the mask"
            )


# ----------------------------------------------------------------------------------- warnings
def _unannotated_classes(ann: Annotations, source: str) -> list[str]:
    seen = np.zeros(ann.n_classes, dtype=bool)
    seen[ann.points[:, 3]] = True
    seen[ann.boxes[:, 5]] = True
    seen[ann.tags[:, 1]] = True
    seen[ann.region_tags[:, 1]] = True
    seen[ann.sizes[ann.sizes[:, 2] > 0, 1].astype(np.int64)] = True
    if ann.masks is not None:
        seen |= np.bincount(ann.masks.ravel(), minlength=ann.n_classes + 1)[1:] > 0
    return [
        f"{source}: class {_class_label(ann, c)} has no points, boxes, tags, sizes > 0 or mask "
        "pixels; the model gets no example of it, so annotate some or remove the class"
        for c in np.flatnonzero(~seen)
    ]
