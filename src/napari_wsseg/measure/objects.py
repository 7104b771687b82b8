"""Measure the objects of a class-id segmentation: instances, per-object rows, summaries. No Qt.

:func:`measure_labels` labels the connected components of each class (3D for volumes, 2D for
images, face connectivity), writes them as an instance label volume, and returns one row per
object plus a summary per class and per slice. Everything is done block by block
(:mod:`.components`, :mod:`.properties`), so a zarr volume larger than memory is measured with
memory of a few blocks. Physical units follow the voxel size when it is known; otherwise every
quantity is in voxels and the column names say so (``volume_vox`` instead of ``volume_um3``).
"""

from __future__ import annotations

import shutil
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import WssegError
from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report
from .components import Instances, block_slices, label_instances
from .properties import ObjectAccumulator, padded_region

#: Default block (Z, Y, X): 16 M voxels, a few hundred MB of working memory.
DEFAULT_BLOCK = (64, 512, 512)
_TEMP_MARKER = ".wsseg-measure-temporary"


@dataclass
class MeasureResult:
    """Tables of a measurement (lists of rows, each a dict of column -> value).

    Attributes
    ----------
    objects, summary, per_slice : list of dict
        One row per object; per measured class; per class and slice (3D objects crossing it).
    instances : array or Path or None
        The instance label volume (an array when measured in memory, else the zarr path written).
    units : str
        ``"um"`` when the voxel size is known, else ``"voxels"``.
    stopped : str
        ``"done"`` or ``"cancelled"`` (tables are then empty).
    """

    objects: list[dict] = field(default_factory=list)
    summary: list[dict] = field(default_factory=list)
    per_slice: list[dict] = field(default_factory=list)
    instances: object = None
    units: str = "voxels"
    stopped: str = "done"


