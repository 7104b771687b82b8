"""Read images and label images from files into the library's axis convention. Imports no Qt.

:func:`read_image` returns an :class:`~napari_wsseg.io.image.Image` (data always ``(Z, Y, X, C)``);
:func:`read_labels` returns a ``(Y, X)`` or ``(Z, Y, X)`` integer array. zarr and OME-Zarr inputs,
and TIFFs larger than :data:`LAZY_TIFF_BYTES`, are opened lazily as dask arrays: only the slices
that are used are read. See ``docs/io.md`` for the supported formats and the axis rules.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ..errors import ImageFormatError
from .image import Image, as_image

#: File name endings :func:`read_image` understands (a zarr store may also be a folder without one).
IMAGE_EXTENSIONS = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")
#: File name endings :func:`read_labels` understands.
LABEL_READ_EXTENSIONS = (".tif", ".tiff", ".png", ".npy", ".zarr")
#: TIFFs with more bytes than this are opened lazily through tifffile's zarr interface.
LAZY_TIFF_BYTES = 1 << 30
#: Image dtypes used as they are; float16/float64 become float32, other integer types are kept.
NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))

_ZARR_MARKERS = ("zarr.json", ".zarray", ".zgroup")


def read_image(path, *, channel_axis: int | None = None) -> Image:
    """Read a 2D image or 3D volume as an :class:`Image` with ``(Z, Y, X, C)`` data.

    Parameters
    ----------
    path : str or Path
        A ``.tif``/``.tiff``, ``.png``, ``.jpg``/``.jpeg`` or ``.npy`` file, a zarr array, a zarr
        group holding one array (or an array named ``"0"``), or an OME-Zarr image (level 0 is read).
    channel_axis : int or None, default None
        Position of the channel axis in the array as stored in the file. None uses the file's axis
        metadata (TIFF series axes, OME-Zarr axes, RGB PNG) or, without metadata, the rule: 2D is
        ``(Y, X)``, 3D is ``(Z, Y, X)``, 4D is ``(Z, Y, X, C)`` when the last axis has at most 4
        entries. When given, it overrides any metadata.

    Returns
    -------
    Image
        numpy (or memory-mapped) data for TIFF/PNG/JPEG/``.npy``; a lazy dask array for zarr,
        OME-Zarr and TIFFs larger than :data:`LAZY_TIFF_BYTES`. dtype uint8, uint16 and float32
        are kept, as are other integer types; float16/float64 are converted to float32. A volume's
        ``voxel_size_zyx`` comes from OME-Zarr or TIFF metadata
        (:func:`~napari_wsseg.io.voxel_size.voxel_size_from_metadata`); None when it has none.

    Raises
    ------
    ImageFormatError
        Missing file, unknown extension, unreadable file, unsupported axes or dtype.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "stack.npy"
    >>> np.save(path, np.zeros((3, 4, 5), dtype=np.uint8))
    >>> image = read_image(path)
    >>> image.data.shape, image.was_2d
    ((3, 4, 5, 1), False)
    """
    path = _existing_path(path, "image")
    kind = _file_kind(path, IMAGE_EXTENSIONS, "image")
    if kind == "tiff":
        return _with_voxel_size(_read_tiff_image(path, channel_axis), path)
    if kind == "zarr":
        return _with_voxel_size(_read_zarr_image(path, channel_axis), path)
    if kind == "png":
        array = _read_imageio(path)
        if channel_axis is not None:
            return _image_from_plain(array, channel_axis, str(path))
        return _image_from_axes(array, "YXS"[: array.ndim], str(path))
    array = _load_npy(path)
    return _image_from_plain(array, channel_axis, str(path))


def read_labels(path):
    """Read a label image of integer class ids.

    Parameters
    ----------
    path : str or Path
        A ``.npy``, ``.tif``/``.tiff`` or single-channel ``.png`` file, a zarr array, a label
        image written by :func:`~napari_wsseg.io.writers.write_labels` (``X.zarr``), an OME-Zarr
        image with exactly one label image under ``labels/``, or a label image path
        ``X.zarr/labels/<name>``.

    Returns
    -------
    (Y, X) or (Z, Y, X) integer array
        numpy (memory-mapped for ``.npy``) or, for zarr, a lazy dask array. Boolean masks are
        returned as uint8.

    Raises
    ------
    ImageFormatError
        Missing file, unknown extension, unreadable file, wrong number of axes or a non-integer
        dtype.

    Examples
    --------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "labels.npy"
    >>> np.save(path, np.array([[0, 1], [2, 1]], dtype=np.uint8))
    >>> read_labels(path).tolist()
    [[0, 1], [2, 1]]
    """
    path = _existing_path(path, "labels")
    kind = _file_kind(path, LABEL_READ_EXTENSIONS, "labels")
    if kind == "tiff":
        array = _read_tiff_array(path)[0]
    elif kind == "png":
        array = _read_imageio(path)
        if array.ndim != 2:
            raise ImageFormatError(
                f"labels {path}: PNG of shape {array.shape} has colour channels; "
                "save labels as a single-channel (grey) image of class ids"
            )
    elif kind == "zarr":
        array = _open_zarr_labels(path)
    else:
        array = _load_npy(path)
    return _check_labels(array, str(path))


def read_label_classes(path):
    """Classes (names and colours) stored in an OME-Zarr label image, or None when it has none.

    Label value ``k`` is class ``k``; values without a colour or name get the defaults of
    :func:`~napari_wsseg.annotations.model.default_classes`.

    Examples
    --------
    >>> import tempfile
    >>> from napari_wsseg.annotations.model import ClassInfo
    >>> from napari_wsseg.io.writers import write_labels
    >>> path = Path(tempfile.mkdtemp()) / "pred.zarr"
    >>> _ = write_labels(path, np.zeros((4, 4), np.uint8), classes=[ClassInfo("bg", "#000000")])
    >>> read_label_classes(path)
    [ClassInfo(name='bg', color='#000000')]
    """
    from ..annotations.model import ClassInfo, default_classes

    path = _existing_path(path, "labels")
    if not is_zarr_path(path):
        return None
    node = _open_zarr(path)
    image_label = ome_attrs(node).get("image-label", {})
    colors = {c["label-value"]: c["rgba"] for c in image_label.get("colors", [])}
    names = {p["label-value"]: p.get("name") for p in image_label.get("properties", [])}
    values = set(colors) | set(names)
    if not values:
        return None
    classes = default_classes(max(values) + 1)
    for k, default in enumerate(classes):
        rgba = colors.get(k)
        color = "#" + "".join(f"{int(v):02x}" for v in rgba[:3]) if rgba else default.color
        classes[k] = ClassInfo(names.get(k) or default.name, color)
    return classes


# --- paths and formats --------------------------------------------------------------------------


def _existing_path(path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ImageFormatError(f"{what} file {path} does not exist; check the path")
    return path


def is_zarr_path(path: Path) -> bool:
    """True for a ``.zarr`` path or a folder that holds zarr (v2 or v3) metadata."""
    if path.suffix.lower() == ".zarr":
        return True
    return path.is_dir() and any((path / marker).exists() for marker in _ZARR_MARKERS)


def _file_kind(path: Path, extensions: tuple[str, ...], what: str) -> str:
    if is_zarr_path(path):
        return "zarr"
    suffix = path.suffix.lower()
    if suffix not in extensions:
        raise ImageFormatError(
            f"{what} file {path}: unknown extension '{suffix}'; supported: {', '.join(extensions)}"
        )
    return {".tif": "tiff", ".tiff": "tiff", ".png": "png", ".jpg": "png", ".jpeg": "png"}.get(
        suffix, "npy"
    )


def _unreadable(path: Path, kind: str, exc: Exception) -> ImageFormatError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return ImageFormatError(
        f"cannot read {path} as {kind}: {detail}; check that the file is complete"
    )


# --- file readers -------------------------------------------------------------------------------


def _load_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise _unreadable(path, "a .npy array", exc) from exc


def _read_imageio(path: Path) -> np.ndarray:
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(path, plugin="pillow"))
    except Exception as exc:
        raise _unreadable(path, "a PNG/JPEG image", exc) from exc


def _read_tiff_array(path: Path, lazy: bool | None = None):
    """``(array, axes)`` of the first TIFF series; lazy (dask) when ``lazy`` or when it is large."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series, n_series = tif.series[0], len(tif.series)
            axes, shape = series.axes, series.shape
            planar_rgb = axes.startswith("S") and shape[0] in (3, 4)
            lazy = series.nbytes > LAZY_TIFF_BYTES if lazy is None else lazy
            array = None if lazy else series.asarray()
        if lazy:
            array = _open_tiff_lazily(path)
    except Exception as exc:
        raise _unreadable(path, "a TIFF", exc) from exc
    if n_series > 1:
        warnings.warn(
            f"TIFF {path} holds {n_series} image series; reading only the first, {axes} {shape}; "
            "save the stack as one series to read it all",
            stacklevel=4,
        )
    if planar_rgb:
        # tifffile itself writes any (3|4, Y, X) uint8 array as planar RGB(A) unless told otherwise
        warnings.warn(
            f"TIFF {path} says its {shape[0]} planes are colour samples (planar RGB), so "
            f"it is read as one {shape[0]}-channel slice; if it is a stack of {shape[0]} "
            "slices, save it with photometric='minisblack' (tifffile) or axes ZYX",
            stacklevel=4,
        )
    return array, axes


