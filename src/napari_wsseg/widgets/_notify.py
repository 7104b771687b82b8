"""User-facing messages: errors become one-line napari notifications, never tracebacks.

A :class:`~napari_wsseg.errors.WssegError` already says what is wrong and how to fix it. Other
exceptions from a worker (a bug, CUDA running out of memory) are turned into one line with the
likely fix; their traceback goes to the log (``logging``), not to the user.
"""

from __future__ import annotations

import logging

from ..errors import WssegError

logger = logging.getLogger(__name__)


def notify_error(message: str) -> None:
    """Show ``message`` as a napari error notification."""
    from napari.utils.notifications import show_error

    show_error(message)


def notify_warning(message: str) -> None:
    from napari.utils.notifications import show_warning

    show_warning(message)


def notify_info(message: str) -> None:
    from napari.utils.notifications import show_info

    show_info(message)


def user_message(exc: BaseException, action: str) -> str:
    """One line for the user about ``exc``, which happened while ``action`` (e.g. 'training rf')."""
    text = " ".join(str(exc).split()) or type(exc).__name__  # every line, joined: never cut
    if isinstance(exc, WssegError):
        return text
    if _is_out_of_memory(exc):
        return (
            f"{action}: the GPU ran out of memory; pick device 'cpu', lower the batch or crop "
            "size in the method options, or close other programs using the GPU"
        )
    if isinstance(exc, MemoryError):
        return f"{action}: out of memory; use a smaller image or region, or close other programs"
    logger.error("%s failed", action, exc_info=exc)
    return f"{action} failed: {type(exc).__name__}: {text} (details in the log; please report it)"


def notify_exception(exc: BaseException, action: str) -> None:
    """Show ``exc`` (from a worker's ``errored`` signal) as a one-line error notification."""
    notify_error(user_message(exc, action))


def _is_out_of_memory(exc: BaseException) -> bool:
    name = type(exc).__name__
    return name == "OutOfMemoryError" or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()
    )
