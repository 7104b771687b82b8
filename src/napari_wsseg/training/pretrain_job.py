""":func:`~napari_wsseg.engine.pretrain.pretrain` in a separate Python process. No Qt.

The "Learn features from this image" panel runs pretraining for minutes to hours; in its own
process the run shares neither the GIL nor the memory of the viewer (an out-of-memory or a
crash ends the run, not napari), and it stops cleanly when napari goes away. As for training
(:mod:`.process`), the process is started as
``python -m napari_wsseg.training.pretrain_job`` (never the user's ``__main__``), and parent and
child exchange pickled messages over the child's stdin and stdout (the backbone and checkpoints
are safetensors + JSON files, never pickled):

* parent -> child: ``("job", spec)`` (a dict: image, folder, config, budget, device, resume,
  checkpoint interval), then ``("cancel", None)``;
* child -> parent: ``("info", pid)``, ``("progress", event)``, then ``("done", result)`` or
  ``("error", (type name, message, is user error, traceback))``.

On Cancel the child drops the step under way (:func:`~napari_wsseg.engine.pretrain.pretrain`
checks between transformer blocks), writes its checkpoint and backbone and answers ``done``;
within :data:`CANCEL_GRACE_S` of the cancel, or it is ended (its last periodic checkpoint is then
what a resume continues). A parent that goes away closes the stream, which the child takes as a
cancel: it checkpoints and exits rather than train on unseen.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from ..errors import WssegError
from ..io.image import Image
from ..progress import ProgressEvent
from ._pipe import rebuild_error, send, start_child

if TYPE_CHECKING:
    from ..engine.pretrain import PretrainConfig, PretrainResult


#: After a cancel, the process has this long to drop its step, write its checkpoint and answer;
#: then it is ended. A cancelled default ViT-T run answered in 0.5 s here; writing a ViT-S
#: checkpoint on a loaded machine takes longer, and ending it early would lose steps.
CANCEL_GRACE_S = 30.0


@dataclass
class PretrainJob:
    """One pretraining run of :func:`~napari_wsseg.engine.pretrain.pretrain`, as plain values.

    Attributes
    ----------
    image : Image
        Copied to the process (numpy data) or re-opened there (lazy zarr).
    out : path
        The backbone folder (see :func:`~napari_wsseg.engine.pretrain.pretrain`).
    config : PretrainConfig or None
        None: the defaults, or on resume the stored config.
    time_budget_s : float or None
        Seconds of this session (None: until the planned steps are done).
    device : str
        'auto', 'cpu', 'cuda' or 'cuda:N'.
    resume : bool
        Continue the run whose checkpoint is in ``out``.
    checkpoint_every_s : float
        Seconds between checkpoints.
    """

    image: Image
    out: str | os.PathLike
    config: "PretrainConfig | None" = None
    time_budget_s: float | None = None
    device: str = "auto"
    resume: bool = False
    checkpoint_every_s: float = 120.0


def run_pretraining_in_subprocess(
    job: PretrainJob,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    cancel: threading.Event | None = None,
    started: Callable[[int], None] | None = None,
    poll_s: float = 0.05,
) -> "PretrainResult":
    """Run ``job`` in a fresh Python process; returns its ``PretrainResult``.

    ``progress`` receives the run's events (at most every 0.25 s) and ``started`` the process id
    once the process is up, both in the calling thread, which otherwise waits on the pipe (it
    hardly holds the GIL: the napari event loop stays free). Setting ``cancel`` makes the process
    drop its step, checkpoint and return a result with ``stopped='cancelled'``; one that has not
    answered :data:`CANCEL_GRACE_S` later is ended, and :class:`RuntimeError` says so.

    Raises
    ------
    WssegError
        A user error in the process (e.g. a folder that is not a backbone folder), its message.
    RuntimeError
        The process failed otherwise, ended unexpectedly or was ended after a cancel (one line;
        the traceback is logged).
    """
    spec = {
        "image": job.image,
        "out": str(job.out),
        "config": None if job.config is None else job.config.to_dict(),
        "time_budget_s": job.time_budget_s,
        "device": job.device,
        "resume": job.resume,
        "checkpoint_every_s": job.checkpoint_every_s,
    }
    process, to_child, from_child = start_child("napari_wsseg.training.pretrain_job")
    try:
        send(to_child, ("job", spec))
        return _relay(process, to_child, from_child, progress, cancel, started, poll_s)
    finally:
        to_child.close()  # the child's stream ends: it stops if it is still running
        try:
            process.wait(timeout=CANCEL_GRACE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        from_child.close()


def _relay(process, to_child, from_child, progress, cancel, started, poll_s):
    """Forward a cancel to the process and its messages to the callbacks, until it answers."""
    cancelled_at = None
    while True:
        if cancelled_at is None and cancel is not None and cancel.is_set():
            cancelled_at = time.monotonic()
            send(to_child, ("cancel", None))
        if cancelled_at is not None and time.monotonic() - cancelled_at > CANCEL_GRACE_S:
            process.kill()
            raise RuntimeError(
                f"the pretraining process did not stop within {CANCEL_GRACE_S:.0f} s of Cancel "
                "and was ended; its last periodic checkpoint is kept (Resume continues from it)"
            )
        if not from_child.poll(poll_s):
            continue
        try:
            kind, payload = from_child.recv()
        except (EOFError, OSError):
            code = process.wait()
            raise RuntimeError(
                f"the pretraining process ended unexpectedly (exit code {code}); its messages "
                "are in the terminal napari was started from"
            ) from None
        if kind == "progress" and progress is not None:
            progress(payload)
        elif kind == "info" and started is not None:
            started(payload)
        elif kind == "error":
            raise rebuild_error(*payload, job="pretraining")
        elif kind == "done":
            return payload


# ------------------------------------------------------------------------------ in the child
def child_main() -> None:
    """Entry point of the pretraining process (``python -m napari_wsseg.training.pretrain_job``)."""
    channel = os.dup(1)
    os.dup2(2, 1)  # prints of any library now go to stderr; the message channel stays clean
    to_parent = Connection(channel, readable=False)
    from_parent = Connection(os.dup(0), writable=False)
    try:
        kind, spec = from_parent.recv()
    except (EOFError, OSError):
        return  # the parent went away before sending the job
    cancel = threading.Event()
    threading.Thread(target=_listen, args=(from_parent, cancel), daemon=True).start()
    try:
        to_parent.send(("info", os.getpid()))
        result = _pretrain(spec, cancel, lambda event: send(to_parent, ("progress", event)))
        send(to_parent, ("done", result))
    except BaseException as exc:  # sent to the parent, which shows it; the traceback is logged
        import traceback

        user_error = isinstance(exc, WssegError)
        send(
            to_parent, ("error", (type(exc).__name__, str(exc), user_error, traceback.format_exc()))
        )


def _pretrain(spec: dict, cancel: threading.Event, progress):
    from ..engine.pretrain import PretrainConfig, pretrain

    config = spec["config"]
    return pretrain(
        spec["image"],
        Path(spec["out"]),
        None if config is None else PretrainConfig.from_dict(config),
        time_budget_s=spec["time_budget_s"],
        device=spec["device"],
        resume=spec["resume"],
        checkpoint_every_s=spec["checkpoint_every_s"],
        progress=progress,
        cancel=cancel,
    )


def _listen(from_parent: Connection, cancel: threading.Event) -> None:
    """Reader thread: a cancel from the parent, or the parent gone (end of stream), cancels."""
    while True:
        try:
            kind, _ = from_parent.recv()
        except (EOFError, OSError):
            cancel.set()
            return
        if kind == "cancel":
            cancel.set()


if __name__ == "__main__":
    child_main()
    # Everything is written and answered; the interpreter's own teardown (torch, threads) took
    # seconds that the waiting parent, and the user after Cancel, would otherwise sit through.
    sys.stderr.flush()
    os._exit(0)
