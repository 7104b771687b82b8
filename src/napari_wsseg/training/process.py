""":func:`~.run.run_training` in a separate Python process. No Qt.

The process is started as ``python -m napari_wsseg.training`` (:mod:`subprocess`), not with
:mod:`multiprocessing`'s *spawn*, which imports the parent's ``__main__`` module in the child: a
user script without ``if __name__ == "__main__":`` would run again there (a second napari, its
project folder recreated). Parent and child talk over the child's stdin and stdout, which carry
pickled messages between two processes of this package only (model files are never pickled):

* parent -> child: ``("job", spec)`` (a :class:`_ChildSpec`, with a warm-start model's folder),
  then ``("cancel", None)`` and ``("z", slice)`` while that job runs; then the next
  ``("job", spec)``, or the end of the stream (the parent closed its end), which ends the child;
  ``("prepare", spec)`` (a kept process, before its first job: a :class:`_PrepareSpec`) imports
  what that method trains with and, given the image and the model the next run continues from,
  has that model compute ahead what the run begins with (:meth:`~napari_wsseg.methods.base.
  Method.warm_up`: rf's filter features of the annotated slices), so the first run waits for
  neither;
* child -> parent, per job: ``("info", ChildInfo)``, ``("progress", event)``,
  ``("preview", result)``, then ``("done", outcome)`` or
  ``("error", (type name, message, is user error, traceback))``.

:func:`run_training_in_subprocess` starts one process per run and closes the stream after the
``done``. :class:`TrainingProcess` (live mode) keeps one process for many runs: the spec of a
later run carries no image when it is the image the process already holds (``image=None``), the
process skips the start-up and imports, and it keeps rf's filter features
(:class:`~napari_wsseg.methods.rf.FeatureMemo`, keyed by the slice's bytes, its normalisation and
the filter bank, so an edited annotation can never be served stale features) from run to run:
a later run filters only slices it has not seen. Each outcome's ``feature_cache`` says how many
slices were filtered and reused.

The child points its own file descriptor 1 at stderr before anything else runs, so a library
that prints cannot corrupt the message stream; the child's log and tracebacks go to the parent's
stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from ..annotations.model import Annotations
from ..errors import WssegError
from ..io.image import Image
from ..methods.base import FitOptions
from ..progress import ProgressEvent
from ._pipe import rebuild_error, send, start_child
from .run import (
    SlicePrediction,
    TrainingJob,
    TrainingOutcome,
    run_training,
    throttle,
    was_cancelled,
)

logger = logging.getLogger(__name__)

#: File marking a temporary model folder this module created (and so may delete).
TEMPORARY_MARKER = ".wsseg-temporary"

#: After Cancel, the process has this long to stop at a step boundary and hand back its model;
#: then it is ended (nothing is kept): Cancel always returns within about a second.
CANCEL_GRACE_S = 1.0
#: A kept process that is closed gets this long to end by itself before it is killed.
CLOSE_GRACE_S = 2.0


@dataclass
class _ChildSpec:
    """What the training process needs (picklable: no callbacks, no thread events)."""

    method_name: str
    config: dict
    #: None: the image of the process's previous job (a kept process).
    image: Image | None
    annotations: Annotations
    options: FitOptions
    preview_every_s: float
    preview_z: int
    model_dir: str
    #: The model folder the child continues from (warm start); None trains from scratch.
    init_dir: str | None = None
    #: The (y, x) window the viewer shows, predicted before the whole slice (None: no window).
    preview_region: tuple[slice, slice] | None = None
    #: Preview a draft of the slice first (``TrainingJob.draft_first``).
    draft_first: bool = False


@dataclass
class _PrepareSpec:
    """What a kept process can do before its first job (picklable)."""

    method_name: str
    #: The image of the coming jobs (then sent with none of them); None: imports only.
    image: Image | None = None
    #: The model folder the coming run continues from, and the annotations it will train on.
    init_dir: str | None = None
    annotations: Annotations | None = None


@dataclass
class ChildInfo:
    """What the training process reports about itself before each job."""

    pid: int
    #: Worker threads scikit-learn / joblib would use for ``n_jobs=-1`` (all usable cores).
    n_jobs: int
    #: Jobs this process has started, this one included (1 in a process started for one run).
    jobs: int = 1


@dataclass
class _Child:
    """The parent's handle on a training process: the process and both ends of the stream."""

    process: subprocess.Popen
    to_child: Connection
    from_child: Connection

    @classmethod
    def start(cls) -> "_Child":
        return cls(*start_child("napari_wsseg.training"))

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    def end(self, grace_s: float) -> None:
        """Close the stream (the child then ends by itself), wait ``grace_s``, then kill; reap."""
        self.to_child.close()
        try:
            self.process.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass  # it does not exit: ended below
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.from_child.close()


