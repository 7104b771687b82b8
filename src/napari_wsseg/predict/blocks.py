"""The block maths of block-wise prediction: the grid, block regions, halos, reading a block. No Qt.

A volume is cut into blocks (default ``(64, 512, 512)`` voxels; wider and thinner for a method
with a ``min_block_yx``, see :func:`resolve_block`). :func:`predict_block` is the one
pure function that predicts a block: it reads the block plus the context the model declares
(``halo`` pixels in y and x, ``halo_z`` slices in z: 0 for the 2D methods), hands it to the model's
``predict_proba_block`` and crops the context away, so a block-wise prediction equals a
whole-volume one with no seams. :mod:`~napari_wsseg.predict.store` writes the
blocks, :mod:`~napari_wsseg.predict.schedulers` runs them, :mod:`~napari_wsseg.predict.volume`
ties the three together.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError, WssegError
from ..io.image import Image

#: Block shape for volumes and for 2D images when none is given.
DEFAULT_BLOCK_3D = (64, 512, 512)
DEFAULT_BLOCK_2D = (512, 512)
#: Output slices handed to a method's ``predict_proba_block`` at once (bounds memory).
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


class SmallBlockWarning(UserWarning):
    """A ``block`` smaller than the method's :attr:`~napari_wsseg.methods.base.Method.min_block_yx`:
    correct, but each block recomputes much context."""


def resolve_block(block, image: Image, model=None) -> tuple[int, int, int]:
    """Check a block shape against ``image`` and return it as ``(Z, Y, X)``.

    ``None`` gives :data:`DEFAULT_BLOCK_3D` for volumes and :data:`DEFAULT_BLOCK_2D` for 2D
    images, widened in y and x to the ``model``'s ``min_block_yx`` (where the image is that
    large) with fewer slices, so a block holds no more voxels than the default one. A ``(Y, X)``
    block on a volume means one slice per block. A given block is used as it is; when it is
    smaller than the model's ``min_block_yx`` a :class:`SmallBlockWarning` names the extra work.

    Examples
    --------
    >>> from napari_wsseg.io.image import as_image
    >>> resolve_block((5, 7), as_image(np.zeros((3, 20, 20))))
    (1, 5, 7)
    >>> resolve_block(None, as_image(np.zeros((20, 20))))
    (1, 512, 512)
    """
    min_yx = None if model is None else model_min_block_yx(model)
    if block is None:
        default = DEFAULT_BLOCK_2D if image.was_2d else DEFAULT_BLOCK_3D
        return preferred_block((1, *default)[-3:], image.shape, min_yx)
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
    block = (1, *block) if len(block) == 2 else block
    if min_yx is not None:
        _warn_if_small(block, image, model, min_yx)
    return block


def preferred_block(default, shape, min_yx: int | None) -> tuple[int, int, int]:
    """``default`` ``(Z, Y, X)`` widened in y and x to ``min_yx`` (at most the image's extent),
    with as many fewer slices as keep its voxel count (at least one slice).

    Examples
    --------
    >>> preferred_block((64, 512, 512), (100, 4096, 4096), 2048)
    (4, 2048, 2048)
    >>> preferred_block((64, 512, 512), (100, 1500, 300), 2048)
    (21, 1500, 512)
    >>> preferred_block((64, 512, 512), (100, 4096, 4096), None)
    (64, 512, 512)
    """
    z, y, x = (int(b) for b in default)
    if min_yx is None:
        return z, y, x
    wide_y, wide_x = max(y, min(min_yx, int(shape[1]))), max(x, min(min_yx, int(shape[2])))
    return max(1, z * y * x // (wide_y * wide_x)), wide_y, wide_x


def context_ratio(shape, block, halo: int, align=(1, 1, 1)) -> float:
    """Pixels a method processes per pixel of a slice when the slice is predicted in blocks.

    Each block is read with ``halo`` pixels of context in y and x (clipped to the slice, its start
    rounded down to ``align`` as :func:`read_block_input` does), so a method whose work grows with
    the pixels it sees (a ViT's tiles, a network's convolutions) does this many times the work of
    predicting the whole slice at once.

    Examples
    --------
    >>> context_ratio((1, 2048, 2048), (1, 2048, 2048), 1024)
    1.0
    >>> round(context_ratio((1, 2048, 2048), (1, 512, 512), 1024, (1, 896, 896)), 2)
    14.06
    """

    def read_along(axis: int) -> int:
        length, size = int(shape[axis]), int(block[axis])
        total = 0
        for start in range(0, length, size):
            low = max(start - halo, 0) // align[axis] * align[axis]
            total += min(start + size + halo, length) - low
        return total

    return read_along(1) * read_along(2) / (int(shape[1]) * int(shape[2]))


def _warn_if_small(block, image: Image, model, min_yx: int) -> None:
    """A :class:`SmallBlockWarning` when ``block`` is narrower than ``min_yx`` where the image
    is wider, naming the work it costs and the default block."""
    shape = image.shape
    if block[1] >= min(min_yx, shape[1]) and block[2] >= min(min_yx, shape[2]):
        return
    default = resolve_block(None, image, model)
    halo, align = model_halo(model), model_align(model)
    given, chosen = (
        context_ratio(shape, block, halo, align),
        context_ratio(shape, default, halo, align),
    )
    shown = ",".join(str(b) for b in (block[1:] if image.was_2d else block))
    default_shown = ",".join(str(b) for b in (default[1:] if image.was_2d else default))
    warnings.warn(
        f"block {shown} is smaller than the {min_yx} px in y and x that {model.name} prefers: "
        f"with {halo} px of context around each block, {model.name} processes {given:.1f}x the "
        f"pixels of each slice ({chosen:.1f}x with its default block {default_shown}); give no "
        f"--block, or one of at least {min_yx} px in y and x, to do less work",
        SmallBlockWarning,
        stacklevel=3,
    )


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


def read_block_input(
    image: Image,
    region: Region,
    halo: int,
    *,
    halo_z: int = 0,
    scheduler: str = "synchronous",
    align: tuple[int, int, int] = (1, 1, 1),
):
    """Read a block plus ``halo`` pixels of context in y and x and ``halo_z`` slices in z.

    The context is clipped to the image.

    Parameters
    ----------
    image : Image
        numpy, memory-mapped or dask-backed image.
    region : tuple of three slices
        The block in ``(Z, Y, X)`` voxels.
    halo : int
        Context in pixels on each side in y and x.
    halo_z : int, default 0
        Context in slices above and below the block.
    scheduler : str, default "synchronous"
        dask scheduler for lazy data. One block touches few chunks, and a thread pool per read
        costs more than it saves (4x here); inside a dask worker it must not start another one.
    align : (int, int, int), default (1, 1, 1)
        The start of the context is rounded down to these multiples in z, y and x (the model's
        ``block_align``), so a pooling network sees the whole volume's pooling grid.

    Returns
    -------
    data : (Z', Y', X', C) numpy array
        The block's slices with context.
    crop : tuple of three slices
        Where the block lies inside ``data`` in z, y and x.

    Examples
    --------
    >>> from napari_wsseg.io.image import as_image
    >>> image = as_image(np.zeros((2, 10, 10)))
    >>> data, crop = read_block_input(image, block_region((0, 0, 1), (2, 4, 4), image.shape), 3)
    >>> data.shape, crop
    ((2, 7, 9, 1), (slice(0, 2, None), slice(0, 4, None), slice(3, 7, None)))
    """
    lows, highs = [], []
    for axis, (sl, context) in enumerate(zip(region, (halo_z, halo, halo))):
        lows.append(max(sl.start - context, 0) // align[axis] * align[axis])
        highs.append(min(sl.stop + context, image.shape[axis]))
    data = image.data[lows[0] : highs[0], lows[1] : highs[1], lows[2] : highs[2], :]
    if hasattr(data, "compute"):
        data = data.compute(scheduler=scheduler)
    crop = tuple(slice(sl.start - low, sl.stop - low) for sl, low in zip(region, lows))
    return np.asarray(data), crop


def predict_block_input(
    model, data: np.ndarray, crop, *, probabilities: bool = False
) -> BlockPrediction:
    """Predict the slices of ``data`` (from :func:`read_block_input`) and crop them to the block.

    The block goes to the model's
    :meth:`~napari_wsseg.methods.base.Method.predict_proba_block` in slabs of at most
    :data:`BATCH_SLICES` output slices, each with the model's ``halo_z`` slices of context,
    which bounds the memory the probabilities take.

    Examples
    --------
    >>> from dataclasses import dataclass
    >>> from napari_wsseg.annotations.model import default_classes
    >>> from napari_wsseg.methods.base import Method
    >>> @dataclass(frozen=True)
    ... class NoOptions:
    ...     pass
    >>> class Bright(Method):  # class 1 where the first channel is above 0.5
    ...     name, config_class, halo = "bright", NoOptions, 1
    ...     def predict_proba_slice(self, s):
    ...         p = (s[..., 0] > 0.5).astype(np.float32)
    ...         return np.stack([1 - p, p])
    ...     def _fit(self, image, annotations, options): ...
    ...     def _save_weights(self, folder): ...
    ...     def _load_weights(self, folder): ...
    >>> model = Bright()
    >>> model.classes = default_classes(2)
    >>> data = np.eye(4)[None, :, :, None]  # one 4x4 slice with context
    >>> crop = (slice(0, 1), slice(1, 3), slice(1, 3))
    >>> result = predict_block_input(model, data, crop, probabilities=True)
    >>> result.labels.tolist(), result.probabilities[1, 0].tolist()
    ([[[1, 0], [0, 1]]], [[255, 0], [0, 255]])
    """
    shape = tuple(sl.stop - sl.start for sl in crop)
    n_classes = len(model.classes)
    labels = np.empty(shape, dtype=label_dtype(n_classes))
    probs = np.empty((n_classes, *shape), dtype=np.uint8) if probabilities else None
    for start, stop, proba in _slab_probabilities(model, data, crop):
        labels[start:stop] = np.argmax(proba, axis=0)
        if probs is not None:
            probs[:, start:stop] = np.clip(np.round(proba * 255), 0, 255)
    return BlockPrediction(labels, probs)


def _slab_probabilities(model, data: np.ndarray, crop):
    """``(start, stop, (C, stop - start, Y, X) float32)`` for slabs of at most
    :data:`BATCH_SLICES` slices of the block, each predicted with ``halo_z`` slices of context."""
    n_slices = crop[0].stop - crop[0].start
    halo_z = model_halo_z(model)
    for start in range(0, n_slices, BATCH_SLICES):
        stop = min(start + BATCH_SLICES, n_slices)
        z0 = max(crop[0].start + start - halo_z, 0)
        z1 = min(crop[0].start + stop + halo_z, data.shape[0])
        proba = _block_probabilities(model, data[z0:z1], len(model.classes))
        inner = slice(crop[0].start + start - z0, crop[0].start + stop - z0)
        yield start, stop, np.asarray(proba[:, inner, crop[1], crop[2]], dtype=np.float32)


def predict_proba_region(model, image: Image, region: Region) -> np.ndarray:
    """Class probabilities ``(C, Z, Y, X)`` float32 of a region, with the model's context.

    Reads ``halo`` pixels around the region in y and x and ``halo_z`` slices above and below it
    (clipped to the image), as block-wise prediction does, so the result equals the same voxels
    of a whole-volume prediction. The preview of one slice or of the visible part of a slice
    calls this, so a 3D method sees its z neighbours there too.

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> from napari_wsseg.annotations.model import Annotations, default_classes
    >>> from napari_wsseg.io.image import as_image
    >>> image = as_image(np.random.default_rng(0).random((3, 16, 16)).astype(np.float32))
    >>> model = RandomForestMethod(n_estimators=4)
    >>> _ = model.fit(image, Annotations(default_classes(2), points=[[1, 2, 2, 0], [1, 9, 9, 1]]))
    >>> predict_proba_region(model, image, (slice(1, 2), slice(4, 9), slice(0, 16))).shape
    (2, 1, 5, 16)
    """
    data, crop = _read_model_input(model, image, region)
    n_slices = crop[0].stop - crop[0].start
    shape = tuple(sl.stop - sl.start for sl in crop[1:])
    out = np.empty((len(model.classes), n_slices, *shape), dtype=np.float32)
    for start, stop, proba in _slab_probabilities(model, data, crop):
        out[:, start:stop] = proba
    return out


def _read_model_input(model, image: Image, region: Region):
    """:func:`read_block_input` of ``region`` with the model's halo, ``halo_z`` and alignment."""
    return read_block_input(
        image, region, model_halo(model), halo_z=model_halo_z(model), align=model_align(model)
    )


def _block_probabilities(model, slab: np.ndarray, n_classes: int) -> np.ndarray:
    """The model's ``predict_proba_block`` of ``slab``, checked to be ``(C, Z, Y, X)``."""
    proba = np.asarray(model.predict_proba_block(slab))
    expected = (n_classes, *slab.shape[:3])
    if proba.shape != expected:
        raise ModelError(
            f"{model.name} predict_proba_block returned shape {proba.shape} for a block of "
            f"{slab.shape[:3]} voxels; it must return (classes, Z, Y, X) = {expected}: fix the "
            "method"
        )
    return proba


def predict_block(
    model, image: Image, region: Region, *, probabilities: bool = False
) -> BlockPrediction:
    """Predict one block of ``image``: the pure function the GUI, the CLI and dask workers call.

    Parameters
    ----------
    model : Method
        A trained method; its ``halo`` (pixels of context in y and x) and ``halo_z`` (slices of
        context in z) are read around the block.
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
    >>> from dataclasses import dataclass
    >>> from napari_wsseg.annotations.model import default_classes
    >>> from napari_wsseg.methods.base import Method
    >>> @dataclass(frozen=True)
    ... class NoOptions:
    ...     pass
    >>> class Bright(Method):  # class 1 where the first channel is above 0.5
    ...     name, config_class, halo = "bright", NoOptions, 1
    ...     def predict_proba_slice(self, s):
    ...         p = (s[..., 0] > 0.5).astype(np.float32)
    ...         return np.stack([1 - p, p])
    ...     def _fit(self, image, annotations, options): ...
    ...     def _save_weights(self, folder): ...
    ...     def _load_weights(self, folder): ...
    >>> model = Bright()
    >>> model.classes = default_classes(2)
    >>> from napari_wsseg.io.image import as_image
    >>> image = as_image(np.eye(6)[None])
    >>> predict_block(model, image, block_region((0, 1, 1), (1, 3, 3), image.shape)).labels
    array([[[1, 0, 0],
            [0, 1, 0],
            [0, 0, 1]]], dtype=uint8)
    """
    data, crop = _read_model_input(model, image, region)
    return predict_block_input(model, data, crop, probabilities=probabilities)


def model_halo(model) -> int:
    """Pixels of context the model needs on each side in y and x (its ``halo``), checked.

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> model_halo(RandomForestMethod(sigma_max=4.0))
    18
    """
    return _checked_halo(model, "halo", model.halo)


def model_halo_z(model) -> int:
    """Slices of context the model needs above and below a block (its ``halo_z``), checked.

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> model_halo_z(RandomForestMethod())
    0
    """
    return _checked_halo(model, "halo_z", model.halo_z)


def model_align(model) -> tuple[int, int, int]:
    """The model's ``block_align`` (``(z, y, x)`` multiples, each at least 1), checked.

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> model_align(RandomForestMethod())
    (1, 1, 1)
    """
    value = getattr(model, "block_align", (1, 1, 1))
    try:
        align = tuple(int(a) for a in value)
    except (TypeError, ValueError):
        align = ()
    if len(align) != 3 or min(align) < 1:
        raise ModelError(
            f"{model.name} reports block_align={value!r}; it must be three positive "
            "integers (z, y, x): fix the method"
        )
    return align


def model_min_block_yx(model) -> int | None:
    """The model's ``min_block_yx`` (None, or a positive integer), checked.

    Examples
    --------
    >>> from napari_wsseg.methods.rf import RandomForestMethod
    >>> model_min_block_yx(RandomForestMethod()) is None
    True
    """
    value = getattr(model, "min_block_yx", None)
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ModelError(
            f"{model.name} reports min_block_yx={value!r}; it must be None or a positive "
            "integer: fix the method"
        )
    return int(value)


def _checked_halo(model, attribute: str, value) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ModelError(
            f"{model.name} reports {attribute}={value!r}; a method's {attribute} must be a "
            "non-negative integer: fix the method"
        )
    return int(value)


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
