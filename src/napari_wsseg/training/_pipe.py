"""What the training and pretraining processes share on their pipes to the parent. No Qt."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from multiprocessing.connection import Connection

from ..errors import WssegError

logger = logging.getLogger(__name__)


def send(connection: Connection, message) -> None:
    """Send ``message``; a pipe whose process has ended is ignored (the reader reports how)."""
    try:
        connection.send(message)
    except (BrokenPipeError, OSError):
        pass


def rebuild_error(
    name: str, message: str, user_error: bool, details: str, *, job: str = "training"
) -> Exception:
    """The parent's exception for a child's ``("error", (name, message, user_error, details))``:
    a user error as :class:`~napari_wsseg.errors.WssegError`, anything else logged with the
    child's traceback (``details``) and raised as a built-in error of the same kind."""
    if user_error:
        return WssegError(message)
    logger.error("%s process failed:\n%s", job, details)
    if name == "MemoryError":
        return MemoryError(message)
    if name == "OutOfMemoryError":
        return RuntimeError(f"CUDA out of memory: {message}")
    return RuntimeError(message if name == "RuntimeError" else f"{name}: {message}")


def start_child(module: str) -> tuple[subprocess.Popen, Connection, Connection]:
    """Start ``python -m module`` with a message stream on its stdin/stdout.

    Returns the process and the parent's ends: a connection to the child and one from it.
    """
    process = subprocess.Popen(
        [sys.executable, "-m", module],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        close_fds=True,
    )
    to_child = Connection(os.dup(process.stdin.fileno()), readable=False)
    from_child = Connection(os.dup(process.stdout.fileno()), writable=False)
    process.stdin.close()
    process.stdout.close()
    return process, to_child, from_child
