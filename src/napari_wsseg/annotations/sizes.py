"""Helpers for entering size annotations: estimates from a painted mask, and the counting grid.

The size-target paper's annotation tool overlays a grid on the image so the annotator counts the
cells a class covers; annotators were about twice as accurate with it. :func:`grid_lines` gives
the lines of such a grid (coarse: 5 x 5 cells of 4 % each; fine: 10 x 10 cells of 1 % each) for a
Shapes overlay, and :func:`estimate_sizes_from_mask` turns a painted (partial) label slice into
size fractions as a starting point. Arrays only; imports no Qt.
"""

from __future__ import annotations

import numpy as np

from ..errors import AnnotationError

#: Cells per side of the counting grid.
GRID_DIVISIONS = {"coarse": 5, "fine": 10}


def estimate_sizes_from_mask(
    mask_slice, n_classes: int, *, unlabeled_as: int | None = None
) -> np.ndarray:
    """Class fractions of one painted label slice.

    Parameters
    ----------
    mask_slice : (Y, X) integer array
        Painted labels: 0 unlabeled, ``k > 0`` means class ``k - 1`` (napari Labels convention).
    n_classes : int
        Number of classes C.
    unlabeled_as : int or None, default None
        None: fractions among the painted pixels only (paint a rough copy of the slice, or
        representative parts of it). A class id: unpainted pixels count as that class (e.g. the
        background class when only the objects were painted).

    Returns
    -------
    (C,) float64 array
        Fractions summing to 1.

    Raises
    ------
    AnnotationError
        If nothing is painted (and ``unlabeled_as`` is None), a label exceeds ``n_classes``, or
        ``unlabeled_as`` is not a class id.

    Examples
    --------
    >>> mask = np.array([[1, 1, 2, 0], [1, 3, 0, 0]])
    >>> estimate_sizes_from_mask(mask, 3).tolist()
    [0.6, 0.2, 0.2]
    >>> estimate_sizes_from_mask(mask, 3, unlabeled_as=0).tolist()
    [0.75, 0.125, 0.125]
    """
    mask = np.asarray(mask_slice)
    if mask.ndim != 2 or mask.dtype.kind not in "iub":
        raise AnnotationError(
            f"painted mask has shape {mask.shape} and dtype {mask.dtype}; give one (Y, X) "
            "integer label slice"
        )
    if unlabeled_as is not None and not 0 <= unlabeled_as < n_classes:
        raise AnnotationError(
            f"unlabeled_as={unlabeled_as} is not a class id (0..{n_classes - 1}); pick a class "
            "or None"
        )
    low, high = (int(mask.min()), int(mask.max())) if mask.size else (0, 0)
    if low < 0 or high > n_classes:
        bad = high if high > n_classes else low
        raise AnnotationError(
            f"painted mask holds label {bad}, but there are {n_classes} classes "
            f"(labels 1..{n_classes}); "
            "paint with the class labels only"
        )
    counts = np.bincount(mask.ravel().astype(np.int64), minlength=n_classes + 1)
    per_class = counts[1:].astype(np.float64)
    if unlabeled_as is not None:
        per_class[unlabeled_as] += counts[0]
    total = per_class.sum()
    if total == 0:
        raise AnnotationError(
            "painted mask is empty; paint some pixels of each class first, or give unlabeled_as"
        )
    return per_class / total


def grid_cell_fraction(coarse: bool) -> float:
    """Share of the slice one grid cell covers (0.04 coarse, 0.01 fine).

    Examples
    --------
    >>> grid_cell_fraction(True), grid_cell_fraction(False)
    (0.04, 0.01)
    """
    return 1.0 / GRID_DIVISIONS["coarse" if coarse else "fine"] ** 2


def grid_lines(shape_yx: tuple[int, int], coarse: bool = False) -> np.ndarray:
    """Line segments of a counting grid over a slice, for a napari Shapes layer of lines.

    The slice is split into ``n x n`` equal cells (``n`` = 5 coarse, 10 fine), so each cell is
    ``1 / n**2`` of the slice and a class covering ``m`` cells has size about ``m / n**2``.

    Parameters
    ----------
    shape_yx : (Y, X) tuple of int
        Slice shape in pixels.
    coarse : bool, default False
        5 x 5 cells (4 % each) instead of 10 x 10 (1 % each).

    Returns
    -------
    (2 * (n - 1), 2, 2) float64 array
        Each segment as its two end points ``(y, x)`` in pixel coordinates (pixel centres at
        integers, the slice spans ``-0.5 .. Y - 0.5``): first the ``n - 1`` horizontal lines, then
        the ``n - 1`` vertical ones.

    Examples
    --------
    >>> grid_lines((10, 20), coarse=True)[0].tolist()  # first horizontal line
    [[1.5, -0.5], [1.5, 19.5]]
    >>> grid_lines((10, 20)).shape
    (18, 2, 2)
    """
    height, width = (float(s) for s in shape_yx)
    if height <= 0 or width <= 0:
        raise AnnotationError(
            f"grid for a slice of shape {tuple(shape_yx)}; give a positive (Y, X) shape"
        )
    n = GRID_DIVISIONS["coarse" if coarse else "fine"]
    steps = np.arange(1, n) / n
    ys = -0.5 + steps * height
    xs = -0.5 + steps * width
    start, end = np.full(n - 1, -0.5), np.full(n - 1, 1.0)
    horizontal = np.stack([np.stack([ys, start], 1), np.stack([ys, end * width - 0.5], 1)], 1)
    vertical = np.stack([np.stack([start, xs], 1), np.stack([end * height - 0.5, xs], 1)], 1)
    return np.concatenate([horizontal, vertical])
