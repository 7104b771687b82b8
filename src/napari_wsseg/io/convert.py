"""Convert TIFF stacks (possibly larger than memory) to chunked OME-Zarr images. Imports no Qt.

OME-Zarr volumes are read lazily, chunk by chunk, so a big TIFF is converted once (``wsseg
import``) and then segmented and viewed without loading it. The output is NGFF 0.5 (zarr format 3):
arrays ``0`` (full resolution), ``1``, ``2``... (2x2 averaged in y/x per level), axes ``zyx``,
``czyx`` for multi-channel stacks, ``yx``/``cyx`` for single images.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from ..errors import ImageFormatError
from ..progress import ProgressEvent, is_cancelled, report
from .readers import read_tiff_lazily
from .writers import pyramid_levels, write_pyramid

#: Default zarr chunks ``(z, y, x)`` of imported images: shallow in z because segmentation and
#: napari read one slice at a time, and a chunk is decompressed whole; ~2 MB per uint8 chunk.
DEFAULT_IMAGE_CHUNKS = (8, 512, 512)


class _Cancelled(Exception):
    """Internal: the cancel flag was set during the pyramid."""


def import_tiff_to_omezarr(
    src, dst, *, chunks=DEFAULT_IMAGE_CHUNKS, progress=None, cancel=None
) -> Path | None:
    """Copy a TIFF image or stack into a new chunked OME-Zarr image with a pyramid.

    The TIFF is read ``chunks[0]`` slices at a time through tifffile's zarr interface, so stacks
    larger than memory convert with memory for one batch of slices.

    Parameters
    ----------
    src : str or Path
        ``.tif``/``.tiff`` file; axes as for :func:`~napari_wsseg.io.readers.read_image`.
    dst : str or Path
        New ``.zarr`` folder; must not exist yet.
    chunks : (3,) tuple of int, default (8, 512, 512)
        zarr chunk shape in ``(z, y, x)`` (channels are chunked one by one); None means the
        default.
    progress : callable, optional
        Receives a :class:`~napari_wsseg.progress.ProgressEvent` after each batch of slices
        and each pyramid level; ``total`` is the number of slices plus the number of levels.
    cancel : threading.Event, optional
        Checked between batches and levels; when set, the partial output is deleted.

    Returns
    -------
    Path or None
        ``dst``, or None when cancelled.

    Raises
    ------
    ImageFormatError
        ``src`` missing or not a readable TIFF, ``dst`` exists or does not end in ``.zarr``,
        bad chunks.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> folder = Path(tempfile.mkdtemp())
    >>> stack = np.zeros((3, 8, 8), np.uint8)
    >>> tifffile.imwrite(folder / "stack.tif", stack, photometric="minisblack")
    >>> events = []
    >>> out = import_tiff_to_omezarr(
    ...     folder / "stack.tif", folder / "stack.zarr", progress=events.append
    ... )
    >>> out.name, [e.done for e in events]
    ('stack.zarr', [3])
    """
    import zarr

    src, dst = Path(src).expanduser(), Path(dst).expanduser()
    image = read_tiff_lazily(src)
    _check_destination(dst)
    chunks = _check_chunks(chunks)
    channels = image.n_channels > 1
    axes = ("c" if channels else "") + ("yx" if image.was_2d else "zyx")
    n_levels = pyramid_levels(image.shape[1:])
    total = image.n_slices + n_levels
    group = zarr.open_group(str(dst), mode="w-", zarr_format=3)
    try:
        level0 = group.create_array(
            "0",
            shape=_layout_shape(image, channels),
            dtype=image.dtype,
            fill_value=0,
            chunks=_layout_chunks(image, channels, chunks),
            dimension_names=list(axes),
        )
        _copy_slices(image, level0, chunks[0], channels, progress, cancel, total)

        def _on_level(level: int, n: int) -> None:
            message = f"pyramid level {level}/{n}"
            report(progress, ProgressEvent(image.n_slices + level, total, message))
            if is_cancelled(cancel):
                raise _Cancelled

        write_pyramid(group, axes, name=src.stem, smooth=True, on_level=_on_level)
    except _Cancelled:
        shutil.rmtree(dst, ignore_errors=True)
        return None
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)  # never leave a half-written image behind
        raise
    return dst


def _check_destination(dst: Path) -> None:
    if dst.suffix.lower() != ".zarr":
        raise ImageFormatError(
            f"OME-Zarr output {dst}: name must end in .zarr; e.g. {dst.stem}.zarr"
        )
    if dst.exists():
        raise ImageFormatError(
            f"OME-Zarr output {dst} already exists; delete it or pick another path"
        )


def _check_chunks(chunks) -> tuple[int, int, int]:
    if chunks is None:
        return DEFAULT_IMAGE_CHUNKS
    values = tuple(int(c) for c in chunks)
    if len(values) != 3 or min(values) < 1:
        raise ImageFormatError(
            f"chunks {tuple(chunks)} are not three positive sizes (z, y, x); e.g. (8, 512, 512)"
        )
    return values


def _layout_shape(image, channels: bool) -> tuple[int, ...]:
    spatial = image.shape[1:] if image.was_2d else image.shape
    return ((image.n_channels,) if channels else ()) + tuple(spatial)


def _layout_chunks(image, channels: bool, chunks) -> tuple[int, ...]:
    spatial = chunks[1:] if image.was_2d else chunks
    full = ((1,) if channels else ()) + tuple(spatial)
    return tuple(min(c, s) for c, s in zip(full, _layout_shape(image, channels)))


def _copy_slices(image, level0, batch: int, channels: bool, progress, cancel, total: int) -> None:
    for z0 in range(0, image.n_slices, batch):
        if is_cancelled(cancel):
            raise _Cancelled
        z1 = min(z0 + batch, image.n_slices)
        block = np.asarray(image.data[z0:z1])  # (z, Y, X, C)
        block = np.moveaxis(block, -1, 0) if channels else block[..., 0]
        if image.was_2d:
            level0[...] = block[:, 0] if channels else block[0]
        elif channels:
            level0[:, z0:z1] = block
        else:
            level0[z0:z1] = block
        report(progress, ProgressEvent(z1, total, f"copied slices {z1}/{image.n_slices}"))