def run_training_in_subprocess(
    job: TrainingJob,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    preview: Callable[[SlicePrediction], None] | None = None,
    info: Callable[[ChildInfo], None] | None = None,
    poll_s: float = 0.05,
) -> TrainingOutcome:
    """:func:`~.run.run_training` in a fresh Python process; same callbacks, same result.

    The process gets the method's name and config, the image (numpy data is copied, a lazy zarr
    image is re-opened there) and the annotation snapshot; it sends progress events and previews
    back and saves the model into ``job.model_dir`` (default: a new temporary folder); the
    outcome's ``model_dir`` points there (the method object here stays untrained).
    ``job.options.cancel`` and ``job.preview_z`` are forwarded while it runs; after a cancel the
    process gets :data:`CANCEL_GRACE_S` to stop before it is ended. The calling thread mostly
    waits on the pipe, so it hardly holds the GIL: the napari event loop stays free.

    Raises
    ------
    WssegError
        A user error in the process (e.g. no usable annotations), with its whole message.
    RuntimeError
        The process failed otherwise or ended unexpectedly (one line; the traceback is logged).
    """
    child = _Child.start()
    try:
        return _run_job(child, job, True, progress, preview, info, poll_s)
    finally:
        child.end(CANCEL_GRACE_S * 10)


