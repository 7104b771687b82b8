"""Simulate weak annotations from dense ground truth, for benchmarks and tests. Imports no Qt.

:func:`simulate_annotations` plays an annotator who, on a few chosen slices, clicks points inside
objects (away from their borders), draws boxes around objects, tags the classes present, guesses
how much of the slice each class covers (with controllable error), tags the classes present in
the cells of a grid (region tags) and optionally draws short scribbles or paints full masks (an
upper bound). Everything is drawn from
``np.random.default_rng(seed)``, so a seed reproduces the same annotations.

Size errors follow the size-target paper (Eq. 14-16): a noisy size is
``v_k * (1 + eps_k)`` with ``eps_k ~ N(0, sigma^2)``, clipped at 0 and renormalised to sum to 1;
its relative error ``|v_hat - v| / v`` averages about ``sigma * sqrt(2 / pi)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi

from ..annotations.model import Annotations, ClassInfo, default_classes
from ..errors import WssegError


def simulate_annotations(
    gt,
    *,
    n_classes: int | None = None,
    slices: int | Sequence[int] | None = None,
    slice_range: tuple[int, int] | None = None,
    points: int = 5,
    boxes: int | str = 0,
    tags: bool = False,
    sizes: bool = False,
    size_noise: float = 0.0,
    masks: bool = False,
    scribbles: int = 0,
    scribble_length_px: float = 40.0,
    min_border_px: float = 3.0,
    min_component_px: int = 16,
    seed: int = 0,
    classes: Sequence[ClassInfo] | None = None,
    region_tags: int = 0,
    region_tag_cells: int | None = None,
) -> Annotations:
    """Derive points, boxes, tags, sizes, scribbles and masks from dense labels.

    Parameters
    ----------
    gt : (Y, X) or (Z, Y, X) integer array
        Dense ground truth (numpy, memory map, dask or zarr); only the chosen slices are read.
    n_classes : int, optional
        Number of classes. By default ``len(classes)`` if given, else ``gt.max() + 1``.
    slices : int, sequence of int or None, default None
        Which slices to annotate: an int N picks N slices evenly spaced over the candidates
        (first and last included), a sequence names them, None takes every candidate.
    slice_range : (lo, hi), optional
        Candidate slices ``lo..hi``, both INCLUDED (e.g. ``(0, 12)`` for "z 0-12"). By default
        the whole volume.
    points : int, default 5
        Points per class present in each chosen slice, at pixels at least ``min_border_px``
        from the class boundary (or, for classes too thin for that, as far in as the class
        allows; any pixel of the class when even those are fewer than ``points``).
    boxes : int or "all", default 0
        Boxes per class per chosen slice, each the bounding box (corners inclusive) of a
        different random connected component of the class; they are not exhaustive (other
        objects of the class stay unboxed). ``"all"`` boxes every component of every class, small
        ones included, and marks every class of each chosen slice exhaustive
        (``Annotations.exhaustive_boxes``), so a class without a box there is absent.
    tags : bool, default False
        Tag every class present in each chosen slice (so untagged classes are absent).
    sizes : bool, default False
        Give every class's fraction of each chosen slice (0 for absent classes; a slice's
        fractions sum to 1), corrupted by ``size_noise``.
    size_noise : float, default 0.0
        Standard deviation sigma of the multiplicative size error; 0 gives exact fractions.
    masks : bool, default False
        Store the full masks of the chosen slices (``Annotations.masks`` = class + 1 there).
    scribbles : int, default 0
        Scribbles per class per chosen slice: the skeleton of a random component (shrunk 2 px
        from its border when possible) within ``scribble_length_px`` of a random skeleton pixel,
        stored in ``masks`` where the masks are still unlabelled.
    scribble_length_px : float, default 40.0
        Radius of the window that limits each scribble.
    min_border_px : float, default 3.0
        Preferred distance of points from the class boundary, in pixels.
    min_component_px : int, default 16
        Boxes and scribbles skip components smaller than this, unless the class has no larger one.
    seed : int, default 0
        Seed of the random generator.
    classes : sequence of ClassInfo, optional
        Names and colours; by default ``default_classes(n_classes)``.
    region_tags : int, default 0
        Cell size in pixels of a grid laid from the top-left corner of each chosen slice (edge
        cells clipped to the image); each tagged cell gets one region tag row per class present
        in it, so the classes absent from the cell are known absent. 0 gives no region tags.
    region_tag_cells : int, optional
        How many cells per chosen slice to tag, drawn at random without repetition (all cells
        when there are fewer). By default every cell.

    Returns
    -------
    Annotations
        Rows are in slice order, then class order.

    Raises
    ------
    WssegError
        If slices are out of range, more slices are asked than there are candidates, counts are
        negative, or ``gt`` holds class ids beyond ``n_classes``.

    Examples
    --------
    >>> gt = np.zeros((2, 20, 20), dtype=np.uint8)
    >>> gt[:, 5:15, 5:15] = 1
    >>> ann = simulate_annotations(gt, slices=[1], points=2, boxes=1, tags=True, seed=0)
    >>> ann.points.shape, ann.boxes[:, :5].tolist(), ann.tags.tolist()
    ((4, 4), [[1, 0, 0, 19, 19], [1, 5, 5, 14, 14]], [[1, 0], [1, 1]])
    """
    volume = _as_volume(gt)
    box_all = _box_all(boxes)
    _check_counts(
        points=points,
        boxes=0 if box_all else boxes,
        scribbles=scribbles,
        size_noise=size_noise,
        region_tags=region_tags,
        region_tag_cells=region_tag_cells or 0,
    )
    n_classes, classes = _resolve_classes(volume, n_classes, classes)
    chosen = choose_slices(volume.shape[0], slices, slice_range=slice_range)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {"points": [], "boxes": [], "tags": [], "sizes": [], "regions": []}
    mask_volume = None
    if masks or scribbles:
        mask_dtype = np.uint8 if n_classes < 255 else np.uint16
        mask_volume = np.zeros(volume.shape, dtype=mask_dtype)
    for z in chosen:
        labels = np.asarray(volume[z])
        _check_ids(labels, n_classes, z)
        present = np.flatnonzero(np.bincount(labels.ravel(), minlength=n_classes))
        if masks:
            mask_volume[z] = labels + 1
        for k in present:
            class_mask = labels == k
            if points:
                rows["points"].append(_points(rng, class_mask, points, min_border_px, z, k))
            if box_all:
                rows["boxes"].append(_all_boxes(class_mask, z, k))
            elif boxes:
                rows["boxes"].append(_boxes(rng, class_mask, boxes, min_component_px, z, k))
            if scribbles:
                drawn = _scribbles(rng, class_mask, scribbles, scribble_length_px, min_component_px)
                mask_volume[z][drawn & (mask_volume[z] == 0)] = k + 1
        if tags:
            rows["tags"].append(np.stack([np.full(len(present), z), present], axis=1))
        if region_tags:
            rows["regions"].append(
                grid_region_tags(labels, z, region_tags, n_classes, region_tag_cells, rng)
            )
        if sizes:
            fractions = class_fractions(labels, n_classes)
            noisy = corrupt_sizes(fractions, size_noise, rng=rng)
            rows["sizes"].append(np.stack([np.full(n_classes, z), np.arange(n_classes), noisy], 1))
    return Annotations(
        classes=list(classes),
        points=_stack(rows["points"], 4),
        boxes=_stack(rows["boxes"], 6),
        tags=_stack(rows["tags"], 2),
        sizes=_stack(rows["sizes"], 3),
        masks=mask_volume,
        exhaustive_boxes=[(z, k) for z in chosen for k in range(n_classes)] if box_all else [],
        region_tags=_stack(rows["regions"], 6),
    )


def grid_region_tags(
    labels: np.ndarray,
    z: int,
    cell: int,
    n_classes: int,
    count: int | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Region tags of the cells of a ``cell``-pixel grid over one dense label slice.

    Parameters
    ----------
    labels : (Y, X) integer array
        Dense labels of slice ``z``, values ``0..n_classes-1``.
    z : int
        The slice index written into the rows.
    cell : int
        Cell size in pixels; the grid starts at the top-left pixel, edge cells are clipped.
    n_classes : int
    count : int, optional
        Tag this many random cells (all when there are fewer). By default every cell.
    rng : numpy Generator, optional
        Draws the cells when ``count`` is given.

    Returns
    -------
    (N, 6) int64 array
        Rows ``(z, class, y0, x0, y1, x1)``, one per class present in a tagged cell, in cell
        order (row-major) then class order.

    Examples
    --------
    >>> labels = np.zeros((4, 6), int)
    >>> labels[:, 4:] = 1
    >>> grid_region_tags(labels, 2, 3, 2).tolist()
    [[2, 0, 0, 0, 2, 2], [2, 0, 0, 3, 2, 5], [2, 1, 0, 3, 2, 5], [2, 0, 3, 0, 3, 2], \
[2, 0, 3, 3, 3, 5], [2, 1, 3, 3, 3, 5]]
    """
    height, width = labels.shape
    n_y, n_x = -(-height // cell), -(-width // cell)
    cell_of_pixel = (np.arange(height) // cell)[:, None] * n_x + (np.arange(width) // cell)[None]
    flat = cell_of_pixel.ravel() * n_classes + np.asarray(labels, np.int64).ravel()
    present = np.bincount(flat, minlength=n_y * n_x * n_classes).reshape(n_y * n_x, n_classes) > 0
    cells = np.arange(n_y * n_x)
    if count is not None and count < len(cells):
        cells = np.sort((rng or np.random.default_rng(0)).choice(cells, count, replace=False))
    cell_ids, classes = np.nonzero(present[cells])
    cell_ids = cells[cell_ids]
    y0, x0 = (cell_ids // n_x) * cell, (cell_ids % n_x) * cell
    y1, x1 = np.minimum(y0 + cell, height) - 1, np.minimum(x0 + cell, width) - 1
    return np.stack([np.full(len(classes), z), classes, y0, x0, y1, x1], axis=1).astype(np.int64)


def _box_all(boxes) -> bool:
    """Whether ``boxes`` asks for every object boxed; raises on anything but an int or "all"."""
    if isinstance(boxes, str):
        if boxes.strip().lower() == "all":
            return True
        raise WssegError(
            f"simulate_annotations: boxes='{boxes}'; give a number of boxes per class per slice "
            "or 'all' (every object boxed, exhaustive)"
        )
    return False


def choose_slices(
    n_slices: int,
    slices: int | Sequence[int] | None = None,
    *,
    slice_range: tuple[int, int] | None = None,
) -> list[int]:
    """Pick z indices: all candidates, N evenly spaced ones, or an explicit list.

    Parameters
    ----------
    n_slices : int
        Number of slices in the volume.
    slices : int, sequence of int or None, default None
        N (evenly spaced over the candidates, ends included), explicit indices, or None for all.
    slice_range : (lo, hi), optional
        Candidates ``lo..hi``, both included. By default ``0..n_slices-1``.

    Returns
    -------
    list of int
        Sorted, distinct z indices.

    Examples
    --------
    >>> choose_slices(20, 8, slice_range=(0, 12))
    [0, 2, 3, 5, 7, 9, 10, 12]
    >>> choose_slices(5)
    [0, 1, 2, 3, 4]
    """
    lo, hi = (0, n_slices - 1) if slice_range is None else (int(v) for v in slice_range)
    if not 0 <= lo <= hi < n_slices:
        raise WssegError(
            f"slice_range ({lo}, {hi}) does not fit the volume's slices 0..{n_slices - 1}; "
            "give 0 <= lo <= hi < number of slices"
        )
    candidates = np.arange(lo, hi + 1)
    if slices is None:
        return candidates.tolist()
    if isinstance(slices, (int, np.integer)):
        if not 1 <= slices <= len(candidates):
            raise WssegError(
                f"slices={slices} but z {lo}..{hi} holds {len(candidates)} slices; "
                f"ask for 1 to {len(candidates)} slices or widen slice_range"
            )
        picks = np.round(np.linspace(0, len(candidates) - 1, int(slices))).astype(int)
        return sorted(set(candidates[picks].tolist()))
    chosen = sorted({int(z) for z in slices})
    outside = [z for z in chosen if not lo <= z <= hi]
    if outside:
        raise WssegError(
            f"slices {outside} are outside the candidate slices {lo}..{hi}; pick z in that range"
        )
    return chosen


def class_fractions(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Fraction of the pixels of ``labels`` in each class (sums to 1).

    Examples
    --------
    >>> class_fractions(np.array([[0, 0, 1, 2]]), 4)
    array([0.5 , 0.25, 0.25, 0.  ])
    """
    labels = np.asarray(labels)
    counts = np.bincount(labels.ravel(), minlength=n_classes)[:n_classes]
    return counts / max(labels.size, 1)


def corrupt_sizes(fractions, sigma: float, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """Noisy size targets ``normalise(max(v * (1 + eps), 0))`` with ``eps ~ N(0, sigma^2)``.

    Absent classes (``v = 0``) stay 0. If clipping removes every class, the exact sizes are kept.

    Parameters
    ----------
    fractions : (C,) float array
        Exact class fractions, summing to 1.
    sigma : float
        Noise standard deviation; 0 returns ``fractions`` unchanged.
    rng : numpy Generator, optional
        Random source; by default ``np.random.default_rng()``.

    Examples
    --------
    >>> corrupt_sizes(np.array([0.75, 0.25, 0.0]), 0.0)
    array([0.75, 0.25, 0.  ])
    >>> noisy = corrupt_sizes(np.array([0.75, 0.25, 0.0]), 0.2, rng=np.random.default_rng(0))
    >>> bool(np.isclose(noisy.sum(), 1.0)), float(noisy[2])
    (True, 0.0)
    """
    fractions = np.asarray(fractions, dtype=np.float64)
    if sigma == 0:
        return fractions.copy()
    rng = rng if rng is not None else np.random.default_rng()
    noisy = np.clip(fractions * (1 + rng.normal(0.0, sigma, size=fractions.shape)), 0, None)
    total = noisy.sum()
    return noisy / total if total > 0 else fractions.copy()


def size_noise_mre(sigma: float) -> float:
    """Expected mean relative error of sizes corrupted with noise ``sigma``: ``sigma * sqrt(2/pi)``.

    The paper's Eq. 16; it ignores renormalisation, which shrinks the errors of classes that
    cover most of the slice (see ``docs/evaluation.md``).

    Examples
    --------
    >>> round(size_noise_mre(0.2), 4)
    0.1596
    """
    return float(sigma) * math.sqrt(2.0 / math.pi)


def relative_errors(true, noisy) -> np.ndarray:
    """Relative errors ``|noisy - true| / true`` of the entries where ``true > 0`` (Eq. 14).

    Examples
    --------
    >>> relative_errors(np.array([0.5, 0.5, 0.0]), np.array([0.6, 0.4, 0.0]))
    array([0.2, 0.2])
    """
    true, noisy = np.asarray(true, dtype=np.float64), np.asarray(noisy, dtype=np.float64)
    if true.shape != noisy.shape:
        raise WssegError(
            f"relative_errors: true sizes have shape {true.shape} but noisy ones {noisy.shape}; "
            "pass matching arrays"
        )
    present = true > 0
    return np.abs(noisy[present] - true[present]) / true[present]


def _as_volume(gt):
    shape = tuple(gt.shape)
    if len(shape) == 2:
        return np.asarray(gt)[None]
    if len(shape) != 3:
        raise WssegError(
            f"ground truth has shape {shape}; give (Y, X) or (Z, Y, X) dense class ids"
        )
    return gt


def _check_counts(**values) -> None:
    negative = {k: v for k, v in values.items() if v < 0}
    if negative:
        name, value = next(iter(negative.items()))
        raise WssegError(f"simulate_annotations: {name}={value} is negative; use 0 or more")


def _resolve_classes(volume, n_classes, classes) -> tuple[int, list[ClassInfo]]:
    if n_classes is None:
        n_classes = len(classes) if classes is not None else _max_label(volume) + 1
    if classes is None:
        classes = default_classes(n_classes)
    if len(classes) != n_classes:
        raise WssegError(
            f"simulate_annotations: {len(classes)} classes given for n_classes={n_classes}; "
            "pass one ClassInfo per class"
        )
    return n_classes, list(classes)


def _max_label(volume) -> int:
    """Largest class id, read slice by slice so lazy volumes stay lazy."""
    return max(int(np.asarray(volume[z]).max()) for z in range(volume.shape[0]))


def _check_ids(labels: np.ndarray, n_classes: int, z: int) -> None:
    if labels.dtype.kind not in "iub":
        raise WssegError(
            f"ground truth has dtype {labels.dtype}; class ids must be integers "
            "(cast it with astype)"
        )
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        raise WssegError(
            f"ground truth slice {z} contains class id {low if low < 0 else high}, outside "
            f"0..{n_classes - 1}; pass the right n_classes or fix the labels"
        )


def _points(rng, class_mask: np.ndarray, k: int, min_border_px: float, z: int, cls: int):
    depth = ndi.distance_transform_edt(class_mask) if not class_mask.all() else None
    if depth is None:
        candidates = np.flatnonzero(class_mask)
    else:
        # thin classes (membranes) have no pixel min_border_px deep: take their deepest pixels
        threshold = min(min_border_px, float(depth.max()))
        candidates = np.flatnonzero(depth >= threshold)
        if len(candidates) < k:
            candidates = np.flatnonzero(class_mask)
    picked = rng.choice(candidates, size=min(k, len(candidates)), replace=False)
    y, x = np.unravel_index(np.sort(picked), class_mask.shape)
    return np.stack([np.full(len(y), z), y, x, np.full(len(y), cls)], axis=1)


def _components(class_mask: np.ndarray, min_component_px: int):
    """Labelled components and the ids of those big enough (all of them if none is)."""
    components, n = ndi.label(class_mask)
    sizes = np.bincount(components.ravel(), minlength=n + 1)[1:]
    ids = np.flatnonzero(sizes >= min_component_px) + 1
    return components, ids if len(ids) else np.arange(1, n + 1)


def _boxes(rng, class_mask: np.ndarray, k: int, min_component_px: int, z: int, cls: int):
    components, ids = _components(class_mask, min_component_px)
    picked = np.sort(rng.choice(ids, size=min(k, len(ids)), replace=False))
    extents = ndi.find_objects(components)
    rows = [
        (
            z,
            extents[i - 1][0].start,
            extents[i - 1][1].start,
            extents[i - 1][0].stop - 1,
            extents[i - 1][1].stop - 1,
            cls,
        )
        for i in picked
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def _all_boxes(class_mask: np.ndarray, z: int, cls: int) -> np.ndarray:
    """The bounding box of every connected component of the class."""
    components, _ = ndi.label(class_mask)
    rows = [
        (z, ys.start, xs.start, ys.stop - 1, xs.stop - 1, cls)
        for ys, xs in ndi.find_objects(components)
    ]
    return np.array(rows, dtype=np.int64).reshape(-1, 6)


def _scribbles(rng, class_mask: np.ndarray, k: int, length_px: float, min_component_px: int):
    from skimage.morphology import skeletonize

    components, ids = _components(class_mask, min_component_px)
    extents = ndi.find_objects(components)
    out = np.zeros(class_mask.shape, dtype=bool)
    for i in rng.choice(ids, size=min(k, len(ids)), replace=False):
        box = extents[i - 1]
        component = components[box] == i
        shrunk = ndi.binary_erosion(component, iterations=2)
        skeleton = skeletonize(shrunk if shrunk.any() else component)
        ys, xs = np.nonzero(skeleton if skeleton.any() else component)
        centre = rng.integers(len(ys))
        near = np.hypot(ys - ys[centre], xs - xs[centre]) <= length_px
        out[box][ys[near], xs[near]] = True
    return out


def _stack(parts: list, columns: int) -> np.ndarray:
    return np.concatenate(parts, axis=0) if parts else np.zeros((0, columns))
