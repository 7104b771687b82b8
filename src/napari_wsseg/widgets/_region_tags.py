"""The Annotate widget's region-tag panel: tag cells of the counting grid with classes.

In *tag cells* mode (button or ``Shift+T``) a click on the canvas (press and release without
dragging) toggles the current class in the grid cell under the mouse
(:meth:`AnnotationSession.toggle_region_tag`); ``Shift+O`` marks the cell under the mouse
"checked, nothing else here": the current class becomes the cell's only tag. The grid is the
shared counting grid: its cells are ``cell`` pixels square, the size the user sets or, with
*grid*, the coarse (5 cells) or fine (10 cells) grid of the slice panel along the longer side.
Tagged cells are drawn in a Shapes layer below the annotation layers, never selected: one
rectangle per tagged class, in the class colour, nested inside the cell.
"""

from __future__ import annotations

import math
import weakref
from typing import TYPE_CHECKING

import numpy as np
from qtpy.QtWidgets import QGroupBox, QHBoxLayout, QLabel, QPushButton, QSpinBox, QVBoxLayout

from ..annotations.region_tags import grid_cell, tag_regions
from ..annotations.sizes import GRID_DIVISIONS
from . import _layers as L
from ._links import link, on_destroyed
from ._notify import notify_info
from ._session import ANNOTATION_ROLES

if TYPE_CHECKING:
    from ._annotate import AnnotateWidget

MODE_KEY, ONLY_KEY = "Shift-T", "Shift-O"
ROLE = "region_tags"
#: Width (pixels) of each class's rectangle inside a tagged cell.
MARK_WIDTH = 2.0


