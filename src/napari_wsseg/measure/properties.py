"""Per-object properties accumulated block by block from an instance volume. Imports no Qt.

Each block contributes what is additive: voxel counts, coordinate and intensity sums (from
:func:`skimage.measure.regionprops_table`), bounding-box extremes, and the surface area of the
marching-cubes cells it owns. Cells are owned by the block holding their low corner, and the
volume is padded with one voxel of background on every side, so the per-block meshes add up to
the closed mesh of the whole object (:func:`skimage.measure.marching_cubes` at level 0.5).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

_PROPS = ("label", "area", "bbox", "centroid")


class ObjectAccumulator:
    """Running sums for ``n`` instances (ids ``1..n``) of a ``(Z, Y, X)`` volume.

    Parameters
    ----------
    n : int
        Number of instances.
    n_channels : int
        Image channels for the mean intensity (0: no image).
    spacing : (3,) tuple of float
        Voxel size used for the surface area (1, 1, 1 for voxel units).
    """

    def __init__(self, n: int, n_channels: int, spacing: tuple[float, float, float]) -> None:
        self.voxels = np.zeros(n + 1, np.int64)
        self.coord_sum = np.zeros((n + 1, 3), np.float64)
        self.bbox_min = np.full((n + 1, 3), np.iinfo(np.int64).max, np.int64)
        self.bbox_max = np.zeros((n + 1, 3), np.int64)  # exclusive
        self.intensity_sum = np.zeros((n + 1, n_channels), np.float64)
        self.surface = np.zeros(n + 1, np.float64)
        self.spacing = tuple(float(s) for s in spacing)

    def add_block(
        self, instances: np.ndarray, origin: tuple[int, int, int], image: np.ndarray | None = None
    ) -> None:
        """Add one block's counts, sums and bounding boxes.

        ``instances`` is the ``(z, y, x)`` block at ``origin``; ``image`` the matching
        ``(z, y, x, C)`` intensities or None.
        """
        if not instances.any():
            return
        props = _PROPS + (("intensity_mean",) if image is not None else ())
        table = _regionprops(_signed(instances), image, props)
        index = table["label"]
        area = table["area"].astype(np.int64)
        self.voxels[index] += area
        for axis in range(3):
            self.coord_sum[index, axis] += (table[f"centroid-{axis}"] + origin[axis]) * area
            np.minimum.at(self.bbox_min[:, axis], index, table[f"bbox-{axis}"] + origin[axis])
            np.maximum.at(self.bbox_max[:, axis], index, table[f"bbox-{axis + 3}"] + origin[axis])
        if image is not None:
            for channel in range(self.intensity_sum.shape[1]):
                key = "intensity_mean" if image.shape[-1] == 1 else f"intensity_mean-{channel}"
                self.intensity_sum[index, channel] += table[key] * area

    def add_surface(self, padded: np.ndarray) -> None:
        """Add the marching-cubes area of every cell whose 8 corners are all in ``padded``.

        ``padded`` is a block of instances with one more voxel on each high side (and on the low
        side at the volume border), background beyond the volume.
        """
        from skimage.measure import marching_cubes, mesh_surface_area

        padded = _signed(padded)
        for j, box in enumerate(ndi.find_objects(padded), start=1):
            if box is None:
                continue
            grown = tuple(
                slice(max(s.start - 1, 0), min(s.stop + 1, n)) for s, n in zip(box, padded.shape)
            )
            mask = (padded[grown] == j).astype(np.float32)
            if min(mask.shape) < 2 or mask.min() == 1.0:
                continue  # no cell of this block crosses the object's boundary
            vertices, faces, _, _ = marching_cubes(mask, 0.5, spacing=self.spacing)
            self.surface[j] += mesh_surface_area(vertices, faces)


def _regionprops(compact: np.ndarray, image, props) -> dict:
    from skimage.measure import regionprops_table

    if image is None:
        return regionprops_table(compact, properties=props)
    intensity = image[..., 0] if image.shape[-1] == 1 else image
    return regionprops_table(compact, intensity_image=intensity, properties=props)


def _signed(instances: np.ndarray) -> np.ndarray:
    """Instance ids as a signed integer array (what scipy's find_objects and regionprops take)."""
    return instances if instances.dtype.kind == "i" else instances.astype(np.int32)


def padded_region(array, region: tuple[slice, ...]) -> np.ndarray:
    """``array[region]`` grown by one voxel on each high side (and on the low side at index 0),
    with zeros outside ``array``."""
    wanted = [(s.start - 1 if s.start == 0 else s.start, s.stop + 1) for s in region]
    inside = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(wanted, array.shape))
    data = np.asarray(array[inside])
    pad = [(s.start - a, b - s.stop) for (a, b), s in zip(wanted, inside)]
    return np.pad(data, pad)