def _open_tiff_lazily(path: Path):
    import dask.array as da
    import tifffile
    import zarr

    store = tifffile.imread(path, aszarr=True, series=0, level=0)
    return da.from_zarr(zarr.open_array(store, mode="r"))


def _read_tiff_image(path: Path, channel_axis: int | None, lazy: bool | None = None) -> Image:
    array, axes = _read_tiff_array(path, lazy)
    if channel_axis is not None:
        return _image_from_plain(array, channel_axis, str(path))
    return _image_from_axes(array, axes, str(path))


def read_tiff_lazily(path) -> Image:
    """Open a TIFF as an :class:`Image` backed by a dask array, whatever its size."""
    path = _existing_path(path, "image")
    _file_kind(path, (".tif", ".tiff"), "TIFF")
    return _with_voxel_size(_read_tiff_image(path, None, lazy=True), path)


def _with_voxel_size(image: Image, path: Path) -> Image:
    """``image`` with the voxel size of a volume from ``path``'s metadata (2D images: None)."""
    from .voxel_size import voxel_size_from_metadata

    if not image.was_2d:
        image.voxel_size_zyx = voxel_size_from_metadata(path, 3)
    return image


# --- axes ---------------------------------------------------------------------------------------


def _axis_role(letter: str) -> str:
    if letter in "YX":
        return "space"
    return "channel" if letter in "CS" else "stack"


