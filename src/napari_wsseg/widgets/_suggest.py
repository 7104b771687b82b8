"""The "Annotate here next" panel: where a few more labels would help the last model most.

A thread worker runs :func:`napari_wsseg.predict.suggest.suggest` with the session's last model
on the current slice (and, if ticked, every annotated slice). The result is shown as a Shapes
layer of numbered boxes (text = rank), placed just below the annotation layers and never
selected, and as a list; `N` / `Shift+N` (bound on the viewer) move the view to the next /
previous suggestion: the dims to its slice, the camera centre to its pixel. After each training
the Train widget asks the panel to update the suggestions it shows.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import WssegError
from . import _layers as L
from ._links import on_destroyed
from ._notify import notify_error, notify_info, user_message
from ._session import ANNOTATION_ROLES, session_for

if TYPE_CHECKING:
    import napari

    from ..predict.suggest import Suggestion

ROLE = "suggestions"
NEXT_KEY, PREVIOUS_KEY = "N", "Shift-N"
DEFAULT_N = 10
BOX_COLOR = "#ffd400"


class SuggestPanel(QWidget):
    """Button, number of suggestions, scope, list; the boxes layer and the N / Shift+N keys."""

    def __init__(self, napari_viewer: "napari.Viewer", parent=None) -> None:
        super().__init__(parent)
        self.session = session_for(napari_viewer)
        self.viewer = self.session.viewer
        self.worker = None
        self.suggestions: list[Suggestion] = []
        self.current = -1
        self.button = QPushButton("Annotate here next")
        self.button.setToolTip(
            "rank regions by how much a label there would help the last trained model "
            "(uncertain, rare classes, spread out); N / Shift+N jump to the next / previous"
        )
        self.n_spin = QSpinBox()
        self.n_spin.setRange(1, 200)
        self.n_spin.setValue(DEFAULT_N)
        self.all_slices = QCheckBox("also all annotated slices")
        self.list = QListWidget()
        self.list.setMaximumHeight(120)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        row = QHBoxLayout()
        row.addWidget(self.button)
        form = QFormLayout()
        form.addRow("suggestions", self.n_spin)
        row.addLayout(form)
        layout.addLayout(row)
        layout.addWidget(self.all_slices)
        layout.addWidget(self.list)
        layout.addWidget(self.label)
        self.button.clicked.connect(self.compute)
        self.list.currentRowChanged.connect(self._on_row)
        self._bind_keys()

    # ------------------------------------------------------------------------ public actions
    def compute(self):
        """Start computing suggestions in a worker; returns it (None if it could not start)."""
        if self.worker is not None:
            return self.worker
        try:
            source, image, annotations, slices = self._inputs()
        except WssegError as exc:
            notify_error(str(exc))
            return None
        from napari.qt.threading import create_worker

        self.worker = create_worker(
            _suggest,
            source,
            image,
            annotations,
            slices,
            self.n_spin.value(),
            threading.Event(),
            _ignore_errors=True,
            _start_thread=False,
        )
        self.worker.returned.connect(self.show_suggestions)
        self.worker.errored.connect(self._on_error)
        self.worker.finished.connect(self._on_finished)
        self.button.setEnabled(False)
        self.label.setText("finding where to annotate next…")
        QTimer.singleShot(0, self.worker.start)  # after the caller has connected to its signals
        return self.worker

    def refresh(self):
        """Recompute the suggestions if some are shown (called after each training)."""
        if self._layer() is None:
            return None
        return self.compute()

    def jump(self, step: int) -> None:
        """Move the view ``step`` suggestions on (1: next, -1: previous), wrapping around."""
        if not self.suggestions:
            notify_info("no suggestions yet; press 'Annotate here next' after training")
            return
        self.list.setCurrentRow((self.current + step) % len(self.suggestions))

    def show_suggestions(self, suggestions: list[Suggestion]) -> None:
        """Show ``suggestions`` (best first) as numbered boxes and in the list."""
        self.suggestions = list(suggestions)
        self.current = -1
        self._show_layer()
        self.list.blockSignals(True)
        self.list.clear()
        for rank, s in enumerate(self.suggestions, 1):
            where = f"slice {s.z}, " if self._is_3d() else ""
            self.list.addItem(f"{rank}. {where}y {s.y}, x {s.x} (score {s.score:.2f})")
        self.list.blockSignals(False)
        self.label.setText(
            f"{len(self.suggestions)} suggestion(s); N / Shift+N: next / previous"
            if self.suggestions
            else "no suggestions: every scored pixel is labelled or the model is sure"
        )

    # ------------------------------------------------------------------------------ helpers
    def _inputs(self):
        source = self.session.last_model
        if source is None:
            raise WssegError("no trained model for suggestions; train a model first (Train)")
        image = self.session.require_image()
        annotations = self.session.snapshot()
        slices = {self.session.current_z()}
        if self.all_slices.isChecked():
            slices.update(_annotated_slices(annotations))
        return source, image, annotations, sorted(slices)

    def _is_3d(self) -> bool:
        return self.session.image is not None and L.spatial_ndim(self.session.image) == 3

    def _layer(self):
        layers = L.find_layers(self.viewer.layers, ROLE)
        return layers[0] if layers else None

    def _show_layer(self) -> None:
        old = self._layer()
        with L.keep_selection(self.viewer):
            if old is not None:
                self.viewer.layers.remove(old)
            if not self.suggestions:
                return
            layer = self.viewer.add_shapes(**self._layer_kwargs())
            self.viewer.layers.move(self.viewer.layers.index(layer), self._below_annotations())

    def _layer_kwargs(self) -> dict:
        three_d = self._is_3d()
        image_layer = self.session.image_layer
        return {
            "data": [_rectangle(s, three_d) for s in self.suggestions],
            "shape_type": "rectangle",
            "name": f"{image_layer.name} suggestions",
            "edge_color": BOX_COLOR,
            "face_color": "transparent",
            "edge_width": 1,
            "features": {"rank": np.arange(1, len(self.suggestions) + 1)},
            "text": {"string": "{rank}", "color": BOX_COLOR, "anchor": "upper_left", "size": 10},
            "scale": image_layer.scale[-(3 if three_d else 2) :],
            "translate": image_layer.translate[-(3 if three_d else 2) :],
            "metadata": L.role_metadata(ROLE, self.session.project_folder),
        }

    def _below_annotations(self) -> int:
        """The layer index just below the lowest annotation layer (the end if there is none)."""
        layers = self.viewer.layers
        roles = [L.layer_role(layer) for layer in layers]
        indices = [i for i, role in enumerate(roles) if role in ANNOTATION_ROLES]
        return min(indices) if indices else len(layers)

    def _on_row(self, row: int) -> None:
        if not 0 <= row < len(self.suggestions):
            return
        self.current = row
        s = self.suggestions[row]
        image_layer = self.session.image_layer
        three_d = self._is_3d()
        data = [s.z, s.y, s.x] if three_d else [s.y, s.x]
        world = np.asarray(image_layer.data_to_world(data))
        if three_d:
            self.viewer.dims.set_point(self.viewer.dims.ndim - 3, float(world[0]))
        camera(self.viewer).center = tuple(float(v) for v in world[-2:])
        self.label.setText(f"suggestion {row + 1} of {len(self.suggestions)}")

    def _bind_keys(self) -> None:
        self.viewer.bind_key(NEXT_KEY, lambda _=None: self.jump(1), overwrite=True)
        self.viewer.bind_key(PREVIOUS_KEY, lambda _=None: self.jump(-1), overwrite=True)
        viewer = weakref.ref(self.viewer)
        on_destroyed(self, lambda: _unbind_keys(viewer()))

    def _on_error(self, exc: Exception) -> None:
        message = user_message(exc, "finding suggestions")
        self.label.setText(message)
        notify_error(message)

    def _on_finished(self) -> None:
        self.worker = None
        self.button.setEnabled(True)


def _suggest(source, image, annotations, slices: list[int], n: int, cancel) -> list:
    """Load the model if needed and rank where to annotate (runs in the worker thread)."""
    from ..methods.base import Method, load_model
    from ..predict.suggest import SuggestConfig, suggest

    model = source if isinstance(source, Method) else load_model(source)
    return suggest(
        model,
        image,
        annotations=annotations,
        slices=slices,
        config=SuggestConfig(n=n),
        cancel=cancel,
    )


def _annotated_slices(annotations) -> set[int]:
    """Slices with points, boxes or mask pixels."""
    zs: set[int] = set()
    if len(annotations.points):
        zs.update(int(z) for z in np.asarray(annotations.points)[:, 0])
    if len(annotations.boxes):
        zs.update(int(z) for z in np.asarray(annotations.boxes)[:, 0])
    if annotations.masks is not None:
        masks = np.asarray(annotations.masks)
        zs.update(np.flatnonzero(masks.reshape(len(masks), -1).any(axis=1)).tolist())
    return zs


def _rectangle(s: "Suggestion", three_d: bool) -> np.ndarray:
    """The corners of the suggestion's cell, on pixel edges (cells are ``[y0, y1) x [x0, x1)``)."""
    y0, x0, y1, x1 = s.y0 - 0.5, s.x0 - 0.5, s.y1 - 0.5, s.x1 - 0.5
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    if three_d:
        corners = np.column_stack([np.full(4, s.z), corners])
    return corners


def camera(viewer):
    """The viewer's camera (``viewer.scene.camera`` from napari 0.9, ``viewer.camera`` before)."""
    scene = getattr(viewer, "scene", None)
    return scene.camera if scene is not None else viewer.camera


def _unbind_keys(viewer) -> None:
    if viewer is None:  # freed already, its key bindings with it
        return
    for key in (NEXT_KEY, PREVIOUS_KEY):
        try:
            viewer.bind_key(key, None)
        except (KeyError, ValueError, TypeError):  # already unbound or the viewer is gone
            pass
