"""docs/widgets.md's 5-step tutorial, walked with real Qt mouse and key events on the canvas.

The widgets are docked both ways a user or a script does it: through napari's plugin API
(``add_plugin_dock_widget``, what the Plugins menu does) and by constructing them. After each
step the test checks what a user would see: the layers, the selected layer, the points per class,
the prediction, the project on disk after quitting at once, and the reopened project.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from qtpy.QtCore import QPoint, Qt

from napari_wsseg.project import Project
from napari_wsseg.widgets import _layers as L

TUTORIAL_CLASSES = ["cytoplasm", "membrane", "mitochondrion", "nucleus", "extracellular"]
CLICKS_PER_CLASS = 3
#: A folder to save the docs' screenshots in while walking (scripts/screenshots.py sets it).
SCREENSHOTS = os.environ.get("WSSEG_SCREENSHOTS")


def screenshot(qtbot, target, name: str, width: int = 420) -> None:
    """Save ``target`` (a dock widget's content, or the main window) as a small PNG, if asked to."""
    if not SCREENSHOTS:
        return
    from qtpy.QtGui import QImage

    qtbot.wait(300)
    if hasattr(target, "content"):  # a scrolling dock widget: all of its content
        target = target.content
        target.resize(target.width(), target.sizeHint().height())
    image = target.grab().toImage()
    if image.width() > width:
        image = image.scaledToWidth(width, Qt.TransformationMode.SmoothTransformation)
    image.convertToFormat(QImage.Format.Format_Indexed8).save(str(Path(SCREENSHOTS) / name), "PNG")


@pytest.fixture
def tiny_sample(monkeypatch):
    """The 3D sample, made tiny (4 x 96 x 96, the same 5 classes) so that the walk is fast."""
    from napari_wsseg import sample

    tiny = sample.make_phantom((4, 96, 96), seed=4, n_classes=5)
    monkeypatch.setattr(sample, "sample_3d", lambda seed=0: tiny)
    return tiny


def dock(viewer, name: str, how: str):
    """Dock the widget ``name`` as a user (plugin menu) or a script (construction) does."""
    if how == "plugin":
        _, widget = viewer.window.add_plugin_dock_widget("napari-wsseg", name)
        return widget
    from napari_wsseg.widgets._annotate import AnnotateWidget
    from napari_wsseg.widgets._predict import PredictWidget
    from napari_wsseg.widgets._train import TrainWidget

    widget = {"Annotate": AnnotateWidget, "Train": TrainWidget, "Predict": PredictWidget}[name](
        viewer
    )
    viewer.window.add_dock_widget(widget, name=name)
    return widget


def canvas_point(viewer, y: float, x: float) -> QPoint:
    """Where data pixel (y, x) of the shown slice is on the canvas widget."""
    canvas = viewer.window._qt_viewer.canvas
    mapped = canvas.view.scene.transform.map([x, y, 0, 1])
    return QPoint(int(round(mapped[0])), int(round(mapped[1])))


def press(qtbot, viewer, key: str, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    """A key press on the canvas, as the user types it while the viewer has focus."""
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, modifier)


def click(qtbot, viewer, y: float, x: float) -> None:
    qtbot.mouseClick(
        viewer.window._qt_viewer.canvas.native,
        Qt.MouseButton.LeftButton,
        pos=canvas_point(viewer, y, x),
    )


def drag(qtbot, viewer, start: tuple[float, float], end: tuple[float, float]) -> None:
    """Press at ``start``, move with the button held, release at ``end`` (a box)."""
    from qtpy.QtCore import QEvent, QPointF
    from qtpy.QtGui import QMouseEvent
    from qtpy.QtWidgets import QApplication

    native = viewer.window._qt_viewer.canvas.native
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    a, b = canvas_point(viewer, *start), canvas_point(viewer, *end)
    steps = [(QEvent.Type.MouseButtonPress, a, left, left)]
    steps += [(QEvent.Type.MouseMove, a + (b - a) * (i / 5), none, left) for i in range(1, 6)]
    steps += [(QEvent.Type.MouseButtonRelease, b, left, none)]
    for kind, point, button, buttons in steps:
        local = QPointF(point)
        event = QMouseEvent(
            kind, local, native.mapToGlobal(local), button, buttons, Qt.KeyboardModifier.NoModifier
        )
        QApplication.sendEvent(native, event)
        qtbot.wait(10)


def counts_per_class(points_layer, n_classes: int) -> list[int]:
    classes = L.points_from_layer(points_layer)[:, 3]
    return np.bincount(classes, minlength=n_classes).tolist()


def inner_pixels(labels_slice: np.ndarray, k: int, n: int, seed: int = 0) -> np.ndarray:
    """``n`` pixels of class ``k`` at least 2 pixels from its border (a click cannot miss)."""
    from scipy import ndimage as ndi

    inside = ndi.binary_erosion(labels_slice == k, iterations=2)
    coords = np.argwhere(inside if inside.any() else labels_slice == k)
    return coords[np.random.default_rng(seed + k).choice(len(coords), n, replace=False)]


@pytest.mark.parametrize("how", ["plugin", "constructed"])
def test_tutorial_walk_with_real_events(make_napari_viewer, qtbot, tmp_path, tiny_sample, how):
    image, labels, _ = tiny_sample
    viewer = make_napari_viewer(show=True)
    viewer.window._qt_window.resize(1400, 1000)  # a 1000-pixel-tall screen

    # 1. Open the sample: the volume and its hidden ground truth
    viewer.open_sample("napari-wsseg", "phantom_3d")
    assert [layer.name for layer in viewer.layers] == ["phantom 3D", "phantom 3D ground truth"]
    assert not viewer.layers["phantom 3D ground truth"].visible

    # 2. Annotate: three layers, the classes renamed in the table, a project
    annotate = dock(viewer, "Annotate", how)
    session = annotate.session
    names = [layer.name for layer in viewer.layers]
    assert names[-3:] == ["phantom 3D points", "phantom 3D boxes", "phantom 3D masks"]
    while len(session.classes) < len(TUTORIAL_CLASSES):
        qtbot.mouseClick(annotate.add_class_button, Qt.MouseButton.LeftButton)
    for k, name in enumerate(TUTORIAL_CLASSES):
        annotate.class_table.item(k, 2).setText(name)  # what double-click + typing does
    assert [c.name for c in session.classes] == TUTORIAL_CLASSES
    annotate.new_project(tmp_path / "proj")  # the folder dialog's result
    assert Project.open(tmp_path / "proj").classes == session.classes

    # 3. Annotate a slice: keys pick the class and the tool, clicks add points, a drag a box
    z = 1
    viewer.dims.set_current_step(0, z)
    viewer.reset_view()
    qtbot.wait(50)
    points = session.layer("points")
    press(qtbot, viewer, "D", Qt.KeyboardModifier.ShiftModifier)
    assert viewer.layers.selection.active is points and points.mode == "add"
    for k in range(len(TUTORIAL_CLASSES)):
        press(qtbot, viewer, str(k + 1))
        assert session.current_class == k
        for y, x in inner_pixels(labels[z], k, CLICKS_PER_CLASS):
            click(qtbot, viewer, y, x)
    assert counts_per_class(points, 5) == [CLICKS_PER_CLASS] * 5
    rows = L.points_from_layer(points)
    assert (rows[:, 0] == z).all()
    assert (
        np.mean(labels[z][rows[:, 1], rows[:, 2]] == rows[:, 3]) == 1.0
    )  # each click hit its class
    press(qtbot, viewer, "3")
    press(qtbot, viewer, "B", Qt.KeyboardModifier.ShiftModifier)
    boxes = session.layer("boxes")
    assert viewer.layers.selection.active is boxes
    drag(qtbot, viewer, (10, 10), (30, 34))
    assert L.boxes_from_layer(boxes)[:, [0, 5]].tolist() == [[z, 2]]
    for row in annotate.slice_panel.rows:  # tick the classes present in the slice: all five
        tag = row[0]
        qtbot.mouseClick(tag, Qt.MouseButton.LeftButton, pos=QPoint(8, tag.height() // 2))
    assert session.tags == {(z, k) for k in range(5)}
    press(qtbot, viewer, "D", Qt.KeyboardModifier.ShiftModifier)  # back to clicking points
    assert viewer.layers.selection.active is points
    qtbot.waitUntil(lambda: f"{CLICKS_PER_CLASS} pts" in annotate.status.text(), timeout=5_000)
    assert "3 mitochondrion: 3 pts, 1 boxes" in annotate.status.text()
    screenshot(qtbot, annotate, "annotate_widget.png")

    # 4. Train rf: the points layer stays selected, the prediction lies under the annotations
    train = dock(viewer, "Train", how)
    assert train.session is session  # one session however the widget was opened
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10)
    train.run_combo.setCurrentText("separate process" if how == "plugin" else "napari process")
    qtbot.mouseClick(train.train_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(train.worker.finished, timeout=300_000):
        pass
    assert viewer.layers.selection.active is points
    order = [layer.name for layer in viewer.layers]
    assert (
        order.index("phantom 3D")
        < order.index("phantom 3D prediction")
        < order.index("phantom 3D points")
    )
    prediction = viewer.layers["phantom 3D prediction"]
    accuracy = np.mean(np.asarray(prediction.data[z]) - 1 == labels[z])
    assert accuracy > 0.5, accuracy  # 5 classes from 15 clicks: chance is about 0.2
    model_name = session.last_model_name
    assert model_name in Project.open(tmp_path / "proj").list_models()
    screenshot(qtbot, train, "train_widget.png")

    # 5. Predict the whole volume into the project
    predict = dock(viewer, "Predict", how)
    assert predict.session is session
    # the three docks scroll: the window fits a 1000-pixel-tall screen
    assert viewer.window._qt_window.minimumSizeHint().height() <= 1000
    predict.refresh_models()
    predict.model_combo.setCurrentText(model_name)
    predict.scope_combo.setCurrentText("whole volume")
    qtbot.mouseClick(predict.predict_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(predict.worker.finished, timeout=300_000):
        pass
    volume_name = f"phantom 3D prediction {model_name}"
    order = [layer.name for layer in viewer.layers]
    assert order.index("phantom 3D") < order.index(volume_name) < order.index("phantom 3D points")
    assert viewer.layers.selection.active is points
    volume = np.asarray(viewer.layers[volume_name].data)
    assert volume.shape == labels.shape and np.mean(volume - 1 == labels) > 0.5
    screenshot(qtbot, predict, "predict_widget.png")
    viewer.layers[volume_name].visible = True
    viewer.layers["phantom 3D prediction"].visible = False
    screenshot(qtbot, viewer.window._qt_window, "viewer_prediction.png", width=900)

    # quit at once after one more click: nothing is lost
    press(qtbot, viewer, "1")
    y, x = inner_pixels(labels[z], 0, CLICKS_PER_CLASS + 1)[-1]
    click(qtbot, viewer, y, x)
    expected = session.snapshot()
    assert len(expected.points) == 5 * CLICKS_PER_CLASS + 1
    viewer.close()
    on_disk = Project.open(tmp_path / "proj")
    np.testing.assert_array_equal(on_disk.annotations.points, expected.points)
    np.testing.assert_array_equal(on_disk.annotations.boxes, expected.boxes)
    assert on_disk.annotations.tags.tolist() == [[z, k] for k in range(5)]
    assert list(on_disk.predictions) == [model_name]

    # reopen: dropping project.json needs no reader choice and restores everything
    other = make_napari_viewer(show=True)
    other.open(
        str(tmp_path / "proj" / "project.json"), plugin=None
    )  # as a drop: no reader question
    reopened = dock(other, "Annotate", how)
    again = reopened.session.snapshot()
    np.testing.assert_array_equal(again.points, expected.points)
    np.testing.assert_array_equal(again.boxes, expected.boxes)
    assert again.tags.tolist() == [[z, k] for k in range(5)]
    assert [c.name for c in again.classes] == TUTORIAL_CLASSES
    restored = np.asarray(other.layers[f"phantom 3D prediction {model_name}"].data)
    np.testing.assert_array_equal(restored, volume)