def _image_from_axes(array, axes: str, source: str) -> Image:
    """Arrange an array with known axis letters (TIFF style, upper case) as ``(Z, Y, X, C)``."""
    axes = axes.upper()
    if len(axes) != array.ndim or "Y" not in axes or "X" not in axes:
        raise ImageFormatError(
            f"image {source}: axes '{axes}' do not describe shape {tuple(array.shape)} with Y "
            "and X; pass channel_axis= to read it without axis metadata"
        )
    keep = [i for i, a in enumerate(axes) if _axis_role(a) != "stack" or array.shape[i] > 1]
    array = array[tuple(slice(None) if i in keep else 0 for i in range(array.ndim))]
    axes = "".join(axes[i] for i in keep)
    stack = [a for a in axes if _axis_role(a) == "stack"]
    channels = [a for a in axes if _axis_role(a) == "channel"]
    if len(stack) > 1 or len(channels) > 1:
        raise ImageFormatError(
            f"image {source}: axes '{axes}' with shape {tuple(array.shape)} have more than one "
            "stack or channel axis; save one (Z, Y, X[, C]) volume per file"
        )
    order = [axes.index(a) for a in (*stack, "Y", "X", *channels)]
    array = _transpose(array, order)
    if channels and axes[order[-1]] == "S" and array.shape[-1] in (2, 4):
        array = array[..., :-1]  # drop the alpha sample of RGBA / grey+alpha
    image = as_image(array, channel_axis=-1 if channels else None, source=source)
    return _with_supported_dtype(image)


