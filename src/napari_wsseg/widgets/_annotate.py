"""The Annotate dock widget: classes, points / boxes / scribbles, per-slice tags and sizes, project.

The widget is thin: the annotation state lives in the viewer's
:class:`~napari_wsseg.widgets._session.AnnotationSession` (layers + tags + sizes), the layers
hold the points, boxes and scribbles, and every change is autosaved to the project
(:mod:`._autosave`).

Keyboard (while the viewer has focus): ``1``..``9``, ``0`` pick class 1..10; ``Shift+D`` points
(dots), ``Shift+B`` boxes, ``Shift+S`` scribble; ``Ctrl+Z`` / ``Ctrl+Shift+Z`` undo / redo
on the points and boxes layers (the session's history, :mod:`._history`) and napari's own undo
on the scribble layer. The digits replace napari's digit mode keys on the three annotation
layers only; napari's letter keys still work. ``Shift+T`` toggles tag-cells mode (region tags
of grid cells, :mod:`._region_tags`), where Ctrl+Z / Ctrl+Shift+Z undo / redo tag edits and
``Shift+O`` tags the cell under the mouse with the current class only.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import Qt, QTimer, Signal
from qtpy.QtGui import QColor
from qtpy.QtWidgets import (
    QCheckBox,
    QColorDialog,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QGridLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QLineEdit,
    QMessageBox,
    QPushButton,
    QSlider,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..annotations.sizes import grid_lines
from ..errors import WssegError
from . import _layers as L
from ._autosave import Autosaver
from ._links import link
from ._notify import notify_error, notify_info
from ._region_tags import MODE_KEY, ONLY_KEY, RegionTagPanel
from ._scroll import scroll_layout
from ._session import SIZE_SUM_TOLERANCE, UNDO_ROLES, session_for

if TYPE_CHECKING:
    import napari

MODES = {"points": "Shift+D", "boxes": "Shift+B", "scribble": "Shift+S"}
#: Size-grid overlay choices (coarse: 5 x 5 cells of 4 %, fine: 10 x 10 cells of 1 %).
GRIDS = ("off", "coarse", "fine")
_STATUS_DELAY_MS = 250
#: Scribbled pixels are counted in the status line only for masks up to this size.
STATUS_MAX_MASK_VOXELS = 2**26


class AnnotateWidget(QWidget):
    """Pick the image, name the classes, annotate, and keep it all in a project."""

    def __init__(self, napari_viewer: "napari.Viewer", parent=None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session = session_for(napari_viewer)
        self.autosaver = Autosaver(self.session, parent=self)
        self._saved_at = ""
        self._problem = ""

        self.image_combo = QComboBox()
        self.project_label = QLabel("no project: annotations are not saved")
        self.project_label.setWordWrap(True)
        self.new_project_button = QPushButton("New project…")
        self.open_project_button = QPushButton("Open project…")
        self.voxel_size_edit = QLineEdit()
        self.voxel_size_edit.setPlaceholderText("unknown, e.g. 0.05,0.004,0.004")
        self.voxel_size_edit.setToolTip(
            "physical voxel size Z,Y,X in micrometres (one number: isotropic); stored in the "
            "project, used for anisotropy"
        )
        self.voxel_size_row = QWidget()
        self.class_table = _ClassTable()
        self.add_class_button = QPushButton("Add class")
        self.remove_class_button = QPushButton("Remove class")
        self.undo_remove_button = QPushButton("Undo remove")
        self.undo_remove_button.setToolTip(
            "bring back the class removed last, with its annotations"
        )
        self.undo_remove_button.setEnabled(False)
        self.mode_buttons = {
            mode: QPushButton(f"{mode.capitalize()} ({key})") for mode, key in MODES.items()
        }
        self.slice_panel = _SlicePanel(self)
        self.region_panel = RegionTagPanel(self)
        self.import_button = QPushButton("Import CSV…")
        self.export_button = QPushButton("Export CSV…")
        self.status = QLabel()
        self.status.setWordWrap(True)
        self.status.setTextFormat(Qt.TextFormat.RichText)
        self._status_timer = QTimer(self)
        self._status_timer.setSingleShot(True)
        self._status_timer.setInterval(_STATUS_DELAY_MS)
        self._layout()
        self._connect()
        self._refresh_image_choices()
        self._refresh_classes()
        self._bind_keys()
        if not self.session.adopt_project_layers() and self.session.image is None:
            self._attach_selected_image()
        self._on_attached()

    # ------------------------------------------------------------------------------- layout
    def _layout(self) -> None:
        layout = scroll_layout(self)
        row = QHBoxLayout()
        row.addWidget(QLabel("image"))
        row.addWidget(self.image_combo, 1)
        layout.addLayout(row)
        project = QGroupBox("Project")
        box = QVBoxLayout(project)
        box.addWidget(self.project_label)
        row = QHBoxLayout()
        row.addWidget(self.new_project_button)
        row.addWidget(self.open_project_button)
        box.addLayout(row)
        row = QHBoxLayout(self.voxel_size_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(QLabel("voxel size Z,Y,X (µm)"))
        row.addWidget(self.voxel_size_edit, 1)
        box.addWidget(self.voxel_size_row)
        layout.addWidget(project)
        classes = QGroupBox("Classes (keys 1–9, 0)")
        box = QVBoxLayout(classes)
        box.addWidget(self.class_table)
        row = QHBoxLayout()
        row.addWidget(self.add_class_button)
        row.addWidget(self.remove_class_button)
        row.addWidget(self.undo_remove_button)
        box.addLayout(row)
        layout.addWidget(classes)
        modes = QHBoxLayout()
        for button in self.mode_buttons.values():
            modes.addWidget(button)
        layout.addLayout(modes)
        layout.addWidget(self.slice_panel)
        layout.addWidget(self.region_panel)
        row = QHBoxLayout()
        row.addWidget(self.import_button)
        row.addWidget(self.export_button)
        layout.addLayout(row)
        layout.addWidget(self.status)
        layout.addStretch(1)

    def _connect(self) -> None:
        s = self.session
        self.image_combo.activated.connect(lambda _: self._attach_selected_image())
        self.new_project_button.clicked.connect(self._ask_new_project)
        self.open_project_button.clicked.connect(self._ask_open_project)
        self.voxel_size_edit.editingFinished.connect(
            lambda: self.set_voxel_size(self.voxel_size_edit.text())
        )
        self.add_class_button.clicked.connect(lambda: self.add_class(f"class{len(s.classes)}"))
        self.remove_class_button.clicked.connect(lambda: self.remove_class(s.current_class))
        self.undo_remove_button.clicked.connect(self.undo_remove_class)
        self.class_table.class_selected.connect(self.set_current_class)
        self.class_table.class_renamed.connect(self.rename_class)
        self.class_table.color_clicked.connect(self._ask_color)
        for mode, button in self.mode_buttons.items():
            button.clicked.connect(lambda _=False, m=mode: self.set_mode(m))
        self.import_button.clicked.connect(self._ask_import)
        self.export_button.clicked.connect(self._ask_export)
        self._status_timer.timeout.connect(self._update_status)
        link(self, s.changed, lambda: self._status_timer.start())
        link(self, s.changed, self.slice_panel.refresh)
        link(self, s.classes_changed, self._refresh_classes)
        link(self, s.current_class_changed, self.class_table.select)
        link(self, s.attached, self._on_attached)
        self.autosaver.saved.connect(self._on_saved)
        self.autosaver.problem.connect(self._on_problem)
        link(self, self.viewer.layers.events.inserted, self._on_layers_changed)
        link(self, self.viewer.layers.events.removed, self._on_layers_changed)
        link(self, self.viewer.dims.events.current_step, self.slice_panel.refresh)

    def _bind_keys(self) -> None:
        keys = {str((k + 1) % 10): (lambda _=None, k=k: self._pick_class_key(k)) for k in range(10)}
        keys.update({key: (lambda _=None, m=mode: self.set_mode(m)) for mode, key in MODES.items()})
        keys[MODE_KEY] = lambda _=None: self.region_panel.set_active(not self.region_panel.active)
        keys[ONLY_KEY] = lambda _=None: self.region_panel.only_at_cursor()
        self._keys = keys
        for key, func in keys.items():
            self.viewer.bind_key(key, func, overwrite=True)

    def _bind_layer_keys(self) -> None:
        for role in ("points", "boxes", "masks"):
            layer = self.session.layer(role)
            if layer is None:
                continue
            for key, func in self._keys.items():
                layer.bind_key(key, func, overwrite=True)
            if role in UNDO_ROLES:
                layer.bind_key("Control-Z", lambda _=None, r=role: self.undo(r), overwrite=True)
                layer.bind_key(
                    "Control-Shift-Z", lambda _=None, r=role: self.redo(r), overwrite=True
                )

    def undo(self, role: str) -> None:
        """Undo the last edit of the points or boxes layer (Ctrl+Z on that layer).

        In tag-cells mode Ctrl+Z undoes the last region-tag edit instead.
        """
        if self.region_panel.active:
            self.region_panel.undo()
        elif not self.session.undo(role):
            notify_info(f"nothing to undo on the {role} layer")

    def redo(self, role: str) -> None:
        """Redo the last undone edit of the points or boxes layer (Ctrl+Shift+Z), or in tag-cells
        mode the last undone region-tag edit."""
        if self.region_panel.active:
            self.region_panel.redo()
        elif not self.session.redo(role):
            notify_info(f"nothing to redo on the {role} layer")

    # ------------------------------------------------------------------------ public actions
    def set_image_layer(self, layer) -> None:
        """Annotate ``layer`` (an Image layer of the viewer).

        While a project is open for another image, the user is asked first: yes closes the
        project (its annotations stay saved in it) and starts unsaved annotations of ``layer``;
        no keeps everything as it was. A project's annotations are never replaced by another
        image's.
        """
        session = self.session
        if (
            session.project is not None
            and session.image_layer is not None
            and layer is not session.image_layer
            and session.image_layer in self.viewer.layers
        ):
            question = (
                f"Project {session.project.folder} annotates '{session.image_layer.name}'. "
                f"Close the project to annotate '{layer.name}'? The project keeps its "
                "annotations; press New project… to save the new ones."
            )
            if not self.confirm(question):
                self._refresh_image_choices()
                return
            session.close_project()
        try:
            session.attach_image(layer)
        except WssegError as exc:
            notify_error(str(exc))

    def confirm(self, question: str) -> bool:
        """Ask the user a yes/no question (tests replace this method)."""
        answer = QMessageBox.question(
            self,
            "napari-wsseg",
            question,
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def new_project(self, folder) -> None:
        """Create a project in ``folder`` for the current image, classes and annotations."""
        try:
            self.session.create_project(folder)
        except WssegError as exc:
            notify_error(str(exc))
            return
        notify_info(f"project {folder} created; annotations are saved automatically")

    def open_project(self, folder) -> None:
        """Open the project in ``folder`` and restore its image, classes and annotations."""
        try:
            self.session.open_project(folder)
        except WssegError as exc:
            notify_error(str(exc))

    def set_voxel_size(self, text: str) -> bool:
        """Keep the voxel size typed as ``Z,Y,X`` µm (empty: unknown) and store it in the project.

        Bad text gets a one-line notification and leaves the stored size as it was.
        """
        from ..io.voxel_size import parse_voxel_size

        text = text.strip()

        def store():
            sizes = parse_voxel_size(text, 3, source="voxel size") if text else None
            self.session.set_voxel_size(sizes)
            return True

        stored = self._guard(store)
        if stored:
            self._show_voxel_size()
        return bool(stored)

    def add_class(self, name: str, color: str | None = None) -> int | None:
        return self._guard(lambda: self.session.add_class(name, color))

    def rename_class(self, k: int, name: str) -> None:
        classes = list(self.session.classes)
        classes[k] = type(classes[k])(name, classes[k].color)
        if self._guard(lambda: self.session.set_classes(classes)) is False:
            self._refresh_classes()

    def set_class_color(self, k: int, color: str) -> None:
        classes = list(self.session.classes)
        classes[k] = type(classes[k])(classes[k].name, color)
        self._guard(lambda: self.session.set_classes(classes))

    def remove_class(self, k: int) -> None:
        """Remove class ``k``; if it has annotations, only after the user confirms (undoable)."""
        session = self.session
        if not 0 <= k < len(session.classes):
            return
        name, used = session.classes[k].name, self._guard(lambda: session.class_usage(k)) or 0
        if used and not self.confirm(
            f"Remove class '{name}' and its {used} annotation(s)? Undo remove brings them back."
        ):
            return
        if self._guard(lambda: session.remove_class(k)) is False:
            return
        self.undo_remove_button.setEnabled(session.can_undo_remove_class)
        if used:
            notify_info(
                f"class '{name}' removed with {used} annotation(s); Undo remove brings it back"
            )

    def undo_remove_class(self) -> None:
        """Bring back the class removed last, with its annotations."""
        if not self._guard(self.session.undo_remove_class):
            notify_info("nothing to undo: no class was removed since the last edit")
        self.undo_remove_button.setEnabled(False)

    def set_current_class(self, k: int) -> None:
        self._guard(lambda: self.session.set_current_class(k))

    def set_mode(self, mode: str) -> None:
        """Activate the layer and tool of ``mode``: 'points', 'boxes' or 'scribble'.

        Leaves tag-cells mode.
        """
        self.region_panel.set_active(False)
        role, tool = {
            "points": ("points", "add"),
            "boxes": ("boxes", "add_rectangle"),
            "scribble": ("masks", "paint"),
        }[mode]
        layer = self.session.layer(role)
        if layer is None and role == "masks" and self.session.image is not None:
            notify_error(
                f"scribbles are off for volumes over {L.MAX_IN_MEMORY_VOXELS:,} voxels (the mask "
                "would not fit in memory); annotate with points, boxes, tags and sizes"
            )
            return
        if layer is None:
            notify_error(
                "no annotation layers yet; pick an image layer in the Annotate widget first"
            )
            return
        self.viewer.layers.selection.active = layer
        layer.mode = tool

    def import_csv(self, folder) -> None:
        """Replace the kinds found in ``folder`` (points.csv, ..., classes.json) by its files."""
        from ..annotations import find_annotation_files, load_annotations, read_classes_json

        def load():
            folder_path = Path(folder)
            files = find_annotation_files(folder_path)
            if not files:
                raise WssegError(
                    f"{folder_path} holds no points.csv, boxes.csv, tags.csv or sizes.csv; "
                    "pick the folder the CSV files are in"
                )
            classes_file = folder_path / "classes.json"
            classes = (
                read_classes_json(classes_file) if classes_file.is_file() else self.session.classes
            )
            image = self.session.require_image()
            ann = load_annotations(**files, classes=classes, image_shape=image.shape)
            self.session.replace_annotations(ann, tuple(files))
            return files

        files = self._guard(load)
        if files:
            notify_info(f"imported {', '.join(sorted(files))} from {folder}")

    def export_csv(self, folder) -> None:
        """Write the annotations as CSV (+ classes.json, + masks.tif if painted) to ``folder``."""
        from ..annotations import write_annotations
        from ..io import write_labels

        def export():
            ann = self.session.snapshot()
            written = write_annotations(folder, ann, overwrite=True)  # the folder the user chose
            if ann.masks is not None:
                written["masks"] = write_labels(Path(folder) / "masks.tif", ann.masks)
            return written

        written = self._guard(export)
        if written:
            notify_info(f"exported {', '.join(sorted(written))} to {folder}")

    def save_now(self) -> None:
        """Write pending changes to the project immediately."""
        self.autosaver.flush()

    # ------------------------------------------------------------------------------- slots
    def _guard(self, action):
        try:
            return action()
        except WssegError as exc:
            notify_error(str(exc))
            return False

    def _pick_class_key(self, k: int) -> None:
        if k < len(self.session.classes):
            self.set_current_class(k)

    def _ask_new_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "New project: choose an empty folder")
        if folder:
            self.new_project(folder)

    def _ask_open_project(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Open project folder")
        if folder:
            self.open_project(folder)

    def _ask_import(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import annotations: folder with CSV files")
        if folder:
            self.import_csv(folder)

    def _ask_export(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Export annotations to folder")
        if folder:
            self.export_csv(folder)

    def _ask_color(self, k: int) -> None:
        color = QColorDialog.getColor(QColor(self.session.classes[k].color), self, "Class colour")
        if color.isValid():
            self.set_class_color(k, color.name())

    def _image_layers(self) -> list:
        import napari

        return [
            layer
            for layer in self.viewer.layers
            if isinstance(layer, napari.layers.Image) and L.layer_role(layer) in (None, "image")
        ]

    def _refresh_image_choices(self) -> None:
        current = self.session.image_layer
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        for layer in self._image_layers():
            self.image_combo.addItem(layer.name)
        if current is not None and current in self.viewer.layers:
            self.image_combo.setCurrentText(current.name)
        self.image_combo.blockSignals(False)

    def _attach_selected_image(self) -> None:
        name = self.image_combo.currentText()
        if (
            name
            and name in self.viewer.layers
            and self.viewer.layers[name] is not self.session.image_layer
        ):
            self.set_image_layer(self.viewer.layers[name])

    def _on_layers_changed(self, event=None) -> None:
        self._refresh_image_choices()
        if self.session.image is None or self.session.image_layer not in self.viewer.layers:
            if not self.session.adopt_project_layers():
                self._attach_selected_image()

    def _on_attached(self) -> None:
        self._refresh_image_choices()
        self._refresh_classes()
        self._bind_layer_keys()
        folder = self.session.project_folder
        self.project_label.setText(
            f"project: {folder}" if folder else "no project: annotations are not saved"
        )
        self.slice_panel.refresh()
        self._show_voxel_size()
        self._update_status()

    def _show_voxel_size(self) -> None:
        """Show the voxel size row for volumes, with the known size (project, metadata)."""
        image = self.session.image
        self.voxel_size_row.setVisible(image is not None and not image.was_2d)
        sizes = self.session.known_voxel_size() if image is not None else None
        self.voxel_size_edit.setText("" if sizes is None else ",".join(f"{v:g}" for v in sizes))

    def _refresh_classes(self) -> None:
        self.class_table.show_classes(self.session.classes, self.session.current_class)
        self.slice_panel.rebuild()

    def _on_saved(self, folder: str) -> None:
        self._saved_at = time.strftime("%H:%M:%S")
        self._update_status()

    def _on_problem(self, message: str) -> None:
        self._problem = message
        self._update_status()

    def _update_status(self) -> None:
        self.status.setText(status_text(self.session, self._saved_at, self._problem))


def status_text(session, saved_at: str = "", problem: str = "") -> str:
    """Counts per class and type, the save state, and what keeps sizes from being used."""
    if session.image is None:
        return "pick an image layer to annotate"
    try:
        ann = session.snapshot(copy=False)
    except WssegError as exc:
        return f"<span style='color:#e05050'>{exc}</span>"
    if ann.masks is not None and ann.masks.size > STATUS_MAX_MASK_VOXELS:
        ann.masks = None  # counting scribbled pixels of a huge volume would stall the viewer
    counts = ann.counts()
    lines = []
    for k, c in enumerate(session.classes):
        parts = [
            f"{int(counts[kind][k])} {label}"
            for kind, label in (
                ("points", "pts"),
                ("boxes", "boxes"),
                ("mask_pixels", "px"),
                ("tags", "tags"),
                ("sizes", "sizes"),
                ("exhaustive_boxes", "all-boxed slices"),
                ("region_tags", "cell tags"),
            )
            if counts[kind][k]
        ]
        lines.append(
            f"<span style='color:{c.color}'>■</span> {k + 1} {c.name}: {', '.join(parts) or '—'}"
        )
    incomplete = session.incomplete_size_slices()
    if incomplete:
        lines.append(
            f"sizes of slice(s) {incomplete} not used: they must sum to 100 % ± "
            f"{100 * SIZE_SUM_TOLERANCE:.0f} %"
        )
    if problem:
        lines.append(f"<span style='color:#e05050'>not saved: {problem}</span>")
    elif session.project is not None and saved_at:
        lines.append(f"saved {saved_at}")
    return "<br>".join(lines)


class _ClassTable(QTableWidget):
    """One row per class: key, colour (click to change), editable name."""

    class_selected = Signal(int)
    class_renamed = Signal(int, str)
    color_clicked = Signal(int)

    def __init__(self) -> None:
        super().__init__(0, 3)
        self.setHorizontalHeaderLabels(["key", "colour", "name"])
        self.verticalHeader().setVisible(False)
        self.horizontalHeader().setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        self.setSelectionBehavior(QTableWidget.SelectionBehavior.SelectRows)
        self.setSelectionMode(QTableWidget.SelectionMode.SingleSelection)
        self.setMinimumHeight(110)
        self.setMaximumHeight(200)
        self._updating = False
        self.itemSelectionChanged.connect(self._on_selection)
        self.itemChanged.connect(self._on_item_changed)
        self.cellClicked.connect(lambda row, column: column == 1 and self.color_clicked.emit(row))

    def show_classes(self, classes, current: int) -> None:
        """One row per class; the colour is the cell's background (no cell widgets, no ghosts)."""
        self._updating = True
        self.setRowCount(len(classes))
        for k, c in enumerate(classes):
            key = QTableWidgetItem(str((k + 1) % 10) if k < 10 else "")
            key.setFlags(Qt.ItemFlag.ItemIsEnabled | Qt.ItemFlag.ItemIsSelectable)
            key.setTextAlignment(Qt.AlignmentFlag.AlignCenter)
            swatch = QTableWidgetItem("")
            swatch.setFlags(Qt.ItemFlag.ItemIsEnabled)
            swatch.setBackground(QColor(c.color))
            swatch.setToolTip("click to change the colour")
            self.setItem(k, 0, key)
            self.setItem(k, 1, swatch)
            self.setItem(k, 2, QTableWidgetItem(c.name))
        self._updating = False
        self.select(current)

    def select(self, k: int) -> None:
        self._updating = True
        self.selectRow(k)
        self._updating = False

    def _on_selection(self) -> None:
        rows = {i.row() for i in self.selectedIndexes()}
        if rows and not self._updating:
            self.class_selected.emit(min(rows))

    def _on_item_changed(self, item) -> None:
        if not self._updating and item.column() == 2:
            self.class_renamed.emit(item.row(), item.text())


