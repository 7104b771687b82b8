"""napari reader contribution: images and volumes through napari_wsseg.io (lazy for zarr).

The manifest offers it for TIFF, ``.npy`` and zarr only: napari's own reader opens PNG and JPEG
the same way, so those open without napari asking which reader to use (any image layer can be
annotated).
"""

from __future__ import annotations

from pathlib import Path

IMAGE_SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".npy", ".zarr")


def napari_get_reader(path):
    """Return a reader for ``path`` if napari-wsseg can read it, else None."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if Path(str(path).rstrip("/")).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return read_image_layer


def read_image_layer(path):
    """Layer data for napari: one image layer (channels split into separate layers by napari)."""
    from ..io import read_image

    if isinstance(path, list):
        path = path[0]
    return [image_layer_data(read_image(path))]


def image_layer_data(image):
    """(data, kwargs, 'image') for an :class:`~napari_wsseg.io.image.Image`."""
    data = image.data[0] if image.was_2d else image.data
    kwargs = {"name": Path(str(image.source or "image")).stem}
    if image.n_channels == 1:
        data = data[..., 0]
    elif image.n_channels == 3 and image.was_2d and image.dtype.kind == "u":
        kwargs["rgb"] = True
    else:
        kwargs["channel_axis"] = data.ndim - 1
    return data, kwargs, "image"
