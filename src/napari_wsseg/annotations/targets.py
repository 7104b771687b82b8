"""Per-slice training targets derived from weak annotations, shared by all methods. No Qt.

Methods train one 2D slice at a time; these helpers turn the annotations of slice ``z`` into
arrays: pixel labels from points and masks, per-class box masks, the classes the slice's tags
allow, and the slice's size fractions. They assume annotations that passed
:func:`~napari_wsseg.annotations.validate.validate_annotations`.
"""

from __future__ import annotations

import numpy as np

from .model import Annotations


def allowed_classes_per_slice(ann: Annotations, z: int) -> np.ndarray:
    """Which classes may occur in slice ``z`` according to its tags.

    On a slice with tags, exactly the tagged classes are allowed (untagged ones are absent);
    on a slice without tags every class is allowed.

    Parameters
    ----------
    ann : Annotations
    z : int
        The slice.

    Returns
    -------
    (C,) bool array

    Examples
    --------
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> ann = Annotations(default_classes(3), tags=[[1, 0], [1, 2], [1, 2]])
    >>> allowed_classes_per_slice(ann, 1).tolist(), allowed_classes_per_slice(ann, 0).tolist()
    ([True, False, True], [True, True, True])
    """
    tagged = ann.tags[ann.tags[:, 0] == z, 1]
    if not len(tagged):
        return np.ones(ann.n_classes, dtype=bool)
    allowed = np.zeros(ann.n_classes, dtype=bool)
    allowed[tagged] = True
    return allowed


def tag_matrix(ann: Annotations, n_slices: int) -> tuple[np.ndarray, np.ndarray]:
    """Per slice whether it has tags ``(Z,) bool`` and which classes they allow ``(Z, C) bool``.

    Classes on a slice without tags are all allowed. Assumes validated tags (inside ``n_slices``).

    Examples
    --------
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> tagged, allowed = tag_matrix(Annotations(default_classes(2), tags=[[1, 0]]), 2)
    >>> tagged.tolist(), allowed.tolist()
    ([False, True], [[True, True], [True, False]])
    """
    tagged = np.zeros(n_slices, dtype=bool)
    tagged[ann.tags[:, 0]] = True
    allowed = np.ones((n_slices, ann.n_classes), dtype=bool)
    allowed[tagged] = False
    allowed[ann.tags[:, 0], ann.tags[:, 1]] = True
    return tagged, allowed


def point_targets(ann: Annotations, z: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """Pixel labels of slice ``z`` from the partial mask and the points.

    Parameters
    ----------
    ann : Annotations
    z : int
        The slice.
    shape_yx : (Y, X) tuple of int
        Shape of the slice.

    Returns
    -------
    (Y, X) int64 array
        The class id at mask pixels and clicked points, -1 elsewhere (unlabeled). Where a point
        and the mask disagree (validation rejects this), the point wins.

    Examples
    --------
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> masks = np.array([[[0, 2], [0, 0]]])
    >>> ann = Annotations(default_classes(2), points=[[0, 1, 0, 0]], masks=masks)
    >>> point_targets(ann, 0, (2, 2)).tolist()
    [[-1, 1], [0, -1]]
    """
    targets = np.full(shape_yx, -1, dtype=np.int64)
    if ann.masks is not None and 0 <= z < len(ann.masks):
        targets[...] = ann.masks[z].astype(np.int64) - 1
    points = ann.points[ann.points[:, 0] == z]
    targets[points[:, 1], points[:, 2]] = points[:, 3]
    return targets


def box_masks(ann: Annotations, z: int, shape_yx: tuple[int, int]) -> np.ndarray:
    """Per class, the union of the boxes of slice ``z`` (corners inclusive, clipped to the slice).

    Vectorised over boxes: each box adds +1/-1 at its four corners of a per-class difference
    image, and a 2D cumulative sum turns that into box coverage counts.

    Parameters
    ----------
    ann : Annotations
    z : int
        The slice.
    shape_yx : (Y, X) tuple of int
        Shape of the slice.

    Returns
    -------
    (C, Y, X) bool array
        ``out[c]`` is True inside any box of class ``c``.

    Examples
    --------
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> ann = Annotations(default_classes(2), boxes=[[0, 0, 1, 1, 2, 1]])
    >>> box_masks(ann, 0, (3, 4))[1].astype(int).tolist()
    [[0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    height, width = shape_yx
    boxes = ann.boxes[ann.boxes[:, 0] == z]
    y0 = np.clip(boxes[:, 1], 0, height)
    x0 = np.clip(boxes[:, 2], 0, width)
    y1 = np.clip(boxes[:, 3] + 1, 0, height)
    x1 = np.clip(boxes[:, 4] + 1, 0, width)
    c = boxes[:, 5]
    diff = np.zeros((ann.n_classes, height + 1, width + 1), dtype=np.int32)
    np.add.at(diff, (c, y0, x0), 1)
    np.add.at(diff, (c, y0, x1), -1)
    np.add.at(diff, (c, y1, x0), -1)
    np.add.at(diff, (c, y1, x1), 1)
    coverage = diff.cumsum(axis=1).cumsum(axis=2)
    return coverage[:, :height, :width] > 0


def sizes_for_slice(ann: Annotations, z: int) -> np.ndarray | None:
    """The size fractions of slice ``z``, one per class, renormalised to sum to 1.

    Classes without a size row on the slice count as 0.

    Parameters
    ----------
    ann : Annotations
    z : int
        The slice.

    Returns
    -------
    (C,) float64 array or None
        None when the slice has no sizes (or they are all 0).

    Examples
    --------
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> ann = Annotations(default_classes(3), sizes=[[0, 0, 0.7], [0, 2, 0.2]])
    >>> sizes_for_slice(ann, 0).round(3).tolist(), sizes_for_slice(ann, 1)
    ([0.778, 0.0, 0.222], None)
    """
    rows = ann.sizes[ann.sizes[:, 0] == z]
    fractions = np.zeros(ann.n_classes, dtype=np.float64)
    np.add.at(fractions, rows[:, 1].astype(np.int64), np.clip(rows[:, 2], 0, None))
    total = fractions.sum()
    if total <= 0:
        return None
    return fractions / total
