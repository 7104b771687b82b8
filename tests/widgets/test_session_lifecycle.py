"""No lost edits, never pulled off the annotation layer, one session however widgets are opened."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.errors import ProjectError
from napari_wsseg.project import Project
from napari_wsseg.widgets import _layers as L


def _project_with_points(annotate, image, tmp_path):
    viewer, layer, widget = annotate(image)
    widget.new_project(tmp_path / "proj")
    widget.session.layer("points").add([[3, 4], [5, 6]])
    widget.save_now()
    return viewer, layer, widget


def test_picking_another_image_asks_and_never_replaces_the_projects_annotations(
    annotate, small_2d, tmp_path, questions
):
    image, _, _ = small_2d
    viewer, first, widget = _project_with_points(annotate, image, tmp_path)
    session = widget.session
    viewer.add_image(image[::-1].copy(), name="other")
    widget.image_combo.setCurrentText("other")
    questions.replies = [False]
    widget._attach_selected_image()  # the user picked 'other' in the drop-down
    assert "'img'" in questions.asked[-1] and session.image_layer is first
    assert session.project is not None and widget.image_combo.currentText() == "img"
    with pytest.raises(ProjectError, match="close it before annotating 'other'"):
        session.attach_image(viewer.layers["other"])  # the core refuses too
    widget.image_combo.setCurrentText("other")
    widget._attach_selected_image()  # ... and "yes": the project is closed, not overwritten
    assert session.image_layer is viewer.layers["other"] and session.project is None
    session.layer("points").add([[1, 1]])
    widget.save_now()
    assert Project.open(tmp_path / "proj").annotations.points.tolist() == [
        [0, 3, 4, 0],
        [0, 5, 6, 0],
    ]
    assert "no project" in widget.project_label.text()


@pytest.mark.parametrize("how", ["viewer.close()", "window close"])
def test_an_edit_just_before_closing_the_viewer_is_saved(annotate, small_2d, tmp_path, how):
    image, _, _ = small_2d
    viewer, _, widget = _project_with_points(annotate, image, tmp_path)
    widget.session.set_tag(0, 0, True)
    widget.session.layer("points").add([[7, 8]])
    assert widget.autosaver.is_pending  # 2 s have not passed
    if how == "viewer.close()":
        viewer.close()
    else:
        viewer.window._qt_window.close()  # the window's close button, File → Close Window
    reopened = Project.open(tmp_path / "proj").annotations
    assert reopened.points.tolist() == [[0, 3, 4, 0], [0, 5, 6, 0], [0, 7, 8, 0]]
    assert reopened.tags.tolist() == [[0, 0]]


def test_widgets_docked_through_the_plugin_api_share_one_session(make_napari_viewer, small_2d):
    image, _, _ = small_2d
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    _, annotate = viewer.window.add_plugin_dock_widget("napari-wsseg", "Annotate")
    _, train = viewer.window.add_plugin_dock_widget("napari-wsseg", "Train")
    _, predict = viewer.window.add_plugin_dock_widget("napari-wsseg", "Predict")
    from napari_wsseg.widgets._train import TrainWidget

    constructed = TrainWidget(viewer)
    assert annotate.session is train.session is predict.session is constructed.session
    assert train.session.require_image() is annotate.session.image


def test_results_go_under_the_annotations_and_the_selection_stays(annotate, small_3d):
    image, labels, classes = small_3d
    viewer, image_layer, widget = annotate(image, classes)
    widget.set_mode("points")
    points = widget.session.layer("points")
    assert viewer.layers.selection.active is points
    L.show_slice_result(
        viewer, image_layer, classes, 1, labels[1], np.zeros(labels[1].shape, np.float32)
    )
    order = [layer.name for layer in viewer.layers]
    assert order == [
        "img",
        "img uncertainty",
        "img prediction",
        "img points",
        "img boxes",
        "img masks",
    ]
    assert viewer.layers.selection.active is points and set(viewer.layers.selection) == {points}


def test_removing_a_class_keeps_the_prediction_colours(annotate, small_3d, questions):
    image, labels, classes = small_3d
    viewer, image_layer, widget = annotate(image, classes)
    pred = L.show_slice_result(viewer, image_layer, classes, 1, labels[1])
    before = L.layer_class_colors(pred)
    assert before == [c.color for c in classes]
    widget.session.layer("points").add([[1, 5, 5]])  # class 0 has an annotation
    widget.remove_class(0)
    assert questions.asked  # asked before removing annotations
    assert L.layer_class_colors(pred) == before  # membrane does not turn mitochondrion-coloured
    widget.set_class_color(0, "#00ff00")  # later colour edits do not touch it either
    assert L.layer_class_colors(pred) == before


def test_predicting_with_a_model_of_other_classes_warns_and_shows_its_classes(
    annotate, small_2d, clicks, tmp_path, qtbot, notifications
):
    from napari_wsseg.annotations.model import Annotations
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.rf import RandomForestMethod
    from napari_wsseg.widgets._predict import PredictWidget

    image, labels, classes = small_2d
    rf = RandomForestMethod(n_estimators=3)
    rows = clicks.from_truth(labels, 4)  # (y, x, class)
    points = np.column_stack([np.zeros(len(rows), np.int64), rows])
    rf.fit(as_image(image), Annotations(classes=classes, points=points))
    rf.save(tmp_path / "model")
    viewer, _, widget = annotate(image)  # the session has 2 default classes, the model 3
    predict = PredictWidget(viewer)
    predict.set_model_folder(tmp_path / "model")
    worker = predict.predict()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    assert any("trained with classes" in m and "mitochondrion" in m for m in notifications), (
        notifications
    )
    pred = L.find_layers(viewer.layers, "prediction")[0]
    assert L.layer_class_colors(pred) == [c.color for c in classes]


def test_open_project_restores_predictions_as_dropping_the_folder_does(
    annotate, make_napari_viewer, small_3d, tmp_path
):
    from napari_wsseg.io import read_labels, write_labels
    from napari_wsseg.widgets._annotate import AnnotateWidget

    image, labels, classes = small_3d
    viewer, _, widget = annotate(image, classes)
    widget.new_project(tmp_path / "proj")
    project = widget.session.project
    path = project.prediction_path("rf-1")
    path.parent.mkdir()
    write_labels(path, labels.astype(np.uint8))
    project.record_prediction("rf-1", "rf-1")

    other = AnnotateWidget(make_napari_viewer())
    other.open_project(tmp_path / "proj")
    names = [layer.name for layer in other.viewer.layers]
    assert names == ["img", "img prediction rf-1", "img points", "img boxes", "img masks"]
    shown = np.asarray(other.viewer.layers["img prediction rf-1"].data)
    np.testing.assert_array_equal(shown, np.asarray(read_labels(path)) + 1)
