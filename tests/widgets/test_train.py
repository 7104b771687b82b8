"""The Train widget: one button, training in a thread worker, live preview, cancel, errors."""

from __future__ import annotations

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_wsseg.methods import available_methods
from napari_wsseg.project import Project
from napari_wsseg.widgets import _layers as L
from napari_wsseg.widgets._predict import LAST_TRAINED, PredictWidget
from napari_wsseg.widgets._train import TrainWidget

WAIT_MS = 120_000  # only guards against a hang


def _setup(annotate, clicks, phantom, tmp_path=None, per_class=6, run_in="napari process"):
    image, labels, classes = phantom
    viewer, image_layer, annotate_widget = annotate(image, classes)
    rows = clicks.from_truth(labels, per_class)
    clicks.add(annotate_widget.session.layer("points"), rows)
    if tmp_path is not None:
        annotate_widget.new_project(tmp_path / "proj")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.run_combo.setCurrentText(run_in)
    return viewer, image_layer, train, rows


def _prediction(viewer):
    layers = L.find_layers(viewer.layers, "prediction")
    return layers[0] if layers else None


def test_train_rf_with_the_button_predicts_the_clicked_classes(
    annotate, clicks, small_2d, tmp_path, qtbot, notifications
):
    viewer, image_layer, train, rows = _setup(
        annotate, clicks, small_2d, tmp_path, run_in="separate process"
    )
    assert TrainWidget(viewer).run_combo.currentText() == "separate process"  # the default
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10, sigma_max=4.0)
    qtbot.mouseClick(train.train_button, Qt.MouseButton.LeftButton)
    worker = train.worker
    assert worker is not None and not train.train_button.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    qtbot.waitUntil(lambda: _prediction(viewer) is not None, timeout=WAIT_MS)
    prediction = _prediction(viewer)
    assert prediction.data.shape == image_layer.data.shape
    y, x, k = rows.T
    np.testing.assert_array_equal(prediction.data[y, x], k + 1)  # label k is class k - 1
    uncertainty = L.find_layers(viewer.layers, "uncertainty")[0]
    assert uncertainty.data.shape == image_layer.data.shape
    assert 0.0 <= uncertainty.data.min() and uncertainty.data.max() <= 1.0
    models = Project.open(tmp_path / "proj").list_models()
    assert len(models) == 1 and models[0].startswith("rf-")
    assert any(m.startswith("rf trained in") and "saved as model" in m for m in notifications)
    assert train.train_button.isEnabled()
    # the model the separate process saved is the Predict widget's "last trained" model
    predict = PredictWidget(viewer)
    assert predict.model_combo.currentText() == LAST_TRAINED
    before = prediction.data.copy()
    prediction.data[:] = 0
    with qtbot.waitSignal(predict.predict().finished, timeout=WAIT_MS):
        pass
    np.testing.assert_array_equal(prediction.data, before)


def test_training_a_volume_predicts_the_current_slice_and_reports_dense_dice(
    annotate, clicks, small_3d, qtbot, notifications
):
    viewer, image_layer, train, rows = _setup(annotate, clicks, small_3d)
    image, labels, _ = small_3d
    masks = train.session.layer("masks")
    masks.data[1] = labels[1] + 1  # a densely labelled slice
    viewer.dims.set_current_step(0, 1)
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10, sigma_max=4.0)
    worker = train.train()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    prediction = _prediction(viewer)
    assert prediction.data.shape == image.shape
    assert prediction.data[1].all() and not prediction.data[[0, 2, 3]].any()
    assert any("mean Dice on densely labelled slice 1" in m for m in notifications)


@pytest.mark.parametrize("method", [m for m in ("dsp",) if m in available_methods()])
def test_deep_methods_train_with_a_tiny_budget(annotate, clicks, small_2d, qtbot, method):
    # in the napari process: this also checks the libLLVM/triton guard under Xvfb
    viewer, image_layer, train, _ = _setup(annotate, clicks, small_2d)
    train.method_combo.setCurrentText(method)
    small = {"depth": 2, "width": 8, "batch_size": 2, "crop_size": 32}  # a tiny network: fast steps
    fields = train.options.config_class.__dataclass_fields__
    train.options.set_values(**{k: v for k, v in small.items() if k in fields})
    train.budget_spin.setValue(3.0)
    worker = train.train()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert _prediction(viewer).data.shape == image_layer.data.shape
    assert train.session.last_model.name == method


def test_a_first_training_runs_the_methods_full_schedule_unless_given_a_budget(
    annotate, clicks, small_2d
):
    # a first dsp training cut to 60 s lost 10-21 Dice against its full run (docs/widgets.md)
    _, _, train, _ = _setup(annotate, clicks, small_2d)
    train.method_combo.setCurrentText("dsp")
    job = train._build_job()
    assert job.init is None and job.options.time_budget_s is None
    train.budget_spin.setValue(90.0)
    assert train._build_job().options.time_budget_s == 90.0