def _image_from_plain(array, channel_axis: int | None, source: str) -> Image:
    """Arrange an array without axis metadata following the documented ndim rule."""
    shape = tuple(array.shape)
    if channel_axis is not None:
        if not -array.ndim <= channel_axis < array.ndim:
            raise ImageFormatError(
                f"image {source}: channel_axis={channel_axis} is out of range for shape {shape}; "
                f"use an axis between {-array.ndim} and {array.ndim - 1}"
            )
        return _with_supported_dtype(as_image(array, channel_axis=channel_axis, source=source))
    if array.ndim == 3 and shape[-1] <= 4 < min(shape[:2]):
        warnings.warn(
            f"image {source}: shape {shape} is read as (Z, Y, X) with {shape[-1]} pixels in x; "
            "if the last axis holds channels pass channel_axis=-1",
            stacklevel=3,
        )
    if array.ndim == 4 and shape[-1] > 4:
        raise ImageFormatError(
            f"image {source}: cannot tell the channel axis of shape {shape}; "
            "pass channel_axis= (e.g. channel_axis=1 for (Z, C, Y, X))"
        )
    if array.ndim not in (2, 3, 4):
        raise ImageFormatError(
            f"image {source}: shape {shape} has {array.ndim} axes; expected (Y, X), (Z, Y, X) or "
            "(Z, Y, X, C)"
        )
    image = as_image(array, channel_axis=-1 if array.ndim == 4 else None, source=source)
    return _with_supported_dtype(image)


def _transpose(array, order: list[int]):
    if list(order) == list(range(array.ndim)):
        return array
    return array.transpose(order)


def _with_supported_dtype(image: Image) -> Image:
    dtype = image.dtype
    if dtype in NATIVE_DTYPES or (dtype.kind in "iu"):
        return image
    if dtype.kind == "f":
        image.data = _as_float32(image.data)
        return image
    if dtype.kind == "b":
        hint = "read it with read_labels"
    else:
        hint = "convert it to uint8, uint16 or float32"
    raise ImageFormatError(f"image {image.name}: unsupported dtype {dtype}; {hint}")


def _as_float32(data):
    if isinstance(data, np.ndarray) and not isinstance(data, np.memmap):
        return data.astype(np.float32)
    import dask.array as da

    lazy = data if isinstance(data, da.Array) else da.from_array(data, chunks=(1, -1, -1, -1))
    return lazy.astype(np.float32)


# --- zarr / OME-Zarr ----------------------------------------------------------------------------


def ome_attrs(node) -> dict:
    """OME-NGFF attributes of a zarr node: under ``"ome"`` (NGFF 0.5) or top level (0.4)."""
    attrs = node.attrs.asdict()
    return attrs.get("ome", attrs)


def _open_zarr(path: Path):
    import zarr

    try:
        return zarr.open(str(path), mode="r")
    except Exception as exc:
        raise _unreadable(path, "zarr", exc) from exc


