"""The in-memory image representation every method works on. Imports no Qt.

An :class:`Image` always holds its voxels as ``(Z, Y, X, C)``: a 2D image is one slice
(``Z == 1``, ``was_2d`` True), a grey image has ``C == 1``. ``data`` may be a numpy array, a
memory map or a lazy dask array (zarr input): slices are read on demand with :meth:`Image.slice`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ImageFormatError


@dataclass
class Image:
    """A 2D image or 3D volume with an explicit channel axis.

    Attributes
    ----------
    data : (Z, Y, X, C) array-like
        numpy array, memory map or dask array; never loaded whole by the library unless small.
    was_2d : bool
        True when the source was a single 2D image; outputs are then written as ``(Y, X)``.
    source : str or None
        Where the image came from (a path), for messages.
    voxel_size_zyx : (float, float, float) or None
        Physical voxel size in micrometres, ``(Z, Y, X)``; None when unknown (and for 2D images).
        Readers take it from file metadata; checked at construction.
    """

    data: Any
    was_2d: bool = False
    source: str | None = None
    voxel_size_zyx: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if len(self.data.shape) != 4:
            raise ImageFormatError(
                f"image {self.name}: expected (Z, Y, X, C) data, got shape "
                f"{tuple(self.data.shape)}; build it with as_image(array, channel_axis=...)"
            )
        if self.voxel_size_zyx is not None:
            from .voxel_size import check_voxel_size

            self.voxel_size_zyx = check_voxel_size(
                self.voxel_size_zyx, 3, source=f"voxel size of image {self.name}"
            )

    @property
    def name(self) -> str:
        return self.source or "<array>"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Spatial shape ``(Z, Y, X)``."""
        return tuple(int(s) for s in self.data.shape[:3])

    @property
    def n_slices(self) -> int:
        return int(self.data.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.data.shape[3])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.data.dtype)

    def slice(self, z: int) -> np.ndarray:
        """Slice ``z`` as a numpy ``(Y, X, C)`` array (read from disk for lazy data)."""
        return np.asarray(self.data[int(z)])

    def output_shape(self) -> tuple[int, ...]:
        """Shape of a label image for this image: ``(Y, X)`` for 2D input, else ``(Z, Y, X)``."""
        return self.shape[1:] if self.was_2d else self.shape


def as_image(array, *, channel_axis: int | None = None, source: str | None = None) -> Image:
    """Wrap an array as an :class:`Image` following the axis convention.

    Parameters
    ----------
    array : array-like
        ``(Y, X)`` or ``(Z, Y, X)`` without a channel axis; ``(Y, X, C)`` or ``(Z, Y, X, C)`` (or
        the channel anywhere, given by ``channel_axis``) with one.
    channel_axis : int or None, default None
        Position of the channel axis in ``array``; None means the array has none.
    source : str, optional
        Name used in messages.

    Examples
    --------
    >>> as_image(np.zeros((5, 6))).data.shape
    (1, 5, 6, 1)
    >>> as_image(np.zeros((3, 5, 6))).shape
    (3, 5, 6)
    >>> as_image(np.zeros((5, 6, 3)), channel_axis=-1).n_channels
    3
    """
    ndim = len(array.shape)
    spatial = ndim - (0 if channel_axis is None else 1)
    name = source or "<array>"
    if spatial not in (2, 3):
        raise ImageFormatError(
            f"image {name}: shape {tuple(array.shape)} has {spatial} spatial axes; expected (Y, X) "
            "or (Z, Y, X) plus an optional channel axis"
        )
    if channel_axis is None:
        array = array[..., None]
    else:
        array = _moveaxis(array, channel_axis, -1)
    was_2d = spatial == 2
    if was_2d:
        array = array[None]
    return Image(array, was_2d=was_2d, source=source)


def _moveaxis(array, source: int, destination: int):
    if isinstance(array, np.ndarray):
        return np.moveaxis(array, source, destination)
    import dask.array as da

    return da.moveaxis(array, source, destination)
