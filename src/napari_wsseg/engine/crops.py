"""Sampling training crops (2D squares or 3D boxes) around annotations, favouring rare classes.

Torch methods train on small crops, not whole slices: on a CPU most of the time would otherwise
go to pixels that carry no annotation. :func:`annotation_anchors` turns annotations into anchor
pixels ``(z, y, x, class)``; :class:`CropSampler` draws crop origins so that a random anchor lies
inside the crop (classes drawn uniformly by default, so rare classes are seen as often as common
ones), plus a share of crops at random places for semi-supervised losses; :class:`SliceStore`
reads normalised crops from an :class:`~napari_wsseg.io.image.Image`, keeping slices in memory up to
a byte budget and reading windows directly from lazy (zarr/dask) data beyond it. 3D methods draw
:class:`Crop3D` boxes ``(dz, dy, dx)`` with :meth:`CropSampler.sample_3d` (the same anchor rule in
all three axes) and read them with :meth:`SliceStore.crop_3d`. Imports no Qt.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ..annotations.model import Annotations
from ..io.image import Image
from ..io.normalize import Normalization


@dataclass(frozen=True)
class Crop:
    """A ``size`` x ``size`` window with top-left corner ``(y, x)`` in slice ``z``; parts outside
    the image are padded."""

    z: int
    y: int
    x: int
    size: int


@dataclass(frozen=True)
class Crop3D:
    """A ``(dz, dy, dx)`` box with corner ``(z, y, x)``; parts outside the image are padded."""

    z: int
    y: int
    x: int
    size_zyx: tuple[int, int, int]


def annotation_anchors(
    annotations: Annotations,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    max_per_class: int = 20000,
) -> np.ndarray:
    """Anchor pixels ``(N, 4)`` int64 rows ``(z, y, x, class)`` for crop sampling.

    Points are anchors themselves; a box is one random pixel inside it, like one click
    (thousands per box crowded out the few clicks of their class); masks give random pixels.
    Region tags give one random pixel of their region per row and slice tags random pixels of
    their slice, both only for classes nothing before them locates: a tag says where a class is
    no better than a random crop (region) or not at all (slice), and hundreds of tag anchors would
    crowd out the few clicks of the class (a coarse grid of region tags on drosophila_vnc gave 794
    anchors next to 160 clicks and cost dsp 6.4 Dice, docs/benchmarks.md). At most
    ``max_per_class`` anchors per class and kind are kept (drawn at random), so big masks do not
    cost memory.

    Examples
    --------
    >>> from napari_wsseg.annotations.model import default_classes
    >>> ann = Annotations(default_classes(2), points=[[0, 1, 2, 1]])
    >>> annotation_anchors(ann, (1, 8, 8), np.random.default_rng(0)).tolist()
    [[0, 1, 2, 1]]
    """
    parts = [annotations.points.astype(np.int64)]
    parts.append(_box_anchors(annotations.boxes, rng, max_per_class))
    if annotations.masks is not None:
        parts.append(_mask_anchors(np.asarray(annotations.masks), rng, max_per_class))
    located = np.unique(np.concatenate(parts).reshape(-1, 4)[:, 3])
    regions = annotations.region_tags
    regions = regions[~np.isin(regions[:, 1], located)] if len(regions) else regions
    parts.append(_region_tag_anchors(regions, rng, max_per_class))
    located = np.unique(np.concatenate(parts).reshape(-1, 4)[:, 3])
    tags = (
        annotations.tags[~np.isin(annotations.tags[:, 1], located)]
        if len(annotations.tags)
        else annotations.tags
    )
    parts.append(_tag_anchors(tags, shape, rng, max_per_class))
    return np.concatenate(parts).reshape(-1, 4)


#: Anchors per box: one, as for a click (crops land on it at random offsets). On the phantom,
#: partial membrane boxes with 1 anchor scored membrane 0.528 (3 seeds) against 0.491 with 4
#: and 0.552 for the clicks alone (tests/methods/dsp/test_dsp_boxes.py's setting).
BOX_ANCHORS = 1


def _box_anchors(boxes: np.ndarray, rng: np.random.Generator, max_per_class: int) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros((0, 4), np.int64)
    per_box = max(1, min(BOX_ANCHORS, max_per_class // max(1, len(boxes))))
    rows = np.repeat(boxes, per_box, axis=0)
    ys = rng.integers(rows[:, 1], rows[:, 3] + 1)
    xs = rng.integers(rows[:, 2], rows[:, 4] + 1)
    return np.stack([rows[:, 0], ys, xs, rows[:, 5]], axis=1)


def _region_tag_anchors(
    rows: np.ndarray, rng: np.random.Generator, max_per_class: int
) -> np.ndarray:
    """One random pixel of its region per region tag row (a tagged cell is one action)."""
    if len(rows) > max_per_class:
        rows = rows[rng.choice(len(rows), max_per_class, replace=False)]
    ys = rng.integers(rows[:, 2], rows[:, 4] + 1) if len(rows) else np.zeros(0, np.int64)
    xs = rng.integers(rows[:, 3], rows[:, 5] + 1) if len(rows) else np.zeros(0, np.int64)
    return np.stack([rows[:, 0], ys, xs, rows[:, 1]], axis=1).reshape(-1, 4)


def _tag_anchors(
    tags: np.ndarray, shape, rng: np.random.Generator, max_per_class: int
) -> np.ndarray:
    if len(tags) == 0:
        return np.zeros((0, 4), np.int64)
    per_tag = max(1, min(64, max_per_class // max(1, len(tags))))
    rows = np.repeat(tags, per_tag, axis=0)
    ys = rng.integers(0, shape[1], len(rows))
    xs = rng.integers(0, shape[2], len(rows))
    return np.stack([rows[:, 0], ys, xs, rows[:, 1]], axis=1)


def _mask_anchors(masks: np.ndarray, rng: np.random.Generator, max_per_class: int) -> np.ndarray:
    flat = masks.reshape(-1)
    labelled = np.flatnonzero(flat)
    if len(labelled) == 0:
        return np.zeros((0, 4), np.int64)
    classes = flat[labelled].astype(np.int64) - 1
    order = rng.permutation(len(labelled))
    labelled, classes = labelled[order], classes[order]
    # keep the first max_per_class of each class in the shuffled order
    rank = _rank_within_groups(classes)
    keep = rank < max_per_class
    z, y, x = np.unravel_index(labelled[keep], masks.shape)
    return np.stack([z, y, x, classes[keep]], axis=1).astype(np.int64)


def _rank_within_groups(groups: np.ndarray) -> np.ndarray:
    """Position of each element among the elements of its group, in array order."""
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_groups)) + 1]
    counts = np.diff(np.r_[starts, len(groups)])
    ranks_sorted = np.arange(len(groups)) - np.repeat(starts, counts)
    ranks = np.empty_like(ranks_sorted)
    ranks[order] = ranks_sorted
    return ranks


def fitted_crop_size(crop_size: int, shape_yx: tuple[int, int], multiple: int) -> int:
    """The configured crop side, shrunk to the slice (rounded up to ``multiple``) if smaller.

    Examples
    --------
    >>> fitted_crop_size(128, (40, 70), 16), fitted_crop_size(128, (400, 700), 16)
    (80, 128)
    """
    return min(crop_size, -(-max(shape_yx) // multiple) * multiple)


class RegionCropSampler:
    """Crops that hold a whole tagged region, so that its tags' positives can be taken.

    A region tag says a class is somewhere in its region; the positive pooled over the region is
    only valid in a crop that holds all of it, and the crops around clicks are usually smaller than
    a counting-grid cell (128 px against 205 px cells of a coarse grid on a 1024² slice). These
    crops have the side of the largest usable region (rounded up to ``multiple``, at most
    ``max_size``; larger regions are not drawn) and place a region drawn uniformly at a uniformly
    random position inside.

    Parameters
    ----------
    regions : (R, 5) int array
        Rows ``(z, y0, x0, y1, x1)`` of the tagged rectangles (inclusive corners).
    shape : (Z, Y, X)
    multiple : int
        The crop side is a multiple of this (the network's down-sampling factor).
    max_size : int
    rng : numpy Generator

    Examples
    --------
    >>> sampler = RegionCropSampler(
    ...     np.array([[0, 0, 0, 9, 19]]), (1, 64, 64), 8, 256, np.random.default_rng(0)
    ... )
    >>> sampler.size, len(sampler.sample(3))
    (24, 3)
    """

    def __init__(self, regions, shape, multiple: int, max_size: int, rng) -> None:
        boxes = np.asarray(regions, dtype=np.int64).reshape(-1, 5)
        sides = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 4] - boxes[:, 2]) + 1
        boxes = boxes[sides <= max_size]
        self.size = (
            int(-(-sides[sides <= max_size].max() // multiple) * multiple) if len(boxes) else 0
        )
        self.boxes, self.shape, self.rng = boxes, tuple(shape), rng

    def __len__(self) -> int:
        return len(self.boxes)

    def sample(self, n: int) -> list[Crop]:
        """``n`` crops, each holding a whole region drawn uniformly (none without regions)."""
        if not len(self.boxes) or n <= 0:
            return []
        rows = self.boxes[self.rng.integers(0, len(self.boxes), size=n)]
        heights, widths = rows[:, 3] - rows[:, 1] + 1, rows[:, 4] - rows[:, 2] + 1
        tops = rows[:, 1] - self.rng.integers(0, self.size - heights + 1)
        lefts = rows[:, 2] - self.rng.integers(0, self.size - widths + 1)
        # kept inside the image where it is larger than the crop: the region stays inside
        tops = np.minimum(_clip_origin(tops, self.shape[1], self.size), rows[:, 1])
        lefts = np.minimum(_clip_origin(lefts, self.shape[2], self.size), rows[:, 2])
        return [Crop(int(z), int(y), int(x), self.size) for z, y, x in zip(rows[:, 0], tops, lefts)]


class CropSampler:
    """Draws training crops: around anchors (by class) or at random places.

    Parameters
    ----------
    shape : (Z, Y, X)
        Spatial shape of the image.
    anchors : (N, 4) int array
        Rows ``(z, y, x, class)`` from :func:`annotation_anchors`.
    crop_size : int
        Crop side in pixels.
    rng : numpy Generator
        Source of randomness.
    random_fraction : float, default 0.0
        Share of crops placed uniformly at random in any slice (semi-supervised losses).
    class_power : float, default 0.0
        Classes are drawn with probability proportional to ``anchor_count ** class_power``:
        0 draws every annotated class equally often (rare classes oversampled), 1 follows the
        anchor counts.
    focus : (M, 3) int array, optional
        ``(z, y, x)`` places to look at most (a warm run's new annotations): each anchored crop
        contains one of them instead of an anchor with probability ``focus_share``.
    focus_share : float, default 0.0
        Share of the anchored crops placed on ``focus`` (when it has rows).
    """

    def __init__(
        self,
        shape: tuple[int, int, int],
        anchors: np.ndarray,
        crop_size: int,
        rng: np.random.Generator,
        random_fraction: float = 0.0,
        class_power: float = 0.0,
        focus: np.ndarray | None = None,
        focus_share: float = 0.0,
    ) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.focus = np.zeros((0, 3), np.int64) if focus is None else np.asarray(focus, np.int64)
        inside = np.all((self.focus >= 0) & (self.focus < np.array(self.shape)), axis=1)
        self.focus = self.focus[inside]
        self.focus_share = float(focus_share) if len(self.focus) else 0.0
        self.crop_size = int(crop_size)
        self.rng = rng
        self.random_fraction = float(random_fraction) if len(anchors) else 1.0
        self.anchors = np.asarray(anchors, dtype=np.int64).reshape(-1, 4)
        order = np.argsort(self.anchors[:, 3], kind="stable")
        self.anchors = self.anchors[order]
        self.classes, self.starts, self.counts = np.unique(
            self.anchors[:, 3], return_index=True, return_counts=True
        )
        weights = self.counts.astype(np.float64) ** class_power
        self.class_probs = weights / weights.sum() if len(weights) else weights

    def sample(self, n: int) -> list[Crop]:
        """``n`` crops; each anchored one contains its anchor at a uniformly random position."""
        points = self._crop_points(n)
        size = self.crop_size
        offsets = self.rng.integers(0, size, size=(len(points), 2))
        tops = _clip_origin(points[:, 1] - offsets[:, 0], self.shape[1], size)
        lefts = _clip_origin(points[:, 2] - offsets[:, 1], self.shape[2], size)
        return [Crop(int(z), int(y), int(x), size) for z, y, x in zip(points[:, 0], tops, lefts)]

    def sample_3d(self, n: int, size_zyx: tuple[int, int, int]) -> list[Crop3D]:
        """``n`` boxes of ``size_zyx`` voxels, drawn as :meth:`sample` draws crops.

        Each anchored box contains its anchor at a uniformly random position in z, y and x, and
        boxes stay inside the image along every axis the image is larger than the box.

        Examples
        --------
        >>> anchors = np.array([[4, 5, 6, 0]])
        >>> sampler = CropSampler((10, 20, 20), anchors, 8, np.random.default_rng(0))
        >>> box = sampler.sample_3d(1, (3, 8, 8))[0]
        >>> box.z <= 4 < box.z + 3 and box.y <= 5 < box.y + 8 and box.x <= 6 < box.x + 8
        True
        """
        size_zyx = tuple(int(s) for s in size_zyx)
        if len(size_zyx) != 3 or min(size_zyx) < 1:
            raise ValueError(f"3D crop size {size_zyx} must be three positive sizes (dz, dy, dx)")
        points = self._crop_points(n)
        offsets = self.rng.integers(0, size_zyx, size=(len(points), 3))
        corners = [
            _clip_origin(points[:, a] - offsets[:, a], self.shape[a], size_zyx[a]) for a in range(3)
        ]
        return [Crop3D(int(z), int(y), int(x), size_zyx) for z, y, x in zip(*corners)]

    def _crop_points(self, n: int) -> np.ndarray:
        """``(n, 3)`` points a crop must contain: a
        ``random_fraction`` share random, the rest anchors."""
        n_random = self.rng.binomial(n, self.random_fraction) if self.random_fraction < 1 else n
        return np.concatenate([self._random_points(n_random), self._anchor_points(n - n_random)])

    def sample_random(self, n: int, rng: np.random.Generator | None = None) -> list[Crop]:
        """``n`` crops placed uniformly at random in any slice (drawn with ``rng`` when given,
        else the sampler's own generator)."""
        points = self._random_points(n, rng or self.rng)
        size = self.crop_size
        tops = _clip_origin(points[:, 1] - size // 2, self.shape[1], size)
        lefts = _clip_origin(points[:, 2] - size // 2, self.shape[2], size)
        return [Crop(int(z), int(y), int(x), size) for z, y, x in zip(points[:, 0], tops, lefts)]

    def _random_points(self, n: int, rng: np.random.Generator | None = None) -> np.ndarray:
        rng = rng or self.rng
        z = rng.integers(0, self.shape[0], n)
        y = rng.integers(0, self.shape[1], n)
        x = rng.integers(0, self.shape[2], n)
        return np.stack([z, y, x], axis=1)

    def _anchor_points(self, n: int) -> np.ndarray:
        n_focus = int(self.rng.binomial(n, self.focus_share)) if self.focus_share else 0
        focused = self.focus[self.rng.integers(0, len(self.focus), n_focus)] if n_focus else None
        n -= n_focus
        if n == 0:
            return np.zeros((0, 3), np.int64) if focused is None else focused
        which = self.rng.choice(len(self.classes), size=n, p=self.class_probs)
        index = self.starts[which] + (self.rng.random(n) * self.counts[which]).astype(np.int64)
        anchored = self.anchors[index, :3]
        return anchored if focused is None else np.concatenate([focused, anchored])


def _clip_origin(origin: np.ndarray, length: int, size: int) -> np.ndarray:
    """Keep crops inside the image where it is larger than the crop; else start at 0."""
    return np.clip(origin, 0, max(length - size, 0))


class SliceStore:
    """Normalised ``(C, size, size)`` float32 crops of an image, with a bounded slice cache.

    Parameters
    ----------
    image : Image
        Source image (numpy, memory map or lazy dask/zarr).
    normalization : Normalization
        Intensity mapping applied to every crop.
    max_cache_bytes : int, default 2 GiB
        Whole normalised slices are cached up to this size; beyond it crops are read as windows.
    """

    def __init__(
        self, image: Image, normalization: Normalization, max_cache_bytes: int = 2 << 30
    ) -> None:
        self.image = image
        self.normalization = normalization
        self.max_cache_bytes = int(max_cache_bytes)
        _, height, width = image.shape
        self._slice_bytes = height * width * image.n_channels * 4
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def slice(self, z: int) -> np.ndarray:
        """Normalised slice ``z`` as ``(C, Y, X)`` float32 (cached)."""
        if z in self._cache:
            self._cache.move_to_end(z)
            return self._cache[z]
        data = np.ascontiguousarray(
            np.moveaxis(self.normalization.apply(self.image.slice(z)), -1, 0)
        )
        while self._cache and (len(self._cache) + 1) * self._slice_bytes > self.max_cache_bytes:
            self._cache.popitem(last=False)  # least recently used
        if self._slice_bytes <= self.max_cache_bytes:
            self._cache[z] = data
        return data

    def crop(self, crop: Crop) -> tuple[np.ndarray, np.ndarray]:
        """The crop's pixels ``(C, S, S)`` float32 (0 outside the image) and ``(S, S)`` bool
        mask of the pixels inside the image."""
        return self._window(crop.z, crop.y, crop.x, crop.size, crop.size)

    def crop_3d(self, crop: Crop3D) -> tuple[np.ndarray, np.ndarray]:
        """The box's voxels ``(C, dz, dy, dx)`` float32 (0 outside the image) and ``(dz, dy, dx)``
        bool mask of the voxels inside the image.

        Examples
        --------
        >>> from napari_wsseg.io.image import as_image
        >>> image = as_image(np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3))
        >>> store = SliceStore(image, Normalization((0.0,), (17.0,)))
        >>> pixels, valid = store.crop_3d(Crop3D(1, 1, 1, (2, 2, 2)))
        >>> pixels.shape, int(valid.sum()), float(pixels[0, 0, 1, 1])
        ((1, 2, 2, 2), 4, 1.0)
        """
        dz, dy, dx = crop.size_zyx
        pixels = np.zeros((self.image.n_channels, dz, dy, dx), np.float32)
        valid = np.zeros((dz, dy, dx), bool)
        for i, z in enumerate(range(crop.z, min(crop.z + dz, self.image.n_slices))):
            pixels[:, i], valid[i] = self._window(z, crop.y, crop.x, dy, dx)
        return pixels, valid

    def _window(self, z: int, y: int, x: int, height: int, width: int):
        """``(C, height, width)`` normalised pixels from ``(z, y, x)`` (0-padded) and their mask."""
        _, slice_height, slice_width = self.image.shape
        y1, x1 = min(y + height, slice_height), min(x + width, slice_width)
        room = self._slice_bytes * (len(self._cache) + 1) <= self.max_cache_bytes
        if z in self._cache or room:
            window = self.slice(z)[:, y:y1, x:x1]
        else:
            raw = np.asarray(self.image.data[z, y:y1, x:x1])
            window = np.moveaxis(self.normalization.apply(raw), -1, 0)
        pixels = np.zeros((self.image.n_channels, height, width), np.float32)
        valid = np.zeros((height, width), bool)
        pixels[:, : y1 - y, : x1 - x] = window
        valid[: y1 - y, : x1 - x] = True
        return pixels, valid