def test_live_preview_loss_plot_and_a_cancelled_model_is_saved_only_when_kept(
    annotate, clicks, small_2d, slow_method, tmp_path, qtbot, notifications
):
    viewer, image_layer, train, rows = _setup(annotate, clicks, small_2d, tmp_path)
    train.method_combo.setCurrentText(slow_method)
    train.budget_spin.setValue(0)  # no budget: it would run 2000 steps (20 s)
    train.preview_every.setValue(0.5)
    worker = train.train()
    qtbot.waitUntil(lambda: _prediction(viewer) is not None, timeout=WAIT_MS)  # a live preview
    assert train.worker is worker  # ... while training still runs
    qtbot.waitUntil(lambda: len(train.loss_plot.values) >= 2, timeout=WAIT_MS)
    assert train.progress_bar.value() > 0 and "ETA" in train.progress_label.text()
    # the user keeps annotating: the run works on the snapshot taken at Train
    train.session.layer("points").add([[1, 1]])
    assert len(train.job.annotations.points) == len(rows)
    with qtbot.waitSignal(worker.finished, timeout=5_000):
        qtbot.mouseClick(train.cancel_button, Qt.MouseButton.LeftButton)
    assert worker.is_running is False
    assert any("cancelled" in m and "not saved" in m for m in notifications), notifications
    assert Project.open(tmp_path / "proj").list_models() == []  # not saved unless the user keeps it
    assert train.progress_label.text().startswith("slow: cancelled")  # not stuck on "cancelling…"
    assert train.session.last_model is not None  # usable in Predict meanwhile
    assert train.keep_button.isEnabled()
    name = train.keep_cancelled_model()
    assert Project.open(tmp_path / "proj").list_models() == [name]
    assert not train.keep_button.isEnabled()


def test_each_error_path_is_a_notification(
    annotate, clicks, small_2d, slow_method, qtbot, notifications
):
    image, labels, classes = small_2d
    viewer, _, annotate_widget = annotate(image, classes)
    train = TrainWidget(viewer)
    train.run_combo.setCurrentText(
        "napari process"
    )  # the slow test method exists in this process only

    def attempt(expected: str) -> None:
        notifications.clear()
        worker = train.train()
        if worker is not None:
            with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
                pass
        assert any(expected in m for m in notifications), notifications
        assert not any("Traceback" in m for m in notifications)
        assert train.train_button.isEnabled()

    train.method_combo.setCurrentText(slow_method)
    attempt("no annotations")
    clicks.add(annotate_widget.session.layer("points"), clicks.from_truth(labels, 3))
    train.options.set_values(fail_with="CUDA out of memory. Tried to allocate 2.00 GiB")
    attempt("the GPU ran out of memory; pick device 'cpu'")
    train.options.set_values(fail_with="something unexpected")
    attempt("training slow failed: RuntimeError: something unexpected (details in the log")
    train.method_combo.setCurrentText("rf")
    train.options["max_depth"].value = "deep"
    attempt("option 'max_depth' of RFConfig: 'deep' is not a valid int; leave it empty for none")
    viewer.layers.clear()
    attempt("pick an image layer in the Annotate widget")


def test_a_class_without_annotations_is_a_warning_with_the_fix(
    annotate, clicks, small_2d, slow_method, qtbot, notifications
):
    image, labels, classes = small_2d
    viewer, _, annotate_widget = annotate(image, classes)
    rows = clicks.from_truth(labels, 3)
    clicks.add(annotate_widget.session.layer("points"), rows[rows[:, -1] != 2])
    train = TrainWidget(viewer)
    train.run_combo.setCurrentText("napari process")
    train.method_combo.setCurrentText(slow_method)
    train.options.set_values(steps=3)
    worker = train.train()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert any(classes[2].name in m and "annotation" in m for m in notifications), notifications


def test_train_while_training_is_refused(
    annotate, clicks, small_2d, slow_method, qtbot, notifications
):
    viewer, _, train, _ = _setup(annotate, clicks, small_2d)
    train.method_combo.setCurrentText(slow_method)
    worker = train.train()
    assert train.train() is None
    assert any("already running" in m for m in notifications)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        train.cancel()


def test_a_separate_training_process_relays_errors_and_cancel(
    annotate, clicks, small_2d, qtbot, notifications
):
    image, labels, classes = small_2d
    viewer, _, annotate_widget = annotate(image, classes)
    session = annotate_widget.session
    session.layer("boxes").add_rectangles([np.array([[2, 2], [20, 20]])])
    train = TrainWidget(viewer)
    train.run_combo.setCurrentText("separate process")
    train.method_combo.setCurrentText("rf")
    worker = train.train()  # rf cannot learn from boxes alone: the process says so
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert any("rf method learns from labelled pixels" in m for m in notifications), notifications
    clicks.add(session.layer("points"), clicks.from_truth(labels, 3))
    worker = train.train()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        train.cancel()  # before the process has computed anything
    assert any("cancelled before a model was kept; nothing saved" in m for m in notifications), (
        notifications
    )
    assert train.session.last_model is None


def test_option_form_tooltips_come_from_the_docs_and_empty_max_steps_means_automatic(qtbot):
    from napari_wsseg.methods.dsp.method import DSPConfig
    from napari_wsseg.widgets._options import ConfigForm

    form = ConfigForm(DSPConfig)
    assert form["max_steps"].value == ""
    assert form["max_steps"].tooltip.startswith(
        "Training steps, None to pick them from the annotations"
    )
    assert form["tau"].tooltip.startswith("Softmax temperature (paper: 0.05).")
    assert form.config().max_steps is None
    form.set_values(max_steps=300)
    assert form.config().max_steps == 300
