"""Debounced autosave of a session's annotations into its project.

Every annotation change restarts a single-shot timer (2 s by default); when it fires, the
annotations are copied and validated on the main thread (fast, vectorised) and written with
:meth:`Project.save <napari_wsseg.project.Project.save>` in a worker thread (atomic: a snapshot
folder plus an atomic rename of ``project.json``), so painting never waits for the disk. Invalid
annotations are not saved (the last valid save stays on disk); the error is shown once as a
notification naming the layer and the fix. When the application quits, pending changes are
written synchronously.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..errors import WssegError
from ._links import link
from ._notify import notify_error

if TYPE_CHECKING:
    from ._session import AnnotationSession

AUTOSAVE_DELAY_MS = 2000


class Autosaver(QObject):
    """Saves ``session`` to its project a little while after the last change.

    Signals ``saved(folder)`` after each successful save and ``problem(message)`` when the
    annotations cannot be saved (``problem("")`` once they can again).
    """

    saved = Signal(str)
    problem = Signal(str)

    def __init__(self, session: "AnnotationSession", delay_ms: int = AUTOSAVE_DELAY_MS, parent=None) -> None:
        super().__init__(parent)
        self.session = session
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(delay_ms)
        self._timer.timeout.connect(self.save_soon)
        self._worker = None
        self._pending = False
        self._last_problem = ""
        link(self, session.changed, self.schedule)
        app = QApplication.instance()
        if app is not None:
            link(self, app.aboutToQuit, self.flush)

    @property
    def delay_ms(self) -> int:
        """Milliseconds between the last change and the save."""
        return self._timer.interval()

    @delay_ms.setter
    def delay_ms(self, value: int) -> None:
        self._timer.setInterval(int(value))

    @property
    def is_pending(self) -> bool:
        """True while a change waits to be written (timer running or a save in flight)."""
        return self._timer.isActive() or self._worker is not None or self._pending

    def schedule(self) -> None:
        """(Re)start the debounce timer."""
        if self.session.project is not None:
            self._timer.start()

    def save_soon(self):
        """Validate a snapshot now and write it in a worker thread; returns the worker (or None)."""
        from napari.qt.threading import create_worker

        if self.session.project is None:
            return None
        if self._worker is not None:  # one save at a time; save again when it is done
            self._pending = True
            return None
        annotations = self._checked_snapshot()
        if annotations is None:
            return None
        worker = create_worker(self.session.save, annotations, _ignore_errors=True, _start_thread=False)
        worker.returned.connect(lambda _: self.saved.emit(str(self.session.project_folder)))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        QTimer.singleShot(0, worker.start)  # after the caller has connected to the worker's signals
        return worker

    def flush(self) -> None:
        """Write pending changes now, on the calling thread."""
        if not self._timer.isActive() and not self._pending:
            return
        self._timer.stop()
        self._pending = False
        annotations = self._checked_snapshot()
        if annotations is not None:
            try:
                self.session.save(annotations)
            except WssegError as exc:
                self._report(str(exc))

    def _checked_snapshot(self):
        viewer = self.session.viewer
        if viewer is None or self.session.image_layer not in viewer.layers:  # the viewer is closing
            return None
        try:
            annotations = self.session.snapshot()
            if not annotations.is_empty():
                annotations, _ = self.session.validated_snapshot()
        except WssegError as exc:
            self._report(str(exc))
            return None
        if self._last_problem:
            self._last_problem = ""
            self.problem.emit("")
        return annotations

    def _report(self, message: str) -> None:
        if message != self._last_problem:
            self._last_problem = message
            notify_error(f"not saved: {message}")
        self.problem.emit(message)

    def _on_error(self, exc: Exception) -> None:
        self._report(f"saving project {self.session.project_folder} failed: {exc}")

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            QTimer.singleShot(0, self.save_soon)
