"""The schedulers of block-wise prediction: a thread pipeline in this process, or dask. No Qt.

- ``"threads"`` (workstation, GUI): a prefetching pipeline in this process, one thread reading the
  next blocks, the calling thread computing, one thread writing, so reading, compute and writing
  overlap while memory holds only a few blocks;
- ``"processes"``, a scheduler address or a ``dask.distributed`` ``Client``: one dask task per
  block; each worker loads the model from its folder once and writes its blocks itself.
"""

from __future__ import annotations

import logging
import numbers
import os
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator

from ..errors import WssegError
from ..io.image import Image
from ..progress import ProgressCallback, ProgressEvent, is_cancelled, report
from .blocks import (
    BlockIndex,
    Region,
    block_region,
    open_image,
    predict_block_input,
    read_block_input,
)
from .store import BlockStore

logger = logging.getLogger(__name__)

SCHEDULERS = ("threads", "processes")


def uses_threads(scheduler) -> bool:
    """True for ``"threads"``, False for dask (``"processes"``, an address, a client or cluster)."""
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


def check_scheduler(scheduler, n_workers, model_dir) -> None:
    """Refuse scheduler settings that cannot run, before any output is created.

    ``n_workers`` must be None or a whole number >= 1; a dask scheduler needs the model folder
    (``model_dir``), as each worker loads the model from it.

    Examples
    --------
    >>> check_scheduler("processes", 0, "model/")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.WssegError: n_workers=0 is not a whole number >= 1; give e.g. ...
    """
    whole = isinstance(n_workers, numbers.Integral) and not isinstance(n_workers, bool)
    if n_workers is not None and (not whole or n_workers < 1):
        raise WssegError(
            f"n_workers={n_workers!r} is not a whole number >= 1; give e.g. n_workers=4, or None "
            "for dask's choice"
        )
    if not uses_threads(scheduler) and model_dir is None:
        raise WssegError(
            f"scheduler {scheduler!r} loads the model on each worker from its folder; pass the "
            "model folder (not a model object) or use scheduler='threads'"
        )


@dataclass(frozen=True)
class RunSpec:
    """The block layout and what each block produces; small and picklable."""

    shape: tuple[int, int, int]
    block: tuple[int, int, int]
    halo: int
    probabilities: bool
    halo_z: int = 0
    align: tuple[int, int, int] = (1, 1, 1)

    def region(self, index: BlockIndex) -> Region:
        """The ``(z, y, x)`` slices of block ``index``."""
        return block_region(index, self.block, self.shape)


class BlockCounter:
    """Counts finished blocks and reports them with an ETA."""

    def __init__(
        self, callback: ProgressCallback | None, total: int, skipped: int, *, repaired: int = 0
    ):
        self.callback, self.total, self.skipped = callback, total, skipped
        self.computed = 0
        self.start = time.monotonic()
        message = "resuming" if skipped or repaired else "starting"
        if repaired:
            message += f": recomputing {repaired} damaged block(s)"
        report(callback, ProgressEvent(skipped, total, message))

    @property
    def done(self) -> int:
        return self.skipped + self.computed

    def block_done(self, index: BlockIndex) -> None:
        self.computed += 1
        rate = self.computed / max(time.monotonic() - self.start, 1e-9)
        eta = (self.total - self.done) / rate
        report(self.callback, ProgressEvent(self.done, self.total, f"block {index}", eta_s=eta))


# ------------------------------------------------------------------- threads: a pipeline
def run_threads(
    model,
    image: Image,
    output: BlockStore,
    pending: list[BlockIndex],
    run: RunSpec,
    counter: BlockCounter,
    cancel,
    prefetch: int,
) -> None:
    """Read ahead in one thread, compute here, write in another; at most a few blocks in memory."""
    prefetch = max(int(prefetch), 1)

    def read(index):
        return read_block_input(
            image, run.region(index), run.halo, halo_z=run.halo_z, align=run.align
        )

    def write(index, prediction):
        output.write(index, run.region(index), prediction)
        return index

    with (
        ThreadPoolExecutor(1, thread_name_prefix="wsseg-read") as reader,
        ThreadPoolExecutor(1, thread_name_prefix="wsseg-write") as writer,
    ):
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


def _drain(writes: deque, counter: BlockCounter, *, raise_errors: bool) -> None:
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
class WorkerTask:
    """Everything a worker needs besides the block index; small and picklable."""

    model_dir: str
    model_signature: str
    out_path: str
    probs_path: str | None
    was_2d: bool
    run: RunSpec
    run_id: str


def _predict_and_write_block(task: WorkerTask, index: BlockIndex, image) -> BlockIndex:
    """Worker side: predict block ``index`` and write it durably (model and stores cached)."""
    model = _cached(
        ("model", task.model_dir, task.model_signature), lambda: _load_model(task.model_dir)
    )
    if isinstance(image, str):
        image = _cached(("image", image, _mtime(image)), lambda: open_image(image))
    output = _cached(
        ("output", task.out_path, task.run_id),
        lambda: BlockStore(task.out_path, task.probs_path, was_2d=task.was_2d),
    )
    region = task.run.region(index)
    data, crop = read_block_input(
        image, region, task.run.halo, halo_z=task.run.halo_z, align=task.run.align
    )
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


def run_dask(
    scheduler, n_workers, task: WorkerTask, image_source, pending, counter: BlockCounter, cancel
) -> None:
    from dask.distributed import as_completed

    if not pending:
        return
    with _dask_client(scheduler, n_workers) as client:
        image_ref = image_source
        if not isinstance(image_source, str):
            image_ref = client.scatter(image_source, broadcast=True)
        keys = [f"wsseg-block-{task.run_id}-{i}" for i in range(len(pending))]
        futures = client.map(
            _predict_and_write_block,
            [task] * len(pending),
            pending,
            image=image_ref,
            pure=False,
            key=keys,
        )
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
        with (
            dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ()}),
            LocalCluster(
                n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster, set_as_default=False) as client,
        ):
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
