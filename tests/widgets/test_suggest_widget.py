"""The "Annotate here next" panel: numbered boxes, a list, N / Shift+N move the view (issue 17)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt

from napari_wsseg.widgets import _layers as L
from napari_wsseg.widgets._suggest import camera
from napari_wsseg.widgets._train import TrainWidget

WAIT_MS = 120_000  # only guards against a hang


def _press(qtbot, viewer, key, modifier=Qt.KeyboardModifier.NoModifier) -> None:
    qtbot.keyClick(viewer.window._qt_viewer.canvas.native, key, modifier)


def _trained(annotate, clicks, small_3d, qtbot):
    image, labels, classes = small_3d
    viewer, _, annotate_widget = annotate(image, classes)
    clicks.add(annotate_widget.session.layer("points"), clicks.from_truth(labels, 4))
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.run_combo.setCurrentText("napari process")
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10, sigma_max=4.0)
    with qtbot.waitSignal(train.train().finished, timeout=WAIT_MS):
        pass
    return viewer, train


def test_suggestions_are_boxes_below_the_annotations_and_n_jumps_to_them(
    annotate, clicks, small_3d, qtbot
):
    viewer, train = _trained(annotate, clicks, small_3d, qtbot)
    panel = train.suggest_panel
    points = train.session.layer("points")
    viewer.layers.selection.active = points
    panel.all_slices.setChecked(True)
    panel.n_spin.setValue(4)
    with qtbot.waitSignal(panel.compute().finished, timeout=WAIT_MS):
        pass
    found = panel.suggestions
    assert 2 <= len(found) <= 4 and panel.list.count() == len(found)  # one cell per slice
    scores = [s.score for s in found]
    assert scores == sorted(scores, reverse=True)
    layer = L.find_layers(viewer.layers, "suggestions")[0]
    assert len(layer.data) == len(found)
    assert list(layer.features["rank"]) == list(range(1, len(found) + 1))
    assert viewer.layers.index(layer) < viewer.layers.index(points)  # below the annotations
    assert viewer.layers.selection.active is points  # the annotated layer stays selected
    for rank, s in enumerate(found):  # the box of rank r is the cell of suggestion r
        box = layer.data[rank]
        assert np.all(box[:, 0] == s.z)
        assert box[:, 1].min() == s.y0 - 0.5 and box[:, 2].max() == s.x1 - 0.5
    viewer.dims.set_current_step(0, (found[0].z + 1) % 4)
    camera(viewer).center = (0.0, 0.0)
    _press(qtbot, viewer, Qt.Key.Key_N)
    assert viewer.dims.current_step[0] == found[0].z
    np.testing.assert_allclose(camera(viewer).center[-2:], (found[0].y, found[0].x))
    _press(qtbot, viewer, Qt.Key.Key_N)
    assert viewer.dims.current_step[0] == found[1].z
    np.testing.assert_allclose(camera(viewer).center[-2:], (found[1].y, found[1].x))
    _press(qtbot, viewer, Qt.Key.Key_N, Qt.KeyboardModifier.ShiftModifier)
    assert viewer.dims.current_step[0] == found[0].z
    np.testing.assert_allclose(camera(viewer).center[-2:], (found[0].y, found[0].x))
    assert panel.list.currentRow() == 0


def test_suggestions_update_after_each_training(annotate, clicks, small_3d, qtbot):
    viewer, train = _trained(annotate, clicks, small_3d, qtbot)
    panel = train.suggest_panel
    with qtbot.waitSignal(panel.compute().finished, timeout=WAIT_MS):
        pass
    shown = L.find_layers(viewer.layers, "suggestions")[0]
    worker = train.train()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert panel.worker is not None  # recomputing for the new model
    with qtbot.waitSignal(panel.worker.finished, timeout=WAIT_MS):
        pass
    layers = L.find_layers(viewer.layers, "suggestions")
    assert len(layers) == 1 and layers[0] is not shown  # replaced, not piled up


def test_without_a_model_the_button_says_train_first(annotate, small_3d, notifications):
    image, _, classes = small_3d
    viewer, _, _ = annotate(image, classes)
    train = TrainWidget(viewer)
    assert train.suggest_panel.compute() is None
    assert any("train a model first" in m for m in notifications)


def test_on_a_2d_image_n_centres_the_camera_on_the_suggestion(annotate, clicks, small_2d, qtbot):
    viewer, train = _trained(annotate, clicks, small_2d, qtbot)
    panel = train.suggest_panel
    with qtbot.waitSignal(panel.compute().finished, timeout=WAIT_MS):
        pass
    best = panel.suggestions[0]
    layer = L.find_layers(viewer.layers, "suggestions")[0]
    assert layer.ndim == 2 and layer.data[0].shape == (4, 2)
    camera(viewer).center = (0.0, 0.0)
    _press(qtbot, viewer, Qt.Key.Key_N)
    np.testing.assert_allclose(camera(viewer).center[-2:], (best.y, best.x))
