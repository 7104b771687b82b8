"""Write label images (class ids) as ``.npy``, compressed TIFF or OME-Zarr. Imports no Qt.

The format follows the file extension. ``.zarr`` outputs are OME-Zarr (NGFF 0.5, zarr format 3:
what ome-zarr-py 0.18 writes by default) label images: the root group holds the multiscales
metadata, an ``image-label`` entry with one colour and class name per label value (= class id)
and the arrays ``0`` (full resolution), ``1``, ``2``... (nearest-neighbour downsampled by 2, 4...
in y and x). Big outputs are written slice by slice into :func:`create_labels_zarr` and finished
with :func:`finalize_labels_zarr`. See ``docs/io.md``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ImageFormatError
from .readers import ome_attrs

#: File name endings :func:`write_labels` understands.
LABEL_WRITE_EXTENSIONS = (".npy", ".tif", ".tiff", ".zarr")
#: OME-NGFF version written (zarr format 3), the default of ome-zarr-py 0.18.
NGFF_VERSION = "0.5"
#: Default zarr chunk edge in y and x for labels; z chunks are one slice, as outputs are
#: written slice by slice.
LABEL_CHUNK_YX = 512
#: Root attribute every label store made here carries: the proof that replacing it deletes only
#: what napari-wsseg wrote.
MADE_BY_ATTR = "napari_wsseg"
#: Pyramid levels stop before y or x would drop below this many pixels, and after this many levels.
PYRAMID_MIN_SIZE = 64
PYRAMID_MAX_LEVELS = 4


def write_labels(path, labels, *, classes=None, chunks=None) -> Path:
    """Write a label image of class ids; the format follows the extension of ``path``.

    Parameters
    ----------
    path : str or Path
        ``.npy`` (numpy), ``.tif``/``.tiff`` (zlib-compressed TIFF with axes metadata) or
        ``.zarr`` (OME-Zarr label image with a pyramid, colours and class names). Existing
        ``.npy``/``.tif`` files are replaced; an existing ``.zarr`` is replaced only when it is a
        label image written by this function.
    labels : (Y, X) or (Z, Y, X) integer array
        Class ids, as numpy or dask array (dask is written block by block).
    classes : list of ClassInfo, optional
        Class ``k`` is ``classes[k]``; its colour and name are stored in OME-Zarr metadata. None
        writes no colours.
    chunks : tuple of int, optional
        zarr chunk shape (one entry per axis of ``labels``); default one slice of up to
        512 x 512 pixels. Ignored for ``.npy`` and ``.tif``.

    Returns
    -------
    Path
        ``path``.

    Raises
    ------
    ImageFormatError
        Unknown extension, labels that are not 2D/3D integer class ids, ids outside ``classes``,
        or an existing ``.zarr`` that is not a label image.

    Notes
    -----
    The stored dtype is uint8 when every class id fits (up to 256 classes), else uint16.

    Examples
    --------
    >>> import tempfile
    >>> from napari_wsseg.io.readers import read_labels
    >>> path = write_labels(Path(tempfile.mkdtemp()) / "pred.tif", np.array([[0, 1], [1, 2]]))
    >>> read_labels(path).dtype, read_labels(path).tolist()
    (dtype('uint8'), [[0, 1], [1, 2]])
    """
    path = Path(path).expanduser()
    suffix = path.suffix.lower()
    if suffix not in LABEL_WRITE_EXTENSIONS:
        raise ImageFormatError(
            f"labels file {path}: unknown extension '{suffix}'; supported: "
            f"{', '.join(LABEL_WRITE_EXTENSIONS)}"
        )
    _check_label_array(labels, classes, path)
    dtype = _label_dtype(labels, classes)
    if suffix == ".zarr":
        array = create_labels_zarr(
            path, labels.shape, classes=classes, chunks=chunks, dtype=dtype, overwrite=True
        )
        _store(labels, array)
        finalize_labels_zarr(path)
    elif suffix == ".npy":
        _write_npy(path, labels, dtype)
    else:
        _write_tiff(path, labels, dtype)
    return path


def create_labels_zarr(path, shape, *, classes=None, chunks=None, dtype=None, overwrite=False):
    """Create an empty OME-Zarr label image to fill slice by slice; returns its level-0 zarr array.

    The metadata (axes, ``image-label`` colours and names) is written now, so the store is valid
    (and readable by :func:`~napari_wsseg.io.readers.read_labels`) at every moment. Call
    :func:`finalize_labels_zarr` once all slices are written to add the downsampled levels.

    Parameters
    ----------
    path : str or Path
        Destination ending in ``.zarr``.
    shape : tuple of int
        ``(Y, X)`` or ``(Z, Y, X)``.
    classes : list of ClassInfo, optional
        Colours and names of the class ids.
    chunks : tuple of int, optional
        zarr chunk shape; default one slice of up to 512 x 512 pixels, so that writing one
        z slice touches whole chunks only.
    dtype : numpy dtype, optional
        Default uint8 for up to 256 classes, else (or without ``classes``) uint16.
    overwrite : bool, default False
        Replace an existing label image at ``path`` made by this function (its root attributes
        hold ``napari_wsseg``). Any other existing path, label images of other tools included,
        is never replaced.

    Returns
    -------
    zarr.Array
        Level 0, filled with 0; assign slices with ``array[z] = labels_z``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pred.zarr"
    >>> array = create_labels_zarr(path, (2, 4, 4), dtype=np.uint8)
    >>> array[1] = np.ones((4, 4), dtype=np.uint8)
    >>> _ = finalize_labels_zarr(path)
    >>> int(np.asarray(array[1]).sum()), array.shape
    (16, (2, 4, 4))
    """
    import zarr

    path = Path(path).expanduser()
    shape = _check_shape(shape, path)
    if path.suffix.lower() != ".zarr":
        raise ImageFormatError(
            f"labels store {path}: name must end in .zarr; e.g. {path.stem}.zarr"
        )
    if dtype is None:
        dtype = np.uint8 if classes is not None and len(classes) <= 256 else np.uint16
    _remove_previous_labels(path, overwrite)
    axes = "zyx"[-len(shape) :]
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    array = group.create_array(
        "0",
        shape=shape,
        chunks=_label_chunks(shape, chunks, path),
        dtype=dtype,
        fill_value=0,
        dimension_names=list(axes),
    )
    write_multiscales(group, 1, axes, name=path.stem)
    _write_image_label(group, classes)
    group.attrs[MADE_BY_ATTR] = {"kind": "labels", "version": __version__}
    return array


def finalize_labels_zarr(path) -> Path:
    """Add the pyramid (nearest downsampling by 2 in y/x per level) to a label store.

    Reads level 0 lazily with dask, one level from the previous; safe to call again after
    level 0 changed. Returns ``path``.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pred.zarr"
    >>> create_labels_zarr(path, (256, 256), dtype=np.uint8)[:] = 1
    >>> _ = finalize_labels_zarr(path)
    >>> from napari_wsseg.io.readers import read_labels
    >>> read_labels(path).shape
    (256, 256)
    """
    import zarr

    path = Path(path).expanduser()
    if not is_wsseg_label_zarr(path):  # the pyramid step deletes the store's levels 1, 2, ...
        raise ImageFormatError(
            f"labels store {path} is not a label image made by create_labels_zarr; create it first"
        )
    group = zarr.open_group(str(path), mode="r+")
    axes = "zyx"[-group["0"].ndim :]
    write_pyramid(group, axes, name=path.stem, smooth=False)
    return path


def is_label_zarr(path) -> bool:
    """True when ``path`` is a zarr group carrying OME ``image-label`` metadata."""
    import zarr

    path = Path(path)
    if not path.is_dir():
        return False
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # not a zarr group at all
        return False
    return "image-label" in ome_attrs(group)


def is_wsseg_label_zarr(path) -> bool:
    """True when ``path`` is a label image made by :func:`create_labels_zarr` (our root attribute).

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "pred.zarr"
    >>> _ = create_labels_zarr(path, (4, 4), dtype=np.uint8)
    >>> is_wsseg_label_zarr(path), is_wsseg_label_zarr(path.parent)
    (True, False)
    """
    import zarr

    if not is_label_zarr(path):
        return False
    made_by = zarr.open_group(str(path), mode="r").attrs.get(MADE_BY_ATTR)
    return isinstance(made_by, dict) and made_by.get("kind") == "labels"


# --- OME-Zarr metadata and pyramids (shared with convert.py) ------------------------------------


def pyramid_levels(shape_yx) -> int:
    """Number of downsampled levels for a ``(Y, X)`` size."""
    levels = 0
    while levels < PYRAMID_MAX_LEVELS and min(shape_yx) // 2 ** (levels + 1) >= PYRAMID_MIN_SIZE:
        levels += 1
    return levels


def write_multiscales(group, n_levels: int, axes: str, *, name: str, smooth: bool = False) -> None:
    """Write NGFF multiscales metadata for arrays ``0..n_levels-1`` halved in y/x at each level.

    ``smooth`` marks levels made by averaging 2x2 blocks: their pixel centres shift by half a pixel.
    """
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_multiscales_metadata

    datasets = []
    for level in range(n_levels):
        scale = [float(2**level) if a in "yx" else 1.0 for a in axes]
        transforms = [{"type": "scale", "scale": scale}]
        if smooth and level:
            transforms.append({"type": "translation", "translation": [(s - 1) / 2 for s in scale]})
        datasets.append({"path": str(level), "coordinateTransformations": transforms})
    write_multiscales_metadata(group, datasets, fmt=FormatV05(), axes=list(axes), name=name)


def write_pyramid(group, axes: str, *, name: str, smooth: bool, on_level=None) -> int:
    """Write levels ``1..n`` of ``group`` from array ``0`` and their metadata; returns ``n``.

    Each level halves y and x of the previous one, by taking every second pixel (labels) or by
    averaging 2x2 blocks (``smooth``, images). ``on_level(level, n)`` is called after each level.
    """
    import dask.array as da

    level0 = group["0"]
    n_levels = pyramid_levels(level0.shape[-2:])
    for key in [k for k in group.array_keys() if k != "0"]:
        del group[key]  # stale levels of an earlier finalize
    previous = level0
    for level in range(1, n_levels + 1):
        source = da.from_zarr(previous)
        reduced = _halve_mean(source) if smooth else source[..., ::2, ::2]
        chunks = tuple(min(c, s) for c, s in zip(level0.chunks, reduced.shape))
        previous = group.create_array(
            str(level),
            shape=reduced.shape,
            chunks=chunks,
            dtype=level0.dtype,
            fill_value=0,
            dimension_names=list(axes),
        )
        da.store(reduced.rechunk(chunks), previous, lock=False)
        if on_level is not None:
            on_level(level, n_levels)
    write_multiscales(group, n_levels + 1, axes, name=name, smooth=smooth)
    return n_levels


def _halve_mean(array):
    """Average 2x2 blocks in the last two axes (odd edges repeated), keeping the dtype."""
    import dask.array as da

    pad = [(0, 0)] * (array.ndim - 2) + [(0, array.shape[-2] % 2), (0, array.shape[-1] % 2)]
    padded = da.pad(array, pad, mode="edge") if any(p[1] for p in pad) else array
    even = tuple(max(2, c[0] - c[0] % 2) for c in padded.chunks[-2:])
    padded = padded.rechunk(padded.chunks[:-2] + even)
    axes = {array.ndim - 2: 2, array.ndim - 1: 2}
    mean = da.coarsen(np.mean, padded.astype(np.float32), axes)
    if np.dtype(array.dtype).kind in "iu":
        mean = da.round(mean)
    return mean.astype(array.dtype)


def _write_image_label(group, classes) -> None:
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import add_metadata

    image_label: dict = {"version": NGFF_VERSION}
    if classes:
        image_label["colors"] = [
            {"label-value": k, "rgba": _rgba(c.color, c.name)} for k, c in enumerate(classes)
        ]
        image_label["properties"] = [
            {"label-value": k, "name": c.name} for k, c in enumerate(classes)
        ]
    add_metadata(group, {"image-label": image_label}, fmt=FormatV05())


def _rgba(color: str, name: str) -> list[int]:
    hex_digits = color.lstrip("#")
    try:
        if len(hex_digits) != 6:
            raise ValueError(color)
        return [int(hex_digits[i : i + 2], 16) for i in (0, 2, 4)] + [255]
    except ValueError as exc:
        raise ImageFormatError(
            f"class '{name}': colour '{color}' is not '#rrggbb'; give e.g. '#1f77b4'"
        ) from exc


# --- checks and plain formats -------------------------------------------------------------------


def _check_shape(shape, path: Path) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ImageFormatError(
            f"labels store {path}: shape {shape} is not a positive (Y, X) or (Z, Y, X); "
            "pass Image.output_shape()"
        )
    return shape


def _label_chunks(shape: tuple[int, ...], chunks, path: Path) -> tuple[int, ...]:
    if chunks is None:
        default = (1, LABEL_CHUNK_YX, LABEL_CHUNK_YX)[-len(shape) :]
        return tuple(min(c, s) for c, s in zip(default, shape))
    chunks = tuple(int(c) for c in chunks)
    if len(chunks) != len(shape) or min(chunks) < 1:
        raise ImageFormatError(
            f"labels store {path}: chunks {chunks} do not fit shape {shape}; "
            "give one positive size per axis"
        )
    return chunks


def _check_label_array(labels, classes, path: Path) -> None:
    dtype = np.dtype(labels.dtype)
    if labels.ndim not in (2, 3) or dtype.kind not in "iub":
        raise ImageFormatError(
            f"labels for {path}: shape {tuple(labels.shape)} dtype {dtype} is not a (Y, X) or "
            "(Z, Y, X) integer array of class ids; pass the segmentation, not probabilities"
        )
    if not isinstance(labels, np.ndarray) or labels.size == 0:
        return  # lazy labels are not read twice just to check them
    low, high = int(labels.min()), int(labels.max())
    limit = len(classes) - 1 if classes else np.iinfo(np.uint16).max
    if low < 0 or high > limit:
        raise ImageFormatError(
            f"labels for {path}: class ids range {low}..{high}, outside 0..{limit}; "
            "pass all classes or fix the ids"
        )


def _label_dtype(labels, classes) -> np.dtype:
    if classes:
        return np.dtype(np.uint8 if len(classes) <= 256 else np.uint16)
    if isinstance(labels, np.ndarray):
        fits = labels.size == 0 or int(labels.max()) <= 255
    else:
        fits = np.dtype(labels.dtype).itemsize == 1
    return np.dtype(np.uint8 if fits else np.uint16)


def _remove_previous_labels(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if not overwrite:
        raise ImageFormatError(
            f"labels store {path} already exists; pass overwrite=True (--overwrite) or pick "
            "another path"
        )
    if not is_wsseg_label_zarr(path):
        raise ImageFormatError(
            f"{path} already exists and is not a wsseg label image (no '{MADE_BY_ATTR}' "
            "attribute: another tool or you made it), so it is never replaced; move it away or "
            "pick another path"
        )
    shutil.rmtree(path)


def _store(labels, array) -> None:
    if isinstance(labels, np.ndarray):
        array[...] = labels.astype(array.dtype, copy=False)
        return
    import dask.array as da

    da.store(da.asarray(labels).astype(array.dtype).rechunk(array.chunks), array, lock=False)


def _write_npy(path: Path, labels, dtype: np.dtype) -> None:
    if isinstance(labels, np.ndarray):
        np.save(path, labels.astype(dtype, copy=False))
        return
    import dask.array as da

    out = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=tuple(labels.shape))
    da.store(da.asarray(labels).astype(dtype), out, lock=False)
    out.flush()


def _write_tiff(path: Path, labels, dtype: np.dtype) -> None:
    import tifffile

    axes = "ZYX"[-labels.ndim :]
    if isinstance(labels, np.ndarray) or labels.ndim == 2:
        data = np.asarray(labels).astype(dtype, copy=False)
    else:  # one slice in memory at a time
        data = (np.asarray(labels[z]).astype(dtype) for z in range(labels.shape[0]))
    tifffile.imwrite(
        path,
        data,
        shape=tuple(labels.shape),
        dtype=dtype,
        compression="zlib",
        photometric="minisblack",
        metadata={"axes": axes},
    )
