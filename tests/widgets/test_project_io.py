"""Autosave into the project, reopening it (reader and Open project), and the labels writer."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_wsseg.io import read_labels
from napari_wsseg.project import Project
from napari_wsseg.widgets import _layers as L
from napari_wsseg.widgets._annotate import AnnotateWidget
from napari_wsseg.widgets._project_reader import napari_get_project_reader
from napari_wsseg.widgets._writer import write_labels_layer


def _annotate_everything(session):
    session.layer("points").add([[1, 5, 6], [2, 7, 8]])
    session.set_current_class(1)
    session.layer("points").add([[1, 20, 20]])
    session.layer("boxes").add_rectangles([np.array([[3, 2, 2], [3, 2, 9], [3, 9, 9], [3, 9, 2]])])
    session.layer("masks").paint((0, 30, 30), 2)
    session.set_tag(2, 0, True)
    session.set_size(3, 0, 0.8)
    session.set_size(3, 1, 0.2)


def _assert_same(a, b):
    assert [c.name for c in a.classes] == [c.name for c in b.classes]
    for kind in ("points", "boxes", "tags", "sizes", "masks"):
        np.testing.assert_array_equal(getattr(a, kind), getattr(b, kind))


def test_autosave_then_reopen_restores_every_layer(
    annotate, make_napari_viewer, small_3d, tmp_path, qtbot
):
    image, _, classes = small_3d
    tifffile.imwrite(
        tmp_path / "vol.tif", image, photometric="minisblack", metadata={"axes": "ZYX"}
    )
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "vol.tif"), plugin="napari-wsseg")
    widget = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(widget)
    session = widget.session
    session.set_classes(list(classes))
    widget.new_project(tmp_path / "proj")
    widget.autosaver.delay_ms = 300  # 2 s by default
    assert Project.open(tmp_path / "proj").image_path == str((tmp_path / "vol.tif").resolve())
    with qtbot.waitSignal(
        widget.autosaver.saved, timeout=10_000
    ):  # debounced: one save for all edits
        _annotate_everything(session)
    qtbot.waitUntil(lambda: not widget.autosaver.is_pending, timeout=10_000)
    expected = session.snapshot()
    _assert_same(Project.open(tmp_path / "proj").annotations, expected)
    assert "saved" in widget.status.text()

    # a new viewer: the reader restores the layers, the widget attaches and restores tags and sizes
    other = make_napari_viewer()
    assert napari_get_project_reader(str(tmp_path / "proj")) is not None
    other.open(str(tmp_path / "proj"), plugin="napari-wsseg")
    assert {L.layer_role(layer) for layer in other.layers} >= {"image", "points", "boxes", "masks"}
    reopened = AnnotateWidget(other)
    _assert_same(reopened.session.snapshot(), expected)
    assert reopened.session.project_folder == tmp_path / "proj"

    # and the Open project button path, in a third viewer
    third = make_napari_viewer()
    opener = AnnotateWidget(third)
    opener.open_project(tmp_path / "proj")
    _assert_same(opener.session.snapshot(), expected)
    np.testing.assert_array_equal(np.asarray(third.layers[0].data), image)


def test_flush_writes_pending_changes_at_once(annotate, small_2d, tmp_path):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.new_project(tmp_path / "p2")
    widget.session.layer("points").add([[3, 4]])
    assert widget.autosaver.is_pending
    widget.save_now()  # what quitting napari does
    assert Project.open(tmp_path / "p2").annotations.points.tolist() == [[0, 3, 4, 0]]


def test_invalid_annotations_are_not_saved_and_say_why(
    annotate, small_2d, tmp_path, qtbot, notifications
):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.new_project(tmp_path / "p3")
    widget.autosaver.delay_ms = 100
    widget.session.layer("points").add([[3, 4]])
    widget.save_now()
    widget.session.layer("points").add([[500, 4]])
    with qtbot.waitSignal(widget.autosaver.problem, timeout=10_000):
        pass
    assert any("points layer 'img points'" in m and "not saved" in m for m in notifications)
    assert Project.open(tmp_path / "p3").annotations.points.tolist() == [[0, 3, 4, 0]]


def test_opening_a_folder_that_is_no_project_shows_the_fix(
    annotate, small_2d, tmp_path, notifications
):
    image, _, _ = small_2d
    _, _, widget = annotate(image)
    widget.open_project(tmp_path)
    assert any("not a napari-wsseg project" in m for m in notifications)
    assert napari_get_project_reader(str(tmp_path)) is None


def test_writer_saves_masks_as_they_are_and_predictions_as_class_ids(tmp_path):
    masks = np.array([[0, 1], [2, 0]], dtype=np.uint8)
    meta = {"metadata": L.role_metadata("masks")}
    write_labels_layer(str(tmp_path / "m.tif"), masks, meta)
    np.testing.assert_array_equal(read_labels(tmp_path / "m.tif"), masks)
    prediction = np.array([[1, 2], [3, 1]], dtype=np.uint8)
    paths = write_labels_layer(
        str(tmp_path / "p.zarr"), prediction, {"metadata": L.role_metadata("prediction")}
    )
    assert paths == [str(tmp_path / "p.zarr")]
    np.testing.assert_array_equal(np.asarray(read_labels(tmp_path / "p.zarr")), prediction - 1)


def test_napari_save_layers_uses_the_writer(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_labels(np.array([[0, 3], [1, 0]], dtype=np.uint8), name="scribbles")
    viewer.layers.save(str(tmp_path / "s.npy"), selected=False, plugin="napari-wsseg")
    np.testing.assert_array_equal(read_labels(tmp_path / "s.npy"), [[0, 3], [1, 0]])