class TrainingProcess:
    """One training process kept for many runs (live mode); :meth:`run` is like
    :func:`run_training_in_subprocess`.

    The process starts with the first run and serves the next ones: they skip the process start
    and the imports, the image is sent once, and rf's features of the slices already seen stay
    in the process (see the module docstring). A process that ended (killed after a Cancel that
    did not stop in time, crashed, or failed with an error that is not a user error) is replaced
    by a new one at the next run. :meth:`close` ends it; call it when the owner goes away. One
    run at a time.

    Attributes
    ----------
    pid : int or None
        The process id while a process is kept.
    """

    def __init__(self) -> None:
        self._child: _Child | None = None
        self._image: Image | None = None
        self._lock = threading.Lock()
        self._closed_while_running = False

    @property
    def pid(self) -> int | None:
        child = self._child
        return child.process.pid if child is not None and child.alive else None

    def run(
        self,
        job: TrainingJob,
        *,
        progress: Callable[[ProgressEvent], None] | None = None,
        preview: Callable[[SlicePrediction], None] | None = None,
        info: Callable[[ChildInfo], None] | None = None,
        poll_s: float = 0.05,
    ) -> TrainingOutcome:
        """Run ``job`` in the kept process (started first if there is none); see the class.

        A :meth:`close` while the job runs ends it: the outcome is then untrained (nothing saved).
        """
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("the training process is already running a job; one at a time")
        self._closed_while_running = False
        try:
            child = self._child
            if child is None or not child.alive:
                if child is not None:
                    child.end(0.0)
                child = self._child = _Child.start()
                self._image = None
            send_image = job.image is not self._image
            self._image = None  # the process holds job.image once the job is sent

            def sent() -> None:
                self._image = job.image

            try:
                outcome = _run_job(child, job, send_image, progress, preview, info, poll_s, sent)
            except WssegError:
                raise  # a user error: the process goes on
            except BaseException:
                self._drop()  # crashed, or in an unknown state (e.g. out of memory)
                if self._closed_while_running:
                    return TrainingOutcome(job.method, None, 0.0)  # ended by close(): no error
                raise
            if not child.alive:
                self._drop()  # ended after a Cancel that did not stop in time
            return outcome
        finally:
            self._lock.release()

    def prepare(
        self,
        method_name: str,
        image: Image | None = None,
        init: str | os.PathLike | None = None,
        annotations: Annotations | None = None,
    ) -> None:
        """Start the process now (if there is none) and have it import what ``method_name``
        trains with, while the user is still annotating; returns at once.

        With ``image`` the process keeps it for the coming runs, and with the model folder
        ``init`` the next run continues from, that model computes ahead what a run on
        ``annotations`` begins with (:meth:`~napari_wsseg.methods.base.Method.warm_up`).
        """
        if not self._lock.acquire(blocking=False):
            return  # a run is going: the process is started and prepared already
        try:
            if self._child is None or not self._child.alive:
                self._drop()
                self._child = _Child.start()
            init_dir = (
                str(init) if isinstance(init, (str, os.PathLike)) and image is not None else None
            )
            spec = _PrepareSpec(method_name, image, init_dir, annotations)
            self._image = None
            send(self._child.to_child, ("prepare", spec))
            self._image = image
        finally:
            self._lock.release()

    def close(self) -> None:
        """End the kept process (it stops a job it is running) and reap it; idempotent."""
        self._closed_while_running = self._lock.locked()
        child, self._child, self._image = self._child, None, None
        if child is not None:
            child.end(CLOSE_GRACE_S)

    def _drop(self) -> None:
        child, self._child, self._image = self._child, None, None
        if child is not None:
            child.end(0.0)


def _run_job(
    child: _Child, job: TrainingJob, send_image: bool, progress, preview, info, poll_s, sent=None
) -> TrainingOutcome:
    """Send ``job`` to ``child`` (then call ``sent()``), relay its messages, and build the
    outcome of this side."""
    from ..methods.base import config_to_dict

    model_dir = Path(job.model_dir or _temporary_folder() / job.method.name)
    options = dataclasses.replace(job.options, progress=None, cancel=None)
    init_dir = _init_folder(job.init)
    spec = _ChildSpec(
        job.method.name,
        config_to_dict(job.method.config),
        job.image if send_image else None,
        job.annotations,
        options,
        job.preview_every_s if preview is not None else 0.0,
        int(job.preview_z),
        str(model_dir),
        init_dir,
        job.preview_region,
        job.draft_first,
    )
    try:
        send(child.to_child, ("job", spec))
        if sent is not None:
            sent()
        result = _relay(
            job, child.process, child.to_child, child.from_child, progress, preview, info, poll_s
        )
    finally:
        if init_dir is not None and not isinstance(job.init, (str, os.PathLike)):
            remove_temporary_model(init_dir)  # the copy of an in-memory model made above
    if result is None:  # cancelled and ended: nothing trained, nothing kept
        return TrainingOutcome(job.method, None, 0.0)
    outcome = dataclasses.replace(
        result, method=job.method, model_dir=model_dir if result.trained else None
    )
    if outcome.trained and job.save_model is not None and not was_cancelled(job):
        outcome.model_name = job.save_model(None, model_dir)
    return outcome


def _init_folder(init) -> str | None:
    """The folder the child loads the warm-start model from; an in-memory model is saved first
    (into a temporary folder marked as this module's)."""
    if init is None:
        return None
    if isinstance(init, (str, os.PathLike)):
        return str(init)
    folder = _temporary_folder() / f"init-{init.name}"
    init.save(folder)
    return str(folder)


