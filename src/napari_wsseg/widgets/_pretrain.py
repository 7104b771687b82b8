"""The "Learn features from this image" panel: self-supervised pretraining for MEWS.

:func:`napari_wsseg.engine.pretrain.pretrain` runs in a **separate Python process**
(:mod:`napari_wsseg.training.pretrain_job`), on the session's image, into the project's
``backbones/learned`` folder; a napari thread worker only waits on its pipe, and the run shares
neither the GIL nor the memory of the viewer. Progress, loss and ETA come back as Qt signals. Cancel
makes the process drop the step under way, write a checkpoint and the backbone so far; a folder
with a checkpoint is resumed by the next press. Closing the widget (or the viewer) cancels a run
the same way. When a backbone was written, the project records it as MEWS's default
``backbone_weights`` and the Train widget fills it in whenever MEWS is chosen.
"""

from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Callable

from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..errors import WssegError
from ..progress import ProgressEvent
from ._links import on_destroyed
from ._notify import notify_error, notify_info, user_message
from ._progress import set_progress_bar
from ._session import session_for

if TYPE_CHECKING:
    import napari

DEFAULT_BUDGET_MIN = 60.0
LEARN, RESUME = "Learn features from this image", "Resume learning features"


class _Signals(QObject):
    progress = Signal(object)
    #: The pretraining process's id, once it runs.
    started = Signal(int)


