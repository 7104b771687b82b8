"""Weak targets of training crops: what every annotation kind says about each pixel. Imports no Qt.

Methods that train on crops share these targets (dsp on 2D crops, rewis3d on 3D boxes, one
slice at a time). For one ``S`` x ``S`` crop of a slice, :class:`AnnotationIndex` builds a
:class:`CropTargets`:

- ``labels``: the class of every pixel whose class is known (points, mask pixels), else -1;
- ``components``: connected components of the mask annotation inside the crop (ids 1..m);
- ``allowed``: ``A(j)``, the classes pixel ``j`` may still belong to (Eq. 8 of Reiß et al.):
  all classes, restricted to the slice's tags if it has any, minus every class the slice's sizes
  give a fraction of 0 and, inside a tagged region (``Annotations.region_tags``), restricted to
  the region's tags, minus every class whose boxes in the slice are marked exhaustive
  (``Annotations.exhaustive_boxes``) but none of which covers ``j``, and exactly the known class
  at point and mask pixels. A box that is not exhaustive excludes nothing outside it; it only
  adds its inside positives (the maximum along its rows and columns);
- the boxes that touch the crop, clipped, with whether their rows / columns are still complete
  (a row of a clipped box is only a valid positive if the box's full X extent is in the crop);
- the classes present in the slice (its tags, and its sizes above 0), as image-level positives
  when the crop holds the whole slice, and the region tags whose region lies wholly in the crop
  (a positive of each tagged class, pooled over the region).

A 3D box ``(dz, dy, dx)`` gets the targets of each of its slices
(:meth:`AnnotationIndex.box_targets`), so its batch is its slices. :func:`collate` stacks crops
into a :class:`BatchTargets` of tensors and :func:`transform_targets` moves them with the crops'
flips and rotations. The losses on them are in :mod:`napari_wsseg.engine.weak_losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from scipy import ndimage

from ..annotations.model import Annotations
from ..annotations.region_tags import TagRegions, region_allowed, tag_regions
from ..annotations.targets import tag_matrix
from .augment import Geometry
from .crops import Crop, Crop3D


@dataclass
class CropTargets:
    """Weak targets of one ``S`` x ``S`` crop (see the module docstring)."""

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

    @classmethod
    def empty(cls, size: int, n_classes: int) -> "CropTargets":
        """Targets of a crop that says nothing: all unlabelled, every class allowed."""
        nothing = np.zeros(0, np.int64)
        return cls(
            labels=np.full((size, size), -1, np.int64),
            is_point=np.zeros((size, size), bool),
            components=np.zeros((size, size), np.int64),
            component_classes=nothing,
            allowed=np.ones((n_classes, size, size), bool),
            boxes=np.zeros((0, 4), np.int64),
            box_classes=nothing,
            box_rows_valid=np.zeros(0, bool),
            box_cols_valid=np.zeros(0, bool),
            tagged=np.zeros(n_classes, bool),
        )


class AnnotationIndex:
    """Annotations grouped by slice for fast per-crop lookups.

    Parameters
    ----------
    annotations : Annotations
        All annotations of the image.
    shape : (Z, Y, X)
        Spatial shape of the image.

    Outside the boxes of an exhaustive (slice, class) of ``annotations.exhaustive_boxes`` the class
    is absent (everywhere in the slice when it has no box there). A size row ``(z, class, 0)``
    makes the class absent from slice ``z``; a fraction above 0 makes it present, as a tag does
    (the fraction's value is not used here). Assumes annotations that passed
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
        self.present = self.tagged[:, None] & self.allowed_by_tags  # (Z, C)
        size_z, size_class = annotations.sizes[:, :2].astype(np.int64).T
        positive = annotations.sizes[:, 2] > 0
        self.allowed_by_tags[size_z[~positive], size_class[~positive]] = False
        self.present[size_z[positive], size_class[positive]] = True
        self.present &= self.allowed_by_tags
        self.regions = tag_regions(annotations)
        self._regions_by_z = {
            int(z): self.regions.in_slice(int(z)) for z in np.unique(self.regions.boxes[:, 0])
        }
        self.masks = annotations.masks

    def slice_allowed(self, z: int) -> np.ndarray:
        """``(C,)`` bool: classes that may occur in slice ``z`` according to its tags and sizes."""
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
        near = self._regions_touching(crop)
        if len(near):
            allowed &= region_allowed(near, crop.z, crop.y, crop.x, size, size)
        known = labels >= 0
        allowed[:, known] = np.arange(n_classes)[:, None] == labels[known][None, :]
        box_fields = _clip_boxes(boxes, crop)
        # A class present in the slice need not be present in a crop of it: the tag positive (a
        # pooled score over the slice) is only taken when the crop holds the whole slice.
        whole_slice = (
            crop.y <= 0
            and crop.x <= 0
            and crop.y + size >= self.shape[1]
            and crop.x + size >= self.shape[2]
        )
        tagged = self.present[crop.z] & whole_slice
        regions = _region_positives(near, crop)
        return CropTargets(
            labels, is_point, components, component_classes, allowed, *box_fields, tagged, *regions
        )

    def _regions_touching(self, crop: Crop) -> TagRegions:
        """The tagged regions of the crop's slice that overlap it (grid tags can number
        thousands per slice; the others change nothing in the crop)."""
        regions = self._regions_by_z.get(crop.z, self.regions.in_slice(-1))
        b = regions.boxes
        last_y, last_x = crop.y + crop.size - 1, crop.x + crop.size - 1
        touching = (
            (b[:, 1] <= last_y) & (b[:, 3] >= crop.y) & (b[:, 2] <= last_x) & (b[:, 4] >= crop.x)
        )
        return TagRegions(b[touching], regions.present[touching])

    def box_targets(self, box: Crop3D) -> list[CropTargets]:
        """The :class:`CropTargets` of each slice of a 3D ``box`` (``dy == dx``), in z order.

        Slices past the last one of the image (the box is padded there) get empty targets.

        Raises
        ------
        ValueError
            When the box is not square in y and x.
        """
        dz, dy, dx = box.size_zyx
        if dy != dx:
            raise ValueError(f"3D box {box.size_zyx} must be square in y and x (dy == dx)")
        return [
            self.crop_targets(Crop(z, box.y, box.x, dy))
            if z < self.shape[0]
            else CropTargets.empty(dy, self.n_classes)
            for z in range(box.z, box.z + dz)
        ]

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


@dataclass
class BatchTargets:
    """:class:`CropTargets` of a batch as tensors.

    ``components`` ids are unique over the batch (1..M, 0 none); boxes carry the index of their
    crop in ``box_index``; ``valid`` marks pixels inside the image (not padding).
    """

    labels: torch.Tensor  # (B, H, W) long, -1 unknown
    is_point: torch.Tensor  # (B, H, W) bool
    components: torch.Tensor  # (B, H, W) long
    component_classes: torch.Tensor  # (M,) long
    allowed: torch.Tensor  # (B, C, H, W) bool
    valid: torch.Tensor  # (B, H, W) bool
    boxes: torch.Tensor  # (NB, 4) long
    box_index: torch.Tensor  # (NB,) long
    box_classes: torch.Tensor  # (NB,) long
    box_rows_valid: torch.Tensor  # (NB,) bool
    box_cols_valid: torch.Tensor  # (NB,) bool
    tagged: torch.Tensor  # (B, C) bool
    region_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    region_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    region_classes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device) -> "BatchTargets":
        return BatchTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate(crops: list[CropTargets], valid: list[np.ndarray]) -> BatchTargets:
    """Stack per-crop targets into a :class:`BatchTargets` (component ids made batch-unique)."""
    offsets = np.cumsum([0] + [len(c.component_classes) for c in crops[:-1]])
    components = np.stack(
        [np.where(c.components > 0, c.components + o, 0) for c, o in zip(crops, offsets)]
    )
    box_counts = [len(c.box_classes) for c in crops]
    region_counts = [len(c.region_classes) for c in crops]
    return BatchTargets(
        labels=torch.from_numpy(np.stack([c.labels for c in crops])),
        is_point=torch.from_numpy(np.stack([c.is_point for c in crops])),
        components=torch.from_numpy(components),
        component_classes=torch.from_numpy(
            np.concatenate([c.component_classes for c in crops])
        ).long(),
        allowed=torch.from_numpy(np.stack([c.allowed for c in crops])),
        valid=torch.from_numpy(np.stack(valid)),
        boxes=torch.from_numpy(np.concatenate([c.boxes for c in crops]).reshape(-1, 4)).long(),
        box_index=torch.from_numpy(np.repeat(np.arange(len(crops)), box_counts)).long(),
        box_classes=torch.from_numpy(np.concatenate([c.box_classes for c in crops])).long(),
        box_rows_valid=torch.from_numpy(np.concatenate([c.box_rows_valid for c in crops])),
        box_cols_valid=torch.from_numpy(np.concatenate([c.box_cols_valid for c in crops])),
        tagged=torch.from_numpy(np.stack([c.tagged for c in crops])),
        region_boxes=torch.from_numpy(
            np.concatenate([c.region_boxes for c in crops]).reshape(-1, 4)
        ).long(),
        region_index=torch.from_numpy(np.repeat(np.arange(len(crops)), region_counts)).long(),
        region_classes=torch.from_numpy(np.concatenate([c.region_classes for c in crops])).long(),
    )