def _temporary_folder() -> Path:
    folder = Path(tempfile.mkdtemp(prefix="wsseg-model-"))
    (folder / TEMPORARY_MARKER).write_text(
        "created by napari-wsseg for one training run; safe to delete\n"
    )
    return folder


def remove_temporary_model(model_dir: str | os.PathLike) -> bool:
    """Delete a model folder made by :func:`run_training_in_subprocess` in a temporary folder.

    Only a folder whose parent holds :data:`TEMPORARY_MARKER` is deleted (with that parent);
    any other folder is left alone. Returns True when something was deleted.
    """
    import shutil

    parent = Path(model_dir).parent
    if not (parent / TEMPORARY_MARKER).is_file():
        return False
    shutil.rmtree(parent, ignore_errors=True)
    return True


def _relay(
    job, process, to_child, from_child, progress, preview, info, poll_s
) -> TrainingOutcome | None:
    """Forward cancel and the slice to the process and its messages to the callbacks, until done.

    Returns None when the process did not stop within :data:`CANCEL_GRACE_S` of a cancel.
    """
    cancelled_at = None
    sent_z = int(job.preview_z)
    while True:
        if cancelled_at is None and was_cancelled(job):
            cancelled_at = time.monotonic()
            send(to_child, ("cancel", None))
        if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
            process.kill()
            process.wait()
            return None
        if int(job.preview_z) != sent_z:
            sent_z = int(job.preview_z)
            send(to_child, ("z", sent_z))
        try:
            if not from_child.poll(poll_s):
                continue
            kind, payload = from_child.recv()
        except (EOFError, OSError):
            code = process.wait()
            if cancelled_at is not None:
                return None
            raise RuntimeError(
                f"the training process ended unexpectedly (exit code {code}); "
                "its messages are in the terminal napari was started from"
            ) from None
        if kind == "progress" and progress is not None:
            progress(payload)
        elif kind == "preview" and preview is not None:
            preview(payload)
        elif kind == "info" and info is not None:
            info(payload)
        elif kind == "error":
            raise rebuild_error(*payload)
        elif kind == "done":
            return payload


# ------------------------------------------------------------------------------ in the child
@dataclass
class _ChildState:
    """What the training process keeps between jobs, and the running job's cancel and slice."""

    cancel: threading.Event = field(default_factory=threading.Event)
    preview_z: list = field(default_factory=lambda: [0])
    image: Image | None = None
    #: Filter features by slice (rf's FeatureMemo), shared by every job of this process.
    feature_memo: object | None = None
    jobs: int = 0


def child_main() -> None:
    """Entry point of the training process (``python -m napari_wsseg.training``): serve jobs
    until the parent closes the stream."""
    channel = os.dup(1)
    os.dup2(2, 1)  # prints of any library now go to stderr; the message channel stays clean
    to_parent = Connection(channel, readable=False)
    from_parent = Connection(os.dup(0), writable=False)
    state = _ChildState()
    inbox: queue.Queue = queue.Queue()
    threading.Thread(target=_listen, args=(from_parent, inbox, state), daemon=True).start()
    while (item := inbox.get()) is not None:
        spec, cancel = item
        if isinstance(spec, _PrepareSpec):
            _prepare(spec, state)
            continue
        if spec.image is not None:
            state.image = spec.image  # first: later jobs may rely on it even if this one fails
        try:
            state.jobs += 1
            to_parent.send(("info", _child_info(state.jobs)))
            outcome = _train(spec, to_parent, cancel, state)
            to_parent.send(("done", dataclasses.replace(outcome, method=None)))
        except BaseException as exc:  # sent to the parent, which shows it; traceback to its log
            import traceback

            send(
                to_parent,
                (
                    "error",
                    (
                        type(exc).__name__,
                        str(exc),
                        isinstance(exc, WssegError),
                        traceback.format_exc(),
                    ),
                ),
            )
            if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: stop serving
                return


