"""The output store of block-wise prediction: block records, resume, NGFF metadata, fsync. No Qt.

Crash safety: output zarr chunks never straddle blocks, so a block owns its chunk files. After a
block's chunk files are written and flushed to disk (fsync), a marker file
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
import zlib
from pathlib import Path

import numpy as np

from .. import __version__
from ..errors import ImageFormatError, WssegError
from ..io.image import Image
from ..progress import ProgressCallback, ProgressEvent, report
from .blocks import BlockIndex, BlockPrediction, Region, label_dtype

#: Folder inside the output store holding one marker file per finished block.
PROGRESS_DIR = ".wsseg_progress"
#: Root attribute of the output store describing the run (checked on resume).
RUN_ATTR = "wsseg_prediction"
#: Preferred zarr chunk edges (z, y, x) of the outputs; the actual ones divide the block shape.
CHUNK_TARGET = (16, 512, 512)
RUN_RECORD_VERSION = 1
#: Run statuses after every block was written (the record then holds the block checksums).
FINISHED = ("blocks_done", "complete")

logger = logging.getLogger(__name__)


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


class BlockStore:
    """The label store (and probability store) of one run: writes blocks durably, records them.

    Each finished block gets a marker file holding the crc32 checksums of the bytes written, so a
    resumed run can check that a finished block is still on disk as written
    (:meth:`verify_blocks`). Cheap to rebuild from its paths, so each dask worker makes its own.

    Raises
    ------
    WssegError
        When the label or probability store cannot be opened as a zarr array.
    """

    def __init__(self, out_path, probs_path=None, *, was_2d: bool = False):
        self.path = Path(out_path)
        self.probs_path = None if probs_path is None else Path(probs_path)
        self.was_2d = was_2d
        self.labels = _open_level0(self.path)
        self.probs = None if self.probs_path is None else _open_level0(self.probs_path)
        self.progress_dir = self.path / PROGRESS_DIR

    def write(self, index: BlockIndex, region: Region, prediction: BlockPrediction) -> None:
        """Write a block's data, flush it to disk, then record the block and its checksums."""
        spatial = region[1:] if self.was_2d else region
        labels = prediction.labels[0] if self.was_2d else prediction.labels
        self.labels[spatial] = labels
        _fsync_region(self.labels, spatial)
        checksums = {"labels": _checksum(labels)}
        if self.probs is not None:
            probs = prediction.probabilities
            probs = probs[:, 0] if self.was_2d else probs
            self.probs[(slice(None), *spatial)] = probs
            _fsync_region(self.probs, (slice(None), *spatial))
            checksums["probabilities"] = _checksum(probs)
        self.mark_done(index, checksums)

    def mark_done(self, index: BlockIndex, checksums: dict) -> None:
        """Record block ``index`` as finished, with the checksums of its written data."""
        marker = self.progress_dir / _marker_name(index)
        with open(marker, "w") as handle:
            json.dump(checksums, handle)
            handle.flush()
            os.fsync(handle.fileno())
        _fsync_dir(self.progress_dir)

    def recorded_blocks(self) -> dict[BlockIndex, dict | None]:
        """The blocks with a marker and their checksums (None: a marker without checksums)."""
        if not self.progress_dir.is_dir():
            return {}
        recorded = {}
        for name in os.listdir(self.progress_dir):
            index = _parse_marker_name(name)
            if index is not None:
                recorded[index] = _read_marker(self.progress_dir / name)
        return recorded

    def verify_blocks(
        self,
        recorded: dict[BlockIndex, dict | None],
        region_of,
        progress: ProgressCallback | None = None,
    ) -> tuple[set[BlockIndex], list[BlockIndex]]:
        """Split ``recorded`` blocks into those whose data reads back as written and the rest.

        Parameters
        ----------
        recorded : dict
            Block index to its checksums (from :meth:`recorded_blocks` or a finished run's
            record); a block without checksums counts as not verified.
        region_of : callable
            Maps a block index to its ``(z, y, x)`` region.
        progress : callable, optional
            Receives a :class:`~napari_wsseg.progress.ProgressEvent` after each block read, as
            reading a whole output back takes a while.

        Returns
        -------
        verified : set of block indices
        damaged : sorted list of block indices
            Blocks with a missing, unreadable or changed chunk; their markers are removed.
        """
        verified, damaged = set(), []
        for n, index in enumerate(sorted(recorded), start=1):
            message = f"verifying finished block {n}/{len(recorded)}"
            if self._reads_back(region_of(index), recorded[index]):
                verified.add(index)
            else:
                damaged.append(index)
                (self.progress_dir / _marker_name(index)).unlink(missing_ok=True)
            report(progress, ProgressEvent(n, len(recorded), message))
        return verified, damaged

    def restore_markers(self, recorded: dict[BlockIndex, dict]) -> None:
        """Recreate the markers of a finished run (from its record) so a repair can resume."""
        self.progress_dir.mkdir(exist_ok=True)
        for index, checksums in recorded.items():
            self.mark_done(index, checksums)

    def _reads_back(self, region: Region, checksums: dict | None) -> bool:
        if not isinstance(checksums, dict) or "labels" not in checksums:
            return False
        spatial = region[1:] if self.was_2d else region
        try:
            if _checksum(self.labels[spatial]) != checksums["labels"]:
                return False
            if self.probs is not None:
                probs = self.probs[(slice(None), *spatial)]
                return _checksum(probs) == checksums.get("probabilities")
        except Exception as exc:  # a truncated or garbled chunk file fails to decode
            logger.info("block %s of %s does not read back: %s", region, self.path, exc)
            return False
        return True


