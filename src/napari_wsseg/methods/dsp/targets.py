"""Turning weak annotations into per-crop DSP targets (numpy, data preparation). Imports no Qt.

For one crop this builds what the losses need:

- ``labels``: the class of every pixel whose class is known (points, mask pixels), else -1;
- ``components``: connected components of the mask annotation inside the crop (ids 1..m);
- ``allowed``: ``A(j)``, the classes pixel ``j`` may still belong to (Eq. 8 of Reiß et al.):
  all classes, restricted to the slice's tags if it has any and, inside a tagged region
  (``Annotations.region_tags``), to the region's tags, minus every class whose boxes in the
  slice are marked exhaustive (``Annotations.exhaustive_boxes``) but none of which covers ``j``,
  and exactly the known class at point and mask pixels. A box that is not exhaustive excludes
  nothing outside it; it only adds its inside positives (the maximum along its rows and columns);
- the boxes that touch the crop, clipped, with whether their rows / columns are still complete
  (a row of a clipped box is only a valid positive if the box's full X extent is in the crop);
- the slice's tags (image-level positives), and the region tags whose region lies wholly in the
  crop (a positive of each tagged class, pooled over the region).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ...annotations.model import Annotations
from ...annotations.region_tags import region_allowed, tag_regions
from ...annotations.targets import tag_matrix
from ...engine.crops import Crop


@dataclass
class CropTargets:
    """DSP targets of one ``S`` x ``S`` crop (see the module docstring)."""

    labels: np.ndarray  # (S, S) int64, -1 unknown
    is_point: np.ndarray  # (S, S) bool
    components: np.ndarray  # (S, S) int64, 0 none, else 1..m
    component_classes: np.ndarray  # (m,) int64
    allowed: np.ndarray  # (C, S, S) bool
    boxes: np.ndarray  # (nb, 4) int64 (y0, x0, y1, x1) in crop coordinates, inclusive
    box_classes: np.ndarray  # (nb,) int64
    box_rows_valid: np.ndarray  # (nb,) bool
    box_cols_valid: np.ndarray  # (nb,) bool
    tagged: np.ndarray  # (C,) bool
    region_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    region_classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


class AnnotationIndex:
    """Annotations grouped by slice for fast per-crop lookups.

    Parameters
    ----------
    annotations : Annotations
        All annotations of the image.
    shape : (Z, Y, X)
        Spatial shape of the image.

    Outside the boxes of an exhaustive (slice, class) of ``annotations.exhaustive_boxes`` the class
    is absent (everywhere in the slice when it has no box there). Assumes annotations that passed
    :func:`~napari_wsseg.annotations.validate.validate_annotations`.
    """

    def __init__(self, annotations: Annotations, shape: tuple[int, int, int]) -> None:
        self.n_classes = annotations.n_classes
        self.shape = tuple(int(s) for s in shape)
        self.exhaustive = np.zeros((self.shape[0], self.n_classes), bool)  # (Z, C)
        self.exhaustive[annotations.exhaustive_boxes[:, 0], annotations.exhaustive_boxes[:, 1]] = (
            True
        )
        self.points = _group_by_z(annotations.points[:, [1, 2, 3]], annotations.points[:, 0])
        self.boxes = _group_by_z(annotations.boxes[:, 1:], annotations.boxes[:, 0])
        self.tagged, self.allowed_by_tags = tag_matrix(annotations, self.shape[0])
        self.regions = tag_regions(annotations)
        self.masks = annotations.masks

    def slice_allowed(self, z: int) -> np.ndarray:
        """``(C,)`` bool: classes that may occur in slice ``z`` according to its tags."""
        return self.allowed_by_tags[z]

    def crop_targets(self, crop: Crop) -> CropTargets:
        """The :class:`CropTargets` of ``crop``."""
        size, n_classes = crop.size, self.n_classes
        labels = np.full((size, size), -1, np.int64)
        mask_window = self._mask_window(crop)
        labels[mask_window > 0] = mask_window[mask_window > 0].astype(np.int64) - 1
        components, component_classes = _components(mask_window, n_classes)
        is_point = np.zeros((size, size), bool)
        points = self.points.get(crop.z, np.zeros((0, 3), np.int64))
        local = points[:, :2] - (crop.y, crop.x)
        inside = np.all((local >= 0) & (local < size), axis=1)
        labels[local[inside, 0], local[inside, 1]] = points[inside, 2]
        is_point[local[inside, 0], local[inside, 1]] = True
        boxes = self.boxes.get(crop.z, np.zeros((0, 5), np.int64))
        allowed = np.broadcast_to(
            self.slice_allowed(crop.z)[:, None, None], (n_classes, size, size)
        ).copy()
        exhaustive = self.exhaustive[crop.z]
        if exhaustive.any():
            allowed &= _box_coverage(boxes, crop, n_classes) | ~exhaustive[:, None, None]
        if len(self.regions):
            allowed &= region_allowed(self.regions, crop.z, crop.y, crop.x, size, size)
        known = labels >= 0
        allowed[:, known] = np.arange(n_classes)[:, None] == labels[known][None, :]
        box_fields = _clip_boxes(boxes, crop)
        # A class present in the slice need not be present in a crop of it: the tag positive (the
        # mean score over the slice) is only taken when the crop holds the whole slice.
        whole_slice = (
            crop.y <= 0
            and crop.x <= 0
            and crop.y + size >= self.shape[1]
            and crop.x + size >= self.shape[2]
        )
        tagged = self.slice_allowed(crop.z) & self.tagged[crop.z] & whole_slice
        regions = _region_positives(self.regions.in_slice(crop.z), crop)
        return CropTargets(
            labels, is_point, components, component_classes, allowed, *box_fields, tagged, *regions
        )

    def _mask_window(self, crop: Crop) -> np.ndarray:
        window = np.zeros((crop.size, crop.size), np.int64)
        if self.masks is None:
            return window
        part = np.asarray(
            self.masks[crop.z, crop.y : crop.y + crop.size, crop.x : crop.x + crop.size]
        )
        window[: part.shape[0], : part.shape[1]] = part
        return window


def _group_by_z(rows: np.ndarray, z: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(z, kind="stable")
    slices, starts = np.unique(z[order], return_index=True)
    groups = np.split(rows[order].astype(np.int64), starts[1:])
    return {int(s): g for s, g in zip(slices, groups)}


def _components(mask_window: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Connected components (4-connected) of each class of a mask window; ids 1..m."""
    components = np.zeros(mask_window.shape, np.int64)
    classes = []
    for value in np.unique(mask_window[mask_window > 0]):
        labelled, count = ndimage.label(mask_window == value)
        components[labelled > 0] = labelled[labelled > 0] + len(classes)
        classes.extend([int(value) - 1] * count)
    return components, np.asarray(classes, np.int64)


