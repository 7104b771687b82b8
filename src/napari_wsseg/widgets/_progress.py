"""Progress events shown on a widget's progress bar and status label (the widgets' slots).

Only ``widgets/`` imports this module.
"""

from __future__ import annotations

from ..progress import ProgressEvent


def set_progress_bar(bar, event: ProgressEvent) -> None:
    """Show ``event.done`` of ``event.total`` on a ``QProgressBar`` (range at least 1, done
    clamped to it, so a busy bar becomes a determinate one)."""
    total = max(int(event.total), 1)
    bar.setRange(0, total)
    bar.setValue(min(int(event.done), total))


def show_progress(bar, label, event: ProgressEvent) -> None:
    """:func:`set_progress_bar`, and ``"done/total message"`` in the ``QLabel`` ``label``."""
    set_progress_bar(bar, event)
    label.setText(f"{event.done}/{event.total} {event.message}".strip())
