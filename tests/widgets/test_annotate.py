"""The Annotate widget: classes, points, boxes, scribbles, tags and sizes via the layers' API."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.annotations.model import default_classes
from napari_wsseg.widgets import _layers as L


def _press(owner, key: str) -> None:
    """Run what ``key`` is bound to on a viewer or layer (as napari does on a key press)."""
    from app_model.types import KeyBinding

    owner.keymap[KeyBinding.from_str(key)](owner)


def _rgba(color):
    return np.asarray(L.rgba(color))


def test_classes_can_be_added_renamed_recoloured_and_removed(annotate, small_3d, questions):
    image, _, _ = small_3d
    viewer, _, widget = annotate(image)
    session = widget.session
    assert widget.add_class("mito") == 2
    widget.rename_class(0, "cyto")
    widget.set_class_color(1, "#00ff00")
    assert [c.name for c in session.classes] == ["cyto", "foreground", "mito"]
    assert session.classes[1].color == "#00ff00"
    assert widget.class_table.rowCount() == 3
    assert widget.class_table.item(0, 2).text() == "cyto"
    points = session.layer("points")
    points.feature_defaults["class"] = 2
    points.add([[0, 5, 5]])
    points.feature_defaults["class"] = 1
    points.add([[0, 6, 6]])
    widget.remove_class(0)  # no points of class 0: the others shift down by one, no question
    assert questions.asked == []
    assert [c.name for c in session.classes] == ["foreground", "mito"]
    assert sorted(np.asarray(points.features["class"]).tolist()) == [0, 1]
    assert widget.class_table.rowCount() == 2  # no ghost row
    questions.replies = [False]
    widget.remove_class(1)  # 'mito' has a point: asked, and "no" keeps it
    assert "'mito'" in questions.asked[-1] and len(session.classes) == 2 and len(points.data) == 2
    widget.remove_class(1)  # asked again, "yes": removes the 'mito' point
    assert len(points.data) == 1 and [c.name for c in session.classes] == ["foreground"]
    assert widget.class_table.rowCount() == 1
    assert widget.undo_remove_button.isEnabled()
    widget.undo_remove_class()  # the class and its point come back
    assert [c.name for c in session.classes] == ["foreground", "mito"]
    assert sorted(L.points_from_layer(points)[:, 3].tolist()) == [0, 1]
    assert widget.class_table.rowCount() == 2 and not widget.undo_remove_button.isEnabled()


def test_a_duplicate_class_name_is_refused_with_a_notification(annotate, small_2d, notifications):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.rename_class(1, "background")
    assert [c.name for c in widget.session.classes] == ["background", "foreground"]
    assert any("unique" in m for m in notifications)


def test_points_boxes_scribbles_tags_and_sizes_make_one_annotation_set(annotate, small_3d):
    image, labels, classes = small_3d
    viewer, _, widget = annotate(image, classes)
    session = widget.session
    viewer.dims.set_current_step(0, 2)
    assert session.current_z() == 2
    widget.set_current_class(1)
    session.layer("points").add([[2, 10, 12]])  # the current class is the new point's class
    widget.set_mode("boxes")
    assert viewer.layers.selection.active is session.layer("boxes")
    session.layer("boxes").add_rectangles(
        [np.array([[2, 4, 5], [2, 4, 20], [2, 15, 20], [2, 15, 5]])]
    )
    masks = session.layer("masks")
    assert masks.selected_label == 2
    masks.paint((2, 30, 30), 2)  # a brush stroke of class 1 (label 2)
    panel = widget.slice_panel
    panel.rows[0][0].setChecked(True)  # tag class 0 in slice 2
    panel.rows[1][0].setChecked(True)
    panel.rows[0][2].setValue(70.0)  # sizes: 70 % + 30 %
    panel.rows[1][1].setValue(30)
    ann = session.snapshot()
    assert ann.points.tolist() == [[2, 10, 12, 1]]
    assert ann.boxes.tolist() == [[2, 4, 5, 15, 20, 1]]
    assert set(np.unique(ann.masks[2])) == {0, 2} and not ann.masks[[0, 1, 3]].any()
    assert ann.tags.tolist() == [[2, 0], [2, 1]]
    np.testing.assert_allclose(ann.sizes, [[2, 0, 0.7], [2, 1, 0.3]])
    assert "sum 100 %" in panel.sum_label.text()
    session.validated_snapshot()  # consistent: no error
    viewer.dims.set_current_step(0, 1)  # the panel follows the viewer's slice
    assert not panel.rows[0][0].isChecked() and panel.rows[0][2].value() == 0


def test_incomplete_sizes_are_left_out_until_they_sum_to_one(annotate, small_2d):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.session.set_size(0, 0, 0.4)
    assert len(widget.session.snapshot().sizes) == 0
    assert "sum 40 %" in widget.slice_panel.sum_label.text()
    widget._update_status()
    assert "not used" in widget.status.text()
    widget.session.set_size(0, 1, 0.6)
    assert len(widget.session.snapshot().sizes) == 2


def test_class_colours_are_identical_in_points_boxes_labels_and_predictions(annotate, small_2d):
    image, _, _ = small_2d
    viewer, image_layer, widget = annotate(image, default_classes(3))
    session = widget.session
    widget.set_class_color(2, "#123456")
    for k in range(3):
        widget.set_current_class(k)
        session.layer("points").add([[3 + k, 3]])
        session.layer("boxes").add_rectangles([np.array([[10, 10 + 5 * k], [12, 12 + 5 * k]])])
    L.show_slice_result(viewer, image_layer, session.classes, 0, np.full(image.shape, 2), None)
    prediction = L.find_layers(viewer.layers, "prediction")[0]
    for k, c in enumerate(session.classes):
        expected = _rgba(c.color)
        np.testing.assert_allclose(session.layer("points").face_color[k], expected, atol=1e-3)
        np.testing.assert_allclose(session.layer("boxes").edge_color[k], expected, atol=1e-3)
        np.testing.assert_allclose(session.layer("masks").colormap.map(k + 1), expected, atol=1e-3)
        np.testing.assert_allclose(prediction.colormap.map(k + 1), expected, atol=1e-3)


def test_number_keys_pick_the_class_and_mode_keys_pick_the_layer(annotate, small_2d):
    image, _, _ = small_2d
    viewer, _, widget = annotate(image, default_classes(3))
    _press(viewer, "3")
    assert widget.session.current_class == 2
    assert widget.class_table.currentRow() == 2
    points = widget.session.layer("points")
    _press(points, "2")  # the digits work while an annotation layer is active, too
    assert widget.session.current_class == 1
    _press(viewer, "Shift+S")
    masks = widget.session.layer("masks")
    assert viewer.layers.selection.active is masks and masks.mode == "paint"
    _press(viewer, "Shift+D")
    assert viewer.layers.selection.active is points and points.mode == "add"


def test_ctrl_z_undoes_and_ctrl_shift_z_redoes_points_and_boxes(annotate, small_2d, notifications):
    image, _, classes = small_2d
    viewer, _, widget = annotate(image, classes)
    session = widget.session
    points, boxes = session.layer("points"), session.layer("boxes")
    widget.set_current_class(1)
    points.add([[10, 12]])
    widget.set_current_class(2)
    points.add([[20, 22]])
    boxes.add_rectangles([np.array([[4, 5], [4, 20], [15, 20], [15, 5]])])
    assert session.snapshot().points.tolist() == [[0, 10, 12, 1], [0, 20, 22, 2]]

    _press(points, "Control-Z")
    assert session.snapshot().points.tolist() == [[0, 10, 12, 1]]
    _press(points, "Control-Z")
    assert len(session.snapshot().points) == 0
    _press(points, "Control-Z")  # nothing left: a notification, no error
    assert any("nothing to undo on the points layer" in m for m in notifications)
    _press(points, "Control-Shift-Z")
    ann = session.snapshot()
    assert ann.points.tolist() == [[0, 10, 12, 1]]
    assert ann.boxes.tolist() == [[0, 4, 5, 15, 20, 2]]  # the other layer is untouched
    np.testing.assert_allclose(points.face_color[0], _rgba(classes[1].color))  # colour restored

    _press(boxes, "Control-Z")
    assert len(session.snapshot().boxes) == 0
    _press(boxes, "Control-Shift-Z")
    assert session.snapshot().boxes.tolist() == [[0, 4, 5, 15, 20, 2]]
    np.testing.assert_allclose(boxes.edge_color[0], _rgba(classes[2].color))

    _press(points, "Control-Z")
    points.add([[30, 31]])  # a new edit after an undo drops the redo states
    assert not session.redo("points")
    assert session.snapshot().points.tolist() == [[0, 30, 31, 2]]


def test_status_line_counts_annotations_per_class_and_type(annotate, small_2d):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    session = widget.session
    session.layer("points").add([[1, 1], [2, 2]])
    widget._update_status()
    assert "2 pts" in widget.status.text()


def test_a_point_outside_the_image_names_the_layer(annotate, small_2d):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.session.layer("points").add([[200, 5]])
    with pytest.raises(ValueError, match="points layer 'img points'"):
        widget.session.validated_snapshot()


def test_csv_export_then_import_restores_points_boxes_tags_and_sizes(
    annotate, small_3d, tmp_path, notifications
):
    image, _, classes = small_3d
    _, _, widget = annotate(image, classes)
    session = widget.session
    session.layer("points").add([[1, 4, 4]])
    session.layer("boxes").add_rectangles([np.array([[3, 2, 2], [3, 2, 9], [3, 9, 9], [3, 9, 2]])])
    session.set_tag(1, 0, True)
    session.set_size(3, 0, 1.0)
    before = session.snapshot()
    widget.export_csv(tmp_path / "csv")
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == [
        ".napari_wsseg_annotations.json",  # what napari-wsseg wrote: a later export may replace it
        "boxes.csv",
        "classes.json",
        "points.csv",
        "sizes.csv",
        "tags.csv",
    ]
    session.layer("points").data = np.zeros((0, 3))
    session.set_tag(1, 0, False)
    widget.import_csv(tmp_path / "csv")
    after = session.snapshot()
    for kind in ("points", "boxes", "tags", "sizes"):
        np.testing.assert_array_equal(getattr(after, kind), getattr(before, kind))
    assert any("imported" in m for m in notifications)


def test_importing_a_folder_without_csv_files_shows_the_fix(
    annotate, small_2d, tmp_path, notifications
):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.import_csv(tmp_path)
    assert any("holds no points.csv" in m for m in notifications)


def test_size_grid_overlay_has_coarse_and_fine_cells(annotate, small_2d):
    image, _, _ = small_2d
    viewer, _, widget = annotate(image)
    widget.slice_panel.grid_combo.setCurrentText("fine")
    grid = L.find_layers(viewer.layers, "grid")
    assert len(grid) == 1 and len(grid[0].data) == 18  # 9 + 9 inner lines: 100 cells of 1 %
    widget.slice_panel.grid_combo.setCurrentText("coarse")
    coarse = L.find_layers(viewer.layers, "grid")[0]
    assert len(coarse.data) == 8  # 4 + 4 inner lines: 25 cells of 4 %
    rows = sorted({float(line[0][0]) for line in coarse.data[:4]})
    np.testing.assert_allclose(np.diff([-0.5, *rows, 63.5]), 64 / 5)  # equal cells
    widget.slice_panel.grid_combo.setCurrentText("off")
    assert not L.find_layers(viewer.layers, "grid")


def test_sizes_from_the_painted_scribble(annotate, small_3d, notifications):
    image, _, classes = small_3d
    viewer, _, widget = annotate(image, classes)
    panel = widget.slice_panel
    viewer.dims.set_current_step(0, 1)
    panel.estimate_button.click()  # nothing painted yet: a notification with the fix
    assert any("nothing painted in slice 1" in m for m in notifications)
    masks = widget.session.layer("masks")
    masks.data[1, :, :36] = 1  # a rough copy of the slice: 3/4 class 0, 1/4 class 2
    masks.data[1, :, 36:] = 3
    masks.data[2, :10] = 2  # another slice does not count
    panel.estimate_button.click()
    sizes = widget.session.snapshot().sizes
    np.testing.assert_allclose(sizes, [[1, 0, 0.75], [1, 1, 0.0], [1, 2, 0.25]])
    assert panel.rows[0][2].value() == 75.0 and "sum 100 %" in panel.sum_label.text()


def test_a_lazy_volume_too_big_for_memory_is_annotated_without_loading_it(annotate, notifications):
    import dask.array as da

    volume = da.zeros((1100, 512, 512), dtype=np.uint8, chunks=(1, 512, 512))  # 288 M voxels, lazy
    viewer, image_layer, widget = annotate(volume)
    session = widget.session
    assert session.layer("masks") is None  # no 288 MB scribble layer
    widget.set_mode("scribble")
    assert any("scribbles are off" in m for m in notifications)
    viewer.dims.set_current_step(0, 700)
    session.layer("points").add([[700, 10, 10]])
    assert session.snapshot().points.tolist() == [[700, 10, 10, 0]]
    L.show_slice_result(
        viewer, image_layer, session.classes, 700, np.ones((512, 512), np.uint8), None
    )
    prediction = L.find_layers(viewer.layers, "prediction")[0]
    assert prediction.data.shape == (1, 512, 512)  # one slice, moved to z = 700
    assert prediction.translate[0] == 700 and prediction.data[0, 0, 0] == 2