def _box_coverage(boxes: np.ndarray, crop: Crop, n_classes: int) -> np.ndarray:
    """``(C, S, S)`` bool: whether a box of the class covers the pixel (all False without boxes)."""
    coords = np.arange(crop.size)
    ys, xs = coords + crop.y, coords + crop.x
    rows_in = (ys[None, :] >= boxes[:, 0:1]) & (ys[None, :] <= boxes[:, 2:3])  # (nb, S)
    cols_in = (xs[None, :] >= boxes[:, 1:2]) & (xs[None, :] <= boxes[:, 3:4])  # (nb, S)
    for_class = np.arange(n_classes)[:, None] == boxes[None, :, 4]  # (C, nb)
    # a pixel is covered for class c if any box of c contains both its row and its column
    rows, cols = rows_in.astype(np.float32), cols_in.astype(np.float32)
    return np.einsum("cb,by,bx->cyx", for_class.astype(np.float32), rows, cols) > 0


def _region_positives(regions, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``(N, 4)`` in crop coordinates and classes ``(N,)``: one row per tagged class of each
    region lying wholly in the crop (a region cut by the crop may hold its class in the cut-off
    part)."""
    local = regions.boxes[:, 1:] - np.array([crop.y, crop.x, crop.y, crop.x])
    inside = np.all((local >= 0) & (local < crop.size), axis=1)
    region, classes = np.nonzero(regions.present[inside])
    return local[inside][region].reshape(-1, 4).astype(np.int64), classes.astype(np.int64)


def _clip_boxes(boxes: np.ndarray, crop: Crop) -> tuple[np.ndarray, ...]:
    """Boxes overlapping the crop in crop coordinates, clipped, with row/column validity."""
    local = boxes[:, :4] - np.array([crop.y, crop.x, crop.y, crop.x])
    last = crop.size - 1
    overlaps = (
        (local[:, 0] <= last) & (local[:, 2] >= 0) & (local[:, 1] <= last) & (local[:, 3] >= 0)
    )
    local, classes = local[overlaps], boxes[overlaps, 4]
    rows_valid = (local[:, 1] >= 0) & (local[:, 3] <= last)  # full X extent inside
    cols_valid = (local[:, 0] >= 0) & (local[:, 2] <= last)  # full Y extent inside
    return (
        np.clip(local, 0, last).astype(np.int64),
        classes.astype(np.int64),
        rows_valid,
        cols_valid,
    )
