"""The Train dock widget: pick a method and its options, press Train, watch it learn.

Training runs in a napari thread worker (:func:`napari.qt.threading.create_worker`) on a copy
of the annotations taken when Train is pressed, so the viewer stays responsive and the user can
keep annotating. The worker runs :func:`~napari_wsseg.training.run_training` (no Qt);
its progress and preview callbacks only emit Qt signals, and the slots on the main thread update
the progress bar, the loss plot and the prediction / uncertainty layers. Cancel sets a
:class:`threading.Event` the method checks between steps; the best model so far is kept. Live
runs (:mod:`._live`) in a separate process share one kept training process.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QPointF, Qt, QTimer, Signal
from qtpy.QtGui import QColor, QPainter, QPen, QPolygonF
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import AnnotationError, WssegError
from ..methods import available_methods, get_method
from ..methods.base import Method
from ..methods.warm import LIVE_KEEP, LIVE_LR_FACTOR
from ..progress import ProgressEvent
from ..training import (
    SlicePrediction,
    TrainingJob,
    TrainingOutcome,
    TrainingProcess,
    avoid_triton_llvm_crash,
    remove_temporary_model,
    run_training,
    run_training_in_subprocess,
    throttle,
)
from . import _layers as L
from ._links import link, on_destroyed
from ._live import LiveUpdater, visible_window
from ._notify import notify_error, notify_info, notify_warning, user_message
from ._options import ConfigForm
from ._pretrain import PretrainPanel
from ._progress import set_progress_bar
from ._scroll import scroll_layout
from ._session import session_for
from ._suggest import SuggestPanel

if TYPE_CHECKING:
    import napari

    from ..annotations.model import Annotations

DEVICES = ("auto", "cpu", "cuda")
#: Where training runs: a separate Python process (the default: never competes with napari for
#: the GIL, GPU memory and native crashes stay out of napari; costs a process start, imports and
#: an image copy, about 2 s for rf) or a thread of the napari process (starts at once). Only the
#: separate process kept every measured stall under 100 ms on an idle machine, for rf too; see
#: docs/benchmarks.md (GUI responsiveness).
RUN_MODES = {"separate process": run_training_in_subprocess, "napari process": run_training}
#: No time budget by default: the method's own run length (dsp: 1200 steps, about 10 minutes on 2
#: CPU cores; a continued run 100 steps). A first dsp training cut to 60 s scored 19.2 / 45.0
#: mean foreground Dice against 39.9 / 54.7 for the full run (1 click per class and slice on 8
#: slices, drosophila_vnc / cdeep3m_mito validation slices, seed 0; docs/benchmarks.md session 12).
DEFAULT_BUDGET_S = 0.0
#: Where a training starts: from the last model of the method (warm start, a short run) or anew.
START_CONTINUE = "continue from last model"
START_SCRATCH = "from scratch"


class _TrainSignals(QObject):
    """Emitted from the worker thread, delivered on the main thread (queued connections)."""

    progress = Signal(object)
    preview = Signal(object)


class TrainWidget(QWidget):
    """Method, options, device, time budget, Train / Cancel, progress, loss plot, live preview."""

    def __init__(self, napari_viewer: "napari.Viewer", parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self.job: TrainingJob | None = None
        self._cancel: threading.Event | None = None
        #: The annotations the last job was built on: a live run focuses on what was added since.
        self._last_job_annotations: Annotations | None = None
        #: The model of the last run that was not a warm live run: a *Train* press continues
        #: from it rather than from a live model (see :meth:`warm_start_model`).
        self._base = None
        self._signals = _TrainSignals()
        #: The training process live runs share ("separate process"); ended with the widget.
        self.live_process = TrainingProcess()
        #: What the last run that returned did (time, steps, feature reuse, ...).
        self.last_outcome: TrainingOutcome | None = None
        self._final_shown = False
        self._live_run = False
        on_destroyed(self, self.live_process.close)

        self.method_combo = QComboBox()
        self.method_combo.addItems(available_methods())
        self.options_box = QGroupBox("Method options")
        QVBoxLayout(self.options_box)
        self.options: ConfigForm | None = None
        self.device_combo = QComboBox()
        self.device_combo.addItems(list(DEVICES))
        self.run_combo = QComboBox()
        self.run_combo.addItems(list(RUN_MODES))
        self.run_combo.setToolTip(
            "separate process: the viewer stays smoothest and GPU memory is freed "
            "after each run (about 2 s to start); napari process: starts at "
            "once, but imports and GIL-bound work can stall the viewer"
        )
        self.budget_spin = QDoubleSpinBox()
        self.budget_spin.setRange(0.0, 7 * 24 * 3600.0)
        self.budget_spin.setValue(DEFAULT_BUDGET_S)
        self.budget_spin.setSuffix(" s")
        self.budget_spin.setSpecialValueText("method decides")
        self.start_combo = QComboBox()
        self.start_combo.addItems([START_CONTINUE, START_SCRATCH])
        self.start_combo.setToolTip(
            "continue: a short run from the last model of this method (same classes; after "
            "live runs, from the last one Train made); from scratch: a full training that "
            "ignores it"
        )
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        self.model_name = QLineEdit()
        self.model_name.setPlaceholderText("method-date-time")
        self.preview_check = QCheckBox("live preview every")
        self.preview_check.setChecked(True)
        self.preview_every = QDoubleSpinBox()
        self.preview_every.setRange(0.5, 600.0)
        self.preview_every.setValue(5.0)
        self.preview_every.setSuffix(" s")
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.train_button = QPushButton("Train")
        self.live_steps_spin = QSpinBox()
        self.live_steps_spin.setRange(0, 1_000_000)
        self.live_steps_spin.setSpecialValueText("method decides")
        self.live_steps_spin.setToolTip(
            "training steps of a live run that continues from the last model; fewer steps "
            "refresh sooner. Left to the method: 20 for dsp, size and cpews, a warm start's "
            "length for mews; rf has no steps"
        )
        self.live_check = QCheckBox("live: retrain after each edit")
        self.live_check.setToolTip(
            "after the annotations change (a quarter second quiet), a short run continues from "
            "the last model and refreshes the prediction of the current slice; saved as model "
            "METHOD-live"
        )
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.keep_button = QPushButton("Keep cancelled model")
        self.keep_button.setToolTip("save the model of the cancelled run in the project")
        self.keep_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)
        self._cancelled: tuple[TrainingOutcome, str] | None = None
        self.loss_plot = LossPlot()
        self.suggest_panel = SuggestPanel(napari_viewer)
        self.live = LiveUpdater(self)
        self.pretrain_panel = PretrainPanel(
            napari_viewer, lambda: self.device_combo.currentText(), self.use_backbone
        )
        self._layout()
        self._connect()
        self._show_options(self.method_combo.currentText())
        self.choose_default_start()

    def _layout(self) -> None:
        layout = scroll_layout(self)
        form = QFormLayout()
        form.addRow("method", self.method_combo)
        layout.addLayout(form)
        layout.addWidget(self.options_box)
        form = QFormLayout()
        form.addRow("device", self.device_combo)
        form.addRow("run in", self.run_combo)
        form.addRow("start", self.start_combo)
        form.addRow("time budget", self.budget_spin)
        form.addRow("seed", self.seed_spin)
        form.addRow("model name", self.model_name)
        row = QHBoxLayout()
        row.addWidget(self.preview_check)
        row.addWidget(self.preview_every)
        form.addRow(row)
        form.addRow("prediction opacity", self.opacity_slider)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.train_button)
        row.addWidget(self.cancel_button)
        layout.addLayout(row)
        layout.addWidget(self.live_check)
        form = QFormLayout()
        form.addRow("live run steps", self.live_steps_spin)
        layout.addLayout(form)
        layout.addWidget(self.keep_button)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)
        layout.addWidget(self.loss_plot)
        box = QGroupBox("Annotate here next")
        QVBoxLayout(box).addWidget(self.suggest_panel)
        layout.addWidget(box)
        box = QGroupBox("Learn features from this image (for mews)")
        QVBoxLayout(box).addWidget(self.pretrain_panel)
        layout.addWidget(box)
        layout.addStretch(1)

    def _connect(self) -> None:
        self.method_combo.currentTextChanged.connect(self._show_options)
        self.method_combo.currentTextChanged.connect(self.choose_default_start)
        link(self, self.session.classes_changed, self.choose_default_start)
        self.train_button.clicked.connect(self.train)
        self.cancel_button.clicked.connect(self.cancel)
        self.keep_button.clicked.connect(self.keep_cancelled_model)
        self.live_check.toggled.connect(self.live.set_enabled)
        self.opacity_slider.valueChanged.connect(self._set_opacity)
        self._signals.progress.connect(self._on_progress)
        self._signals.preview.connect(self._on_preview)
        link(self, self.viewer.dims.events.current_step, self._follow_slice)

    # ------------------------------------------------------------------------ public actions
    @property
    def is_running(self) -> bool:
        return self.worker is not None

    def train(self, *, live: bool = False):
        """Start training in a worker thread and return the worker (None if it could not start).

        A ``live`` run (started by live mode) is saved as model ``METHOD-live``, replacing the
        previous live model, instead of under a new name.
        """
        if self.is_running:
            notify_error("training is already running; wait for it or press Cancel")
            return None
        try:
            job = self._build_job(live)
        except WssegError as exc:
            notify_error(str(exc))
            return None
        self.job = job
        self._live_run = live
        self.worker = self._start(job, live)
        return self.worker

    def cancel(self) -> None:
        """Stop the running training within about a second; nothing is saved unless kept.

        A method stops at its next step and hands back its model so far; a separate training
        process that has not stopped within a second is ended. The model of a cancelled run
        becomes the in-memory "last trained" model and *Keep cancelled model* saves it.
        """
        if self._cancel is not None:
            self._cancel.set()
            self.progress_label.setText("cancelling…")

    def keep_cancelled_model(self) -> str | None:
        """Save the model of the last cancelled run in the project; returns its name."""
        if self._cancelled is None:
            notify_error("no cancelled model to keep; train, then cancel")
            return None
        outcome, name = self._cancelled
        if self.session.project is None:
            notify_error("no project to save the model in; create one (Annotate → New project…)")
            return None
        try:
            kept = self._save_model(
                None if outcome.model_dir else outcome.method,
                outcome.model_dir,
                name,
                outcome.method.name,
            )
        except WssegError as exc:
            notify_error(str(exc))
            return None
        self._cancelled = None
        self.keep_button.setEnabled(False)
        self.session.last_model, self.session.last_model_name = (
            self.session.project.model_dir(kept),
            kept,
        )
        self._base = self.session.last_model  # kept on purpose: the next Train continues it
        notify_info(f"cancelled run kept as model '{kept}'")
        return kept

    def choose_default_start(self, *_) -> None:
        """Continue when the last model is of the chosen method and has the current classes."""
        info = self._last_model_info()
        names = [c.name for c in self.session.classes]
        warm = info is not None and info == (self.method_combo.currentText(), names)
        self.start_combo.setCurrentText(START_CONTINUE if warm else START_SCRATCH)

    def warm_start_model(self, *, live: bool = False):
        """The model the next training continues from (a method or its folder), or None.

        A live run continues from the last model, live or not; a *Train* press from the last
        model that was not a warm live run (:meth:`_trained_base`) when it is still usable, so
        that what a live session's short runs pulled towards the corrected slice is not carried
        into the model a *Train* press makes of all the annotations.
        """
        if self.start_combo.currentText() != START_CONTINUE:
            return None
        base = None if live else self._trained_base()
        if base is not None:
            return base
        info = self._model_info(self.session.last_model)
        if info is None or info[0] != self.method_combo.currentText():
            return None
        return self.session.last_model

    def _trained_base(self):
        """The model of the last run that was not a warm live run, while it is usable for the
        chosen method and the current classes; None otherwise (also once the session has
        forgotten its last model, e.g. for another image)."""
        if self.session.last_model is None:
            return None
        names = [c.name for c in self.session.classes]
        if self._model_info(self._base) != (self.method_combo.currentText(), names):
            return None
        return self._base

    def _last_model_info(self) -> tuple[str, list[str]] | None:
        """(method name, class names) of the session's last model; None without a usable one."""
        return self._model_info(self.session.last_model)

    @staticmethod
    def _model_info(model) -> tuple[str, list[str]] | None:
        """(method name, class names) of a trained method or model folder; None when unusable."""
        from ..errors import ModelError
        from ..methods.base import Method, read_model_config

        if isinstance(model, Method):
            return model.name, [c.name for c in model.classes]
        if model is None:
            return None
        try:
            meta = read_model_config(model)
        except ModelError:  # deleted or broken since: nothing to continue from
            return None
        classes = meta.get("classes") or []
        return str(meta.get("method")), [str(c.get("name")) for c in classes if isinstance(c, dict)]

    def use_backbone(self, folder: str | None = None) -> None:
        """Fill mews's ``backbone_weights`` with ``folder`` (default: the project's backbone)."""
        if self.method_combo.currentText() != "mews" or self.options is None:
            return
        if folder is None:
            project = self.session.project
            default = project.mews_backbone if project is not None else None
            if default is None:
                return
            folder = str(default)
        self.options.set_values(backbone_weights=folder)

    # ------------------------------------------------------------------------------ helpers
    def _build_job(self, live: bool = False) -> TrainingJob:
        from ..methods.base import FitOptions

        session = self.session
        image = session.require_image()
        annotations, warnings = session.validated_snapshot()
        method = get_method(self.method_combo.currentText())(config=self.options.config())
        init = self.warm_start_model(live=live)
        budget = self.budget_spin.value() or None
        self._cancel = threading.Event()
        options = FitOptions(
            device=self.device_combo.currentText(),
            seed=self.seed_spin.value(),
            time_budget_s=budget,
            cancel=self._cancel,
            warm_steps=(self.live_steps_spin.value() or method.live_steps) if live else None,
            focus=self._live_focus(annotations) if live else None,
            warm_lr_factor=LIVE_LR_FACTOR if live else None,
            warm_keep=LIVE_KEEP if live else None,
        )
        self._last_job_annotations = annotations
        for message in warnings:
            notify_warning(f"{message}")
        name = self.model_name.text().strip() or self._automatic_model_name(method.name)
        if live:
            name = f"{method.name}-live"
        # A live run is seconds long: a mid-run preview would only delay its final prediction.
        every = self.preview_every.value() if self.preview_check.isChecked() and not live else 0.0
        region = visible_window(session.image_layer, image) if live else None
        job = TrainingJob(
            method,
            image,
            annotations,
            options,
            preview_z=session.current_z(),
            preview_every_s=every,
            model_name=name,
            save_model=lambda m, folder: self._save_model(m, folder, name, method.name),
            init=init,
            preview_region=region,
            draft_first=live,
        )
        return job

    def _live_focus(self, annotations: Annotations):
        """Where a live run should look: the points and boxes added since the last job (None
        before any job)."""
        last = self._last_job_annotations
        return None if last is None else annotations.added_since(last)

    def _start(self, job: TrainingJob, live: bool):
        from napari.qt.threading import create_worker

        avoid_triton_llvm_crash()
        run = RUN_MODES[self.run_combo.currentText()]
        if live and run is run_training_in_subprocess:
            run = self.live_process.run  # one process for all live runs: no start, features kept
        self._final_shown = False
        worker = create_worker(
            run,
            job,
            progress=throttle(self._signals.progress.emit),
            preview=self._signals.preview.emit,
            _ignore_errors=True,
            _start_thread=False,
        )
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda exc: self._on_error(exc, job.method.name))
        worker.finished.connect(self._on_finished)
        self.loss_plot.clear()
        self._cancelled = None
        self.keep_button.setEnabled(False)
        self.progress_bar.setRange(0, 0)
        self.progress_label.setText(f"training {job.method.name}…")
        self.train_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        QTimer.singleShot(0, worker.start)  # after the caller has connected to the worker's signals
        return worker

    def _automatic_model_name(self, method_name: str) -> str:
        """``<method>-<date>-<time>``, with ``-2``, ``-3``, ... when the project already has a
        model of that name: two runs started within one second must not replace each other."""
        base = f"{method_name}-{time.strftime('%Y%m%d-%H%M%S')}"
        project, name, count = self.session.project, base, 1
        while project is not None and project.model_dir(name).exists():
            count += 1
            name = f"{base}-{count}"
        return name

    def _save_model(self, method, folder, name: str, method_name: str) -> str | None:
        """Save the trained ``method`` (or copy ``folder``, where the training process saved it)
        into the project as model ``name``, under the project lock (any thread)."""
        project = self.session.project
        if project is None:
            return None
        with self.session.project_lock:
            if method is not None:
                project.save_model(method, name)
            else:
                from ..methods.base import load_model

                project.save_model(load_model(folder), name)  # written again: checked and atomic
                remove_temporary_model(folder)
        return name

    def _show_options(self, method_name: str) -> None:
        layout = self.options_box.layout()
        if self.options is not None:
            layout.removeWidget(self.options.native)
            self.options.native.deleteLater()
        avoid_triton_llvm_crash()  # importing a torch method's module may pull torch in
        method_class = get_method(method_name)
        self.options = ConfigForm(method_class.config_class, main=method_class.main_options)
        layout.addWidget(self.options.native)
        self.options_box.setTitle(f"{method_name} options")
        try:
            self.use_backbone()
        except WssegError as exc:  # a project.json naming a folder outside the project
            notify_error(str(exc))

    def _follow_slice(self, event=None) -> None:
        if self.job is not None:
            self.job.preview_z = self.session.current_z()

    def _set_opacity(self, value: int) -> None:
        for layer in L.find_layers(self.viewer.layers, "prediction"):
            layer.opacity = value / 100.0

    # -------------------------------------------------------------------------------- slots
    def _on_progress(self, event: ProgressEvent) -> None:
        set_progress_bar(self.progress_bar, event)
        parts = [f"step {event.done}/{event.total}"]
        if event.eta_s is not None:
            parts.append(f"ETA {_duration(event.eta_s)}")
        loss = event.metrics.get("loss")
        if isinstance(loss, (int, float)):
            parts.append(f"loss {loss:.4g}")
            self.loss_plot.add(float(loss))
        if event.message:
            parts.append(event.message)
        self.progress_label.setText(" · ".join(parts))

    def _on_preview(self, result: SlicePrediction) -> None:
        self._show(result)
        self._final_shown = self._final_shown or result.final

    def prepare_live_process(self) -> None:
        """Start the live runs' training process ahead of the first live run: imports done and,
        when there is a model to continue from, the image sent and what the first live run
        begins with computed (rf: the annotated slices' filter features)."""
        if RUN_MODES[self.run_combo.currentText()] is not run_training_in_subprocess:
            return
        image = annotations = None
        init = self.warm_start_model(live=True)
        if init is not None:
            try:
                image = self.session.require_image()
            except AnnotationError:
                init = None  # no image to compute on: imports only
            else:
                annotations = self.session.snapshot()
        self.live_process.prepare(self.method_combo.currentText(), image, init, annotations)

    def release_live_process(self) -> None:
        """End the live runs' training process unless a run is using it (then at its end)."""
        if not self.is_running:
            self.live_process.close()

    def _show(self, result: SlicePrediction) -> None:
        session = self.session
        if session.image_layer is None or session.image_layer not in self.viewer.layers:
            return
        L.show_slice_result(
            self.viewer,
            session.image_layer,
            self.job.annotations.classes,
            result.z,
            result.labels,
            result.uncertainty,
            region=result.region,
            opacity=self.opacity_slider.value() / 100.0,
            project=session.project_folder,
        )

    def _on_returned(self, outcome: TrainingOutcome) -> None:
        self.last_outcome = outcome
        cancelled = self._cancel is not None and self._cancel.is_set()
        for message in outcome.warnings:  # e.g. a warm start that fell back to a cold one
            notify_warning(message)
        if not outcome.trained:
            self.progress_label.setText(f"{outcome.method.name}: cancelled; no model")
            notify_info(f"{outcome.method.name}: cancelled before a model was kept; nothing saved")
            return
        if not self._final_shown:  # normally already shown as the final preview
            self._show(outcome.final)
        if cancelled:
            self._cancelled = (outcome, self.job.model_name)
            self.keep_button.setEnabled(self.session.project is not None)
            self.session.last_model, self.session.last_model_name = (
                outcome.model_dir or outcome.method,
                None,
            )
            self.progress_label.setText(
                f"{outcome.method.name}: cancelled; the model is not saved "
                "(Keep cancelled model saves it)"
            )
            notify_info(
                f"{outcome.method.name} cancelled: the model so far is usable in Predict "
                "(last trained) but not saved; Keep cancelled model saves it"
            )
            return
        # a model trained in a separate process is loaded (from its folder) when it is used
        project = self.session.project
        previous = self.session.last_model
        if outcome.model_name and project is not None:
            self.session.last_model = project.model_dir(outcome.model_name)
        else:
            self.session.last_model = outcome.model_dir or outcome.method
        self.session.last_model_name = outcome.model_name
        if not (self._live_run and outcome.warm):
            self._base = self.session.last_model
        if (
            self._live_run
            and previous not in (None, self._base)
            and not isinstance(previous, Method)
        ):
            # without a project each live run leaves a temporary model folder: keep only the
            # last one (a folder is deleted only if it carries napari-wsseg's temporary marker)
            remove_temporary_model(previous)
        self.progress_label.setText(summary(outcome) + self._continue_hint(outcome))
        if not self._live_run:  # a live run every few clicks: the label says it, no toast
            notify_info(summary(outcome))
        self.suggest_panel.refresh()  # suggestions follow the new model

    def _continue_hint(self, outcome: TrainingOutcome) -> str:
        """For a short warm run, how to learn the new annotations more fully; empty otherwise.

        A continued run keeps the model it started from but learns little of many new labels:
        from 1 click per class and slice plus 3 rounds of 1 more, continued dsp runs stayed at
        41.7 and 56.6 Dice where full trainings from scratch reached 50.4 and 60.0
        (drosophila_vnc, cdeep3m_mito, validation slices, session 12). A training from scratch
        cut to a 60 s budget is worse than continuing: 27.7 and 54.3 against 41.6 and 55.9
        after the first round."""
        if not outcome.warm or outcome.method.warm_fit_is_complete:
            return ""
        if self._live_run:
            return (
                ". A live run is a quick correction: press Train to learn your new annotations "
                "(it continues from the last trained model)"
            )
        return (
            ". A continued run is a short refresh: after many new annotations, train from "
            "scratch without a time budget (the method's full run) to learn them fully"
        )

    def _on_error(self, exc: Exception, method_name: str) -> None:
        message = user_message(exc, f"training {method_name}")
        self.progress_label.setText(message)  # the whole message, also when the toast elides it
        notify_error(message)

    def _on_finished(self) -> None:
        if self.progress_label.text() == "cancelling…":
            self.progress_label.setText("cancelled")
        self.worker = None
        self.job = None
        self._cancel = None
        self.train_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.choose_default_start()
        if self.progress_bar.maximum() == 0:
            self.progress_bar.setRange(0, 1)
        if not self.live.enabled:
            self.live_process.close()
        self.live.run_finished()


