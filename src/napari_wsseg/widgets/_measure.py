"""The Measure dock widget: objects of a prediction layer as an instance layer and a table.

The measurement itself is :func:`napari_wsseg.measure.measure_labels`, run in a thread worker
with progress and cancel. A prediction layer holds label ``k`` for class ``k - 1`` (0 is
unlabelled), so layer values 1..K are measured and named after the session's classes. The table
is sortable; selecting a row moves the view to the object's centroid. "Export CSV…" writes the
objects, summary and per-slice tables.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QProgressBar,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..errors import WssegError
from ..progress import ProgressEvent
from ._layers import keep_selection
from ._notify import notify_error, notify_exception, notify_info
from ._progress import show_progress
from ._session import session_for

if TYPE_CHECKING:
    import napari

NO_IMAGE = "(none)"


class _MeasureSignals(QObject):
    progress = Signal(object)


class MeasureWidget(QWidget):
    """Measure the objects of a Labels layer; show the instances and a sortable table."""

    def __init__(self, napari_viewer: "napari.Viewer", parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.worker = None
        self.result = None
        self._source = None
        self._cancel: threading.Event | None = None
        self._signals = _MeasureSignals()
        self.labels_combo = QComboBox()
        self.image_combo = QComboBox()
        self.voxel_edit = QLineEdit()
        self.voxel_edit.setPlaceholderText(
            "Z,Y,X µm (default: the layer's scale if not 1, else the project's)"
        )
        self.instances_edit = QLineEdit()
        self.instances_edit.setPlaceholderText("instances OUT.zarr (needed for lazy layers)")
        self.measure_button = QPushButton("Measure")
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setEnabled(False)
        self.export_button = QPushButton("Export CSV…")
        self.export_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.status = QLabel("")
        self.table = QTableWidget()
        self.table.setSortingEnabled(True)
        self.table.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        self._layout()
        self.measure_button.clicked.connect(self.measure)
        self.cancel_button.clicked.connect(self.cancel)
        self.export_button.clicked.connect(self._ask_csv_path)
        self.table.itemSelectionChanged.connect(self._centre_on_selection)
        self._signals.progress.connect(self._on_progress)
        self.viewer.layers.events.inserted.connect(self.refresh_layers)
        self.viewer.layers.events.removed.connect(self.refresh_layers)
        self.refresh_layers()

    def _layout(self) -> None:
        layout = QVBoxLayout(self)
        form = QFormLayout()
        form.addRow("labels", self.labels_combo)
        form.addRow("image", self.image_combo)
        form.addRow("voxel size", self.voxel_edit)
        form.addRow("instances", self.instances_edit)
        layout.addLayout(form)
        row = QHBoxLayout()
        for button in (self.measure_button, self.cancel_button, self.export_button):
            row.addWidget(button)
        layout.addLayout(row)
        layout.addWidget(self.progress_bar)
        layout.addWidget(self.status)
        layout.addWidget(self.table, 1)

    # ------------------------------------------------------------------------ public actions
    def refresh_layers(self, *_) -> None:
        """List the Labels layers (prediction layers first) and the Image layers."""
        from napari.layers import Image, Labels

        current = self.labels_combo.currentText()
        names = [
            layer.name
            for layer in self.viewer.layers
            if isinstance(layer, Labels) and not layer.name.endswith(" instances")
        ]
        names.sort(key=lambda n: "prediction" not in n)
        self.labels_combo.clear()
        self.labels_combo.addItems(names)
        if current in names:
            self.labels_combo.setCurrentText(current)
        images = [layer.name for layer in self.viewer.layers if isinstance(layer, Image)]
        self.image_combo.clear()
        self.image_combo.addItems([NO_IMAGE, *images])

    def measure(self):
        """Start measuring the chosen layer; returns the worker (None if it could not start)."""
        from napari.qt.threading import create_worker

        from ..measure import measure_labels

        if self.worker is not None:
            notify_error("a measurement is already running; wait for it or press Cancel")
            return None
        try:
            layer = self._labels_layer()
            kwargs = self._measure_kwargs(layer)
        except WssegError as exc:
            notify_error(str(exc))
            return None
        self._source = layer
        self._cancel = threading.Event()
        worker = create_worker(
            measure_labels,
            layer.data,
            **kwargs,
            progress=self._signals.progress.emit,
            cancel=self._cancel,
            _ignore_errors=True,
            _start_thread=False,
        )
        worker.returned.connect(self._on_returned)
        worker.errored.connect(lambda exc: notify_exception(exc, "measurement"))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.measure_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.progress_bar.setRange(0, 0)
        self.status.setText(f"measuring {layer.name}…")
        QTimer.singleShot(0, worker.start)
        return worker

    def cancel(self) -> None:
        if self._cancel is not None:
            self._cancel.set()
            self.status.setText("cancelling…")

    def export_csv(self, path) -> dict:
        """Write the objects, summary and per-slice tables of the last measurement to ``path``."""
        from ..measure import write_tables

        if self.result is None:
            raise WssegError("nothing measured yet; press Measure first")
        paths = write_tables(self.result, path, overwrite=True)
        notify_info(f"tables written to {', '.join(str(p) for p in paths.values())}")
        return paths

    # ------------------------------------------------------------------------------ helpers
    def _labels_layer(self):
        name = self.labels_combo.currentText()
        if not name or name not in self.viewer.layers:
            raise WssegError("no Labels layer to measure; predict first or open a label image")
        return self.viewer.layers[name]

    def _measure_kwargs(self, layer) -> dict:
        """measure_labels options from the form (prediction layers: value k is class k - 1)."""
        from ..measure import parse_voxel_size

        ndim = layer.data.ndim
        text = self.voxel_edit.text().strip()
        scale = tuple(float(s) for s in layer.scale[-ndim:])
        session = session_for(self.viewer)
        voxel_size = (
            parse_voxel_size(text, ndim)
            if text
            else (scale if any(s != 1.0 for s in scale) else _project_voxel_size(session, ndim))
        )
        classes = [c.name for c in session.classes]
        largest = int(layer.data.max()) if isinstance(layer.data, np.ndarray) else len(classes)
        names = ["unlabelled"] + [
            classes[k] if k < len(classes) else f"class{k}"
            for k in range(max(largest, len(classes)))
        ]
        values = list(range(1, len(names)))
        out = self.instances_edit.text().strip() or None
        if out is None and not isinstance(layer.data, np.ndarray):
            raise WssegError(
                f"layer '{layer.name}' is loaded lazily; type an instances OUT.zarr "
                "path so the instance volume can be written to disk"
            )
        image = None
        if self.image_combo.currentText() not in ("", NO_IMAGE):
            image = self.viewer.layers[self.image_combo.currentText()].data
        return {
            "image": image,
            "classes": values,
            "class_names": names,
            "voxel_size": voxel_size,
            "instances_out": out,
        }

    def _ask_csv_path(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save measurements", "measurements.csv", "CSV (*.csv)"
        )
        if path:
            try:
                self.export_csv(path)
            except WssegError as exc:
                notify_error(str(exc))

    # -------------------------------------------------------------------------------- slots
    def _on_progress(self, event: ProgressEvent) -> None:
        show_progress(self.progress_bar, self.status, event)

    def _on_returned(self, result) -> None:
        if result.stopped == "cancelled":
            notify_info("measurement cancelled")
            return
        self.result = result
        source = self._source
        instances = result.instances
        if isinstance(instances, (str, Path)):
            from ..io import read_labels

            instances = read_labels(instances)
        name = f"{source.name} instances"
        with keep_selection(self.viewer):  # the user stays on the layer they were working on
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
            self.viewer.add_labels(
                instances, name=name, scale=source.scale, translate=source.translate
            )
        self._fill_table(result.objects)
        self.export_button.setEnabled(True)
        self.status.setText(f"{len(result.objects)} objects ({result.units})")

    def _fill_table(self, rows: list[dict]) -> None:
        self.table.setSortingEnabled(False)
        columns = list(rows[0]) if rows else []
        self.table.clear()
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(columns):
                value = row[key]
                item = QTableWidgetItem()
                item.setData(
                    Qt.ItemDataRole.DisplayRole,
                    value
                    if isinstance(value, (int, float)) and not isinstance(value, bool)
                    else str(value),
                )
                self.table.setItem(r, c, item)
        self.table.setSortingEnabled(True)

    def _centre_on_selection(self) -> None:
        """Move the view (slice and camera centre) to the selected object's centroid."""
        selected = self.table.selectionModel().selectedRows() if self.table.selectionModel() else []
        if not selected or self._source is None:
            return
        headers = [
            self.table.horizontalHeaderItem(c).text() for c in range(self.table.columnCount())
        ]
        axes = [a for a in "zyx" if f"centroid_{a}" in headers]
        row = selected[0].row()
        point = [
            float(
                self.table.item(row, headers.index(f"centroid_{a}")).data(
                    Qt.ItemDataRole.DisplayRole
                )
            )
            for a in axes
        ]
        world = self._source.data_to_world(point)
        _camera(self.viewer).center = tuple(world[-2:])
        if len(axes) == 3:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, world[0])

    def _on_finished(self) -> None:
        self.worker = None
        self._cancel = None
        self.measure_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(1)


def _camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _project_voxel_size(session, ndim: int):
    """The open project's voxel size for a volume layer (None without a project or a size)."""
    if session.project is None or ndim != 3:
        return None
    return session.project.voxel_size_zyx


def measure_selected_labels(viewer: napari.Viewer):
    """Layer-list action: measure the selected Labels layer in the (docked) Measure widget.

    Opens the Measure widget if it is not docked yet, picks the selected layer and starts the
    measurement; returns the worker (None with a notification when nothing could start).
    """
    from napari.layers import Labels

    layer = viewer.layers.selection.active
    if not isinstance(layer, Labels):
        notify_error("select one Labels layer (a prediction) in the layer list, then Measure")
        return None
    _, widget = viewer.window.add_plugin_dock_widget("napari-wsseg", "Measure")
    widget.refresh_layers()
    widget.labels_combo.setCurrentText(layer.name)
    return widget.measure()
