"""Block-wise prediction of volumes larger than memory: resumable, crash-safe, dask-scalable. No Qt.

:func:`predict_volume` is the one entry point. It cuts the image into blocks
(:mod:`~napari_wsseg.predict.blocks`: the grid, halos and the pure :func:`predict_block`), runs
them on a scheduler (:mod:`~napari_wsseg.predict.schedulers`: threads or dask) and writes an
OME-Zarr label image, and optionally uint8 class probabilities, through the output store
(:mod:`~napari_wsseg.predict.store`: block records, resume, NGFF metadata, fsync).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import WssegError
from ..io.image import Image, as_image
from ..progress import ProgressCallback
from .blocks import (
    BATCH_SLICES,
    DEFAULT_BLOCK_2D,
    DEFAULT_BLOCK_3D,
    BlockPrediction,
    SmallBlockWarning,
    block_grid,
    block_region,
    model_align,
    model_halo,
    model_halo_z,
    open_image,
    predict_block,
    predict_block_input,
    read_block_input,
    resolve_block,
)
from .schedulers import (
    SCHEDULERS,
    BlockCounter,
    RunSpec,
    WorkerTask,
    check_scheduler,
    run_dask,
    run_threads,
    uses_threads,
)
from .store import (
    FINISHED,
    PROGRESS_DIR,
    RUN_ATTR,
    BlockStore,
    check_output_location,
    finish_outputs,
    finished_blocks,
    model_signature,
    output_chunks,
    prepare_outputs,
    probabilities_path,
    reopen_finished,
    run_record,
)

__all__ = [
    "SCHEDULERS",
    "VolumeResult",
    "predict_volume",
    "predict_block",
    "predict_block_input",
    "read_block_input",
    "block_grid",
    "block_region",
    "resolve_block",
    "model_halo",
    "model_halo_z",
    "open_image",
    "output_chunks",
    "probabilities_path",
    "check_output_location",
    "BlockPrediction",
    "SmallBlockWarning",
    "PROGRESS_DIR",
    "RUN_ATTR",
    "BATCH_SLICES",
    "DEFAULT_BLOCK_2D",
    "DEFAULT_BLOCK_3D",
]


@dataclass(frozen=True)
class VolumeResult:
    """What :func:`predict_volume` did.

    ``stopped`` is ``'done'`` (the output is complete, with its pyramid) or ``'cancelled'`` (a
    valid, partially written output that ``resume=True`` completes). ``repaired`` counts the
    finished blocks of a resumed run that were missing or damaged on disk and were recomputed.
    """

    out: Path
    probabilities_out: Path | None
    n_blocks: int
    computed: int
    skipped: int
    stopped: str
    seconds: float
    repaired: int = 0

    def to_dict(self) -> dict:
        return {
            "out": str(self.out),
            "probabilities": None
            if self.probabilities_out is None
            else str(self.probabilities_out),
            "blocks": self.n_blocks,
            "computed": self.computed,
            "skipped": self.skipped,
            "stopped": self.stopped,
            "seconds": round(self.seconds, 2),
            "repaired": self.repaired,
        }


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
    image_or_path : Image or numpy array or str or Path
        The image (an array is read as :func:`~napari_wsseg.io.image.as_image` reads it), or a
        path read lazily (zarr, OME-Zarr level 0, TIFF through tifffile's zarr interface, ``.npy``
        memory-mapped). Only the blocks being worked on are in memory.
    out_path : str or Path
        Output ``.zarr``: an OME-Zarr label image of the image's shape (``(Y, X)`` for 2D) with
        class names and colours, and a pyramid once complete.
    block : tuple of int, optional
        Block shape ``(Z, Y, X)`` (``(Y, X)`` for 2D images, or one slice per block for volumes).
        By default ``(64, 512, 512)`` for volumes and ``(512, 512)`` for 2D images, widened in y
        and x to the method's ``min_block_yx`` with as many fewer slices (mews: ``(4, 2048,
        2048)`` with its default tiles; see :func:`~napari_wsseg.predict.blocks.resolve_block`).
        A block narrower than ``min_block_yx`` is used, with a
        :class:`~napari_wsseg.predict.blocks.SmallBlockWarning` naming the extra work.
    probabilities : bool, default False
        Also write class probabilities as uint8 (0..255) ``(C, Z, Y, X)`` to
        ``OUT_probabilities.zarr`` (see :func:`probabilities_path`).
    scheduler : str or distributed.Client, default "threads"
        ``"threads"``: an in-process pipeline overlapping read, compute and write.
        ``"processes"``: a ``dask.distributed`` ``LocalCluster`` of ``n_workers`` processes.
        An address such as ``"tcp://10.0.0.1:8786"``: an existing dask scheduler (its workers must
        see the same paths). A ``Client`` or cluster object: used as it is.
    n_workers : int, optional
        Worker processes for ``"processes"`` (at least 1); by default dask's choice for this
        machine.
    resume : bool, default False
        Finish an interrupted run: blocks recorded as done are kept when their data still reads
        back with the checksums recorded when they were written; the others, and any finished
        block missing or damaged on disk (also in a complete output), are computed (a warning
        says how many). The settings must match the interrupted run. Without an existing
        output, starts afresh.
    overwrite : bool, default False
        Replace an existing output. Without it (and without ``resume``) an existing output is an
        error.
    progress : callable, optional
        Receives a :class:`~napari_wsseg.progress.ProgressEvent` per finished block, and when
        resuming one per finished block verified before that.
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
        output written with other settings, a missing or read-only output folder, ``n_workers``
        below 1, a dask scheduler with a model object; all before any output is created.
    ModelError
        A model trained on a different number of channels than the image has.

    Examples
    --------
    >>> import tempfile
    >>> from dataclasses import dataclass
    >>> from napari_wsseg.annotations.model import default_classes
    >>> from napari_wsseg.io.image import as_image
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
    >>> model.classes, model.n_channels = default_classes(2), 1
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
    check_scheduler(scheduler, n_workers, model_dir)
    image, image_source = _resolve_image(image_or_path)
    model.check_image(image)
    block = resolve_block(block, image, model)
    halo, halo_z = model_halo(model), model_halo_z(model)
    out_path = check_output_location(out_path)
    probs_path = probabilities_path(out_path) if probabilities else None
    signature = model_signature(model_dir if model_dir is not None else model)
    record = run_record(signature, image, block, halo, probabilities, halo_z=halo_z)
    stored = prepare_outputs(
        out_path,
        probs_path,
        record,
        model.classes,
        was_2d=image.was_2d,
        resume=resume,
        overwrite=overwrite,
    )
    grid = block_grid(image.shape, block)
    run = RunSpec(image.shape, block, halo, probabilities, halo_z, model_align(model))
    output = BlockStore(out_path, probs_path, was_2d=image.was_2d)
    done, repaired = _verified_blocks(output, stored, record, run, grid, progress)
    if stored is not None and stored.get("status") in FINISHED and not repaired:
        if stored["status"] == "blocks_done":  # killed while adding the pyramid
            finish_outputs(output, record)
        return VolumeResult(
            out_path, probs_path, len(grid), 0, len(grid), "done", time.monotonic() - started
        )
    pending = [index for index in grid if index not in done]
    counter = BlockCounter(progress, len(grid), len(grid) - len(pending), repaired=len(repaired))
    if uses_threads(scheduler):
        run_threads(model, image, output, pending, run, counter, cancel, prefetch)
    else:
        task = WorkerTask(
            str(model_dir),
            signature,
            str(out_path),
            None if probs_path is None else str(probs_path),
            image.was_2d,
            run,
            uuid.uuid4().hex,
        )
        run_dask(scheduler, n_workers, task, image_source, pending, counter, cancel)
    stopped = "cancelled" if counter.done < len(grid) else "done"
    if stopped == "done":
        finish_outputs(output, record)
    return VolumeResult(
        out_path,
        probs_path,
        len(grid),
        counter.computed,
        len(grid) - len(pending),
        stopped,
        time.monotonic() - started,
        repaired=len(repaired),
    )


def _verified_blocks(
    output: BlockStore,
    stored: dict | None,
    record: dict,
    run: RunSpec,
    grid: list,
    progress: ProgressCallback | None,
) -> tuple[set, list]:
    """Finished blocks of a resumed run that read back as written, and those to recompute."""
    recorded = finished_blocks(output, stored)
    blocks = set(grid)
    in_grid = {index: value for index, value in recorded.items() if index in blocks}
    done, damaged = output.verify_blocks(in_grid, run.region, progress)
    if damaged:
        warnings.warn(
            f"output {output.path}: {len(damaged)} finished block(s) are missing or damaged on "
            f"disk or have no checksum (first: block {damaged[0]}); recomputing them",
            stacklevel=3,
        )
        if stored.get("status") in FINISHED:
            reopen_finished(output, record, {index: in_grid[index] for index in done})
    return done, damaged


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
    if isinstance(image_or_path, np.ndarray):
        image = as_image(image_or_path)
        return image, image
    if not isinstance(image_or_path, (str, os.PathLike)):
        raise WssegError(
            f"image {type(image_or_path).__name__} is not an image; pass an Image, a numpy array "
            "or the path of an image file"
        )
    path = str(Path(image_or_path).expanduser().absolute())
    return open_image(path), path