def _open_level0(path: Path):
    """The full-resolution array ``0`` of a store made by this module."""
    import zarr

    try:
        return zarr.open_group(str(path), mode="r+")["0"]
    except Exception as exc:  # zarr raises many types for a damaged store
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise WssegError(
            f"output {path} cannot be read as a wsseg prediction store ({first}); pass --overwrite "
            "to start again"
        ) from None


def _checksum(array) -> str:
    """crc32 of an array's bytes in C order, as 8 hex digits."""
    return f"{zlib.crc32(np.ascontiguousarray(array).data) & 0xFFFFFFFF:08x}"


def _read_marker(path: Path) -> dict | None:
    try:
        checksums = json.loads(path.read_text() or "null")
    except (OSError, ValueError):
        return None
    return checksums if isinstance(checksums, dict) else None


def _parse_marker_name(name: str) -> BlockIndex | None:
    parts = name.split(".")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return tuple(int(p) for p in parts)
    return None


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
def model_signature(model_or_dir) -> str:
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


def run_record(
    model_sig: str, image: Image, block, halo: int, probabilities: bool, *, halo_z: int = 0
) -> dict:
    """The settings of a run, stored in the output's attrs and compared on resume."""
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
        "halo_z": halo_z,
        "probabilities": bool(probabilities),
        "status": "running",
    }


_RESUME_KEYS = (
    "model_signature",
    "image_shape",
    "image_channels",
    "image_dtype",
    "block",
    "halo",
    "probabilities",
)


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


def prepare_outputs(
    out_path: Path,
    probs_path: Path | None,
    record: dict,
    classes,
    *,
    was_2d: bool,
    resume: bool,
    overwrite: bool,
) -> dict | None:
    """Create the stores, or check them for resuming.

    Returns the stored run record when resuming an existing output, else None.
    """
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
        _clean_partial_files(out_path, probs_path)
        return stored
    if existing and not overwrite:
        raise WssegError(
            f"output {existing[0]} exists; pass --overwrite to replace it, --resume to finish an "
            "interrupted run, or choose another path"
        )
    _create_outputs(out_path, probs_path, record, classes, was_2d=was_2d)
    return None


def finished_blocks(store: BlockStore, stored: dict | None) -> dict[BlockIndex, dict | None]:
    """The blocks an existing run recorded as finished, with their checksums.

    ``stored`` is the run record (None for a new run). A finished run keeps the checksums in its
    record; an unfinished one in its marker files.
    """
    if stored is None:
        return {}
    if stored.get("status") not in FINISHED:
        return store.recorded_blocks()
    checksums = stored.get("block_checksums")
    if not isinstance(checksums, dict):
        raise WssegError(
            f"output {store.path} is finished but has no block checksums to verify; pass "
            "--overwrite to start again"
        )
    blocks = {}
    for name, value in checksums.items():
        index = _parse_marker_name(str(name))
        if index is None:
            raise WssegError(
                f"output {store.path}: block record '{str(name)[:40]}' is not Z.Y.X; pass "
                "--overwrite to start again"
            )
        blocks[index] = value
    return blocks


def reopen_finished(store: BlockStore, record: dict, verified: dict[BlockIndex, dict]) -> None:
    """Turn a finished run with damaged blocks back into a running one holding ``verified``."""
    store.restore_markers(verified)
    _write_run_record(store.path, {**record, "status": "running"})


def _create_outputs(
    out_path: Path, probs_path: Path | None, record: dict, classes, *, was_2d: bool
) -> None:
    from ..io.writers import create_labels_zarr

    shape = tuple(record["image_shape"])
    block = tuple(record["block"])
    chunks = output_chunks(block)
    if was_2d:
        shape, chunks = shape[1:], chunks[1:]
    create_labels_zarr(
        out_path,
        shape,
        classes=classes,
        chunks=chunks,
        dtype=label_dtype(len(classes)),
        overwrite=True,
    )
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
    group.create_array(
        "0", shape=shape, chunks=chunks, dtype=np.uint8, fill_value=0, dimension_names=list(axes)
    )
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


def finish_outputs(store: BlockStore, record: dict) -> None:
    """Move the block checksums into the run record, drop the markers, add the pyramid, mark
    complete; each step can be redone after a kill."""
    from ..io.writers import finalize_labels_zarr

    recorded = store.recorded_blocks()
    if recorded or (store.path / PROGRESS_DIR).is_dir():  # else a finish that was interrupted
        checksums = {_marker_name(index): value for index, value in sorted(recorded.items())}
        record = {**record, "block_checksums": checksums}
    else:
        record = {**record, "block_checksums": _read_run_record(store.path)["block_checksums"]}
    _write_run_record(store.path, {**record, "status": "blocks_done"})
    shutil.rmtree(store.progress_dir, ignore_errors=True)  # before zarr lists the group
    finalize_labels_zarr(store.path)
    if store.probs_path is not None:
        import zarr

        group = zarr.open_group(str(store.probs_path), mode="r+")
        group.attrs[RUN_ATTR] = {**group.attrs[RUN_ATTR], "status": "complete"}
    _write_run_record(store.path, {**record, "status": "complete"})
