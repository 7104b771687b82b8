"""Debounced autosave of a session's annotations into its project.

Every annotation change restarts a single-shot timer (2 s by default); when it fires, the
annotations are copied on the main thread, then validated and written with
:meth:`Project.save <napari_wsseg.project.Project.save>` in a worker thread (atomic: a snapshot
folder plus an atomic rename of ``project.json``), so painting never waits for the disk. Invalid
annotations are not saved (the last valid save stays on disk); the error is shown once as a
notification naming the layer and the fix. Pending changes are written synchronously, at once,
when the viewer window closes (napari's close button, *Quit*, ``viewer.close()``), before a
layer of the session is removed, when the application quits and before the project is closed or
replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QEvent, QObject, QTimer, Signal
from qtpy.QtWidgets import QApplication

from ..errors import WssegError
from ._links import link
from ._notify import notify_error, user_message
from ._session import validate_for_layers

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

    def __init__(
        self, session: "AnnotationSession", delay_ms: int = AUTOSAVE_DELAY_MS, parent=None
    ) -> None:
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
        link(self, session.project_closing, self._flush_before_closing)
        app = QApplication.instance()
        if app is not None:
            link(self, app.aboutToQuit, self.flush)
        viewer = session.viewer
        if viewer is not None:
            # viewer.close() removes every layer (events batched until all are gone), then closes
            # the window: both write pending changes from the layers the session still holds
            link(self, viewer.layers.events.removed, self._on_layer_removed)
            window = getattr(getattr(viewer, "window", None), "_qt_window", None)
            if window is not None:
                window.installEventFilter(self)

    def eventFilter(self, watched, event) -> bool:  # noqa: N802 (Qt name)
        """Write pending changes when the viewer window is about to close."""
        if event.type() == QEvent.Type.Close:
            self.flush(closing=True)
        return False

    def _flush_before_closing(self) -> None:
        self.flush(closing=True)

    def _on_layer_removed(self, event=None) -> None:
        if (
            self.session.image_layer is not None
            and self.session.image_layer not in self.session.viewer.layers
        ):
            self.flush(closing=True)  # the image is gone: the last chance to write its annotations

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
        """Copy the annotations now; validate and write them in a worker thread (returned)."""
        from napari.qt.threading import create_worker

        if self.session.project is None:
            return None
        if self._worker is not None:  # one save at a time; save again when it is done
            self._pending = True
            return None
        snapshot = self._snapshot()
        if snapshot is None:
            return None
        worker = create_worker(
            _validate_and_save, self.session, *snapshot, _ignore_errors=True, _start_thread=False
        )
        worker.returned.connect(self._on_saved)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self._worker = worker
        QTimer.singleShot(0, worker.start)  # after the caller has connected to the worker's signals
        return worker

    def flush(self, *, closing: bool = False) -> None:
        """Write pending changes now, on the calling thread.

        ``closing``: the viewer is closing (its layers may be gone already); the annotations are
        read from the layers the session holds.
        """
        if not self._timer.isActive() and not self._pending:
            return
        self._timer.stop()
        self._pending = False
        snapshot = self._snapshot(closing=closing)
        if snapshot is None:
            return
        try:
            _validate_and_save(self.session, *snapshot)
        except WssegError as exc:
            self._report(str(exc))
            return
        self._on_saved()

    def _snapshot(self, closing: bool = False):
        """(annotations copy, image shape, layer names), or None when there is nothing to save."""
        viewer = self.session.viewer
        if not closing and (viewer is None or self.session.image_layer not in viewer.layers):
            return None
        try:
            return (
                self.session.snapshot(closing=closing),
                self.session.image.shape,
                self.session.sources(),
            )
        except WssegError as exc:
            self._report(str(exc))
            return None

    def _on_saved(self, _=None) -> None:
        if self._last_problem:
            self._last_problem = ""
            self.problem.emit("")
        self.saved.emit(str(self.session.project_folder))

    def _report(self, message: str) -> None:
        if message != self._last_problem:
            self._last_problem = message
            notify_error(f"not saved: {message}")
        self.problem.emit(message)

    def _on_error(self, exc: Exception) -> None:
        if isinstance(
            exc, WssegError
        ):  # invalid annotations: the message names the layer and the fix
            self._report(str(exc))
        else:
            self._report(user_message(exc, f"saving project {self.session.project_folder}"))

    def _on_finished(self) -> None:
        self._worker = None
        if self._pending:
            self._pending = False
            QTimer.singleShot(0, self.save_soon)


def _validate_and_save(session: "AnnotationSession", annotations, shape, sources) -> None:
    """Worker thread: check the snapshot (errors name the layer) and write it to the project."""
    if not annotations.is_empty():
        validate_for_layers(annotations, shape, sources)
    session.save(annotations)