class PretrainPanel(QWidget):
    """Time budget, Learn / Resume, Cancel, progress with loss and ETA.

    ``config`` is the :class:`~napari_wsseg.engine.pretrain.PretrainConfig` of a new run
    (None: the defaults); a resumed run always uses the config stored with its checkpoint.
    ``on_backbone(folder)`` is called on the main thread when a backbone was written.
    """

    def __init__(
        self,
        napari_viewer: "napari.Viewer",
        device: Callable[[], str] = lambda: "auto",
        on_backbone: Callable[[str], None] | None = None,
        parent=None,
    ) -> None:
        super().__init__(parent)
        self.session = session_for(napari_viewer)
        self.device = device
        self.on_backbone = on_backbone
        self.config = None
        self.worker = None
        #: Process id of the running pretraining process (None: none runs).
        self.child_pid: int | None = None
        self._cancel: threading.Event | None = None
        self._signals = _Signals()
        self._running: set[threading.Event] = set()  # the cancel event of a run under way
        on_destroyed(self, functools.partial(_cancel_all, self._running))
        self.budget_spin = QDoubleSpinBox()
        self.budget_spin.setRange(0.0, 7 * 24 * 60.0)
        self.budget_spin.setValue(DEFAULT_BUDGET_MIN)
        self.budget_spin.setSuffix(" min")
        self.budget_spin.setSpecialValueText("until done")
        self.fast_views_check = QCheckBox("fast views")
        self.fast_views_check.setToolTip(
            "64/32 px views and 4 local crops instead of 96/48 px and 6: 2-3x faster on a CPU; "
            "the effect on the learnt features has not been measured (new runs only)"
        )
        self.learn_button = QPushButton(LEARN)
        self.learn_button.setToolTip(
            "self-supervised training (DINO) of a small ViT on every slice of this image, no "
            "labels; MEWS then uses it by default in this project (runs in a separate process)"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.label = QLabel("")
        self.label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        form.addRow("time budget", self.budget_spin)
        form.addRow("", self.fast_views_check)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.learn_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.label)
        self.learn_button.clicked.connect(self.learn)
        self.cancel_button.clicked.connect(self.cancel)
        self._signals.progress.connect(self._on_progress)
        self._signals.started.connect(self._on_started)

    # ------------------------------------------------------------------------ public actions
    def learn(self):
        """Start (or resume) pretraining in its process, waited on by a thread worker; returns
        the worker (None: not started)."""
        if self.worker is not None:
            notify_error("feature learning is already running; wait for it or press Cancel")
            return None
        try:
            image, folder = self._inputs()
            config = self._new_run_config()
        except WssegError as exc:
            notify_error(str(exc))
            return None
        from napari.qt.threading import create_worker

        self._cancel = threading.Event()
        self._running.add(self._cancel)
        budget = self.budget_spin.value() * 60.0 or None
        self.worker = create_worker(
            _pretrain,
            image,
            folder,
            config,
            budget,
            self.device(),
            self._cancel,
            self._signals.progress.emit,
            self._signals.started.emit,
            _ignore_errors=True,
            _start_thread=False,
        )
        self.worker.returned.connect(self._on_returned)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.learn_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.label.setText("learning features…")
        QTimer.singleShot(0, self.worker.start)  # after the caller has connected to its signals
        return self.worker

    def cancel(self) -> None:
        """Stop now (the step under way is dropped); the checkpoint and the backbone so far are
        written and kept (resumable)."""
        if self._cancel is not None:
            self._cancel.set()
            self.label.setText("cancelling: writing the checkpoint…")

    def refresh(self) -> None:
        """Show *Resume* when the project's backbone folder holds a checkpoint."""
        from ..engine.pretrain import can_resume

        project = self.session.project
        resumable = project is not None and can_resume(project.backbone_dir())
        self.learn_button.setText(RESUME if resumable else LEARN)

    # ------------------------------------------------------------------------------ helpers
    def _inputs(self):
        project = self.session.project
        if project is None:
            raise WssegError(
                "feature learning writes its backbone into the project; create one first "
                "(Annotate → New project…)"
            )
        return self.session.require_image(), project.backbone_dir()

    def _new_run_config(self):
        """The config of a new run: :attr:`config` (None: the defaults), with fast views if
        ticked (a resumed run ignores it and keeps its own)."""
        from ..engine.pretrain import PretrainConfig

        config = self.config or PretrainConfig()
        return config.with_fast_views() if self.fast_views_check.isChecked() else config

    def _on_started(self, pid: int) -> None:
        self.child_pid = pid

    def _on_progress(self, event: ProgressEvent) -> None:
        set_progress_bar(self.progress_bar, event)
        parts = [f"step {event.done}/{event.total}"]
        loss = event.metrics.get("loss")
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.4g}")
        if event.eta_s is not None:
            parts.append(f"ETA {int(round(event.eta_s))} s")
        self.label.setText(" · ".join(parts))

    def _on_returned(self, result) -> None:
        project = self.session.project
        if project is not None:
            project.set_mews_backbone(result.out)
        if self.on_backbone is not None:
            self.on_backbone(str(result.out))
        again = " (press Resume to continue)" if result.stopped != "done" else ""
        message = (
            f"features learnt for {result.steps} steps in {int(round(result.seconds))} s, "
            f"{result.stopped.replace('_', ' ')}{again}; MEWS now uses backbone {result.out} "
            "in this project"
        )
        self.label.setText(message)
        notify_info(message)

    def _on_error(self, exc: Exception) -> None:
        message = user_message(exc, "learning features")
        self.label.setText(message)
        notify_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self._running.discard(self._cancel)
        self._cancel = None
        self.child_pid = None
        self.cancel_button.setEnabled(False)
        self.learn_button.setEnabled(True)
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
        self.refresh()


def _pretrain(image, folder, config, budget_s, device: str, cancel, progress, started):
    """Pretrain into ``folder`` in a separate process, resuming its checkpoint if it has one
    (this runs in the worker thread, which only relays the process's messages)."""
    from ..engine.pretrain import can_resume
    from ..training.pretrain_job import PretrainJob, run_pretraining_in_subprocess

    resume = can_resume(folder)
    job = PretrainJob(
        image,
        folder,
        None if resume else config,
        time_budget_s=budget_s,
        device=device,
        resume=resume,
    )
    return run_pretraining_in_subprocess(job, progress=progress, cancel=cancel, started=started)


def _cancel_all(runs: set[threading.Event]) -> None:
    for cancel in list(runs):
        cancel.set()
