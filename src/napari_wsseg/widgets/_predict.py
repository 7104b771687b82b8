"""The Predict dock widget: the current slice, the visible region or the whole volume.

Slice and region predictions go into the image's 'prediction' Labels layer (label k = class
k - 1) and 'uncertainty' layer, like the training previews. Whole-volume prediction runs the
block-wise predictor (:func:`~napari_wsseg.predict.volume.predict_volume`) into a zarr store (the
project's ``predictions/`` folder, or a path you give) with progress and cancel, and opens the
result lazily as a Labels layer. All of it runs in a thread worker; loading a model from disk
happens there too.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QWidget,
)

from ..errors import ModelError, WssegError
from ..progress import ProgressEvent
from ..training import SlicePrediction, avoid_triton_llvm_crash, predict_slice
from . import _layers as L
from ._export import make_export_button
from ._links import link
from ._notify import notify_error, notify_info, notify_warning, user_message
from ._progress import show_progress
from ._scroll import scroll_layout
from ._session import session_for

if TYPE_CHECKING:
    import napari

SCOPES = ("current slice", "visible region", "whole volume")
LAST_TRAINED = "last trained (in memory)"


@dataclass
class RegionPrediction:
    """A slice prediction (limited to a (y, x) window of the slice, or not) and its classes."""

    prediction: SlicePrediction
    region: tuple[slice, slice] | None
    classes: list


@dataclass
class VolumeOutput:
    """A finished (or cancelled) whole-volume prediction on disk."""

    path: Path
    stopped: str
    model_name: str
    classes: list


class _PredictSignals(QObject):
    progress = Signal(object)


class PredictWidget(QWidget):
    """Choose a model and what to predict; results appear as layers."""

    def __init__(self, napari_viewer: "napari.Viewer", parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.worker = None
        self._cancel: threading.Event | None = None
        self._model_folder: Path | None = None
        self._error_shown = False
        self._signals = _PredictSignals()

        self.model_combo = QComboBox()
        self.load_button = QPushButton("Model folder…")
        self.refresh_button = QPushButton("↻")
        self.refresh_button.setToolTip("refresh the list of models")
        self.scope_combo = QComboBox()
        self.scope_combo.addItems(list(SCOPES))
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText(
            "whole volume: OUT.zarr (default: the project's predictions/)"
        )
        self.predict_button = QPushButton("Predict")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_label = QLabel("")
        self.progress_label.setWordWrap(True)
        self._layout()
        self.load_button.clicked.connect(self._ask_model_folder)
        self.refresh_button.clicked.connect(self.refresh_models)
        self.predict_button.clicked.connect(self.predict)
        self.cancel_button.clicked.connect(self.cancel)
        self._signals.progress.connect(self._on_progress)
        link(self, self.session.attached, self.refresh_models)
        self.refresh_models()

    def _layout(self) -> None:
        layout = scroll_layout(self)
        form = QFormLayout()
        row = QHBoxLayout()
        row.addWidget(self.model_combo, 1)
        row.addWidget(self.refresh_button)
        row.addWidget(self.load_button)
        form.addRow("model", row)
        form.addRow("predict", self.scope_combo)
        form.addRow("output", self.output_edit)
        layout.addLayout(form)
        row = QHBoxLayout()
        row.addWidget(self.predict_button)
        row.addWidget(self.cancel_button)
        row.addWidget(make_export_button(self))
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.progress_label)
        layout.addStretch(1)

    # ------------------------------------------------------------------------ public actions
    def refresh_models(self) -> None:
        """List the last trained model, the project's models and a chosen model folder."""
        current = self.model_combo.currentText()
        choices = []
        if self.session.last_model is not None:
            choices.append(LAST_TRAINED)
        if self.session.project is not None:
            choices += self.session.project.list_models()
        if self._model_folder is not None:
            choices.append(str(self._model_folder))
        self.model_combo.clear()
        self.model_combo.addItems(choices)
        if current in choices:
            self.model_combo.setCurrentText(current)

    def set_model_folder(self, folder) -> None:
        """Use the model saved in ``folder`` (a model folder written by training)."""
        self._model_folder = Path(folder)
        self.refresh_models()
        self.model_combo.setCurrentText(str(self._model_folder))

    def predict(self):
        """Start the prediction chosen in the form; return its worker (None: it did not start)."""
        from napari.qt.threading import create_worker

        if self.worker is not None:
            notify_error("a prediction is already running; wait for it or press Cancel")
            return None
        avoid_triton_llvm_crash()
        try:
            image = self.session.require_image()
            source = self._model_source()
            scope = self.scope_combo.currentText()
            self._cancel = threading.Event()
            progress = self._signals.progress.emit
            if scope == "whole volume":
                out = self._output_path()
                worker = create_worker(
                    _predict_volume,
                    source,
                    image,
                    out,
                    self._model_name(),
                    progress=progress,
                    cancel=self._cancel,
                    _ignore_errors=True,
                    _start_thread=False,
                )
            else:
                z = self.session.current_z()
                region = self.visible_region(image) if scope == "visible region" else None
                worker = create_worker(
                    _predict_region,
                    source,
                    image,
                    z,
                    region,
                    _ignore_errors=True,
                    _start_thread=False,
                )
        except WssegError as exc:
            notify_error(str(exc))
            return None
        worker.returned.connect(self._on_returned)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._error_shown = False
        self.predict_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.progress_label.setText(f"predicting the {scope}…")
        QTimer.singleShot(0, worker.start)  # after the caller has connected to the worker's signals
        return worker

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.progress_label.setText("cancelling…")

    # ------------------------------------------------------------------------------ helpers
    def _model_source(self):
        """A trained Method, or a model folder (loaded in the worker)."""
        choice = self.model_combo.currentText()
        if not choice:
            raise ModelError("no model to predict with; train one, or pick a model folder")
        if choice == LAST_TRAINED:
            return self.session.last_model
        if self.session.project is not None and choice in self.session.project.list_models():
            return self.session.project.model_dir(choice)
        return Path(choice)

    def _model_name(self) -> str:
        choice = self.model_combo.currentText()
        if choice == LAST_TRAINED:
            return self.session.last_model_name or self.session.last_model.name
        return Path(choice).name

    def _output_path(self) -> Path:
        text = self.output_edit.text().strip()
        if text:
            if not text.endswith(".zarr"):
                raise WssegError(
                    f"output '{text}' must end in .zarr (whole volumes are written as zarr)"
                )
            return Path(text).expanduser()
        project = self.session.project
        if project is None:
            raise WssegError(
                "no output for the whole volume: type an OUT.zarr path, or open a project"
            )
        path = project.prediction_path(self._model_name())
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def visible_region(self, image) -> tuple[slice, slice]:
        """The (y, x) window of the image the canvas shows (napari's ``corner_pixels``)."""
        return L.canvas_window(self.session.image_layer, image)

    def _ask_model_folder(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Model folder (with config.json)")
        if folder:
            self.set_model_folder(folder)

    # -------------------------------------------------------------------------------- slots
    def _on_progress(self, event: ProgressEvent) -> None:
        show_progress(self.progress_bar, self.progress_label, event)

    def _on_returned(self, result) -> None:
        session = self.session
        self._warn_if_classes_differ(result.classes)
        if isinstance(result, VolumeOutput):
            self._open_volume(result)
            return
        prediction = result.prediction
        L.show_slice_result(
            self.viewer,
            session.image_layer,
            result.classes,
            prediction.z,
            prediction.labels,
            prediction.uncertainty,
            region=result.region,
            project=session.project_folder,
        )

    def _warn_if_classes_differ(self, model_classes) -> None:
        """Predictions show the model's classes; say so when they are not the session's."""
        model_names = [c.name for c in model_classes]
        names = [c.name for c in self.session.classes]
        if model_names != names:
            notify_warning(
                f"the model was trained with classes {model_names}, the image now has {names}; "
                "the prediction shows the model's classes (retrain to use the current ones)"
            )

    def _open_volume(self, result: VolumeOutput) -> None:
        from ..io import read_labels

        labels = read_labels(result.path)
        image_layer = self.session.image_layer
        name = f"{image_layer.name} prediction {result.model_name}"
        if name in self.viewer.layers:
            self.viewer.layers.remove(name)
        L.add_above_image(
            self.viewer,
            image_layer,
            lambda: self.viewer.add_labels(
                labels + 1,
                name=name,
                colormap=L.labels_colormap(result.classes),
                opacity=0.5,
                scale=image_layer.scale,
                translate=image_layer.translate,
                metadata=L.role_metadata(
                    "prediction", self.session.project_folder, path=str(result.path), volume=True
                ),
            ),
        )
        project = self.session.project
        if project is not None and Path(result.path).parent == project.folder / "predictions":
            with self.session.project_lock:
                project.record_prediction(Path(result.path).stem, result.model_name)
        state = (
            "cancelled: the blocks done so far are"
            if result.stopped == "cancelled"
            else "prediction"
        )
        notify_info(f"{state} written to {result.path}")

    def _on_error(self, exc: Exception) -> None:
        message = user_message(exc, "prediction")
        self._error_shown = True
        self.progress_label.setText(message)  # the whole message, also when the toast elides it
        notify_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel = None
        self.predict_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)
        if not self._error_shown:
            self.progress_label.setText("")


# ------------------------------------------------------------------------ worker functions (no Qt)
def _load(source):
    from ..methods.base import Method, load_model

    return source if isinstance(source, Method) else load_model(source)


def _predict_region(source, image, z: int, region):
    """Predict slice ``z`` (or a (y, x) window of it, with the model's halo of context)."""
    model = _load(source)
    model.check_image(image)
    if region is None:
        return RegionPrediction(predict_slice(model, image, z), None, list(model.classes))
    from ..predict.slices import predict_slice_proba  # with the halo and halo_z neighbours

    proba = predict_slice_proba(model, image, int(z), region)
    labels = np.argmax(proba, axis=0).astype(np.uint8)
    return RegionPrediction(
        SlicePrediction(int(z), labels, L.entropy_map(proba)), region, list(model.classes)
    )


def _predict_volume(
    source, image, out: Path, name: str, *, progress=None, cancel=None
) -> VolumeOutput:
    from ..predict.volume import predict_volume

    model = _load(source)
    model.check_image(image)
    result = predict_volume(model, image, out, overwrite=True, progress=progress, cancel=cancel)
    return VolumeOutput(Path(out), result.stopped, name, list(model.classes))
