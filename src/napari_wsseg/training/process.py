""":func:`~.run.run_training` in a separate Python process. No Qt.

The process is started as ``python -m napari_wsseg.training`` (:mod:`subprocess`), not with
:mod:`multiprocessing`'s *spawn*, which imports the parent's ``__main__`` module in the child: a
user script without ``if __name__ == "__main__":`` would run again there (a second napari, its
project folder recreated). Parent and child talk over the child's stdin and stdout, which carry
pickled messages between two processes of this package only (model files are never pickled):

* parent -> child: the :class:`_ChildSpec` (with a warm-start model's folder), then
  ``("cancel", None)`` and ``("z", slice)``;
* child -> parent: ``("progress", event)``, ``("preview", result)``, then ``("done", outcome)``
  or ``("error", (type name, message, is user error, traceback))``.

The child points its own file descriptor 1 at stderr before anything else runs, so a library
that prints cannot corrupt the message stream; the child's log and tracebacks go to the parent's
stderr.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Callable

from ..annotations.model import Annotations
from ..errors import WssegError
from ..io.image import Image
from ..methods.base import FitOptions
from ..progress import ProgressEvent
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


@dataclass
class _ChildSpec:
    """What the training process needs (picklable: no callbacks, no thread events)."""

    method_name: str
    config: dict
    image: Image
    annotations: Annotations
    options: FitOptions
    preview_every_s: float
    preview_z: int
    model_dir: str
    #: The model folder the child continues from (warm start); None trains from scratch.
    init_dir: str | None = None


@dataclass
class ChildInfo:
    """What the training process reports about itself before it trains."""

    pid: int
    #: Worker threads scikit-learn / joblib would use for ``n_jobs=-1`` (all usable cores).
    n_jobs: int


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
    from ..methods.base import config_to_dict

    model_dir = Path(job.model_dir or _temporary_folder() / job.method.name)
    options = dataclasses.replace(job.options, progress=None, cancel=None)
    init_dir = _init_folder(job.init)
    spec = _ChildSpec(
        job.method.name,
        config_to_dict(job.method.config),
        job.image,
        job.annotations,
        options,
        job.preview_every_s if preview is not None else 0.0,
        int(job.preview_z),
        str(model_dir),
        init_dir,
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_wsseg.training"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
    )
    to_child = Connection(os.dup(process.stdin.fileno()), readable=False)
    from_child = Connection(os.dup(process.stdout.fileno()), writable=False)
    process.stdin.close()
    process.stdout.close()
    try:
        _send(to_child, spec)
        result = _relay(job, process, to_child, from_child, progress, preview, info, poll_s)
        try:
            process.wait(timeout=CANCEL_GRACE_S * 10)
        except subprocess.TimeoutExpired:
            pass  # it sent its result but does not exit: ended below
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        to_child.close()
        from_child.close()
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
            _send(to_child, ("cancel", None))
        if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
            process.kill()
            return None
        if int(job.preview_z) != sent_z:
            sent_z = int(job.preview_z)
            _send(to_child, ("z", sent_z))
        if not from_child.poll(poll_s):
            continue
        try:
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
            raise _rebuild_error(*payload)
        elif kind == "done":
            return payload


def _send(connection: Connection, message) -> None:
    try:
        connection.send(message)
    except (BrokenPipeError, OSError):  # the process has ended; _relay reports how
        pass


def _rebuild_error(name: str, message: str, user_error: bool, details: str) -> Exception:
    if user_error:
        return WssegError(message)
    logger.error("training process failed:\n%s", details)
    if name == "MemoryError":
        return MemoryError(message)
    if name == "OutOfMemoryError":
        return RuntimeError(f"CUDA out of memory: {message}")
    return RuntimeError(message if name == "RuntimeError" else f"{name}: {message}")


# ------------------------------------------------------------------------------ in the child
def child_main() -> None:
    """Entry point of the training process (``python -m napari_wsseg.training``)."""
    channel = os.dup(1)
    os.dup2(2, 1)  # prints of any library now go to stderr; the message channel stays clean
    to_parent = Connection(channel, readable=False)
    from_parent = Connection(os.dup(0), writable=False)
    try:
        spec = from_parent.recv()
    except (EOFError, OSError):
        return  # the parent went away before sending the job
    cancel = threading.Event()
    preview_z = [int(spec.preview_z)]
    threading.Thread(target=_listen, args=(from_parent, cancel, preview_z), daemon=True).start()
    try:
        to_parent.send(("info", _child_info()))
        outcome = _train(spec, to_parent, cancel, preview_z)
        to_parent.send(("done", dataclasses.replace(outcome, method=None)))
    except (
        BaseException
    ) as exc:  # sent to the parent, which shows it; the traceback goes to its log
        import traceback

        _send(
            to_parent,
            (
                "error",
                (type(exc).__name__, str(exc), isinstance(exc, WssegError), traceback.format_exc()),
            ),
        )


def _train(
    spec: _ChildSpec, to_parent: Connection, cancel: threading.Event, preview_z: list
) -> TrainingOutcome:
    from ..methods import get_method
    from ..methods.base import config_from_dict

    method_class = get_method(spec.method_name)
    method = method_class(config=config_from_dict(method_class.config_class, spec.config))
    job = TrainingJob(
        method,
        spec.image,
        spec.annotations,
        dataclasses.replace(spec.options, cancel=cancel),
        preview_z=preview_z[0],
        preview_every_s=spec.preview_every_s,
        init=Path(spec.init_dir) if spec.init_dir else None,
    )

    def on_progress(event: ProgressEvent) -> None:
        job.preview_z = preview_z[0]
        to_parent.send(("progress", event))

    outcome = run_training(
        job,
        progress=throttle(on_progress),
        preview=lambda result: to_parent.send(("preview", result)),
    )
    if outcome.trained:
        method.save(spec.model_dir, overwrite=True)  # a folder this run owns (see the parent)
    return outcome


def _listen(from_parent: Connection, cancel: threading.Event, preview_z: list) -> None:
    """Reader thread: cancel and slice changes from the parent; a vanished parent cancels."""
    while True:
        try:
            kind, value = from_parent.recv()
        except (EOFError, OSError):
            cancel.set()
            return
        if kind == "cancel":
            cancel.set()
        elif kind == "z":
            preview_z[0] = int(value)


def _child_info() -> ChildInfo:
    import joblib

    return ChildInfo(os.getpid(), int(joblib.effective_n_jobs(-1)))
