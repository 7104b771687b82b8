"""The physical size of a voxel, in micrometres: parsed, checked and read from metadata. No Qt.

The one place that knows voxel sizes. Sources: an explicit value (``--voxel-size Z,Y,X``), the
OME-Zarr multiscales ``scale`` transformation of level 0 (with the axes' units), and TIFF
metadata: OME-XML ``PhysicalSize*``, ImageJ ``spacing``/``unit`` with the X/Y resolution tags, or
the resolution tags with a centimetre or inch ``ResolutionUnit``. Without any of them the size is
unknown (None) and nothing guesses one.
"""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import WssegError

#: Micrometres per unit, for the unit names OME-NGFF, OME-XML and ImageJ write.
UM_PER_UNIT = {
    "micrometer": 1.0,
    "micrometre": 1.0,
    "micron": 1.0,
    "um": 1.0,
    "µm": 1.0,
    "μm": 1.0,
    "\\u00b5m": 1.0,
    "nanometer": 1e-3,
    "nanometre": 1e-3,
    "nm": 1e-3,
    "millimeter": 1e3,
    "millimetre": 1e3,
    "mm": 1e3,
    "centimeter": 1e4,
    "centimetre": 1e4,
    "cm": 1e4,
    "angstrom": 1e-4,
    "å": 1e-4,
    "meter": 1e6,
    "metre": 1e6,
    "m": 1e6,
}
#: Micrometres per TIFF ``ResolutionUnit`` (2: inch, 3: centimetre; 1: none).
_UM_PER_RESOLUTION_UNIT = {2: 25400.0, 3: 10000.0}
#: A voxel size is near-isotropic when its largest side is at most this times its smallest.
NEAR_ISOTROPIC_RATIO = 1.5


def check_voxel_size(values, ndim: int = 3, *, source: str = "voxel size") -> tuple[float, ...]:
    """Return ``values`` as a tuple of ``ndim`` positive finite micrometre values.

    Parameters
    ----------
    values : sequence of float
        ``Z,Y,X`` (``ndim`` 3) or ``Y,X`` (``ndim`` 2) in micrometres.
    ndim : int, default 3
    source : str, default "voxel size"
        Names the input in the message (``--voxel-size``, a project file).

    Raises
    ------
    WssegError
        When there are not ``ndim`` numbers or one is not positive and finite.

    Examples
    --------
    >>> check_voxel_size([0.05, 0.004, 0.004])
    (0.05, 0.004, 0.004)
    >>> check_voxel_size((1, 0, 1))
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.WssegError: voxel size (1, 0, 1) must be three positive numbers Z,Y,X in
    micrometres; e.g. 0.05,0.004,0.004
    """
    axes = "Z,Y,X" if ndim == 3 else "Y,X"
    count = {2: "two", 3: "three"}.get(ndim, str(ndim))
    problem = (
        f"{source} {_short(values)} must be {count} positive numbers {axes} in "
        f"micrometres; e.g. {'0.05,' if ndim == 3 else ''}0.004,0.004"
    )
    try:
        sizes = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise WssegError(problem) from None
    if len(sizes) != ndim or not all(math.isfinite(v) and v > 0 for v in sizes):
        raise WssegError(problem)
    return sizes


def parse_voxel_size(
    text: str, ndim: int = 3, *, source: str = "--voxel-size"
) -> tuple[float, ...]:
    """Read ``Z,Y,X`` (or ``Y,X`` for 2D) micrometres from text; one number means isotropic.

    Raises
    ------
    WssegError
        Naming ``source`` when the text is not ``ndim`` (or one) positive finite numbers.

    Examples
    --------
    >>> parse_voxel_size("0.01,0.005,0.005")
    (0.01, 0.005, 0.005)
    >>> parse_voxel_size("0.005", 2)
    (0.005, 0.005)
    """
    text = str(text)
    axes = "Z,Y,X" if ndim == 3 else "Y,X"
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise WssegError(
            f"{source} {_short(text)} is not numbers; write {axes} in micrometres, "
            f"e.g. {'0.05,' if ndim == 3 else ''}0.004,0.004"
        ) from None
    if len(values) == 1:
        values = values * ndim
    return check_voxel_size(values, ndim, source=source)


def anisotropy(voxel_size_zyx) -> float:
    """Largest voxel side over smallest: 1.0 for isotropic voxels.

    Examples
    --------
    >>> anisotropy((0.05, 0.005, 0.005))
    10.0
    """
    sizes = check_voxel_size(voxel_size_zyx)
    return max(sizes) / min(sizes)


def is_near_isotropic(voxel_size_zyx) -> bool:
    """True when the voxel size is known and :func:`anisotropy` is at most
    :data:`NEAR_ISOTROPIC_RATIO`; an unknown size (None) is not near-isotropic.

    Examples
    --------
    >>> is_near_isotropic((0.01, 0.008, 0.008)), is_near_isotropic(None)
    (True, False)
    """
    return voxel_size_zyx is not None and anisotropy(voxel_size_zyx) <= NEAR_ISOTROPIC_RATIO


