"""Images in, labels out: reading images and label images, writing labels, TIFF to OME-Zarr.

Imports no Qt. Heavy readers (tifffile, imageio, zarr, dask, ome-zarr) are imported inside the
functions that use them. See ``docs/io.md``.
"""

from .convert import import_tiff_to_omezarr
from .image import Image, as_image
from .normalize import Normalization
from .readers import read_image, read_label_classes, read_labels
from .writers import create_labels_zarr, finalize_labels_zarr, write_labels

__all__ = [
    "Image",
    "Normalization",
    "as_image",
    "create_labels_zarr",
    "finalize_labels_zarr",
    "import_tiff_to_omezarr",
    "read_image",
    "read_label_classes",
    "read_labels",
    "write_labels",
]