def _multiscale_level0(group, path: Path):
    """``(level-0 zarr array, axis names or None)`` of an OME-Zarr multiscales group."""
    multiscale = ome_attrs(group)["multiscales"][0]
    level0 = multiscale["datasets"][0]["path"]
    axes = multiscale.get("axes")
    names = None if axes is None else [a["name"] if isinstance(a, dict) else a for a in axes]
    try:
        return group[level0], names
    except KeyError as exc:
        raise ImageFormatError(
            f"OME-Zarr {path}: level-0 array '{level0}' listed in its multiscales is missing; "
            "the store is incomplete, write it again"
        ) from exc


def _single_array(group, path: Path):
    import zarr

    names = sorted(name for name, node in group.members() if isinstance(node, zarr.Array))
    if "0" in names:
        return group["0"]
    if len(names) == 1:
        return group[names[0]]
    raise ImageFormatError(
        f"zarr group {path} holds arrays {names or 'none'}; point to one array, "
        f"e.g. {path / 'ARRAY'}"
    )


def _dask(zarr_array):
    import dask.array as da

    return da.from_zarr(zarr_array)


def _read_zarr_image(path: Path, channel_axis: int | None) -> Image:
    import zarr

    node = _open_zarr(path)
    axes = None
    if isinstance(node, zarr.Group):
        if "multiscales" in ome_attrs(node):
            node, axes = _multiscale_level0(node, path)
        else:
            node = _single_array(node, path)
    array = _dask(node)
    if channel_axis is not None or axes is None:
        return _image_from_plain(array, channel_axis, str(path))
    array, axes = _drop_time(array, axes, str(path))
    unknown = set(axes) - set("czyx")
    if unknown:
        raise ImageFormatError(
            f"OME-Zarr {path}: unsupported axes {sorted(unknown)} in {axes}; expected t, c, z, y, x"
        )
    return _image_from_axes(array, "".join(axes), str(path))


def _drop_time(array, axes: list[str], source: str):
    axes = [a.lower() for a in axes]
    if "t" not in axes:
        return array, axes
    t = axes.index("t")
    if array.shape[t] != 1:
        raise ImageFormatError(
            f"OME-Zarr {source}: {array.shape[t]} time points in shape {tuple(array.shape)}; "
            "wsseg segments one time point, save one as its own OME-Zarr"
        )
    index = tuple(0 if i == t else slice(None) for i in range(array.ndim))
    return array[index], axes[:t] + axes[t + 1 :]


def _open_zarr_labels(path: Path):
    import zarr

    node = _open_zarr(path)
    if isinstance(node, zarr.Array):
        return _dask(node)
    attrs = ome_attrs(node)
    if "image-label" not in attrs and "labels" in node:
        node, path = _only_label_group(node["labels"], path)
        attrs = ome_attrs(node)
    if "multiscales" not in attrs:
        return _dask(_single_array(node, path))
    level0, axes = _multiscale_level0(node, path)
    array = _dask(level0)
    if axes is None:
        return array
    array, axes = _drop_time(array, axes, str(path))
    if "c" in axes and array.shape[axes.index("c")] == 1:
        array = array[tuple(0 if a == "c" else slice(None) for a in axes)]
    return array


def _only_label_group(labels_group, path: Path):
    names = list(ome_attrs(labels_group).get("labels", []))
    if len(names) != 1:
        raise ImageFormatError(
            f"OME-Zarr {path} holds label images {names}; read one with {path / 'labels' / 'NAME'}"
        )
    return labels_group[names[0]], path / "labels" / names[0]


def _check_labels(array, source: str):
    while array.ndim > 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim not in (2, 3):
        raise ImageFormatError(
            f"labels {source}: shape {tuple(array.shape)} is not (Y, X) or (Z, Y, X); "
            "save one single-channel label image per file"
        )
    dtype = np.dtype(array.dtype)
    if dtype.kind == "b":
        return array.astype(np.uint8)
    if dtype.kind not in "iu":
        raise ImageFormatError(
            f"labels {source}: dtype {dtype} is not an integer type; save class ids as uint8 "
            "or uint16"
        )
    return array