def voxel_size_from_metadata(path, ndim: int = 3) -> tuple[float, ...] | None:
    """Voxel size in µm stored with ``path`` (OME-Zarr or TIFF), or None when it has none.

    Only the last ``ndim`` spatial axes are returned (Z, Y, X or Y, X). Unreadable or
    inconsistent metadata counts as none (reading the pixels reports a broken file).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> path = Path(tempfile.mkdtemp()) / "stack.tif"
    >>> tifffile.imwrite(path, np.zeros((2, 4, 4), np.uint8), imagej=True,
    ...                  resolution=(1 / 0.004, 1 / 0.004),
    ...                  metadata={"spacing": 0.05, "unit": "um"})
    >>> tuple(round(v, 6) for v in voxel_size_from_metadata(path))
    (0.05, 0.004, 0.004)
    """
    path = Path(path)
    try:
        if (
            path.suffix.lower() == ".zarr"
            or (path / "zarr.json").exists()
            or (path / ".zattrs").exists()
        ):
            sizes = _from_omezarr(path)
        elif path.suffix.lower() in (".tif", ".tiff"):
            sizes = _from_tiff(path)
        else:
            return None
    except (
        OSError,
        KeyError,
        IndexError,
        TypeError,
        ValueError,
        AttributeError,
        ZeroDivisionError,
    ):
        return None
    if sizes is None or len(sizes) < ndim:
        return None
    sizes = tuple(sizes[-ndim:])
    if not all(math.isfinite(v) and v > 0 for v in sizes):
        return None
    return sizes


def _from_omezarr(path: Path) -> tuple[float, ...] | None:
    import zarr

    from .readers import ome_attrs

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
    transforms = list(multiscale.get("coordinateTransformations") or [])
    level0 = multiscale["datasets"][0].get("coordinateTransformations", [])
    scale = _scale_of(level0)
    if scale is None or not axes:
        return None
    overall = _scale_of(transforms)  # a multiscale-wide scale multiplies the level's
    if overall is not None and len(overall) == len(scale):
        scale = [a * b for a, b in zip(scale, overall)]
    sizes = []
    for axis, value in zip(axes, scale):
        if isinstance(axis, dict) and axis.get("type") == "space":
            factor = UM_PER_UNIT.get(str(axis.get("unit", "")).lower())
            if factor is None:
                return None  # no unit: the scale is in unknown units
            sizes.append(float(value) * factor)
    return tuple(sizes)


def _scale_of(transforms) -> list[float] | None:
    scale = next((t.get("scale") for t in transforms if t.get("type") == "scale"), None)
    return None if scale is None else [float(v) for v in scale]


def _from_tiff(path: Path) -> tuple[float, ...] | None:
    import tifffile

    with tifffile.TiffFile(str(path)) as tif:
        if tif.ome_metadata:
            sizes = _from_ome_xml(tif.ome_metadata)
            if sizes is not None:
                return sizes
        tags = tif.pages[0].tags
        yx = _yx_from_resolution(tags, tif.imagej_metadata)
        if yx is None:
            return None
        ij = tif.imagej_metadata or {}
        if ij.get("spacing") is not None:
            factor = UM_PER_UNIT.get(str(ij.get("unit", "")).lower())
            return (factor * float(ij["spacing"]), *yx)
        return yx


def _yx_from_resolution(tags, imagej: dict | None) -> tuple[float, float] | None:
    """``(y, x)`` µm per pixel from the resolution tags: ImageJ's unit, else ``ResolutionUnit``."""
    if "XResolution" not in tags or "YResolution" not in tags:
        return None
    if imagej is not None:
        factor = UM_PER_UNIT.get(str(imagej.get("unit", "")).lower())
    else:
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
        factor = _UM_PER_RESOLUTION_UNIT.get(int(unit))
    if factor is None:
        return None
    x_num, x_den = tags["XResolution"].value
    y_num, y_den = tags["YResolution"].value
    if not x_num or not y_num:
        return None
    return (factor * y_den / y_num, factor * x_den / x_num)


def _from_ome_xml(xml: str) -> tuple[float, ...] | None:
    """``(z, y, x)`` or ``(y, x)`` µm from the first OME-XML ``Pixels`` element."""
    import xml.etree.ElementTree as ElementTree

    root = ElementTree.fromstring(xml)
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None
    sizes = []
    for axis in ("Z", "Y", "X"):
        value = pixels.get(f"PhysicalSize{axis}")
        if value is None:
            if axis == "Z":
                continue
            return None
        factor = UM_PER_UNIT.get(pixels.get(f"PhysicalSize{axis}Unit", "µm").lower())
        if factor is None:
            return None
        sizes.append(float(value) * factor)
    return tuple(sizes)


def _short(value, limit: int = 40) -> str:
    text = repr(tuple(value)) if isinstance(value, list) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
