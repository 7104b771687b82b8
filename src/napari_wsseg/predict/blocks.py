"""The block maths of block-wise prediction: the grid, block regions, halos, reading a block. No Qt.

A volume is cut into blocks (default ``(64, 512, 512)`` voxels). :func:`predict_block` is the one
pure function that predicts a block: it reads the block plus the halo the model needs in y and x
(methods are 2D, so none in z), predicts every slice and crops the halo away, so a block-wise
prediction equals a whole-volume one with no seams. :mod:`~napari_wsseg.predict.store` writes the
blocks, :mod:`~napari_wsseg.predict.schedulers` runs them, :mod:`~napari_wsseg.predict.volume`
ties the three together.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, WssegError
from ..io.image import Image

#: Block shape for volumes and for 2D images when none is given.
DEFAULT_BLOCK_3D = (64, 512, 512)
DEFAULT_BLOCK_2D = (512, 512)
#: Slices handed to a method's ``predict_proba_batch`` at once (bounds device memory).
BATCH_SLICES = 8

BlockIndex = tuple[int, int, int]
Region = tuple[slice, slice, slice]


@dataclass(frozen=True)
class BlockPrediction:
    """What :func:`predict_block` returns for one block.

    Attributes
    ----------
    labels : (Z, Y, X) uint8 or uint16 array
        Class ids (argmax of the probabilities).
    probabilities : (C, Z, Y, X) uint8 array or None
        Class probabilities scaled to 0..255, when asked for.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None



def resolve_block(block, image: Image) -> tuple[int, int, int]:
    """Check a block shape against ``image`` and return it as ``(Z, Y, X)``.

    ``None`` gives :data:`DEFAULT_BLOCK_3D` for volumes and :data:`DEFAULT_BLOCK_2D` for 2D
    images; a ``(Y, X)`` block on a volume means one slice per block.

    Examples
    --------
    >>> from napari_wsseg.io.image import as_image
    >>> resolve_block((5, 7), as_image(np.zeros((3, 20, 20))))
    (1, 5, 7)
    >>> resolve_block(None, as_image(np.zeros((20, 20))))
    (1, 512, 512)
    """
    if block is None:
        block = DEFAULT_BLOCK_2D if image.was_2d else DEFAULT_BLOCK_3D
    try:
        block = tuple(int(b) for b in block)
    except (TypeError, ValueError):
        raise WssegError(
            f"block {block!r} is not a shape; give Z,Y,X (e.g. 64,512,512) or Y,X"
        ) from None
    if len(block) not in (2, 3) or min(block) < 1:
        raise WssegError(f"block {block} must be Z,Y,X or Y,X with positive sizes; e.g. 64,512,512")
    if image.was_2d and len(block) == 3:
        raise WssegError(
            f"image {image.name} is 2D {image.shape[1:]} but block {block} is 3D; give a Y,X block "
            f"such as {block[1]},{block[2]}"
        )
    return (1, *block) if len(block) == 2 else block


