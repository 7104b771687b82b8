"""The physical size of a voxel, from a flag or from file metadata, in micrometres. Imports no Qt.

Sources, in order: an explicit value (``--voxel-size Z,Y,X``), the OME-Zarr multiscales scale of
level 0 (with the axes' units), the ImageJ/OME metadata of a TIFF (``spacing`` and the X/Y
resolution tags). Without any of them the size is unknown and measurements stay in voxels.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import WssegError

#: Micrometres per unit, for the unit names OME-NGFF and ImageJ write.
_UM_PER_UNIT = {
    "micrometer": 1.0, "micrometre": 1.0, "micron": 1.0, "um": 1.0, "µm": 1.0, "\\u00b5m": 1.0,
    "nanometer": 1e-3, "nanometre": 1e-3, "nm": 1e-3,
    "millimeter": 1e3, "millimetre": 1e3, "mm": 1e3,
    "angstrom": 1e-4, "meter": 1e6, "metre": 1e6, "m": 1e6,
}


def parse_voxel_size(text: str, ndim: int) -> tuple[float, ...]:
    """Read ``Z,Y,X`` (or ``Y,X`` for 2D) micrometres from a command-line value.

    Examples
    --------
    >>> parse_voxel_size("0.01,0.005,0.005", 3)
    (0.01, 0.005, 0.005)
    >>> parse_voxel_size("0.005", 2)
    (0.005, 0.005)
    """
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise WssegError(f"--voxel-size '{text}' is not numbers; write Z,Y,X in micrometres, "
                         "e.g. 0.01,0.005,0.005") from None
    if len(values) == 1:
        values = values * ndim
    if len(values) != ndim or min(values) <= 0:
        axes = "Z,Y,X" if ndim == 3 else "Y,X"
        raise WssegError(f"--voxel-size '{text}' must be {ndim} positive micrometre values "
                         f"({axes}) for {ndim}D labels")
    return values


def voxel_size_from_metadata(path, ndim: int) -> tuple[float, ...] | None:
    """Voxel size in µm stored with ``path`` (OME-Zarr or TIFF), or None when it has none.

    Only the last ``ndim`` spatial axes are returned (Z, Y, X or Y, X).
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".zarr" or (path / "zarr.json").exists():
            return _from_omezarr(path, ndim)
        if path.suffix.lower() in (".tif", ".tiff"):
            return _from_tiff(path, ndim)
    except (OSError, KeyError, IndexError, TypeError, ValueError):
        return None
    return None


def _from_omezarr(path: Path, ndim: int) -> tuple[float, ...] | None:
    import zarr

    from ..io.readers import ome_attrs

    node = zarr.open(str(path), mode="r")
    if not isinstance(node, zarr.Group):
        return None
    attrs = ome_attrs(node)
    if "multiscales" not in attrs and "labels" in node:
        names = ome_attrs(node["labels"]).get("labels", [])
        if len(names) == 1:
            attrs = ome_attrs(node["labels"][names[0]])
    if "multiscales" not in attrs:
        return None
    multiscale = attrs["multiscales"][0]
    axes = multiscale.get("axes") or []
    scale = next((t["scale"] for t in multiscale["datasets"][0].get("coordinateTransformations", [])
                  if t.get("type") == "scale"), None)
    if scale is None or not axes:
        return None
    sizes = []
    for axis, value in zip(axes, scale):
        if isinstance(axis, dict) and axis.get("type") == "space":
            factor = _UM_PER_UNIT.get(str(axis.get("unit", "")).lower())
            if factor is None:
                return None  # no unit: the scale is in unknown units
            sizes.append(float(value) * factor)
    if len(sizes) < ndim:
        return None
    return tuple(sizes[-ndim:])


def _from_tiff(path: Path, ndim: int) -> tuple[float, ...] | None:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags or "YResolution" not in tags:
            return None
        ij = tif.imagej_metadata or {}
        factor = _UM_PER_UNIT.get(str(ij.get("unit", "")).lower())
        if factor is None:
            return None
        x_num, x_den = tags["XResolution"].value
        y_num, y_den = tags["YResolution"].value
        if not x_num or not y_num:
            return None
        yx = (factor * y_den / y_num, factor * x_den / x_num)
        if ndim == 2:
            return yx
        spacing = ij.get("spacing")
        if spacing is None:
            return None
        return (factor * float(spacing), *yx)