class RegionTagPanel(QGroupBox):
    """Tag-cells toggle, cell size, undo / redo; the marks layer and the canvas click handler."""

    def __init__(self, owner: AnnotateWidget) -> None:
        super().__init__(f"Region tags: grid cells ({MODE_KEY.replace('-', '+')})")
        self.owner = owner
        self.session = owner.session
        self.viewer = owner.viewer
        self.mode_button = QPushButton("Tag cells")
        self.mode_button.setCheckable(True)
        self.mode_button.setToolTip(
            "click a grid cell to add / remove the current class there; "
            f"{ONLY_KEY.replace('-', '+')} on a cell: the current class only, nothing else here"
        )
        self.cell_spin = QSpinBox()
        self.cell_spin.setRange(0, 1 << 16)
        self.cell_spin.setSpecialValueText("grid")
        self.cell_spin.setSuffix(" px")
        self.cell_spin.setToolTip("cell size in pixels; 'grid': the coarse / fine grid's cells")
        self.undo_button = QPushButton("Undo")
        self.redo_button = QPushButton("Redo")
        self._drawn: tuple | None = None
        layout = QVBoxLayout(self)
        row = QHBoxLayout()
        row.addWidget(self.mode_button)
        row.addWidget(QLabel("cell"))
        row.addWidget(self.cell_spin)
        row.addWidget(self.undo_button)
        row.addWidget(self.redo_button)
        layout.addLayout(row)
        self.mode_button.toggled.connect(self._on_mode)
        self.cell_spin.valueChanged.connect(lambda _: self._show_grid())
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        owner.slice_panel.grid_combo.currentTextChanged.connect(lambda _: self._show_grid())
        link(self, self.session.changed, self.draw)
        link(self, self.session.classes_changed, lambda: self.draw(force=True))
        link(self, self.session.attached, lambda: self.draw(force=True))
        self.viewer.mouse_drag_callbacks.append(self._on_mouse)
        viewer, on_mouse = weakref.ref(self.viewer), weakref.WeakMethod(self._on_mouse)
        on_destroyed(self, lambda: _drop(viewer(), on_mouse()))

    # ------------------------------------------------------------------------ public actions
    @property
    def active(self) -> bool:
        """True in tag-cells mode."""
        return self.mode_button.isChecked()

    def set_active(self, on: bool) -> None:
        """Enter or leave tag-cells mode."""
        self.mode_button.setChecked(bool(on))

    def cell_size(self) -> int:
        """The grid's cell side in pixels (the spin box, or the coarse / fine grid's)."""
        if self.cell_spin.value() > 0:
            return self.cell_spin.value()
        name = self.owner.slice_panel.grid_combo.currentText()
        divisions = GRID_DIVISIONS.get(name, GRID_DIVISIONS["coarse"])
        return max(1, math.ceil(max(self.session.require_image().shape[1:]) / divisions))

    def cell_at(self, y: float, x: float) -> tuple[int, int, int, int] | None:
        """The cell ``(y0, x0, y1, x1)`` holding data pixel ``(y, x)``; None outside the image."""
        shape = self.session.require_image().shape[1:]
        yi, xi = int(round(y)), int(round(x))
        if not (0 <= yi < shape[0] and 0 <= xi < shape[1]):
            return None
        return grid_cell(yi, xi, self.cell_size(), shape)

    def toggle_at(self, y: float, x: float) -> bool:
        """Toggle the current class in the cell holding data pixel ``(y, x)`` of this slice."""
        box = self.owner._guard(lambda: self.cell_at(y, x))
        if not box:
            return False
        self.session.toggle_region_tag(self.session.current_z(), self.session.current_class, box)
        return True

    def only_at(self, y: float, x: float) -> bool:
        """Tag the cell holding ``(y, x)`` with the current class alone (nothing else here)."""
        box = self.owner._guard(lambda: self.cell_at(y, x))
        if not box:
            return False
        self.session.tag_region_only(self.session.current_z(), self.session.current_class, box)
        return True

    def only_at_cursor(self) -> None:
        """``Shift+O``: :meth:`only_at` the mouse position."""
        yx = self._data_yx(self.viewer.cursor.position)
        if yx is not None:
            self.only_at(*yx)

    def undo(self) -> None:
        if not self.session.undo_region_tags():
            notify_info("nothing to undo among the region tags")

    def redo(self) -> None:
        if not self.session.redo_region_tags():
            notify_info("nothing to redo among the region tags")

    def draw(self, force: bool = False) -> None:
        """Show the tagged cells (only when the region tags or, with ``force``, colours changed)."""
        rows = self.session.region_tags
        key = (rows.tobytes(), len(rows))
        if not force and key == self._drawn:
            return
        self._drawn = key
        with L.keep_selection(self.viewer):
            for layer in L.find_layers(self.viewer.layers, ROLE):
                self.viewer.layers.remove(layer)
            if len(rows) and self.session.image_layer is not None:
                layer = self.viewer.add_shapes(**self._marks_kwargs())
                self.viewer.layers.move(self.viewer.layers.index(layer), self._below_annotations())

    # ------------------------------------------------------------------------------ helpers
    def _marks_kwargs(self) -> dict:
        session, image_layer = self.session, self.session.image_layer
        regions = tag_regions(session.snapshot(copy=False))
        three_d = L.spatial_ndim(session.image) == 3
        rectangles, colors = [], []
        for box, present in zip(regions.boxes, regions.present):
            for j, k in enumerate(np.flatnonzero(present)):
                rectangles.append(_nested_rectangle(box, j, three_d))
                colors.append(L.rgba(session.classes[k].color))
        ndim = 3 if three_d else 2
        return {
            "data": rectangles,
            "shape_type": "rectangle",
            "edge_color": np.array(colors),
            "face_color": "transparent",
            "edge_width": MARK_WIDTH,
            "name": f"{image_layer.name} region tags",
            "scale": image_layer.scale[-ndim:],
            "translate": image_layer.translate[-ndim:],
            "metadata": L.role_metadata(ROLE, session.project_folder, image=image_layer.name),
        }

    def _below_annotations(self) -> int:
        roles = [L.layer_role(layer) for layer in self.viewer.layers]
        indices = [i for i, role in enumerate(roles) if role in ANNOTATION_ROLES]
        return min(indices) if indices else len(roles)

    def _on_mode(self, on: bool) -> None:
        if on:
            active = self.viewer.layers.selection.active
            try:
                active.mode = "pan_zoom"  # a click tags the cell instead of adding a point
            except (AttributeError, ValueError):  # no layer selected, or one without modes
                pass
        self._show_grid()

    def _show_grid(self) -> None:
        """The tag grid's lines while tagging, else the slice panel's size grid."""
        slice_panel = self.owner.slice_panel
        if not self.active or self.session.image is None:
            slice_panel.show_grid(slice_panel.grid_combo.currentText())
            return
        cell = self.cell_size()
        slice_panel.show_lines(_cell_lines(self.session.image.shape[1:], cell), f"{cell} px cells")

    def _on_mouse(self, viewer, event):
        if not self.active or event.button != 1 or self.session.image_layer is None:
            return
        yield
        moved = False
        while event.type == "mouse_move":
            moved = True
            yield
        if not moved:
            yx = self._data_yx(event.position)
            if yx is not None:
                self.toggle_at(*yx)

    def _data_yx(self, world) -> tuple[float, float] | None:
        image_layer = self.session.image_layer
        if image_layer is None or image_layer not in self.viewer.layers:
            return None
        data = image_layer.world_to_data(world)
        return float(data[-2]), float(data[-1])


def _nested_rectangle(box: np.ndarray, j: int, three_d: bool) -> np.ndarray:
    """Corners of the ``j``-th class mark of a cell (on pixel edges, moved ``j`` marks inwards)."""
    z, y0, x0, y1, x1 = (float(v) for v in box)
    inset = min(MARK_WIDTH * (j + 0.5), (y1 - y0) / 2, (x1 - x0) / 2)
    y0, x0, y1, x1 = y0 - 0.5 + inset, x0 - 0.5 + inset, y1 + 0.5 - inset, x1 + 0.5 - inset
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    if three_d:
        corners = np.column_stack([np.full(4, z), corners])
    return corners


def _cell_lines(shape_yx, cell: int) -> np.ndarray:
    """Line segments between the ``cell``-pixel grid cells of a slice (pixel edges)."""
    height, width = (int(s) for s in shape_yx)
    ys = np.arange(cell, height, cell) - 0.5
    xs = np.arange(cell, width, cell) - 0.5
    horizontal = [[[y, -0.5], [y, width - 0.5]] for y in ys]
    vertical = [[[-0.5, x], [height - 0.5, x]] for x in xs]
    return np.array(horizontal + vertical, dtype=float).reshape(-1, 2, 2)


def _drop(viewer, callback) -> None:
    if viewer is None or callback is None:  # freed already
        return
    try:
        viewer.mouse_drag_callbacks.remove(callback)
    except (ValueError, AttributeError, RuntimeError):  # already gone with the viewer
        pass