def transform_targets(targets: BatchTargets, geometries: list[Geometry]) -> BatchTargets:
    """Apply crop ``i``'s geometry to its maps and boxes (crops are square)."""
    size = targets.labels.shape[-1]

    def per_crop(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([g.apply(item) for g, item in zip(geometries, x)])

    boxes = targets.boxes.clone()
    rows_valid, cols_valid = targets.box_rows_valid.clone(), targets.box_cols_valid.clone()
    for i, geometry in enumerate(geometries):
        mine = targets.box_index == i
        if mine.any():
            boxes[mine], swapped = geometry.apply_boxes(targets.boxes[mine], size)
            if swapped:
                rows_valid[mine] = targets.box_cols_valid[mine]
                cols_valid[mine] = targets.box_rows_valid[mine]
    maps = {
        name: per_crop(getattr(targets, name))
        for name in ("labels", "is_point", "components", "allowed", "valid")
    }
    regions = targets.region_boxes.clone()
    for i, geometry in enumerate(geometries):
        mine = targets.region_index == i
        if mine.any():
            regions[mine] = geometry.apply_boxes(targets.region_boxes[mine], size)[0]
    rest = {f.name: getattr(targets, f.name) for f in fields(targets)}
    moved_boxes = {
        "boxes": boxes,
        "box_rows_valid": rows_valid,
        "box_cols_valid": cols_valid,
        "region_boxes": regions,
    }
    return BatchTargets(**(rest | maps | moved_boxes))
