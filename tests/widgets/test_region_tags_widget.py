"""Region tags of grid cells in the Annotate widget, in a real viewer: clicks, marks, undo,
project."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_wsseg.annotations.model import default_classes
from napari_wsseg.widgets._annotate import status_text
from napari_wsseg.widgets._region_tags import ROLE


def _canvas_point(viewer, y: float, x: float) -> QPoint:
    """Where data pixel (y, x) of the shown slice is on the canvas widget."""
    canvas = viewer.window._qt_viewer.canvas
    mapped = canvas.view.scene.transform.map([x, y, 0, 1])
    return QPoint(int(round(mapped[0])), int(round(mapped[1])))


def _marks(viewer):
    return [layer for layer in viewer.layers if layer.metadata.get("wsseg", {}).get("role") == ROLE]


def test_clicks_on_the_canvas_toggle_the_current_class_in_the_cell(annotate, small_3d, qtbot):
    image, _, _ = small_3d
    viewer, _, widget = annotate(image, default_classes(3))
    viewer.dims.set_point(0, 2)
    panel = widget.region_panel
    panel.cell_spin.setValue(16)
    points = widget.session.layer("points")
    viewer.layers.selection.active = points
    panel.set_active(True)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitExposed(canvas)
    widget.set_current_class(1)
    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=_canvas_point(viewer, 20, 5))

    assert widget.session.region_tags.tolist() == [[2, 1, 16, 0, 31, 15]]
    assert len(points.data) == 0  # the click tagged the cell; it added no point
    assert viewer.layers.selection.active is points  # the selection did not change
    marks = _marks(viewer)
    assert len(marks) == 1 and len(marks[0].data) == 1
    assert np.allclose(marks[0].edge_color[0], [1.0, 0.498, 0.055, 1.0], atol=0.01)  # class 1
    assert viewer.layers.index(marks[0]) < viewer.layers.index(points)  # below the annotations

    qtbot.mouseClick(canvas, Qt.MouseButton.LeftButton, pos=_canvas_point(viewer, 25, 10))
    assert widget.session.region_tags.shape == (0, 6)  # same cell, same class: removed
    assert _marks(viewer) == []


def test_only_key_undo_redo_and_remove_class(annotate, small_3d):
    image, _, _ = small_3d
    viewer, _, widget = annotate(image, default_classes(3))
    viewer.dims.set_point(0, 0)
    panel = widget.region_panel
    panel.cell_spin.setValue(10)
    panel.set_active(True)
    widget.set_current_class(0)
    panel.toggle_at(3, 3)
    widget.set_current_class(2)
    panel.toggle_at(4, 4)
    panel.toggle_at(3, 15)  # another cell
    assert widget.session.region_tags.tolist() == [
        [0, 0, 0, 0, 9, 9],
        [0, 2, 0, 0, 9, 9],
        [0, 2, 0, 10, 9, 19],
    ]
    assert len(_marks(viewer)[0].data) == 3  # one mark per tagged class of each cell
    widget.set_current_class(1)
    panel.only_at(5, 5)  # "checked, nothing else here": class 1 alone
    assert widget.session.region_tags.tolist() == [[0, 2, 0, 10, 9, 19], [0, 1, 0, 0, 9, 9]]

    widget.undo("points")  # Ctrl+Z in tag-cells mode undoes the tag edit
    assert len(widget.session.region_tags) == 3
    widget.redo("points")
    assert len(widget.session.region_tags) == 2
    assert "1 class0: —<br>" in status_text(widget.session)
    assert "2 class1: 1 cell tags" in status_text(widget.session)

    widget.remove_class(0)  # confirmed by the questions fixture; class 1 -> 0, 2 -> 1
    assert widget.session.region_tags.tolist() == [[0, 1, 0, 10, 9, 19], [0, 0, 0, 0, 9, 9]]
    widget.undo_remove_class()
    assert sorted(widget.session.region_tags.tolist()) == [[0, 1, 0, 0, 9, 9], [0, 2, 0, 10, 9, 19]]


def test_grid_cells_follow_the_coarse_grid_and_are_drawn_while_tagging(annotate, small_3d):
    image, _, _ = small_3d  # 48 x 48 slices: coarse cells of ceil(48 / 5) = 10 pixels
    viewer, _, widget = annotate(image, default_classes(3))
    widget.slice_panel.grid_combo.setCurrentText("coarse")
    panel = widget.region_panel
    panel.set_active(True)
    assert panel.cell_at(47, 47) == (40, 40, 47, 47)
    grids = [
        layer for layer in viewer.layers if layer.metadata.get("wsseg", {}).get("role") == "grid"
    ]
    assert len(grids) == 1 and len(grids[0].data) == 8  # 4 horizontal + 4 vertical lines
    assert grids[0].data[0][0].tolist() == [9.5, -0.5]
    assert panel.cell_at(48, 3) is None  # outside the image: nothing to tag
    widget.set_mode("points")  # leaves tag-cells mode; the size grid comes back
    assert not panel.active
    grids = [
        layer for layer in viewer.layers if layer.metadata.get("wsseg", {}).get("role") == "grid"
    ]
    assert len(grids) == 1 and grids[0].data[0][0].tolist() == [pytest.approx(9.1), -0.5]


def test_region_tags_autosave_to_the_project_and_come_back(annotate, small_3d, tmp_path):
    from napari_wsseg.project import Project

    image, _, _ = small_3d
    viewer, _, widget = annotate(image, default_classes(3))
    widget.new_project(tmp_path / "proj")
    panel = widget.region_panel
    panel.cell_spin.setValue(16)
    viewer.dims.set_point(0, 1)
    widget.set_current_class(2)
    panel.toggle_at(40, 40)
    widget.save_now()
    stored = Project.open(tmp_path / "proj").annotations.region_tags
    assert stored.tolist() == [[1, 2, 32, 32, 47, 47]]

    viewer2, _, widget2 = annotate(image, None)
    widget2.open_project(tmp_path / "proj")
    assert widget2.session.region_tags.tolist() == [[1, 2, 32, 32, 47, 47]]
    assert len(_marks(viewer2)[0].data) == 1


def test_region_tags_export_and_import_as_csv(annotate, small_3d, tmp_path):
    image, _, _ = small_3d
    viewer, _, widget = annotate(image, default_classes(3))
    viewer.dims.set_point(0, 0)
    widget.region_panel.cell_spin.setValue(16)
    widget.region_panel.toggle_at(1, 1)
    widget.export_csv(tmp_path / "csv")
    assert "0,0,0,0,15,15" in (tmp_path / "csv" / "tags.csv").read_text()
    widget.region_panel.toggle_at(1, 1)
    assert widget.session.region_tags.shape == (0, 6)
    widget.import_csv(tmp_path / "csv")
    assert widget.session.region_tags.tolist() == [[0, 0, 0, 0, 15, 15]]
    widget.session.undo_region_tags()  # the import is one undoable step
    assert widget.session.region_tags.shape == (0, 6)


def test_keys_on_the_canvas_enter_the_mode_and_tag_a_cell_only(annotate, small_3d, qtbot):
    image, _, _ = small_3d
    viewer, _, widget = annotate(image, default_classes(3))
    viewer.dims.set_point(0, 0)
    widget.region_panel.cell_spin.setValue(16)
    canvas = viewer.window._qt_viewer.canvas.native
    qtbot.waitExposed(canvas)
    widget.set_current_class(0)
    widget.region_panel.toggle_at(3, 3)
    widget.region_panel.toggle_at(3, 40)
    viewer.layers.selection.active = widget.session.layer("boxes")
    qtbot.keyClick(canvas, Qt.Key.Key_T, Qt.KeyboardModifier.ShiftModifier)
    assert widget.region_panel.active
    qtbot.keyClick(canvas, Qt.Key.Key_3)  # class 3 (id 2)
    viewer.cursor.position = (0.0, 5.0, 5.0)
    qtbot.keyClick(canvas, Qt.Key.Key_O, Qt.KeyboardModifier.ShiftModifier)
    assert widget.session.region_tags.tolist() == [[0, 0, 0, 32, 15, 47], [0, 2, 0, 0, 15, 15]]
    qtbot.keyClick(canvas, Qt.Key.Key_Z, Qt.KeyboardModifier.ControlModifier)  # undo the tag
    assert len(widget.session.region_tags) == 2
    assert widget.session.layer("boxes").data == []  # the boxes layer's own history untouched
    qtbot.keyClick(canvas, Qt.Key.Key_T, Qt.KeyboardModifier.ShiftModifier)
    assert not widget.region_panel.active