def measure_labels(
    labels,
    *,
    image=None,
    classes: list[int] | None = None,
    class_names: list[str] | None = None,
    voxel_size: tuple[float, ...] | None = None,
    instances_out=None,
    block: tuple[int, ...] | None = None,
    surface: bool = True,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> MeasureResult:
    """Label each class's connected components and measure every object.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) integer array
        Class ids (numpy, dask or zarr; read block by block).
    image : (Z, Y, X, C) or (Z, Y, X) array or Image, optional
        Intensities for the mean intensity column; same spatial shape as ``labels``.
    classes : list of int, optional
        Class ids to measure. By default every class id from 0 to the largest id present.
    class_names : list of str, optional
        Name of class id ``k`` at index ``k``; by default ``class0``, ``class1``...
    voxel_size : tuple of float, optional
        ``(Z, Y, X)`` (or ``(Y, X)``) micrometres per voxel. None: results in voxels.
    instances_out : str or Path, optional
        ``.zarr`` path for the instance label volume. By default it is kept in memory for numpy
        input and written to a temporary folder (removed afterwards) otherwise.
    block : tuple of int, optional
        Block shape (default 64, 512, 512 for volumes; the whole image for 2D).
    surface : bool, default True
        Measure surface areas (perimeters in 2D). The marching cubes are most of the run time
        on big objects; False leaves the column out.
    overwrite : bool, default False
        Replace an existing ``instances_out`` written by napari-wsseg (anything else is never
        replaced).
    progress, cancel : optional
        Progress callback and cancel flag, checked between blocks.

    Returns
    -------
    MeasureResult

    Raises
    ------
    WssegError
        When the labels are not 2D/3D integers, the image or voxel size does not fit them, or a
        class id is negative.

    Examples
    --------
    >>> labels = np.zeros((4, 6), np.uint8); labels[0:2, 0:2] = 1; labels[3, 3:6] = 1
    >>> result = measure_labels(labels, classes=[1])
    >>> [(row["id"], row["pixels"], row["touches_border"]) for row in result.objects]
    [(1, 4, True), (2, 3, True)]
    """
    is_2d = _check_labels(labels)
    volume = labels[None] if is_2d else labels
    intensities = _image_array(image, volume.shape, is_2d)
    spacing = _spacing(voxel_size, is_2d)
    if classes is None:
        classes = list(range(int(np.asarray(_max(volume))) + 1))
    _check_classes(classes)
    block = _block(block, volume.shape, is_2d)
    names = _names(classes, class_names)
    with _InstanceStore(instances_out, volume, is_2d, block, overwrite) as store:
        found = label_instances(
            volume, classes, store.array, block, progress=progress, cancel=cancel
        )
        if found.stopped == "cancelled":
            return MeasureResult(instances=store.keep(), stopped="cancelled")
        stats, class_voxels = _accumulate(
            store.array,
            found,
            classes,
            intensities,
            spacing,
            block,
            surface and not is_2d,
            progress,
            cancel,
        )
        if stats is None:
            return MeasureResult(instances=store.keep(), stopped="cancelled")
        perimeter = _perimeters(store.array, found.count, spacing) if is_2d and surface else None
        instances = store.keep()
    units = "um" if voxel_size is not None else "voxels"
    tables = _Tables(volume.shape, is_2d, spacing, units, names, classes)
    objects = tables.objects(stats, found, perimeter, intensities is not None, surface)
    return MeasureResult(
        objects,
        tables.summary(objects, class_voxels),
        tables.per_slice(objects, class_voxels),
        instances,
        units,
    )


# ----------------------------------------------------------------------------- accumulation
def _accumulate(
    instances, found: Instances, classes, image, spacing, block, surface: bool, progress, cancel
):
    """Per-object sums and the voxels of each class per slice ``(Z, len(classes))``."""
    n_channels = 0 if image is None else int(image.shape[-1])
    stats = ObjectAccumulator(found.count, n_channels, spacing)
    blocks = block_slices(tuple(instances.shape), block)
    position = np.full(max(classes) + 2, len(classes), dtype=np.int64)
    position[np.asarray(classes)] = np.arange(len(classes))
    class_voxels = np.zeros((instances.shape[0], len(classes) + 1), np.int64)
    lookup = position[found.instance_class]  # instance -> column (background: last)
    lookup[0] = len(classes)
    for k, region in enumerate(blocks):
        if is_cancelled(cancel):
            return None, None
        core = np.asarray(instances[region])
        origin = tuple(s.start for s in region)
        stats.add_block(core, origin, None if image is None else np.asarray(image[region]))
        if surface:
            stats.add_surface(padded_region(instances, region))
        columns = lookup[core].reshape(core.shape[0], -1)
        for z, row in zip(range(region[0].start, region[0].stop), columns):
            class_voxels[z] += np.bincount(row, minlength=len(classes) + 1)
        report(progress, ProgressEvent(k + 1, len(blocks), "measuring objects"))
    return stats, class_voxels[:, : len(classes)]


def _perimeters(instances, n: int, spacing) -> np.ndarray:
    """2D perimeters (skimage's ``perimeter``), scaled by the mean pixel side."""
    from skimage.measure import regionprops_table

    table = regionprops_table(np.asarray(instances[0]), properties=("label", "perimeter"))
    out = np.zeros(n + 1, np.float64)
    out[table["label"]] = table["perimeter"] * float(np.sqrt(spacing[1] * spacing[2]))
    return out


# ----------------------------------------------------------------------------------- tables
class _Tables:
    """Builds the three tables from the accumulated sums, with unit-bearing column names."""

    def __init__(self, shape, is_2d: bool, spacing, units: str, names, classes) -> None:
        self.shape, self.is_2d, self.spacing, self.names = shape, is_2d, spacing, names
        self.classes = classes
        self.axes = (1, 2) if is_2d else (0, 1, 2)
        self.physical = physical = units == "um"
        if is_2d:
            self.size_key, self.surface_key = (
                ("area_um2", "perimeter_um") if physical else ("area_px", "perimeter_px")
            )
            self.voxel_key = "pixels"
        else:
            self.size_key, self.surface_key = (
                ("volume_um3", "surface_area_um2")
                if physical
                else ("volume_vox", "surface_area_vox2")
            )
            self.voxel_key = "voxels"
        self.voxel_volume = float(np.prod([spacing[a] for a in self.axes]))

    def objects(
        self, stats: ObjectAccumulator, found: Instances, perimeter, with_image, with_surface: bool
    ) -> list[dict]:
        ids = np.flatnonzero(stats.voxels)
        order = sorted(ids.tolist(), key=lambda i: (self.classes.index(found.instance_class[i]), i))
        surface = (perimeter if perimeter is not None else stats.surface) if with_surface else None
        rows = []
        for i in order:
            rows.append(
                self._object_row(i, stats, int(found.instance_class[i]), surface, with_image)
            )
        return rows

    def _object_row(self, i, stats, class_id, surface, with_image) -> dict:
        letters = "zyx"
        count = int(stats.voxels[i])
        row = {
            "class_id": class_id,
            "class": self.names[class_id],
            "id": int(i),
            self.voxel_key: count,
            self.size_key: _round(count * self.voxel_volume),
        }
        for a in self.axes:
            row[f"bbox_{letters[a]}0"] = int(stats.bbox_min[i, a])
        for a in self.axes:
            row[f"bbox_{letters[a]}1"] = int(stats.bbox_max[i, a])
        for a in self.axes:
            row[f"centroid_{letters[a]}"] = _round(stats.coord_sum[i, a] / count)
        if surface is not None:
            row[self.surface_key] = _round(surface[i])
        if with_image:
            means = stats.intensity_sum[i] / count
            if len(means) == 1:
                row["mean_intensity"] = _round(means[0])
            else:
                row.update({f"mean_intensity_c{c}": _round(m) for c, m in enumerate(means)})
        row["touches_border"] = bool(
            any(
                stats.bbox_min[i, a] == 0 or stats.bbox_max[i, a] == self.shape[a]
                for a in self.axes
            )
        )
        return row

    def summary(self, objects: list[dict], class_voxels: np.ndarray) -> list[dict]:
        total = float(np.prod(self.shape))
        rows = []
        for column, class_id in enumerate(self.classes):
            sizes = [r[self.size_key] for r in objects if r["class_id"] == class_id]
            voxels = int(class_voxels[:, column].sum())
            rows.append(
                {
                    "class_id": class_id,
                    "class": self.names[class_id],
                    "count": len(sizes),
                    self.voxel_key: voxels,
                    f"total_{self.size_key}": _round(voxels * self.voxel_volume),
                    f"mean_{self.size_key}": _round(float(np.mean(sizes))) if sizes else 0.0,
                    "volume_fraction" if not self.is_2d else "area_fraction": _round(
                        voxels / total
                    ),
                }
            )
        return rows

    def per_slice(self, objects: list[dict], class_voxels: np.ndarray) -> list[dict]:
        """Per slice and class: objects crossing the slice, voxels, area and area fraction.

        A face-connected 3D object occupies every slice between its first and last, so the
        objects crossing slice z are those whose z range holds z.
        """
        n_z = self.shape[0]
        pixel_area = float(self.spacing[1] * self.spacing[2])
        area_key = "area_um2" if self.physical else "area_px"
        slice_pixels = float(self.shape[1] * self.shape[2])
        rows = []
        for column, class_id in enumerate(self.classes):
            crossing = np.zeros(n_z + 1, np.int64)
            for r in objects:
                if r["class_id"] == class_id:
                    z0, z1 = (r["bbox_z0"], r["bbox_z1"]) if not self.is_2d else (0, 1)
                    crossing[z0] += 1
                    crossing[z1] -= 1
            crossing = np.cumsum(crossing)[:n_z]
            for z in range(n_z):
                pixels = int(class_voxels[z, column])
                rows.append(
                    {
                        "z": z,
                        "class_id": class_id,
                        "class": self.names[class_id],
                        "objects": int(crossing[z]),
                        "pixels": pixels,
                        area_key: _round(pixels * pixel_area),
                        "area_fraction": _round(pixels / slice_pixels),
                    }
                )
        return rows


def _round(value) -> float:
    return float(f"{float(value):.6g}")


# ----------------------------------------------------------------------------------- inputs
def _check_labels(labels) -> bool:
    dtype = np.dtype(labels.dtype)
    if len(labels.shape) not in (2, 3) or dtype.kind not in "iub":
        raise WssegError(
            f"labels of shape {tuple(labels.shape)} and dtype {dtype} are not (Y, X) or (Z, Y, X) "
            "class ids; measure a label image (a prediction), not an image"
        )
    return len(labels.shape) == 2


def _max(volume):
    if hasattr(volume, "compute"):
        return volume.max().compute()
    if isinstance(volume, np.ndarray):
        return volume.max()
    import dask.array as da

    return da.from_array(volume, chunks=DEFAULT_BLOCK).max().compute()


def _check_classes(classes: list[int]) -> None:
    if not classes or min(classes) < 0 or len(set(classes)) != len(classes):
        raise WssegError(f"classes {classes} must be distinct class ids >= 0; e.g. --classes 2,3")


def _names(classes: list[int], class_names: list[str] | None) -> dict[int, str]:
    names = list(class_names or [])
    return {k: names[k] if k < len(names) else f"class{k}" for k in classes}


def _image_array(image, shape, is_2d: bool):
    """``(Z, Y, X, C)`` intensities matching ``shape``, or None."""
    if image is None:
        return None
    from ..io.image import Image

    data = image.data if isinstance(image, Image) else image
    if not isinstance(image, Image):
        data = data[None] if is_2d and len(data.shape) == 2 else data
        data = data[..., None] if len(data.shape) == 3 else data
    if tuple(data.shape[:3]) != tuple(shape):
        name = image.name if isinstance(image, Image) else "image"
        spatial = tuple(shape[1:]) if is_2d else tuple(shape)
        raise WssegError(
            f"{name} has spatial shape {tuple(data.shape[1 if is_2d else 0 : 3])} but the labels "
            f"have {spatial}; give the image the labels were predicted from"
        )
    return data


def _spacing(voxel_size, is_2d: bool) -> tuple[float, float, float]:
    if voxel_size is None:
        return (1.0, 1.0, 1.0)
    size = tuple(float(v) for v in voxel_size)
    if len(size) != (2 if is_2d else 3) or min(size) <= 0:
        raise WssegError(
            f"voxel size {size} must be {2 if is_2d else 3} positive micrometre values "
            f"({'Y, X' if is_2d else 'Z, Y, X'})"
        )
    return (1.0, *size) if is_2d else size


def _block(block, shape, is_2d: bool) -> tuple[int, int, int]:
    if is_2d:
        return (1, int(shape[1]), int(shape[2]))  # 2D perimeters need the whole image
    block = tuple(block or DEFAULT_BLOCK)
    if len(block) != 3 or min(block) < 1:
        raise WssegError(f"block {block} must be three positive sizes Z,Y,X, e.g. 64,512,512")
    return tuple(min(int(b), int(s)) for b, s in zip(block, shape))


class _InstanceStore:
    """Where instance ids go: memory, the user's ``.zarr``, or a temporary zarr removed at exit."""

    def __init__(self, out, volume, is_2d: bool, block, overwrite: bool) -> None:
        self.out, self.volume, self.is_2d, self.block = out, volume, is_2d, block
        self.overwrite = overwrite
        self.temp: Path | None = None
        self.array = None

    def __enter__(self) -> "_InstanceStore":
        from ..io.writers import create_labels_zarr

        shape = tuple(self.volume.shape)
        if self.out is None and isinstance(self.volume, np.ndarray):
            self.array = np.zeros(shape, np.uint32)
            return self
        path = Path(self.out) if self.out is not None else self._temporary() / "instances.zarr"
        if path.suffix.lower() != ".zarr":
            raise WssegError(f"instances output {path} must end in .zarr; e.g. {path.stem}.zarr")
        array = create_labels_zarr(
            path,
            shape[1:] if self.is_2d else shape,
            dtype=np.uint32,
            chunks=self.block[1:] if self.is_2d else self.block,
            overwrite=self.overwrite or self.out is None,
        )
        self.path = path
        self.array = array if not self.is_2d else _Lift2D(array)
        return self

    def _temporary(self) -> Path:
        self.temp = Path(tempfile.mkdtemp(prefix="wsseg-measure-"))
        (self.temp / _TEMP_MARKER).write_text("created by wsseg measure; safe to delete\n")
        return self.temp

    def keep(self):
        """What the result holds: the array in memory or the path written (None if temporary)."""
        if self.temp is not None:
            return None
        if isinstance(self.array, np.ndarray):
            return self.array[0] if self.is_2d else self.array
        from ..io.writers import finalize_labels_zarr

        finalize_labels_zarr(self.path)
        return self.path

    def __exit__(self, *exc) -> None:
        if self.temp is not None and (self.temp / _TEMP_MARKER).is_file():
            shutil.rmtree(self.temp, ignore_errors=True)


class _Lift2D:
    """A 2D zarr array seen as ``(1, Y, X)``."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = (1, *array.shape)
        self.dtype = array.dtype

    def __getitem__(self, region):
        return np.asarray(self.array[region[1:]])[None]

    def __setitem__(self, region, value) -> None:
        self.array[region[1:]] = np.asarray(value)[0]
