"""The weak-annotation data model: classes, points, boxes, tags, sizes and partial masks.

This is the public contract every method, the CLI and the widgets share (see
``docs/annotations.md``). Coordinates are integer voxel indices in (z, y, x); for a 2D image z is 0.
Classes are integers ``0..C-1``; each has a name and a colour. Imports no Qt.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

#: Default class colours (tab10-like, readable on grey EM), used when a class has no colour.
DEFAULT_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#7f7f7f",
)


#: Mask pixels counted as one label (a short scribble is worth a click) where labels are counted,
#: e.g. to weight the classes of suggestions.
MASK_PIXELS_PER_LABEL = 64


@dataclass(frozen=True)
class ClassInfo:
    """One segmentation class: its name and display colour (``#rrggbb``)."""

    name: str
    color: str


def default_classes(n_classes: int, names: list[str] | None = None) -> list[ClassInfo]:
    """Return ``n_classes`` classes named ``names`` (or
    ``class0``, ``class1``...) with default colours.

    Examples
    --------
    >>> [c.name for c in default_classes(2)]
    ['class0', 'class1']
    """
    names = names or [f"class{i}" for i in range(n_classes)]
    return [ClassInfo(n, DEFAULT_COLORS[i % len(DEFAULT_COLORS)]) for i, n in enumerate(names)]


def _empty(columns: int, dtype) -> np.ndarray:
    return np.zeros((0, columns), dtype=dtype)


@dataclass
class Annotations:
    """All weak annotations of one image or volume.

    Attributes
    ----------
    classes : list of ClassInfo
        Class ``k`` is ``classes[k]``.
    points : (N, 4) int64 array
        Rows ``(z, y, x, class)``: one clicked pixel each.
    boxes : (N, 6) int64 array
        Rows ``(z, y0, x0, y1, x1, class)``: an axis-aligned box in slice z around an object of
        the class; corners inclusive.
    tags : (N, 2) int64 array
        Rows ``(z, class)``: the class is present in slice z. On a slice with at least one tag,
        every untagged class is absent. Whole-slice tags only; see ``region_tags``.
    sizes : (N, 3) float64 array
        Rows ``(z, class, fraction)``: approximate fraction of slice z covered by the class.
    masks : (Z, Y, X) integer array or None
        Partial label image: 0 unlabeled, ``k > 0`` means class ``k - 1``. Same spatial shape as
        the image (a 2D image's mask is stored as ``(1, Y, X)``).
    exhaustive_boxes : (M, 2) int64 array
        Rows ``(z, class)``: every object of the class in slice z is boxed, so outside those boxes
        the class is absent (with no box at all: absent from the slice). A box without such a row
        only says that an object of the class lies inside it; it excludes nothing outside.
    region_tags : (N, 6) int64 array
        Rows ``(z, class, y0, x0, y1, x1)``: the class is present in the rectangle
        ``y0..y1, x0..x1`` (corners inclusive) of slice z. The rows sharing one rectangle form a
        tagged region: inside it every class without such a row is absent. Kept apart from
        ``tags`` so that ``tags`` stays the (slice, class) table its users expect.
    """

    classes: list[ClassInfo]
    points: np.ndarray = field(default_factory=lambda: _empty(4, np.int64))
    boxes: np.ndarray = field(default_factory=lambda: _empty(6, np.int64))
    tags: np.ndarray = field(default_factory=lambda: _empty(2, np.int64))
    sizes: np.ndarray = field(default_factory=lambda: _empty(3, np.float64))
    masks: np.ndarray | None = None
    exhaustive_boxes: np.ndarray = field(default_factory=lambda: _empty(2, np.int64))
    region_tags: np.ndarray = field(default_factory=lambda: _empty(6, np.int64))

    def __post_init__(self) -> None:
        self.points = np.asarray(self.points, dtype=np.int64).reshape(-1, 4)
        self.boxes = np.asarray(self.boxes, dtype=np.int64).reshape(-1, 6)
        self.tags = np.asarray(self.tags, dtype=np.int64).reshape(-1, 2)
        self.sizes = np.asarray(self.sizes, dtype=np.float64).reshape(-1, 3)
        self.region_tags = np.asarray(self.region_tags, dtype=np.int64).reshape(-1, 6)
        self.exhaustive_boxes = np.unique(
            np.asarray(self.exhaustive_boxes, dtype=np.int64).reshape(-1, 2), axis=0
        )
        if self.masks is not None:
            self.masks = np.asarray(self.masks)
            if self.masks.ndim == 2:
                self.masks = self.masks[np.newaxis]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    def is_empty(self) -> bool:
        """True when there is no annotation of any kind."""
        no_mask = self.masks is None or not np.any(self.masks)
        return (
            len(self.points) == 0
            and len(self.boxes) == 0
            and len(self.tags) == 0
            and len(self.sizes) == 0
            and len(self.exhaustive_boxes) == 0
            and no_mask
            and len(self.region_tags) == 0
        )

    def added_since(self, earlier: "Annotations") -> np.ndarray:
        """``(N, 3)`` int64 ``(z, y, x)`` of what this set has and ``earlier`` has not: each new
        point, and the centre of each new box (a row counts as many times as it repeats).

        Masks, tags, sizes and region tags are not compared.

        Examples
        --------
        >>> before = Annotations(default_classes(2), points=[[0, 5, 5, 0]])
        >>> after = Annotations(default_classes(2), points=[[0, 5, 5, 0], [1, 7, 8, 1]],
        ...                     boxes=[[0, 2, 2, 6, 10, 1]])
        >>> after.added_since(before).tolist()
        [[1, 7, 8], [0, 4, 6]]
        """
        points = _new_rows(self.points, earlier.points)[:, :3]
        boxes = _new_rows(self.boxes, earlier.boxes)
        centres = np.stack(
            [boxes[:, 0], (boxes[:, 1] + boxes[:, 3]) // 2, (boxes[:, 2] + boxes[:, 4]) // 2],
            axis=1,
        )
        return np.concatenate([points, centres]).astype(np.int64)

    def annotated_slices(self) -> np.ndarray:
        """Sorted z indices that carry at least one annotation of any kind."""
        zs = [
            self.points[:, 0],
            self.boxes[:, 0],
            self.tags[:, 0],
            self.sizes[:, 0].astype(np.int64),
            self.exhaustive_boxes[:, 0],
            self.region_tags[:, 0],
        ]
        if self.masks is not None:
            zs.append(np.flatnonzero(np.any(self.masks.reshape(len(self.masks), -1) > 0, axis=1)))
        return np.unique(np.concatenate(zs)).astype(np.int64)

    def counts(self) -> dict[str, np.ndarray]:
        """Per-class annotation counts by kind:
        ``{'points': (C,), 'boxes': ..., 'mask_pixels': ...}``.

        ``exhaustive_boxes`` counts the slices in which every object of the class is boxed.
        """
        c = self.n_classes
        out = {
            "points": np.bincount(self.points[:, 3], minlength=c)[:c],
            "boxes": np.bincount(self.boxes[:, 5], minlength=c)[:c],
            "tags": np.bincount(self.tags[:, 1], minlength=c)[:c],
            "sizes": np.bincount(self.sizes[:, 1].astype(np.int64), minlength=c)[:c],
            "exhaustive_boxes": np.bincount(self.exhaustive_boxes[:, 1], minlength=c)[:c],
            "region_tags": np.bincount(self.region_tags[:, 1], minlength=c)[:c],
        }
        if self.masks is not None:
            hist = np.bincount(np.asarray(self.masks).ravel(), minlength=c + 1)
            out["mask_pixels"] = hist[1 : c + 1]
        else:
            out["mask_pixels"] = np.zeros(c, dtype=np.int64)
        return out

    def summary(self) -> dict:
        """JSON-able summary (stored with trained models)."""
        counts = {k: v.tolist() for k, v in self.counts().items()}
        return {
            "classes": self.class_names,
            "counts": counts,
            "annotated_slices": self.annotated_slices().tolist(),
        }

    def select_slices(self, slices) -> "Annotations":
        """A copy keeping only annotations in the given z slices (masks elsewhere are cleared)."""
        keep = np.asarray(sorted(set(int(s) for s in slices)), dtype=np.int64)
        masks = None
        if self.masks is not None:
            masks = np.zeros_like(self.masks)
            valid = keep[(keep >= 0) & (keep < len(self.masks))]
            masks[valid] = self.masks[valid]
        return Annotations(
            classes=list(self.classes),
            points=self.points[np.isin(self.points[:, 0], keep)],
            boxes=self.boxes[np.isin(self.boxes[:, 0], keep)],
            tags=self.tags[np.isin(self.tags[:, 0], keep)],
            sizes=self.sizes[np.isin(self.sizes[:, 0].astype(np.int64), keep)],
            masks=masks,
            exhaustive_boxes=self.exhaustive_boxes[np.isin(self.exhaustive_boxes[:, 0], keep)],
            region_tags=self.region_tags[np.isin(self.region_tags[:, 0], keep)],
        )


def _new_rows(rows: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """The rows of ``rows`` beyond those ``earlier`` holds (as multisets: a row in ``rows`` twice
    and in ``earlier`` once is new once)."""
    seen = Counter(map(tuple, earlier.tolist()))
    keep = []
    for i, row in enumerate(map(tuple, rows.tolist())):
        if seen[row]:
            seen[row] -= 1
        else:
            keep.append(i)
    return rows[keep].reshape(-1, rows.shape[1])


def labels_per_class(counts: dict, n_classes: int) -> np.ndarray:
    """Labels per class, points + boxes + mask pixels / :data:`MASK_PIXELS_PER_LABEL`, from
    annotation counts (:meth:`Annotations.counts`, or a trained model's stored
    ``training_summary["counts"]``, whose kinds may be missing: they count 0).

    Examples
    --------
    >>> labels_per_class({"points": [3, 1], "boxes": [0, 2], "mask_pixels": [128, 0]}, 2).tolist()
    [5.0, 3.0]
    """
    total = np.zeros(n_classes)
    for key, divisor in (("points", 1), ("boxes", 1), ("mask_pixels", MASK_PIXELS_PER_LABEL)):
        values = counts.get(key) if isinstance(counts, dict) else None
        if isinstance(values, (list, tuple, np.ndarray)) and len(values) == n_classes:
            total += np.asarray(values, dtype=np.float64) / divisor
    return total


def label_colors(classes: list[ClassInfo]) -> dict:
    """Colours of a napari Labels layer whose label ``k`` is class ``k - 1`` (label 0: transparent).

    Examples
    --------
    >>> label_colors([ClassInfo("a", "#ff0000")])
    {0: 'transparent', 1: '#ff0000', None: 'transparent'}
    """
    colors = {0: "transparent"}
    colors.update({k + 1: c.color for k, c in enumerate(classes)})
    colors[None] = "transparent"
    return colors
