"""Procedural FIB-SEM-like sample data with dense ground truth (a "phantom"). Imports no Qt.

The phantom is built from 3D shapes sampled slice by slice, so neighbouring slices look alike
without being identical: cells are a warped 3D Voronoi tessellation separated by thin dark
membranes, some cells hold a nucleus (mid-grey, blotchy chromatin, dark envelope), the cytoplasm
is granular with dark specks, mitochondria are elongated dark ellipsoids with lighter cristae
stripes, and with five classes the triple junctions of cells open into bright extracellular
pockets. The image gets a point-spread blur, smooth illumination shading and Poisson + Gaussian
noise. Membranes, mitochondria and the nuclear envelope are all dark, and specks in the
cytoplasm are as dark as membranes, so a grey-value threshold cannot separate the classes:
texture and context are needed.

Classes (``n_classes`` 3 to 5): 0 cytoplasm, 1 membrane, 2 mitochondrion, 3 nucleus (4 or more
classes), 4 extracellular (5 classes).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from .annotations.model import ClassInfo
from .errors import WssegError

#: The phantom's classes in id order; ``make_phantom(n_classes=k)`` uses the first ``k``.
PHANTOM_CLASSES = (
    ClassInfo("cytoplasm", "#7f7f7f"),
    ClassInfo("membrane", "#ff8c00"),
    ClassInfo("mitochondrion", "#dc1e1e"),
    ClassInfo("nucleus", "#1f77b4"),
    ClassInfo("extracellular", "#00c850"),
)
CYTOPLASM, MEMBRANE, MITOCHONDRION, NUCLEUS, EXTRACELLULAR = range(5)

#: Distance between slices in in-plane pixels: slices are closer to independent than in an
#: isotropic volume, yet objects span many slices.
_Z_STEP = 2.0
_CELL_SPACING = 70.0  # mean distance between cell centres, in pixels
#: Cells are this many times longer in z than across (like neurites running through a stack),
#: so membranes cross slices steeply and look thin, as in real FIB-SEM.
_CELL_Z_SCALE = 0.25
_WARP_AMPLITUDE = 6.0  # pixels of smooth displacement that make membranes wavy
_MEMBRANE_HALF_WIDTH = (0.8, 2.0)  # membranes are 2 * (0.8..2.0) ~ 2-4 px wide
_EXTRACELLULAR_RADIUS = 7.0
_MITO_DENSITY = 3.0e-5  # mitochondria centres per cubic pixel (before rejection)
_MITO_Z_MARGIN = 10.0  # centres this far outside the volume in z can still cut a slice


def make_phantom(
    shape: tuple[int, ...] = (16, 256, 256), *, seed: int = 0, n_classes: int = 4
) -> tuple[np.ndarray, np.ndarray, list[ClassInfo]]:
    """Generate a FIB-SEM-like image with dense labels.

    Parameters
    ----------
    shape : tuple of int, default (16, 256, 256)
        ``(Z, Y, X)`` for a volume or ``(Y, X)`` for a single image; each side at least 8.
    seed : int, default 0
        Seed of the random generator; the same seed and shape give the same phantom.
    n_classes : int, default 4
        3 (cytoplasm, membrane, mitochondrion), 4 (+ nucleus) or 5 (+ extracellular).

    Returns
    -------
    image : uint8 array of ``shape``
        EM-like grey values (membranes and organelles dark on a lighter cytoplasm).
    labels : uint8 array of ``shape``
        Dense class ids ``0..n_classes-1``.
    classes : list of ClassInfo
        Names and colours of the classes, in id order.

    Raises
    ------
    WssegError
        If ``shape`` is not 2D/3D with sides of at least 8, or ``n_classes`` is not 3, 4 or 5.

    Examples
    --------
    >>> image, labels, classes = make_phantom((2, 32, 32), seed=1, n_classes=3)
    >>> image.shape, image.dtype, labels.dtype, [c.name for c in classes]
    ((2, 32, 32), dtype('uint8'), dtype('uint8'), ['cytoplasm', 'membrane', 'mitochondrion'])
    """
    shape3d = _check_phantom_args(shape, n_classes)
    rng = np.random.default_rng(seed)
    coords = _warped_coordinates(rng, shape3d)
    cells = _voronoi_cells(rng, coords, shape3d, with_junctions=n_classes >= 5)
    labels = np.zeros(shape3d, dtype=np.uint8)
    if n_classes >= 5:
        labels[cells["junction_distance"] < _EXTRACELLULAR_RADIUS] = EXTRACELLULAR
    labels[cells["membrane"]] = MEMBRANE
    intensity = np.zeros(shape3d, dtype=np.float32)
    if n_classes >= 4:
        _add_nuclei(rng, coords, cells, labels, intensity)
    _add_mitochondria(rng, coords, cells["owner"], labels, intensity)
    image = _render(rng, labels, intensity)
    if len(shape) == 2:
        image, labels = image[0], labels[0]
    return image, labels, list(PHANTOM_CLASSES[:n_classes])


def sample_2d(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[ClassInfo]]:
    """A 512 x 512 phantom image with all 5 classes (napari sample data).

    Examples
    --------
    >>> sample_2d()[0].shape
    (512, 512)
    """
    return make_phantom((512, 512), seed=seed, n_classes=5)


def sample_3d(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[ClassInfo]]:
    """A 32 x 256 x 256 phantom volume with all 5 classes (napari sample data).

    Examples
    --------
    >>> sample_3d()[1].shape
    (32, 256, 256)
    """
    return make_phantom((32, 256, 256), seed=seed, n_classes=5)


def save_sample(
    out_dir,
    *,
    shape: tuple[int, ...] = (16, 256, 256),
    seed: int = 0,
    n_classes: int = 4,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a phantom as ``image.tif``, ``labels.tif`` and ``classes.json`` into ``out_dir``.

    ``classes.json`` is a list of ``{"id", "name", "color"}`` objects. The folder is created if
    needed. The TIFFs carry their axes (``ZYX`` or ``YX``, grey), so a stack of 3 or 4 slices reads
    back as slices, not as one colour image.

    Parameters
    ----------
    out_dir : str or Path
        Destination folder.
    shape, seed, n_classes
        As in :func:`make_phantom`.
    overwrite : bool, default False
        Replace existing files of these names; without it they are refused.

    Returns
    -------
    dict
        ``{"image": Path, "labels": Path, "classes": Path}``.

    Raises
    ------
    WssegError
        When ``out_dir`` is a file, or holds one of the files and ``overwrite`` is False.

    Examples
    --------
    >>> import tempfile
    >>> paths = save_sample(tempfile.mkdtemp(), shape=(32, 32))
    >>> sorted(p.name for p in paths.values())
    ['classes.json', 'image.tif', 'labels.tif']
    """
    import tifffile

    out = Path(out_dir)
    paths = {name: out / f"{name}.tif" for name in ("image", "labels")}
    paths["classes"] = out / "classes.json"
    _check_sample_destination(out, list(paths.values()), overwrite)
    image, labels, classes = make_phantom(shape, seed=seed, n_classes=n_classes)
    out.mkdir(parents=True, exist_ok=True)
    axes = "ZYX" if image.ndim == 3 else "YX"
    for name, array in (("image", image), ("labels", labels)):
        tifffile.imwrite(paths[name], array, photometric="minisblack", metadata={"axes": axes})
    records = [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(classes)]
    paths["classes"].write_text(json.dumps(records, indent=1) + "\n")
    return paths


