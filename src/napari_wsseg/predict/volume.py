"""Block-wise prediction of volumes larger than memory: resumable, crash-safe, dask-scalable. No Qt.

A volume is cut into blocks (default ``(64, 512, 512)`` voxels). :func:`predict_block` is the one
pure function that predicts a block: it reads the block plus the halo the model needs in y and x
(methods are 2D, so none in z), predicts every slice and crops the halo away, so a block-wise
prediction equals a whole-volume one with no seams. :func:`predict_volume` runs it over every
block and writes an OME-Zarr label image (and optionally uint8 class probabilities):

- ``scheduler="threads"`` (workstation, GUI): a prefetching pipeline in this process, one thread
  reading the next blocks, the calling thread computing, one thread writing, so reading, compute
  and writing overlap while memory holds only a few blocks;
- ``"processes"``, a scheduler address or a ``dask.distributed`` ``Client``: one dask task per
  block; each worker loads the model from its folder once and writes its blocks itself.

Crash safety: output zarr chunks never straddle blocks, so a block owns its chunk files. After a
block's chunk files are written and flushed to disk (fsync), an empty marker file
``OUT.zarr/.wsseg_progress/Z.Y.X`` records it as done. ``resume=True`` redoes exactly the blocks
without a marker, which makes a resumed run bit-identical to an uninterrupted one. When every
block is done the pyramid is added, the run is marked ``complete`` and the markers are removed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import __version__
from ..engine.progress import ProgressCallback, ProgressEvent, is_cancelled, report
from ..errors import ImageFormatError, ModelError, WssegError
from ..io.image import Image

logger = logging.getLogger(__name__)

#: Block shape for volumes and for 2D images when none is given.
DEFAULT_BLOCK_3D = (64, 512, 512)
DEFAULT_BLOCK_2D = (512, 512)
#: Folder inside the output store holding one marker file per finished block.
PROGRESS_DIR = ".wsseg_progress"
#: Root attribute of the output store describing the run (checked on resume).
RUN_ATTR = "wsseg_prediction"
#: Slices handed to a method's ``predict_proba_batch`` at once (bounds device memory).
BATCH_SLICES = 8
#: Preferred zarr chunk edges (z, y, x) of the outputs; the actual ones divide the block shape.
CHUNK_TARGET = (16, 512, 512)
SCHEDULERS = ("threads", "processes")
RUN_RECORD_VERSION = 1

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


@dataclass(frozen=True)
class VolumeResult:
    """What :func:`predict_volume` did.

    ``stopped`` is ``'done'`` (the output is complete, with its pyramid) or ``'cancelled'`` (a
    valid, partially written output that ``resume=True`` completes).
    """

    out: Path
    probabilities_out: Path | None
    n_blocks: int
    computed: int
    skipped: int
    stopped: str
    seconds: float

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "probabilities": None if self.probabilities_out is None else str(
                self.probabilities_out),
            "blocks": self.n_blocks, "computed": self.computed, "skipped": self.skipped,
            "stopped": self.stopped, "seconds": round(self.seconds, 2),
        }


# --------------------------------------------------------------------------------- blocks
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
    labels = np.empty((n_slices, height, width), dtype=_label_dtype(n_classes))
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


def _label_dtype(n_classes: int) -> np.dtype:
    return np.dtype(np.uint8 if n_classes <= 256 else np.uint16)


# --------------------------------------------------------------------------------- outputs
def probabilities_path(out_path) -> Path:
    """Where the probabilities of label store ``OUT.zarr`` go: ``OUT_probabilities.zarr``.

    They are a separate OME-Zarr image because readers (napari's among them) open the first
    sub-group of a store, which must stay the labels.

    Examples
    --------
    >>> probabilities_path("run/pred.zarr").as_posix()
    'run/pred_probabilities.zarr'
    """
    out_path = Path(out_path)
    return out_path.with_name(f"{out_path.stem}_probabilities.zarr")


def output_chunks(block) -> tuple[int, int, int]:
    """zarr chunk shape for outputs: divides ``block`` so no chunk is shared by two blocks.

    Each edge is the largest divisor of the block edge up to :data:`CHUNK_TARGET`, or the whole
    edge when the divisors are all small (a prime-sized block).

    Examples
    --------
    >>> output_chunks((64, 512, 512)), output_chunks((5, 300, 1031))
    ((16, 512, 512), (5, 300, 1031))
    """
    return tuple(_aligned_chunk(b, t) for b, t in zip(block, CHUNK_TARGET))


def _aligned_chunk(edge: int, target: int) -> int:
    if edge <= target:
        return edge
    divisor = max(d for d in range(1, target + 1) if edge % d == 0)
    return divisor if divisor * 4 >= target else edge


class VolumeOutput:
    """The label store (and probability store) of one run: writes blocks durably, records them.

    Cheap to rebuild from its paths, so each dask worker makes its own.
    """

    def __init__(self, out_path, probs_path=None, *, was_2d: bool = False):
        import zarr

        self.path = Path(out_path)
        self.probs_path = None if probs_path is None else Path(probs_path)
        self.was_2d = was_2d
        self.labels = zarr.open_group(str(self.path), mode="r+")["0"]
        self.probs = None
        if self.probs_path is not None:
            self.probs = zarr.open_group(str(self.probs_path), mode="r+")["0"]
        self.progress_dir = self.path / PROGRESS_DIR

    def write(self, index: BlockIndex, region: Region, prediction: BlockPrediction) -> None:
        """Write a block's data, flush it to disk, then record the block as done."""
        spatial = region[1:] if self.was_2d else region
        labels = prediction.labels[0] if self.was_2d else prediction.labels
        self.labels[spatial] = labels
        _fsync_region(self.labels, spatial)
        if self.probs is not None:
            probs = prediction.probabilities
            probs = probs[:, 0] if self.was_2d else probs
            self.probs[(slice(None), *spatial)] = probs
            _fsync_region(self.probs, (slice(None), *spatial))
        self.mark_done(index)

    def mark_done(self, index: BlockIndex) -> None:
        marker = self.progress_dir / _marker_name(index)
        with open(marker, "wb") as handle:
            os.fsync(handle.fileno())
        _fsync_dir(self.progress_dir)

    def done_blocks(self) -> set[BlockIndex]:
        if not self.progress_dir.is_dir():
            return set()
        done = set()
        for name in os.listdir(self.progress_dir):
            parts = name.split(".")
            if len(parts) == 3 and all(p.isdigit() for p in parts):
                done.add(tuple(int(p) for p in parts))
        return done


def _marker_name(index: BlockIndex) -> str:
    return ".".join(str(i) for i in index)


def _fsync_region(array, region) -> None:
    """fsync the chunk files (and their folders) of ``region`` in a local zarr v3 array.

    zarr writes each chunk to a temporary file and renames it, but does not flush: without this a
    power cut could keep a block's marker and lose its data.
    """
    root = getattr(array.store, "root", None)
    encode = getattr(array.metadata, "encode_chunk_key", None)
    if root is None or encode is None:  # not a local zarr v3 store: nothing we can flush
        return
    base = Path(root) / array.path
    ranges = []
    for sl, chunk, size in zip(region, array.chunks, array.shape):
        start, stop, _ = sl.indices(size)
        ranges.append(range(start // chunk, -(-stop // chunk)))
    folders = set()
    for coords in itertools.product(*ranges):
        path = base / encode(coords)
        folders.add(path.parent)  # also where zarr deleted an all-zero chunk: make that last
        try:
            fd = os.open(path, _FSYNC_FLAGS)
        except FileNotFoundError:
            continue
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    for folder in folders:
        _fsync_dir(folder)


# Windows flushes writable handles only.
_FSYNC_FLAGS = os.O_RDWR if os.name == "nt" else os.O_RDONLY


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a folder not created (all chunks empty), or no directory handles (Windows)
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- run records
def _model_signature(model_or_dir) -> str:
    """sha256 of a model folder's files, or of an in-memory model's metadata (for resume)."""
    digest = hashlib.sha256()
    if isinstance(model_or_dir, (str, os.PathLike)):
        folder = Path(model_or_dir)
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            digest.update(str(path.relative_to(folder)).encode())
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
        return digest.hexdigest()
    model = model_or_dir
    meta = {
        "method": getattr(model, "name", type(model).__name__),
        "config": repr(getattr(model, "config", None)),
        "classes": [repr(c) for c in model.classes],
        "normalization": repr(getattr(model, "normalization", None)),
        "id": id(model),  # weights are not hashed: an in-memory model resumes only its own runs
    }
    digest.update(json.dumps(meta, sort_keys=True).encode())
    return digest.hexdigest()


def _run_record(model_sig: str, image: Image, block, halo: int, probabilities: bool) -> dict:
    return {
        "version": RUN_RECORD_VERSION,
        "package_version": __version__,
        "model_signature": model_sig,
        "image": image.name,
        "image_shape": list(image.shape),
        "image_channels": image.n_channels,
        "image_dtype": str(image.dtype),
        "block": list(block),
        "halo": halo,
        "probabilities": bool(probabilities),
        "status": "running",
    }


_RESUME_KEYS = ("model_signature", "image_shape", "image_channels", "image_dtype", "block", "halo",
                "probabilities")


def _check_resumable(path: Path, stored: dict | None, wanted: dict) -> None:
    if stored is None:
        raise WssegError(
            f"output {path} has no wsseg run record ('{RUN_ATTR}'), so it cannot be resumed; "
            "pass --overwrite to start again"
        )
    if stored.get("model_signature") != wanted["model_signature"]:
        before, now = str(stored.get("model_signature"))[:12], wanted["model_signature"][:12]
        raise WssegError(
            f"output {path} was started with another model (signature {before}, this one {now}); "
            "resume with the same model folder or pass --overwrite to start again"
        )
    for key in _RESUME_KEYS:
        if stored.get(key) != wanted[key]:
            raise WssegError(
                f"output {path} was started with {key}={stored.get(key)!r}, this run has "
                f"{wanted[key]!r}; resume with the original settings or pass --overwrite to start "
                "again"
            )


def _read_run_record(path: Path) -> dict | None:
    import zarr

    try:
        return zarr.open_group(str(path), mode="r").attrs.asdict().get(RUN_ATTR)
    except Exception:  # not a zarr group
        return None


def _write_run_record(path: Path, record: dict) -> None:
    import zarr

    zarr.open_group(str(path), mode="r+").attrs[RUN_ATTR] = record


# --------------------------------------------------------------------------- output set-up
def check_output_location(out_path) -> Path:
    """Check that ``out_path`` ends in ``.zarr`` and that its folder exists and is writable.

    Examples
    --------
    >>> check_output_location("/no/such/folder/pred.zarr")
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.ImageFormatError: output /no/such/folder/pred.zarr: folder /no/such/folder
    does not exist; create it or choose another --out
    """
    out_path = Path(out_path).expanduser().absolute()
    if out_path.suffix.lower() != ".zarr":
        raise ImageFormatError(
            f"output {out_path}: block-wise prediction writes OME-Zarr; name it "
            f"{out_path.stem}.zarr"
        )
    parent = out_path.parent
    if not parent.is_dir():
        raise ImageFormatError(
            f"output {out_path}: folder {parent} does not exist; create it or choose another --out"
        )
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise ImageFormatError(
            f"output {out_path}: folder {parent} is not writable ({exc.strerror}); choose a "
            "writable --out"
        ) from None
    return out_path


def _prepare_outputs(out_path: Path, probs_path: Path | None, record: dict, classes, *,
                     was_2d: bool, resume: bool, overwrite: bool) -> bool:
    """Create (or check for resuming) the stores; True when the run is already complete."""
    if resume and overwrite:
        raise WssegError("resume and overwrite exclude each other; pass one of them")
    existing = [p for p in (out_path, probs_path) if p is not None and p.exists()]
    if resume and out_path.exists():
        stored = _read_run_record(out_path)
        _check_resumable(out_path, stored, record)
        if probs_path is not None and not probs_path.exists():
            raise WssegError(
                f"probability store {probs_path} of run {out_path} is missing; pass --overwrite "
                "to start again"
            )
        if stored.get("status") == "complete":
            return True
        if stored.get("status") == "blocks_done":  # killed while adding the pyramid
            _finish_outputs(out_path, probs_path, record)
            return True
        _clean_partial_files(out_path, probs_path)
        return False
    if existing and not overwrite:
        raise WssegError(
            f"output {existing[0]} exists; pass --overwrite to replace it, --resume to finish an "
            "interrupted run, or choose another path"
        )
    _create_outputs(out_path, probs_path, record, classes, was_2d=was_2d)
    return False


def _create_outputs(out_path: Path, probs_path: Path | None, record: dict, classes, *,
                    was_2d: bool) -> None:
    from ..io.writers import create_labels_zarr

    shape = tuple(record["image_shape"])
    block = tuple(record["block"])
    chunks = output_chunks(block)
    if was_2d:
        shape, chunks = shape[1:], chunks[1:]
    create_labels_zarr(out_path, shape, classes=classes, chunks=chunks,
                       dtype=_label_dtype(len(classes)), overwrite=True)
    _write_run_record(out_path, record)
    (out_path / PROGRESS_DIR).mkdir()
    if probs_path is not None:
        _remove_probabilities(probs_path)
        _create_probabilities(probs_path, (len(classes), *shape), (1, *chunks), classes, record)


def _create_probabilities(path: Path, shape, chunks, classes, record: dict) -> None:
    import zarr

    from ..io.writers import write_multiscales

    axes = "czyx" if len(shape) == 4 else "cyx"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=shape, chunks=chunks, dtype=np.uint8, fill_value=0,
                       dimension_names=list(axes))
    write_multiscales(group, 1, axes, name=path.stem)
    group.attrs[RUN_ATTR] = {**record, "probabilities_of": [c.name for c in classes], "scale": 255}


def _remove_probabilities(path: Path) -> None:
    if not path.exists():
        return
    if _read_run_record(path) is None:
        raise WssegError(
            f"{path} exists and is not a wsseg probability store; delete it or choose another --out"
        )
    shutil.rmtree(path)


def _clean_partial_files(*stores: Path | None) -> None:
    """Remove the temporary chunk files (``*.partial``, renamed by zarr once written) of a kill."""
    for store in stores:
        if store is None:
            continue
        for folder, _, files in os.walk(store):
            for name in files:
                if name.endswith(".partial"):
                    os.unlink(os.path.join(folder, name))


def _finish_outputs(out_path: Path, probs_path: Path | None, record: dict) -> None:
    """Mark the blocks written, drop the markers, add the pyramid, mark complete (resumable)."""
    from ..io.writers import finalize_labels_zarr

    _write_run_record(out_path, {**record, "status": "blocks_done"})
    shutil.rmtree(out_path / PROGRESS_DIR, ignore_errors=True)  # before zarr lists the group
    finalize_labels_zarr(out_path)
    if probs_path is not None:
        import zarr

        group = zarr.open_group(str(probs_path), mode="r+")
        group.attrs[RUN_ATTR] = {**group.attrs[RUN_ATTR], "status": "complete"}
    _write_run_record(out_path, {**record, "status": "complete"})


# ------------------------------------------------------------------------------ the driver
def predict_volume(
    model_or_dir,
    image_or_path,
    out_path,
    *,
    block=None,
    probabilities: bool = False,
    scheduler: Any = "threads",
    n_workers: int | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    prefetch: int = 2,
) -> VolumeResult:
    """Predict a volume block by block into an OME-Zarr label image, resumably.

    Parameters
    ----------
    model_or_dir : Method or str or Path
        A trained model, or its model folder. The dask schedulers need the folder: each worker
        loads the model from it once.
    image_or_path : Image or str or Path
        The image, or a path read lazily (zarr, OME-Zarr level 0, TIFF through tifffile's zarr
        interface, ``.npy`` memory-mapped). Only the blocks being worked on are in memory.
    out_path : str or Path
        Output ``.zarr``: an OME-Zarr label image of the image's shape (``(Y, X)`` for 2D) with
        class names and colours, and a pyramid once complete.
    block : tuple of int, optional
        Block shape ``(Z, Y, X)`` (``(Y, X)`` for 2D images, or one slice per block for volumes).
        By default ``(64, 512, 512)`` for volumes and ``(512, 512)`` for 2D images.
    probabilities : bool, default False
        Also write class probabilities as uint8 (0..255) ``(C, Z, Y, X)`` to
        ``OUT_probabilities.zarr`` (see :func:`probabilities_path`).
    scheduler : str or distributed.Client, default "threads"
        ``"threads"``: an in-process pipeline overlapping read, compute and write.
        ``"processes"``: a ``dask.distributed`` ``LocalCluster`` of ``n_workers`` processes.
        An address such as ``"tcp://10.0.0.1:8786"``: an existing dask scheduler (its workers must
        see the same paths). A ``Client`` or cluster object: used as it is.
    n_workers : int, optional
        Worker processes for ``"processes"``; by default dask's choice for this machine.
    resume : bool, default False
        Finish an interrupted run: blocks recorded as done are kept, the others are computed.
        The settings must match the interrupted run. Without an existing output, starts afresh.
    overwrite : bool, default False
        Replace an existing output. Without it (and without ``resume``) an existing output is an
        error.
    progress : callable, optional
        Receives a :class:`~napari_wsseg.engine.progress.ProgressEvent` per finished block.
    cancel : threading.Event, optional
        When set, the blocks under way are finished and recorded and the function returns with
        ``stopped='cancelled'``; ``resume=True`` completes the output later.
    prefetch : int, default 2
        Blocks read ahead of the computation (threads scheduler).

    Returns
    -------
    VolumeResult

    Raises
    ------
    WssegError
        A 3D block for a 2D image, an existing output without ``overwrite``/``resume``, a resumed
        output written with other settings, a missing or read-only output folder.
    ModelError
        A model trained on a different number of channels than the image has.

    Examples
    --------
    >>> import tempfile
    >>> from napari_wsseg.io.image import as_image
    >>> class Bright:
    ...     name, classes, halo = "bright", [], 1
    ...     def predict_proba_slice(self, s):
    ...         p = (s[..., 0] > 0.5).astype(np.float32)
    ...         return np.stack([1 - p, p])
    ...     def check_image(self, image):
    ...         pass
    >>> from napari_wsseg.annotations.model import default_classes
    >>> model = Bright(); model.classes = default_classes(2)
    >>> out = Path(tempfile.mkdtemp()) / "pred.zarr"
    >>> result = predict_volume(model, as_image(np.eye(8)[None].repeat(3, 0)), out, block=(2, 5, 5))
    >>> result.n_blocks, result.stopped
    (8, 'done')
    >>> from napari_wsseg.io.readers import read_labels
    >>> int(read_labels(out).sum())
    24
    """
    started = time.monotonic()
    model, model_dir = _resolve_model(model_or_dir)
    image, image_source = _resolve_image(image_or_path)
    model.check_image(image)
    block = resolve_block(block, image)
    halo = model_halo(model)
    out_path = check_output_location(out_path)
    probs_path = probabilities_path(out_path) if probabilities else None
    signature = _model_signature(model_dir if model_dir is not None else model)
    record = _run_record(signature, image, block, halo, probabilities)
    complete = _prepare_outputs(out_path, probs_path, record, model.classes, was_2d=image.was_2d,
                                resume=resume, overwrite=overwrite)
    grid = block_grid(image.shape, block)
    if complete:
        return VolumeResult(out_path, probs_path, len(grid), 0, len(grid), "done",
                            time.monotonic() - started)
    output = VolumeOutput(out_path, probs_path, was_2d=image.was_2d)
    done = output.done_blocks()
    pending = [index for index in grid if index not in done]
    counter = _Progress(progress, len(grid), len(grid) - len(pending))
    run = _RunSpec(image.shape, block, halo, probabilities)
    if _is_threads(scheduler):
        _run_threads(model, image, output, pending, run, counter, cancel, prefetch)
    else:
        if model_dir is None:
            raise WssegError(
                f"scheduler {scheduler!r} loads the model on each worker from its folder; pass the "
                "model folder (not a model object) or use scheduler='threads'"
            )
        task = _WorkerTask(str(model_dir), signature, str(out_path),
                           None if probs_path is None else str(probs_path), image.was_2d, run,
                           uuid.uuid4().hex)
        _run_dask(scheduler, n_workers, task, image_source, pending, counter, cancel)
    stopped = "cancelled" if counter.done < len(grid) else "done"
    if stopped == "done":
        _finish_outputs(out_path, probs_path, record)
    return VolumeResult(out_path, probs_path, len(grid), counter.computed, len(grid) - len(pending),
                        stopped, time.monotonic() - started)


def _resolve_model(model_or_dir):
    """``(model, model folder or None)``."""
    if isinstance(model_or_dir, (str, os.PathLike)):
        from ..methods.base import load_model

        folder = Path(model_or_dir).expanduser().absolute()
        return load_model(folder), folder
    return model_or_dir, None


def _resolve_image(image_or_path):
    """``(Image, what workers open: a path string or the Image itself)``."""
    if isinstance(image_or_path, Image):
        return image_or_path, image_or_path
    path = str(Path(image_or_path).expanduser().absolute())
    return open_image(path), path


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


def _is_threads(scheduler) -> bool:
    if isinstance(scheduler, str):
        if scheduler == "threads":
            return True
        if scheduler == "processes" or "://" in scheduler or ":" in scheduler:
            return False
        raise WssegError(
            f"scheduler '{scheduler}' is unknown; use threads, processes or a dask scheduler "
            "address such as tcp://HOST:8786"
        )
    return False


@dataclass(frozen=True)
class _RunSpec:
    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    halo: int
    probabilities: bool

    def region(self, index: BlockIndex) -> Region:
        return block_region(index, self.block, self.shape)


class _Progress:
    """Counts finished blocks and reports them with an ETA."""

    def __init__(self, callback: ProgressCallback | None, total: int, skipped: int):
        self.callback, self.total, self.skipped = callback, total, skipped
        self.computed = 0
        self.start = time.monotonic()
        report(callback, ProgressEvent(skipped, total, "resuming" if skipped else "starting"))

    @property
    def done(self) -> int:
        return self.skipped + self.computed

    def block_done(self, index: BlockIndex) -> None:
        self.computed += 1
        rate = self.computed / max(time.monotonic() - self.start, 1e-9)
        eta = (self.total - self.done) / rate
        report(self.callback, ProgressEvent(self.done, self.total, f"block {index}", eta_s=eta))


# ------------------------------------------------------------------- threads: a pipeline
def _run_threads(model, image: Image, output: VolumeOutput, pending: list[BlockIndex],
                 run: _RunSpec, counter: _Progress, cancel, prefetch: int) -> None:
    """Read ahead in one thread, compute here, write in another; at most a few blocks in memory."""
    prefetch = max(int(prefetch), 1)

    def read(index):
        return read_block_input(image, run.region(index), run.halo)

    def write(index, prediction):
        output.write(index, run.region(index), prediction)
        return index

    with ThreadPoolExecutor(1, thread_name_prefix="wsseg-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="wsseg-write") as writer:
        reads = deque(reader.submit(read, index) for index in pending[:prefetch])
        writes: deque = deque()
        try:
            for position, index in enumerate(pending):
                if is_cancelled(cancel):
                    break
                data, crop = reads.popleft().result()
                if position + prefetch < len(pending):
                    reads.append(reader.submit(read, pending[position + prefetch]))
                prediction = predict_block_input(model, data, crop, probabilities=run.probabilities)
                del data
                writes.append(writer.submit(write, index, prediction))
                while len(writes) > 1 or (writes and writes[0].done()):
                    counter.block_done(writes.popleft().result())
        except BaseException:  # an error or Ctrl-C: still record the blocks already computed
            _drain(writes, counter, raise_errors=False)
            raise
        finally:
            for future in reads:
                future.cancel()
        _drain(writes, counter, raise_errors=True)


def _drain(writes: deque, counter: _Progress, *, raise_errors: bool) -> None:
    while writes:
        future = writes.popleft()
        try:
            counter.block_done(future.result())
        except Exception:
            if raise_errors:
                raise
            logger.exception("writing a block failed while stopping")


# ---------------------------------------------------------------------- dask.distributed
@dataclass(frozen=True)
class _WorkerTask:
    """Everything a worker needs besides the block index; small and picklable."""

    model_dir: str
    model_signature: str
    out_path: str
    probs_path: str | None
    was_2d: bool
    run: _RunSpec
    run_id: str


def _predict_and_write_block(task: _WorkerTask, index: BlockIndex, image) -> BlockIndex:
    """Worker side: predict block ``index`` and write it durably (model and stores cached)."""
    model = _cached(("model", task.model_dir, task.model_signature),
                    lambda: _load_model(task.model_dir))
    if isinstance(image, str):
        image = _cached(("image", image, _mtime(image)), lambda: open_image(image))
    output = _cached(("output", task.out_path, task.run_id),
                     lambda: VolumeOutput(task.out_path, task.probs_path, was_2d=task.was_2d))
    region = task.run.region(index)
    data, crop = read_block_input(image, region, task.run.halo)
    prediction = predict_block_input(model, data, crop, probabilities=task.run.probabilities)
    output.write(index, region, prediction)
    return index


def _load_model(folder: str):
    from ..methods.base import load_model

    logger.info("loading model %s on worker pid %d", folder, os.getpid())
    return load_model(folder)


def _mtime(path: str) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


_CACHE: OrderedDict = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 6


def _cached(key, factory):
    """Per-process cache of models, images and stores, so a worker loads each once."""
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE[key] = factory()
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(key)
        return _CACHE[key]


def _run_dask(scheduler, n_workers, task: _WorkerTask, image_source, pending,
              counter: _Progress, cancel) -> None:
    from dask.distributed import as_completed

    if not pending:
        return
    with _dask_client(scheduler, n_workers) as client:
        image_ref = image_source
        if not isinstance(image_source, str):
            image_ref = client.scatter(image_source, broadcast=True)
        keys = [f"wsseg-block-{task.run_id}-{i}" for i in range(len(pending))]
        futures = client.map(_predict_and_write_block, [task] * len(pending), pending,
                             image=image_ref, pure=False, key=keys)
        completed = as_completed(futures, loop=client.loop)
        try:
            for future in completed:
                counter.block_done(future.result())
                if is_cancelled(cancel):
                    break
        finally:
            unfinished = [f for f in futures if not f.done()]
            if unfinished:
                client.cancel(unfinished)
        # blocks that were running when cancelled still finish on the workers; they are recorded
        # by their markers and picked up by the next resume.


def _worker_environ() -> dict:
    """dask's worker environment without ``MALLOC_TRIM_THRESHOLD_``.

    Setting it pins glibc's mmap threshold at 128 KiB, so every slice-sized numpy array is mapped
    and unmapped afresh: prediction then costs 2.2x the CPU time (measured with rf).
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}))
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


@contextmanager
def _dask_client(scheduler, n_workers) -> Iterator[Any]:
    import dask
    from dask.distributed import Client, LocalCluster

    if isinstance(scheduler, Client):
        yield scheduler
        return
    if hasattr(scheduler, "scheduler_address"):  # a cluster (LocalCluster, SLURMCluster, ...)
        with Client(scheduler, set_as_default=False) as client:
            yield client
        return
    if scheduler == "processes":
        with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}), \
                LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                             dashboard_address=None) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client
        return
    try:
        client = Client(scheduler, set_as_default=False, timeout="30s")
    except OSError as exc:
        raise WssegError(
            f"cannot reach dask scheduler {scheduler!r} ({exc}); check the address or use "
            "--scheduler threads"
        ) from None
    with client:
        yield client