class _SlicePanel(QGroupBox):
    """Tags and sizes of the slice the viewer shows, and the size-grid overlay."""

    def __init__(self, owner: AnnotateWidget) -> None:
        super().__init__("Slice tags and sizes")
        self.owner = owner
        self.session = owner.session
        self.grid_combo = QComboBox()
        self.grid_combo.addItems(list(GRIDS))
        self.sum_label = QLabel()
        self.clear_button = QPushButton("Clear sizes")
        self.estimate_button = QPushButton("From scribble")
        self.estimate_button.setToolTip(
            "set this slice's sizes to the class fractions of the pixels painted in the scribble "
            "layer (paint a rough copy of the slice, or representative parts of it)"
        )
        self.rows: list[tuple[QCheckBox, QSlider, QDoubleSpinBox, QCheckBox]] = []
        self._names: list[str] | None = None
        self._grid = QGridLayout()
        self._grid.setColumnStretch(1, 1)  # the size sliders take the spare width
        layout = QVBoxLayout(self)
        layout.addLayout(self._grid)
        row = QHBoxLayout()
        row.addWidget(self.sum_label, 1)
        row.addWidget(QLabel("grid"))
        row.addWidget(self.grid_combo)
        row.addWidget(self.estimate_button)
        row.addWidget(self.clear_button)
        layout.addLayout(row)
        self.grid_combo.currentTextChanged.connect(self.show_grid)
        self.clear_button.clicked.connect(self._clear_sizes)
        self.estimate_button.clicked.connect(self.sizes_from_scribble)
        self.rebuild()

    def rebuild(self) -> None:
        """One row per class (only when the class names changed), then :meth:`refresh`."""
        names = [c.name for c in self.session.classes]
        if names == self._names:
            self.refresh()
            return
        self._names = names
        for widgets in self.rows:
            for w in widgets:
                self._grid.removeWidget(w)
                w.hide()
                w.setParent(None)
                w.deleteLater()
        self.rows = []
        for k, c in enumerate(self.session.classes):
            tag = QCheckBox(c.name)
            tag.setToolTip("the class is present in this slice (untagged classes are absent)")
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, 100)
            number = QDoubleSpinBox()
            number.setRange(0.0, 100.0)
            number.setSuffix(" %")
            number.setDecimals(1)
            number.setToolTip("approximate share of the slice covered by this class")
            boxed = QCheckBox("all boxed")
            boxed.setToolTip(
                "every object of this class in this slice has a box (so the unboxed "
                "rest of the slice is not this class)"
            )
            tag.toggled.connect(lambda on, k=k: self.session.set_tag(self.z, k, on))
            slider.valueChanged.connect(lambda v, k=k: self._set_size(k, float(v)))
            number.valueChanged.connect(lambda v, k=k: self._set_size(k, float(v)))
            boxed.toggled.connect(lambda on, k=k: self.session.set_exhaustive(self.z, k, on))
            for col, w in enumerate((tag, slider, number, boxed)):
                self._grid.addWidget(w, k, col)
            self.rows.append((tag, slider, number, boxed))
        self.refresh()

    @property
    def z(self) -> int:
        return self.session.current_z()

    def refresh(self, event=None) -> None:
        """Show the current slice's tags and sizes."""
        z = self.z
        self.setTitle(f"Slice {z}: tags and sizes")
        for k, (tag, slider, number, boxed) in enumerate(self.rows):
            fraction = self.session.sizes.get((z, k))
            for w in (tag, slider, number, boxed):
                w.blockSignals(True)
            tag.setChecked((z, k) in self.session.tags)
            slider.setValue(int(round(100 * (fraction or 0.0))))
            number.setValue(100 * (fraction or 0.0))
            boxed.setChecked((z, k) in self.session.exhaustive)
            for w in (tag, slider, number, boxed):
                w.blockSignals(False)
        self._show_sum()

    def _set_size(self, k: int, percent: float) -> None:
        self.session.set_size(self.z, k, percent / 100.0)

    def _clear_sizes(self) -> None:
        self.session.clear_sizes(self.z)

    def sizes_from_scribble(self) -> None:
        """Set the current slice's sizes from the painted pixels of the scribble layer."""
        try:
            fractions = self.session.sizes_from_scribble(self.z)
        except WssegError as exc:
            notify_error(str(exc))
            return
        shown = ", ".join(
            f"{c.name} {100 * f:.0f} %" for c, f in zip(self.session.classes, fractions)
        )
        notify_info(f"slice {self.z} sizes from the scribble: {shown}")

    def _show_sum(self) -> None:
        total = self.session.size_sum(self.z)
        if total is None:
            self.sum_label.setText("sizes: none")
            return
        ok = abs(total - 1.0) <= SIZE_SUM_TOLERANCE
        color = "#50c050" if ok else "#e05050"
        self.sum_label.setText(f"<span style='color:{color}'>sum {100 * total:.0f} %</span>")

    def show_grid(self, name: str) -> None:
        """Show a coarse (5 x 5) or fine (10 x 10) counting grid over the image, or none."""
        if name == "off" or self.session.image_layer is None:
            self.show_lines(None, name)
            return
        self.show_lines(grid_lines(self.session.image.shape[1:], coarse=name == "coarse"), name)

    def show_lines(self, lines, name: str) -> None:
        """Replace the grid layer by ``lines`` ((N, 2, 2) (y, x) segments; None: no grid)."""
        viewer = self.owner.viewer
        for layer in L.find_layers(viewer.layers, "grid"):
            viewer.layers.remove(layer)
        image_layer = self.session.image_layer
        if lines is None or not len(lines) or image_layer is None:
            return
        active = viewer.layers.selection.active
        viewer.add_shapes(
            list(lines),
            shape_type="line",
            edge_color="yellow",
            edge_width=1,
            opacity=0.6,
            name=f"size grid ({name})",
            scale=image_layer.scale[-2:],
            translate=image_layer.translate[-2:],
            metadata=L.role_metadata("grid"),
        )
        if active is not None:
            viewer.layers.selection.active = active
