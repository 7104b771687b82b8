"""Live update: a short retraining after the annotations change, debounced, never piling up.

While *live* is on, every annotation edit (the session's ``changed`` signal) restarts a
single-shot timer of :data:`DEBOUNCE_MS`; when it fires, the Train widget starts a live run (a
warm start from the last model when the Start choice allows it), whose final prediction of the
visible slice replaces the prediction layer. An edit made while a run is going marks one more
run as queued; however many edits follow, exactly one run starts after the current one ends,
on the annotations of that moment.

Where a live run runs: with "separate process", in one training process kept for the whole live
session (:class:`~napari_wsseg.training.TrainingProcess`, started when live is ticked, ended when
it is unticked or the Train widget goes away), which keeps rf's filter features of the slices it
has seen; with "napari process", in a thread as any run. When the view is zoomed in, the run
predicts the window the canvas shows (:func:`visible_window`) before the whole slice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QTimer

from ._layers import canvas_window
from ._links import link

if TYPE_CHECKING:
    from ._train import TrainWidget

#: Quiet time after the last edit before a live run starts: long enough to group the clicks of
#: one burst (a run started mid-burst only queues one more), short against the 2 s a click may
#: take to show its effect (it was 500 ms until session 8, a quarter of that).
DEBOUNCE_MS = 250


class LiveUpdater(QObject):
    """Debounce edits into live runs of ``train``; at most one run queued behind a running one.

    Attributes
    ----------
    runs : int
        Live runs started so far.
    queued : bool
        Whether one more run starts when the current one ends.
    """

    def __init__(self, train: "TrainWidget") -> None:
        super().__init__(train)
        self.train = train
        self.enabled = False
        self.queued = False
        self.runs = 0
        self.timer = QTimer(self)
        self.timer.setSingleShot(True)
        self.timer.setInterval(DEBOUNCE_MS)
        self.timer.timeout.connect(self._fire)
        link(train, train.session.changed, self.on_edit)

    def set_enabled(self, on: bool) -> None:
        """Turn live mode on (a run follows the next edit) or off (queued runs are dropped, the
        live training process ends)."""
        self.enabled = bool(on)
        if self.enabled:
            self.train.prepare_live_process()
        else:
            self.timer.stop()
            self.queued = False
            self.train.release_live_process()

    def on_edit(self, *_) -> None:
        """An annotation changed: (re)start the quiet-time timer."""
        if self.enabled:
            self.timer.start()

    def run_finished(self) -> None:
        """Called by the Train widget when any run ends: start the queued run, if any."""
        if self.enabled and self.queued:
            self.queued = False
            self._fire()

    def _fire(self) -> None:
        if not self.enabled:
            return
        if self.train.is_running:
            self.queued = True  # one run behind the current one, whatever the number of edits
            return
        if self.train.train(live=True) is not None:
            self.runs += 1


def visible_window(image_layer, image) -> tuple[slice, slice] | None:
    """The ``(y, x)`` window of ``image`` the canvas shows; None when it shows the whole slice.

    From napari's ``corner_pixels`` of the image layer (data coordinates), clipped to the slice.
    """
    window = canvas_window(image_layer, image)
    rows, cols = (w.stop - w.start for w in window)
    if rows <= 1 or cols <= 1 or rows * cols >= image.shape[1] * image.shape[2]:
        return None
    return window