def summary(outcome: TrainingOutcome) -> str:
    """One line: method, time, steps, why it stopped, where it was saved, Dice on dense slices."""
    fit = outcome.fit
    start = "continued from the last model" if outcome.warm else "trained"
    text = f"{outcome.method.name} {start} in {_duration(outcome.seconds)}"
    if fit is not None:
        text += f" ({fit.steps} steps, {fit.stopped.replace('_', ' ')})"
    text += (
        f"; saved as model '{outcome.model_name}'"
        if outcome.model_name
        else "; not saved (no project)"
    )
    if outcome.dice:
        scores = ", ".join(f"slice {z}: {d:.3f}" for z, d in outcome.dice.items() if d is not None)
        text += f"; mean Dice on densely labelled {scores}"
    return text


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds} s"


class LossPlot(QWidget):
    """A tiny line plot of the training loss (no plotting library: a QPainter polyline)."""

    MAX_POINTS = 400

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.values: list[float] = []
        self.setMinimumHeight(60)
        self.setMaximumHeight(120)
        self.setToolTip("training loss")

    def clear(self) -> None:
        self.values = []
        self.update()

    def add(self, value: float) -> None:
        self.values.append(value)
        if len(self.values) > self.MAX_POINTS:
            self.values = self.values[::2]
        self.update()

    def paintEvent(self, event) -> None:  # noqa: N802 (Qt name)
        painter = QPainter(self)
        painter.fillRect(self.rect(), QColor(38, 41, 48))
        if len(self.values) < 2:
            painter.setPen(QColor(140, 140, 140))
            painter.drawText(
                self.rect(),
                Qt.AlignmentFlag.AlignCenter,
                "training loss (if the method reports one)",
            )
        else:
            low, high = min(self.values), max(self.values)
            span = (high - low) or 1.0
            w, h = self.width() - 8, self.height() - 16
            points = [
                QPointF(4 + w * i / (len(self.values) - 1), 4 + h * (1 - (v - low) / span))
                for i, v in enumerate(self.values)
            ]
            painter.setPen(QPen(QColor(255, 170, 60), 1.5))
            painter.drawPolyline(QPolygonF(points))
            painter.setPen(QColor(200, 200, 200))
            painter.drawText(4, self.height() - 2, f"loss {self.values[-1]:.4g}  (min {low:.4g})")
        painter.end()
