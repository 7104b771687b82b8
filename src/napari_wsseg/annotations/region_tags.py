"""Region tags: which classes are present in a rectangle of a slice, and hence which are absent.

``Annotations.region_tags`` holds rows ``(z, class, y0, x0, y1, x1)`` (corners inclusive). The rows
sharing one rectangle form a *tagged region*: the tagged classes are present somewhere in it and
every other class is absent from all of its pixels. This module groups the rows into regions and
turns them into per-pixel allowed classes for a window. Imports no Qt.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .model import Annotations


@dataclass(frozen=True)
class TagRegions:
    """The tagged regions of some annotations.

    Attributes
    ----------
    boxes : (R, 5) int64 array
        Rows ``(z, y0, x0, y1, x1)``, one per distinct rectangle, sorted.
    present : (R, C) bool array
        ``present[r, k]``: class ``k`` is tagged in region ``r`` (untagged classes are absent).
    """

    boxes: np.ndarray
    present: np.ndarray

    def __len__(self) -> int:
        return len(self.boxes)

    def in_slice(self, z: int) -> "TagRegions":
        """The regions of slice ``z``."""
        keep = self.boxes[:, 0] == z
        return TagRegions(self.boxes[keep], self.present[keep])


def tag_regions(annotations: Annotations) -> TagRegions:
    """Group ``annotations.region_tags`` rows by rectangle.

    Examples
    --------
    >>> from napari_wsseg.annotations.model import default_classes
    >>> ann = Annotations(default_classes(3), region_tags=[[0, 2, 0, 0, 3, 3], [0, 0, 0, 0, 3, 3]])
    >>> regions = tag_regions(ann)
    >>> regions.boxes.tolist(), regions.present.tolist()
    ([[0, 0, 0, 3, 3]], [[True, False, True]])
    """
    rows = annotations.region_tags
    boxes, which = np.unique(rows[:, [0, 2, 3, 4, 5]], axis=0, return_inverse=True)
    present = np.zeros((len(boxes), annotations.n_classes), bool)
    present[np.asarray(which).ravel(), rows[:, 1]] = True
    return TagRegions(boxes.reshape(-1, 5).astype(np.int64), present)


def region_allowed(
    regions: TagRegions, z: int, y: int, x: int, height: int, width: int
) -> np.ndarray:
    """``(C, height, width)`` bool: the classes the regions of slice ``z`` allow in a window.

    The window's top-left pixel is ``(y, x)``; it may reach outside the image. Outside every
    region all classes are allowed; a pixel in several regions keeps only the classes all of them
    tag.

    Examples
    --------
    >>> from napari_wsseg.annotations.model import default_classes
    >>> ann = Annotations(default_classes(2), region_tags=[[0, 1, 1, 1, 2, 2]])
    >>> region_allowed(tag_regions(ann), 0, 0, 0, 3, 3)[0].astype(int).tolist()
    [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    """
    mine = regions.in_slice(z)
    n_classes = regions.present.shape[1]
    if not len(mine):
        return np.ones((n_classes, height, width), bool)
    inside_y = _inside(y + np.arange(height), mine.boxes[:, 1], mine.boxes[:, 3])  # (R, H)
    inside_x = _inside(x + np.arange(width), mine.boxes[:, 2], mine.boxes[:, 4])  # (R, W)
    absent = (~mine.present).astype(np.float32)  # (R, C)
    # a class is excluded at a pixel when any region containing the pixel does not tag it
    excluded = np.einsum(
        "rc,ry,rx->cyx", absent, inside_y.astype(np.float32), inside_x.astype(np.float32)
    )
    return excluded == 0


def regions_containing(regions: TagRegions, zyx: np.ndarray) -> np.ndarray:
    """``(N, R)`` bool: whether pixel ``zyx[i]`` lies in region ``r``."""
    zyx = np.asarray(zyx, np.int64).reshape(-1, 3)
    b = regions.boxes
    return (
        (zyx[:, None, 0] == b[None, :, 0])
        & _inside(zyx[:, 1], b[:, 1], b[:, 3]).T
        & _inside(zyx[:, 2], b[:, 2], b[:, 4]).T
    )


def _inside(coords: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """``(R, N)`` bool: ``lo[r] <= coords[n] <= hi[r]``."""
    return (coords[None, :] >= lo[:, None]) & (coords[None, :] <= hi[:, None])


def grid_cell(y: int, x: int, cell: int, shape_yx: tuple[int, int]) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)`` (inclusive) of the ``cell``-pixel grid cell holding pixel ``(y, x)``.

    The grid starts at the top-left pixel; edge cells are clipped to the image (as
    :func:`napari_wsseg.eval.simulate.grid_region_tags` lays it).

    Examples
    --------
    >>> grid_cell(5, 70, 32, (100, 80))
    (0, 64, 31, 79)
    """
    y0, x0 = (int(y) // cell) * cell, (int(x) // cell) * cell
    return y0, x0, min(y0 + cell, int(shape_yx[0])) - 1, min(x0 + cell, int(shape_yx[1])) - 1


def toggle_region_tag(
    rows: np.ndarray, z: int, k: int, box: tuple[int, int, int, int]
) -> np.ndarray:
    """``rows`` with the tag of class ``k`` in rectangle ``box`` of slice ``z`` added, or removed
    when it is there (what clicking a grid cell with the current class does).

    Examples
    --------
    >>> rows = toggle_region_tag(np.zeros((0, 6), np.int64), 2, 1, (0, 0, 31, 31))
    >>> rows.tolist()
    [[2, 1, 0, 0, 31, 31]]
    >>> toggle_region_tag(rows, 2, 1, (0, 0, 31, 31)).shape
    (0, 6)
    """
    rows = np.asarray(rows, np.int64).reshape(-1, 6)
    row = np.array([z, k, *box], np.int64)
    same = np.all(rows == row, axis=1)
    if same.any():
        return rows[~same]
    return np.concatenate([rows, row[None]])