def _train(
    spec: _ChildSpec, to_parent: Connection, cancel: threading.Event, state: _ChildState
) -> TrainingOutcome:
    from ..methods import get_method
    from ..methods.base import config_from_dict, load_model

    if state.image is None:
        raise RuntimeError("the training process got a job without an image")
    method_class = get_method(spec.method_name)
    method = method_class(config=config_from_dict(method_class.config_class, spec.config))
    init = load_model(spec.init_dir) if spec.init_dir else None
    memo = _share_feature_memo(state, method, init)
    before = dict(memo.stats) if memo is not None else {}
    job = TrainingJob(
        method,
        state.image,
        spec.annotations,
        dataclasses.replace(spec.options, cancel=cancel),
        preview_z=state.preview_z[0],
        preview_every_s=spec.preview_every_s,
        init=init,
        preview_region=spec.preview_region,
        draft_first=spec.draft_first,
    )

    def on_progress(event: ProgressEvent) -> None:
        job.preview_z = state.preview_z[0]
        to_parent.send(("progress", event))

    outcome = run_training(
        job,
        progress=throttle(on_progress),
        preview=lambda result: to_parent.send(("preview", result)),
    )
    if memo is not None:
        outcome.feature_cache = {k: memo.stats[k] - before.get(k, 0) for k in memo.stats}
    if outcome.trained:
        method.save(spec.model_dir, overwrite=True)  # a folder this run owns (see the parent)
    return outcome


def _share_feature_memo(state: _ChildState, method, init):
    """Give ``method`` (and the warm-start model) the process's feature memo, if it keeps one.

    The memo's keys hold the slice's bytes, normalisation and filter bank, so features are only
    reused for the very same input: sharing it across jobs cannot give stale features.
    """
    if not hasattr(method, "feature_memo"):
        return None
    if state.feature_memo is None:
        state.feature_memo = method.feature_memo
    method.feature_memo = state.feature_memo
    if init is not None and hasattr(init, "feature_memo"):
        init.feature_memo = state.feature_memo
    return state.feature_memo


def _listen(from_parent: Connection, inbox: queue.Queue, state: _ChildState) -> None:
    """Reader thread: jobs, cancel and slice changes from the parent.

    The end of the stream (the parent closed it, or went away) cancels the running job and
    ends the serving loop.
    """
    while True:
        try:
            kind, value = from_parent.recv()
        except (EOFError, OSError):
            state.cancel.set()
            inbox.put(None)
            return
        if kind == "job":
            state.cancel = threading.Event()  # a cancel read after this is for this job
            state.preview_z[0] = int(value.preview_z)
            inbox.put((value, state.cancel))
        elif kind == "prepare":
            inbox.put((value, None))
        elif kind == "cancel":
            state.cancel.set()
        elif kind == "z":
            state.preview_z[0] = int(value)


def _prepare(spec: _PrepareSpec, state: _ChildState) -> None:
    """Keep the image, import the method and the libraries its fit and prediction use, and let
    the warm-start model compute ahead (errors surface later, in the job that needs them)."""
    import importlib

    if spec.image is not None:
        state.image = spec.image  # first: the parent sends the next job without it
    try:
        from ..methods import get_method

        get_method(spec.method_name)
        libraries = ["torch"] if "torch" in sys.modules else ["sklearn.ensemble", "skimage.feature"]
        for name in libraries:
            importlib.import_module(name)
        if spec.init_dir and state.image is not None and spec.annotations is not None:
            from ..methods.base import load_model

            init = load_model(spec.init_dir)
            _share_feature_memo(state, init, None)
            init.warm_up(state.image, spec.annotations)
    except Exception:  # noqa: BLE001 (the job reports the same problem to the user)
        logger.debug("preparing %s failed", spec.method_name, exc_info=True)


def _child_info(jobs: int) -> ChildInfo:
    import joblib

    return ChildInfo(os.getpid(), int(joblib.effective_n_jobs(-1)), jobs)