def _check_sample_destination(out: Path, paths: list[Path], overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise WssegError(f"sample output {out} is a file; give a folder for --out")
    existing = [p.name for p in paths if p.exists()]
    if existing and not overwrite:
        raise WssegError(
            f"sample output {out} already holds {', '.join(existing)}; pass --overwrite to "
            "replace them or choose another folder"
        )
    if overwrite and any(p.is_dir() for p in paths):
        raise WssegError(
            f"sample output {out}: one of {[p.name for p in paths]} is a folder; "
            "remove it or choose another folder"
        )


def _check_phantom_args(shape, n_classes: int) -> tuple[int, int, int]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape[-2:]) < 8 or min(shape) < 1:
        raise WssegError(
            f"phantom shape {shape} is not supported; give (Y, X) or (Z, Y, X) with Y, X >= 8"
        )
    if n_classes not in (3, 4, 5):
        raise WssegError(f"phantom n_classes={n_classes} is not supported; use 3, 4 or 5")
    return shape if len(shape) == 3 else (1, *shape)


def _smooth_noise(rng, shape3d, scale_px: float, order: int = 1) -> np.ndarray:
    """Noise (std about 1) that varies over ``scale_px`` pixels; z is scaled by the slice step.

    ``order=3`` gives a smooth (cubic) field, computed on an 8x coarser in-plane grid and then
    linearly upsampled: the kinks this leaves are far below a pixel.
    """
    steps = (max(scale_px / _Z_STEP, 1.0), scale_px, scale_px)
    coarse = tuple(int(np.ceil(n / s)) + 1 for n, s in zip(shape3d, steps))
    grid = rng.standard_normal(coarse).astype(np.float32)
    if order == 3:
        mid = (shape3d[0], -(-shape3d[1] // 8) + 1, -(-shape3d[2] // 8) + 1)
        grid = _zoom_to(grid, mid, order=3)
    return _zoom_to(grid, shape3d, order=1)


def _zoom_to(array: np.ndarray, shape, *, order: int) -> np.ndarray:
    factors = [n / c for n, c in zip(shape, array.shape)]
    return ndi.zoom(array, factors, order=order, mode="nearest", grid_mode=True)


def _fine_noise(rng, shape3d, sigma: float) -> np.ndarray:
    """White noise blurred in-plane by ``sigma`` pixels, rescaled to unit standard deviation."""
    noise = ndi.gaussian_filter(rng.standard_normal(shape3d, dtype=np.float32), (0.0, sigma, sigma))
    return noise / max(float(noise.std()), 1e-6)


def _warped_coordinates(rng, shape3d) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Physical (z, y, x) coordinates of every voxel, smoothly displaced in-plane."""
    z, y, x = shape3d
    zz = (np.arange(z, dtype=np.float32) * _Z_STEP)[:, None, None]
    yy = np.arange(y, dtype=np.float32)[None, :, None] + _WARP_AMPLITUDE * _smooth_noise(
        rng, shape3d, 48.0, order=3
    )
    xx = np.arange(x, dtype=np.float32)[None, None, :] + _WARP_AMPLITUDE * _smooth_noise(
        rng, shape3d, 48.0, order=3
    )
    return zz, yy, xx


def _voronoi_cells(rng, coords, shape3d, *, with_junctions: bool) -> dict[str, np.ndarray]:
    """Cell ids, membranes and (optionally) distance to triple junctions of a 3D Voronoi diagram.

    The distance of a point ``p`` to the bisector of seeds ``a`` and ``b`` is
    ``(|p-b|^2 - |p-a|^2) / (2 |a-b|)``, so the running two (three) smallest squared distances
    give exact membrane widths without a distance transform.
    """
    seeds = _cell_seeds(rng, shape3d)
    zz, yy, xx = coords
    full = np.broadcast_shapes(zz.shape, yy.shape, xx.shape)
    m1, m2, m3 = (np.full(full, np.inf, dtype=np.float32) for _ in range(3))
    l1, l2, l3 = (np.zeros(full, dtype=np.int32) for _ in range(3))
    d, tmp = np.empty(full, dtype=np.float32), np.empty(full, dtype=np.float32)
    closer1, closer2 = np.empty(full, dtype=bool), np.empty(full, dtype=bool)
    for i, (sz, sy, sx) in enumerate(seeds):
        # in-place arithmetic: this loop dominates the phantom's run time
        np.subtract(yy, sy, out=d)
        np.square(d, out=d)
        np.subtract(xx, sx, out=tmp)
        np.square(tmp, out=tmp)
        d += tmp
        d += ((zz - sz) * _CELL_Z_SCALE) ** 2
        np.less(d, m1, out=closer1)
        np.less(d, m2, out=closer2)
        if with_junctions:
            l3[d < m3] = i
            np.copyto(l3, l2, where=closer2)
            np.maximum(d, m2, out=tmp)
            np.minimum(m3, tmp, out=m3)
        l2[closer2] = i
        np.copyto(l2, l1, where=closer1)
        np.maximum(d, m1, out=tmp)
        np.minimum(m2, tmp, out=m2)
        l1[closer1] = i
        np.minimum(m1, d, out=m1)
    gaps = _seed_gaps(seeds)
    bisector2 = (m2 - m1) / (2 * np.maximum(gaps[l1, l2], 1e-3))
    half_width = np.interp(
        _smooth_noise(rng, shape3d, 24.0), [-1.5, 1.5], _MEMBRANE_HALF_WIDTH
    ).astype(np.float32)
    cells = {"owner": l1, "membrane": bisector2 < half_width, "seeds": seeds}
    if with_junctions:
        bisector3 = (m3 - m1) / (2 * np.maximum(gaps[l1, l3], 1e-3))
        cells["junction_distance"] = np.hypot(bisector2, bisector3)
    return cells


def _cell_seeds(rng, shape3d) -> np.ndarray:
    """Poisson-disc-like cell centres (jittered grid) covering the volume plus a margin."""
    z, y, x = shape3d
    spacing = np.array([_CELL_SPACING / _CELL_Z_SCALE, _CELL_SPACING, _CELL_SPACING])
    margin = 0.6 * spacing
    lo = -margin
    hi = np.array([(z - 1) * _Z_STEP, y, x]) + margin
    n_per_axis = np.maximum(np.round((hi - lo) / spacing).astype(int), 1)
    cell = (hi - lo) / n_per_axis
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in n_per_axis], indexing="ij"), -1)
    grid = grid.reshape(-1, 3).astype(np.float64)
    jitter = rng.uniform(0.1, 0.9, size=grid.shape)
    return (lo + (grid + jitter) * cell).astype(np.float32)


def _seed_gaps(seeds: np.ndarray) -> np.ndarray:
    """Pairwise seed distances in the cells' metric (z shrunk by ``_CELL_Z_SCALE``)."""
    scaled = seeds * np.array([_CELL_Z_SCALE, 1, 1], dtype=np.float32)
    return np.linalg.norm(scaled[:, None, :] - scaled[None, :, :], axis=-1).astype(np.float32)


def _box_around(centre, radius, coords, shape3d):
    """Voxel index box covering physical ``centre +- radius`` (warp included), or None if empty."""
    cz, cy, cx = centre
    pad = radius + _WARP_AMPLITUDE * 3
    z0 = max(int(np.floor((cz - radius) / _Z_STEP)), 0)
    z1 = min(int(np.ceil((cz + radius) / _Z_STEP)) + 1, shape3d[0])
    y0, y1 = max(int(cy - pad), 0), min(int(cy + pad) + 1, shape3d[1])
    x0, x1 = max(int(cx - pad), 0), min(int(cx + pad) + 1, shape3d[2])
    if z0 >= z1 or y0 >= y1 or x0 >= x1:
        return None
    return np.s_[z0:z1, y0:y1, x0:x1]


def _local_coords(coords, box, centre):
    zz, yy, xx = coords
    full = np.broadcast_shapes(zz.shape, yy.shape, xx.shape)
    return tuple(np.broadcast_to(c, full)[box] - c0 for c, c0 in zip(coords, centre))


def _add_nuclei(rng, coords, cells, labels, intensity) -> None:
    """Put a nucleus in about a quarter of the cells; it stays inside its cell, off the membrane."""
    seeds = cells["seeds"]
    gaps = _seed_gaps(seeds)
    np.fill_diagonal(gaps, np.inf)
    nearest = gaps.min(axis=1)
    # a phantom smaller than one cell has a single seed: size its nucleus by the image instead
    nearest[~np.isfinite(nearest)] = min(labels.shape[1:])
    has_nucleus = rng.random(len(seeds)) < 0.25
    depth = (labels.shape[0] - 1) * _Z_STEP
    middle = np.array([depth / 2, labels.shape[1] / 2, labels.shape[2] / 2])
    scale = np.array([_CELL_Z_SCALE, 1, 1])
    has_nucleus[np.argmin(np.linalg.norm((seeds - middle) * scale, axis=1))] = True
    # cells are long in z: centre each nucleus on its cell's axis at a z inside the volume
    centres = seeds.copy()
    centres[:, 0] = np.clip(centres[:, 0], 0, depth)
    shape3d = labels.shape
    lumpiness = 0.1 * _smooth_noise(rng, shape3d, 12.0)
    for i in np.flatnonzero(has_nucleus):
        radii = 0.38 * nearest[i] * rng.uniform(0.8, 1.15, size=3) * np.array([1.3, 1, 1])
        box = _box_around(centres[i], float(radii.max()), coords, shape3d)
        if box is None:
            continue
        dz, dy, dx = _local_coords(coords, box, centres[i])
        r = np.sqrt((dz / radii[0]) ** 2 + (dy / radii[1]) ** 2 + (dx / radii[2]) ** 2)
        r += lumpiness[box]
        inside = (r < 1) & (cells["owner"][box] == i) & (labels[box] == CYTOPLASM)
        envelope = inside & (r > 1 - 2.0 / float(radii[1:].mean()))
        labels[box][inside] = NUCLEUS
        intensity[box][envelope] = -1.0  # marker: envelope pixels are rendered dark


def _add_mitochondria(rng, coords, owner, labels, intensity) -> None:
    """Scatter elongated ellipsoids with cristae stripes in cytoplasm, clipped to their cell."""
    shape3d = labels.shape
    lo = np.array([-_MITO_Z_MARGIN, 0.0, 0.0])
    hi = np.array([(shape3d[0] - 1) * _Z_STEP + _MITO_Z_MARGIN, shape3d[1] - 1, shape3d[2] - 1])
    n = rng.poisson(_MITO_DENSITY * np.prod(hi - lo))
    centres = lo + rng.uniform(0, 1, size=(n, 3)) * (hi - lo)
    for centre in centres:
        # the host cell is read at the nearest voxel: centres may lie just outside the volume
        iz = int(np.clip(round(centre[0] / _Z_STEP), 0, shape3d[0] - 1))
        iy, ix = int(centre[1]), int(centre[2])
        if labels[iz, iy, ix] != CYTOPLASM:
            continue
        half_axes = np.array([rng.uniform(12, 28), rng.uniform(4.5, 7.5), rng.uniform(4.5, 7.5)])
        axes = _random_frame(rng)
        box = _box_around(centre, float(half_axes[0]), coords, shape3d)
        local = np.stack(_local_coords(coords, box, centre), axis=-1)
        u, v, w = np.moveaxis(local @ axes.T, -1, 0)
        r = np.sqrt((u / half_axes[0]) ** 2 + (v / half_axes[1]) ** 2 + (w / half_axes[2]) ** 2)
        host = owner[iz, iy, ix]
        inside = (r < 1) & (owner[box] == host) & (labels[box] == CYTOPLASM)
        period = rng.uniform(4.5, 6.5)
        stripes = np.cos(2 * np.pi * (u + 0.4 * v) / period + rng.uniform(0, 6.3)) > 0.35
        labels[box][inside] = MITOCHONDRION
        intensity[box][inside & stripes & (r < 0.75)] = 1.0  # marker: lighter cristae


def _random_frame(rng) -> np.ndarray:
    """Orthonormal rows (long axis first); the long axis lies mostly in the image plane."""
    long_axis = np.array([rng.normal(0, 0.25), *rng.normal(size=2)])
    long_axis /= np.linalg.norm(long_axis)
    other = np.cross(long_axis, rng.normal(size=3))
    other /= np.linalg.norm(other)
    return np.stack([long_axis, other, np.cross(long_axis, other)]).astype(np.float32)


def _render(rng, labels, markers) -> np.ndarray:
    """Grey values per class with texture, then blur, shading and shot/read noise."""
    shape3d = labels.shape
    fine = _fine_noise(rng, shape3d, 0.8)
    blotch = _fine_noise(rng, shape3d, 2.5)
    specks = _fine_noise(rng, shape3d, 1.0) > 2.6
    base = np.array([168, 72, 84, 126, 208], dtype=np.float32)
    texture = np.array([10, 6, 8, 20, 5], dtype=np.float32)
    image = base[labels] + texture[labels] * np.where(labels == NUCLEUS, blotch, fine)
    cytoplasm = labels == CYTOPLASM
    image[cytoplasm & specks] = 70.0  # ribosome-like specks as dark as membranes
    image[markers < 0] = 74.0  # nuclear envelope
    image[markers > 0] = 128.0  # cristae
    image = ndi.gaussian_filter(image, (0.0, 0.9, 0.9))
    image *= 1.0 + 0.12 * _smooth_noise(rng, shape3d, 96.0)
    gain = 1.5  # grey levels per detected electron: sets the shot-noise level
    image = rng.poisson(np.clip(image, 0, None) / gain).astype(np.float32) * gain
    image += rng.normal(0.0, 4.0, size=shape3d).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)