def block_grid(shape, block) -> list[BlockIndex]:
    """Indices ``(bz, by, bx)`` of the blocks covering a ``(Z, Y, X)`` shape, z slowest.

    Examples
    --------
    >>> block_grid((3, 10, 10), (2, 10, 6))
    [(0, 0, 0), (0, 0, 1), (1, 0, 0), (1, 0, 1)]
    """
    counts = [-(-int(s) // int(b)) for s, b in zip(shape, block)]
    return [tuple(index) for index in itertools.product(*(range(c) for c in counts))]


def block_region(index, block, shape) -> Region:
    """The ``(z, y, x)`` slices of block ``index``, clipped to ``shape``.

    Examples
    --------
    >>> block_region((1, 0, 1), (2, 10, 6), (3, 10, 10))
    (slice(2, 3, None), slice(0, 10, None), slice(6, 10, None))
    """
    return tuple(slice(i * b, min((i + 1) * b, s)) for i, b, s in zip(index, block, shape))


def read_block_input(image: Image, region: Region, halo: int, *, scheduler: str = "synchronous"):
    """Read a block plus ``halo`` pixels of context in y and x (clipped to the image).

    Parameters
    ----------
    image : Image
        numpy, memory-mapped or dask-backed image.
    region : tuple of three slices
        The block in ``(Z, Y, X)`` voxels.
    halo : int
        Context in pixels on each side in y and x.
    scheduler : str, default "synchronous"
        dask scheduler for lazy data. One block touches few chunks, and a thread pool per read
        costs more than it saves (4x here); inside a dask worker it must not start another one.

    Returns
    -------
    data : (Z, Y', X', C) numpy array
        The block's slices with context.
    crop : tuple of two slices
        Where the block lies inside ``data`` in y and x.

    Examples
    --------
    >>> from napari_wsseg.io.image import as_image
    >>> image = as_image(np.zeros((2, 10, 10)))
    >>> data, crop = read_block_input(image, block_region((0, 0, 1), (2, 4, 4), image.shape), 3)
    >>> data.shape, crop
    ((2, 7, 9, 1), (slice(0, 4, None), slice(3, 7, None)))
    """
    zs, ys, xs = region
    height, width = image.shape[1:]
    y0, y1 = max(ys.start - halo, 0), min(ys.stop + halo, height)
    x0, x1 = max(xs.start - halo, 0), min(xs.stop + halo, width)
    data = image.data[zs, y0:y1, x0:x1, :]
    if hasattr(data, "compute"):
        data = data.compute(scheduler=scheduler)
    crop = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    return np.asarray(data), crop


def predict_block_input(model, data: np.ndarray, crop, *,
                        probabilities: bool = False) -> BlockPrediction:
    """Predict the slices of ``data`` (from :func:`read_block_input`) and crop them to the block.

    Slices go to the model's ``predict_proba_batch(list_of_slices)`` in batches of
    :data:`BATCH_SLICES` when it has one (batched GPU work), else one by one to
    :meth:`~napari_wsseg.methods.base.Method.predict_proba_slice`.

    Examples
    --------
    >>> class Bright:
    ...     classes = ["dark", "bright"]
    ...     def predict_proba_slice(self, s):
    ...         p = (s[..., 0] > 0.5).astype(np.float32)
    ...         return np.stack([1 - p, p])
    >>> data = np.eye(4)[None, :, :, None]  # one 4x4 slice with context
    >>> result = predict_block_input(Bright(), data, (slice(1, 3), slice(1, 3)), probabilities=True)
    >>> result.labels.tolist(), result.probabilities[1, 0].tolist()
    ([[[1, 0], [0, 1]]], [[255, 0], [0, 255]])
    """
    n_slices = data.shape[0]
    height, width = crop[0].stop - crop[0].start, crop[1].stop - crop[1].start
    n_classes = len(model.classes)
    labels = np.empty((n_slices, height, width), dtype=label_dtype(n_classes))
    probs = None
    if probabilities:
        probs = np.empty((n_classes, n_slices, height, width), dtype=np.uint8)
    for start in range(0, n_slices, BATCH_SLICES):
        batch = [data[z] for z in range(start, min(start + BATCH_SLICES, n_slices))]
        for offset, proba in enumerate(_predict_proba_slices(model, batch)):
            proba = np.asarray(proba)[:, crop[0], crop[1]]
            labels[start + offset] = np.argmax(proba, axis=0)
            if probs is not None:
                probs[:, start + offset] = np.clip(np.round(proba * 255), 0, 255)
    return BlockPrediction(labels, probs)


def predict_block(model, image: Image, region: Region, *,
                  probabilities: bool = False) -> BlockPrediction:
    """Predict one block of ``image``: the pure function the GUI, the CLI and dask workers call.

    Parameters
    ----------
    model : Method
        A trained method; its ``halo`` (pixels of context in y and x) is read around the block.
    image : Image
        The image (lazy data is read only around the block).
    region : tuple of three slices
        The block in ``(Z, Y, X)`` voxels, e.g. from :func:`block_region`.
    probabilities : bool, default False
        Also return class probabilities as uint8.

    Returns
    -------
    BlockPrediction
        Labels ``(Z, Y, X)`` of the block and, if asked, probabilities ``(C, Z, Y, X)``.

    Examples
    --------
    >>> from napari_wsseg.io.image import as_image
    >>> class Bright:  # any object with the method interface
    ...     classes, halo = ["dark", "bright"], 1
    ...     def predict_proba_slice(self, s):
    ...         p = (s[..., 0] > 0.5).astype(np.float32)
    ...         return np.stack([1 - p, p])
    >>> image = as_image(np.eye(6)[None])
    >>> predict_block(Bright(), image, block_region((0, 1, 1), (1, 3, 3), image.shape)).labels
    array([[[1, 0, 0],
            [0, 1, 0],
            [0, 0, 1]]], dtype=uint8)
    """
    data, crop = read_block_input(image, region, model_halo(model))
    return predict_block_input(model, data, crop, probabilities=probabilities)


def model_halo(model) -> int:
    """Pixels of context the model needs on each side in y and x (its ``halo``, default 0).

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> model_halo(RandomForestMethod(sigma_max=4.0)), model_halo(object())
    (18, 0)
    """
    halo = int(getattr(model, "halo", 0) or 0)
    if halo < 0:
        name = getattr(model, "name", "model")
        raise ModelError(f"{name} reports a negative halo {halo}; fix the method's halo")
    return halo


def _predict_proba_slices(model, slices: list[np.ndarray]):
    batch = getattr(model, "predict_proba_batch", None)
    if batch is None:
        return [model.predict_proba_slice(s) for s in slices]
    return batch(slices)


def label_dtype(n_classes: int) -> np.dtype:
    """uint8 labels for up to 256 classes, else uint16."""
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


def open_image(path) -> Image:
    """Open an image for block-wise reading: TIFFs through tifffile's zarr interface, others lazily.

    Examples
    --------
    >>> import tempfile, tifffile
    >>> path = Path(tempfile.mkdtemp()) / "stack.tif"
    >>> tifffile.imwrite(path, np.zeros((4, 8, 8), np.uint8), photometric="minisblack")
    >>> image = open_image(path)
    >>> image.shape, type(image.data).__name__
    ((4, 8, 8), 'Array')
    """
    from ..io.readers import read_image, read_tiff_lazily

    if Path(path).suffix.lower() in (".tif", ".tiff"):
        return read_tiff_lazily(path)
    return read_image(path)

