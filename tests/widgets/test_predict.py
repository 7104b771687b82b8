"""The Predict widget: current slice, visible region, whole volume to zarr (lazy layer), errors."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.io import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions
from napari_wsseg.widgets import _layers as L
from napari_wsseg.widgets._predict import PredictWidget
from napari_wsseg.widgets._project_reader import read_project

WAIT_MS = 60_000  # only guards against a hang


@pytest.fixture
def predict_setup(annotate, clicks, small_3d, slow_method, tmp_path):
    """A 3D image in a project with a trained 'slow' model saved as 'm1', and a Predict widget."""
    image, labels, classes = small_3d
    viewer, image_layer, annotate_widget = annotate(image, classes)
    session = annotate_widget.session
    clicks.add(session.layer("points"), clicks.from_truth(labels, 4))
    annotate_widget.new_project(tmp_path / "proj")
    model = get_method(slow_method)(steps=5, step_s=0.0)
    model.fit(as_image(image), session.snapshot(), FitOptions())
    session.project.save_model(model, "m1")
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.refresh_models()
    return viewer, image_layer, widget, model


def _run(qtbot, widget):
    worker = widget.predict()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    return worker


def test_predict_current_slice_with_a_project_model(predict_setup, qtbot):
    viewer, image_layer, widget, model = predict_setup
    assert widget.model_combo.currentText() == "m1"
    viewer.dims.set_current_step(0, 2)
    widget.scope_combo.setCurrentText("current slice")
    _run(qtbot, widget)
    prediction = L.find_layers(viewer.layers, "prediction")[0]
    assert prediction.data.shape == image_layer.data.shape
    expected = model.predict_slice(image_layer.data[2][..., None]) + 1
    np.testing.assert_array_equal(prediction.data[2], expected)
    assert not prediction.data[[0, 1, 3]].any()


def test_predict_visible_region_only_fills_the_region(predict_setup, qtbot, monkeypatch):
    viewer, image_layer, widget, model = predict_setup
    viewer.dims.set_current_step(0, 0)
    widget.scope_combo.setCurrentText("visible region")
    region = (slice(5, 20), slice(10, 30))
    # a hidden test viewer never draws, so napari does not update corner_pixels: give the region
    monkeypatch.setattr(widget, "visible_region", lambda image: region)
    _run(qtbot, widget)
    prediction = L.find_layers(viewer.layers, "prediction")[0]
    full = model.predict_slice(image_layer.data[0][..., None]) + 1
    np.testing.assert_array_equal(prediction.data[0][region], full[region])
    outside = np.ones(prediction.data[0].shape, bool)
    outside[region] = False
    assert not prediction.data[0][outside].any()


def test_predict_whole_volume_to_zarr_opens_lazily_and_is_recorded(
    predict_setup, qtbot, tmp_path, notifications
):
    viewer, image_layer, widget, model = predict_setup
    widget.scope_combo.setCurrentText("whole volume")
    _run(qtbot, widget)
    layer = viewer.layers[f"{image_layer.name} prediction m1"]
    assert layer.data.shape == image_layer.data.shape
    assert type(layer.data).__module__.startswith("dask")  # lazy
    expected = np.stack([model.predict_slice(s[..., None]) for s in image_layer.data]) + 1
    np.testing.assert_array_equal(np.asarray(layer.data), expected)
    assert (tmp_path / "proj" / "predictions" / "m1.zarr").is_dir()
    assert any("prediction written to" in m for m in notifications)
    roles = [
        kwargs["metadata"]["wsseg"]["role"] for _, kwargs, _ in read_project(tmp_path / "proj")
    ]
    assert roles.count("prediction") == 1


def test_cancelled_whole_volume_prediction_still_opens_a_valid_store(
    predict_setup, qtbot, tmp_path, notifications
):
    viewer, image_layer, widget, _ = predict_setup
    widget.scope_combo.setCurrentText("whole volume")
    widget.output_edit.setText(str(tmp_path / "out.zarr"))
    worker = widget.predict()
    widget.cancel()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert any("cancelled" in m for m in notifications)
    assert viewer.layers[-1].data.shape == image_layer.data.shape


def test_prediction_errors_are_notifications(annotate, small_2d, tmp_path, qtbot, notifications):
    image, _, _ = small_2d
    viewer, _, _ = annotate(image)
    widget = PredictWidget(viewer)

    def attempt(expected: str) -> None:
        notifications.clear()
        worker = widget.predict()
        if worker is not None:
            with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
                pass
        assert any(expected in m for m in notifications), notifications
        assert widget.predict_button.isEnabled()

    attempt("no model to predict with; train one, or pick a model folder")
    widget.set_model_folder(tmp_path)  # an empty folder: not a model
    attempt("no config.json")
    widget.scope_combo.setCurrentText("whole volume")
    attempt("type an OUT.zarr path, or open a project")
    widget.output_edit.setText(str(tmp_path / "out.tif"))
    attempt("must end in .zarr")
