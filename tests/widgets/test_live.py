"""The Train widget's warm start: continue from the last model, or from scratch (issue 17)."""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt

from napari_wsseg.methods.base import read_model_config
from napari_wsseg.project import Project
from napari_wsseg.widgets._train import START_CONTINUE, START_SCRATCH, TrainWidget

WAIT_MS = 120_000  # only guards against a hang


def _setup(annotate, clicks, phantom, tmp_path, run_in):
    image, labels, classes = phantom
    viewer, _, annotate_widget = annotate(image, classes)
    rows = clicks.from_truth(labels, 4)
    clicks.add(annotate_widget.session.layer("points"), rows)
    annotate_widget.new_project(tmp_path / "proj")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.run_combo.setCurrentText(run_in)
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10, sigma_max=4.0)
    return viewer, train, labels


def _train(train, qtbot):
    qtbot.mouseClick(train.train_button, Qt.MouseButton.LeftButton)
    with qtbot.waitSignal(train.worker.finished, timeout=WAIT_MS):
        pass


def test_the_second_training_continues_from_the_last_model_in_the_separate_process(
    annotate, clicks, small_2d, tmp_path, qtbot, notifications
):
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "separate process")
    assert train.start_combo.currentText() == START_SCRATCH  # no model yet
    _train(train, qtbot)
    first = train.session.last_model
    assert train.start_combo.currentText() == START_CONTINUE  # same method, same classes
    assert train.warm_start_model() == first
    more = clicks.from_truth(labels, 3, seed=7)
    clicks.add(train.session.layer("points"), more)
    _train(train, qtbot)
    assert any(m.startswith("rf continued from the last model in") for m in notifications)
    assert not any("not warm" in m for m in notifications), notifications
    assert len(Project.open(tmp_path / "proj").list_models()) == 2
    assert train.session.last_model != first
    # "from scratch" ignores the last model
    train.start_combo.setCurrentText(START_SCRATCH)
    assert train.warm_start_model() is None
    _train(train, qtbot)
    assert len([m for m in notifications if m.startswith("rf trained in")]) == 2


def test_a_class_change_trains_from_scratch_and_says_so(
    annotate, clicks, small_2d, tmp_path, qtbot, notifications
):
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "napari process")
    _train(train, qtbot)
    assert train.start_combo.currentText() == START_CONTINUE
    train.session.add_class("debris")
    assert train.start_combo.currentText() == START_SCRATCH  # the default follows the classes
    train.start_combo.setCurrentText(START_CONTINUE)  # the user insists: a cold start, told why
    _train(train, qtbot)
    cold = [m for m in notifications if "training from scratch, not warm" in m]
    assert len(cold) == 1 and "added ['debris']" in cold[0], notifications
    assert any(m.startswith("rf trained in") for m in notifications[-3:])
    classes = [c["name"] for c in read_model_config(train.session.last_model)["classes"]]
    assert classes[-1] == "debris"  # the new model has the new classes


def _prediction(viewer):
    from napari_wsseg.widgets import _layers as L

    layers = L.find_layers(viewer.layers, "prediction")
    return layers[0] if layers else None


def test_live_mode_refreshes_the_prediction_after_a_click(
    annotate, clicks, small_2d, tmp_path, qtbot, notifications
):
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "separate process")
    points = train.session.layer("points")
    viewer.layers.selection.active = points
    train.live_check.click()  # as a user ticks it
    assert train.live.enabled
    clicks.add(points, clicks.from_truth(labels, 1, seed=3))  # an edit: a live run follows
    qtbot.waitUntil(lambda: train.live.runs == 1 and not train.is_running, timeout=WAIT_MS)
    prediction = _prediction(viewer)
    assert prediction is not None and prediction.data.any()
    assert Project.open(tmp_path / "proj").list_models() == ["rf-live"]
    pid = train.live_process.pid
    assert pid is not None and train.last_outcome.feature_cache["computed"] == 1
    prediction.data[:] = 0  # so that the refresh is visible
    clicks.add(points, clicks.from_truth(labels, 1, seed=4))
    qtbot.waitUntil(lambda: train.live.runs == 2 and not train.is_running, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: _prediction(viewer).data.any(), timeout=WAIT_MS)
    assert Project.open(tmp_path / "proj").list_models() == ["rf-live"]  # replaced, not piled up
    assert train.live_process.pid == pid  # the same training process served both runs
    assert train.last_outcome.warm and train.last_outcome.feature_cache["computed"] == 0
    assert train.progress_label.text().startswith("rf continued from the last model")
    assert not any(m.startswith("rf ") for m in notifications)  # no toast per live run
    assert viewer.layers.selection.active is points  # still annotating
    train.live_check.setChecked(False)
    clicks.add(points, clicks.from_truth(labels, 1, seed=5))
    assert not train.live.timer.isActive()  # off: edits start nothing
    assert train.live_process.pid is None and not _alive(pid)  # live off ends the process


def test_live_ticked_after_training_filters_the_slices_before_the_first_live_run(
    annotate, clicks, small_2d, tmp_path, qtbot
):
    """Ticking live after a Train run hands the kept process the image and that model: the
    annotated slice is filtered while the user is still annotating, not after the first click."""
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "separate process")
    _train(train, qtbot)
    train.live_check.setChecked(True)
    clicks.add(train.session.layer("points"), clicks.from_truth(labels, 1, seed=3))
    _live_run(train, qtbot, 1)
    assert train.last_outcome.warm
    assert train.last_outcome.feature_cache == {"hits": 2, "computed": 0}
    train.live_check.setChecked(False)


def test_rapid_edits_during_a_live_run_queue_exactly_one_more_run(
    annotate, clicks, small_2d, slow_method, qtbot
):
    image, labels, classes = small_2d
    viewer, _, annotate_widget = annotate(image, classes)
    points = annotate_widget.session.layer("points")
    clicks.add(points, clicks.from_truth(labels, 3))
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.run_combo.setCurrentText("napari process")
    train.method_combo.setCurrentText(slow_method)
    train.options.set_values(steps=600)  # at least 6 s: the edits and the debounce fall in it
    train.budget_spin.setValue(0)
    train.live_check.setChecked(True)
    clicks.add(points, clicks.from_truth(labels, 1, seed=1))
    qtbot.waitUntil(lambda: train.live.runs == 1 and train.is_running, timeout=WAIT_MS)
    before = len(points.data)
    for seed in range(10, 15):  # five quick edits during the run
        clicks.add(points, clicks.from_truth(labels, 1, seed=seed))
    qtbot.waitUntil(lambda: train.live.queued, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: train.live.runs == 2, timeout=WAIT_MS)
    assert len(train.job.annotations.points) == len(points.data) > before  # all edits in it
    qtbot.waitUntil(lambda: not train.is_running, timeout=WAIT_MS)
    assert train.live.runs == 2 and not train.live.queued and not train.live.timer.isActive()


def test_a_model_trained_in_napari_seeds_a_separate_process_through_a_temporary_copy(
    annotate, clicks, small_2d, qtbot, notifications, monkeypatch
):
    from pathlib import Path

    from napari_wsseg.training import process

    image, labels, classes = small_2d
    viewer, _, annotate_widget = annotate(image, classes)  # no project: the model stays in memory
    clicks.add(annotate_widget.session.layer("points"), clicks.from_truth(labels, 4))
    train = TrainWidget(viewer)
    train.run_combo.setCurrentText("napari process")
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10, sigma_max=4.0)
    _train(train, qtbot)
    copies = []
    original = process._init_folder

    def recording(init):
        copies.append(original(init))
        return copies[-1]

    monkeypatch.setattr(process, "_init_folder", recording)
    train.run_combo.setCurrentText("separate process")
    assert train.start_combo.currentText() == START_CONTINUE
    _train(train, qtbot)
    assert any(m.startswith("rf continued from the last model in") for m in notifications)
    assert len(copies) == 1 and not Path(copies[0]).exists()  # the copy is removed after the run


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _live_run(train, qtbot, runs: int) -> None:
    qtbot.waitUntil(lambda: train.live.runs == runs and not train.is_running, timeout=WAIT_MS)


def test_a_live_run_can_be_cancelled_and_closing_the_widget_ends_its_process(
    annotate, clicks, small_2d, tmp_path, qtbot, notifications
):
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "separate process")
    points = train.session.layer("points")
    train.live_check.setChecked(True)
    clicks.add(points, clicks.from_truth(labels, 1, seed=3))
    _live_run(train, qtbot, 1)
    pid = train.live_process.pid
    train.live_steps_spin.setValue(5)
    clicks.add(points, clicks.from_truth(labels, 1, seed=4))
    qtbot.waitUntil(lambda: train.is_running, timeout=WAIT_MS)
    assert train.job.options.warm_steps == 5  # the live run's length (methods with steps)
    train.cancel()  # as the Cancel button
    _live_run(train, qtbot, 2)
    assert Project.open(tmp_path / "proj").list_models() == ["rf-live"]  # nothing new saved
    assert any("cancelled" in m for m in notifications + [train.progress_label.text()])
    clicks.add(points, clicks.from_truth(labels, 1, seed=5))
    _live_run(train, qtbot, 3)  # live mode goes on after a cancel
    assert not train.last_outcome.fit.stopped == "cancelled"
    pid = train.live_process.pid or pid
    train.setParent(None)
    train.deleteLater()  # the widget goes away (its dock closed, the viewer closed)
    qtbot.waitUntil(lambda: not _alive(pid), timeout=WAIT_MS)


def test_a_zoomed_view_gets_its_visible_window_predicted_before_the_whole_slice(
    annotate, clicks, small_2d, tmp_path, qtbot, monkeypatch
):
    from napari_wsseg.widgets import _layers as L

    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "separate process")
    written = []
    original = L.show_slice_result

    def recording(*args, region=None, **kwargs):
        written.append(region)
        return original(*args, region=region, **kwargs)

    monkeypatch.setattr(L, "show_slice_result", recording)
    # a zoomed-in view; a hidden test viewer never draws, so set what napari's draw would set
    train.session.image_layer.corner_pixels = np.array([[10, 20], [29, 41]])
    train.live_check.setChecked(True)
    clicks.add(train.session.layer("points"), clicks.from_truth(labels, 1, seed=3))
    _live_run(train, qtbot, 1)
    assert written == [(slice(10, 30), slice(20, 42)), None]  # the window, then the whole slice
    train.session.image_layer.corner_pixels = np.array([[0, 0], [63, 63]])  # all of it shown
    clicks.add(train.session.layer("points"), clicks.from_truth(labels, 1, seed=4))
    _live_run(train, qtbot, 2)
    assert written[2:] == [None]  # the whole slice once


def test_live_runs_without_a_project_keep_only_the_last_temporary_model(
    annotate, clicks, small_2d, qtbot
):
    image, labels, classes = small_2d
    viewer, _, annotate_widget = annotate(image, classes)  # no project
    points = annotate_widget.session.layer("points")
    clicks.add(points, clicks.from_truth(labels, 4))
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=10, sigma_max=4.0)
    train.live_check.setChecked(True)
    folders = []
    for run, seed in ((1, 3), (2, 4), (3, 5)):
        clicks.add(points, clicks.from_truth(labels, 1, seed=seed))
        _live_run(train, qtbot, run)
        folders.append(train.session.last_model)
    # the first run (no model yet) trained from scratch: a Train press would continue from it,
    # so its folder is kept; of the warm live runs only the last one's folder is
    assert [f.exists() for f in folders] == [True, False, True]
    assert train.last_outcome.warm
    assert train.warm_start_model(live=True) == folders[2]
    assert train.warm_start_model() == folders[0]
    assert "press Train" not in train.progress_label.text()  # rf's live fit is a full one
    train.live_check.setChecked(False)


def test_a_train_press_after_live_runs_continues_from_the_last_trained_model(
    annotate, clicks, small_2d, tmp_path, qtbot
):
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "napari process")
    _train(train, qtbot)
    trained = train.session.last_model
    points = train.session.layer("points")
    train.live_check.setChecked(True)
    for run, seed in ((1, 3), (2, 4)):
        clicks.add(points, clicks.from_truth(labels, 1, seed=seed))
        _live_run(train, qtbot, run)
    live_model = tmp_path / "proj" / "models" / "rf-live"
    assert train.session.last_model == live_model and train.last_outcome.warm
    assert train._build_job(live=True).init == live_model  # live runs follow each other
    assert train._build_job().init == trained  # a Train press: not the live model's drift
    train.live_check.setChecked(False)
    _train(train, qtbot)
    again = train.session.last_model
    assert again not in (trained, live_model)
    assert train._build_job().init == again == train._build_job(live=True).init
    train.start_combo.setCurrentText(START_SCRATCH)
    assert train._build_job().init is None


def test_a_live_run_of_a_deep_method_is_short_and_shows_no_mid_run_preview(
    annotate, clicks, small_2d, tmp_path
):
    from napari_wsseg.methods.warm import LIVE_KEEP, LIVE_LR_FACTOR, LIVE_WARM_STEPS

    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "napari process")
    train.method_combo.setCurrentText("dsp")
    train.preview_check.setChecked(True)
    pressed, live = train._build_job(live=False), train._build_job(live=True)
    assert pressed.options.warm_steps is None  # a Train press: the method's warm-start length
    assert pressed.preview_every_s > 0
    assert live.options.warm_steps == LIVE_WARM_STEPS  # "live run steps" left to the method
    assert live.preview_every_s == 0.0
    train.live_steps_spin.setValue(7)
    assert train._build_job(live=True).options.warm_steps == 7
    assert pressed.options.focus is None
    assert pressed.options.warm_lr_factor is None  # a Train press: WARM_LR_FACTOR
    assert live.options.warm_lr_factor == LIVE_LR_FACTOR
    assert pressed.options.warm_keep is None  # a Train press: WARM_KEEP
    assert live.options.warm_keep == LIVE_KEEP
    clicks.add(train.session.layer("points"), np.array([[3, 5, 1]]))  # y, x, class
    assert train._build_job(live=True).options.focus.tolist() == [[0, 3, 5]]  # the new click


def test_a_continued_run_of_a_deep_method_says_how_to_learn_the_edits_fully(
    annotate, clicks, small_2d, tmp_path, qtbot
):
    viewer, train, labels = _setup(annotate, clicks, small_2d, tmp_path, "napari process")
    train.method_combo.setCurrentText("dsp")
    tiny = {"depth": 2, "width": 8, "embed_dim": 16, "crop_size": 32, "batch_size": 2}
    train.options.set_values(**tiny, max_steps=3, cpu_bf16=False)
    _train(train, qtbot)
    assert "press Train" not in train.progress_label.text()
    train.live_steps_spin.setValue(2)
    train.live_check.setChecked(True)
    clicks.add(train.session.layer("points"), clicks.from_truth(labels, 1, seed=3))
    _live_run(train, qtbot, 1)
    assert train.last_outcome.warm
    assert "press Train to learn your new annotations" in train.progress_label.text()
    train.live_check.setChecked(False)
    _train(train, qtbot)  # a Train press continues too: a short refresh of a deep method
    assert train.last_outcome.warm
    text = train.progress_label.text()
    assert "short refresh" in text and "from scratch" in text and "press Train" not in text


def test_two_trainings_in_one_second_get_two_model_folders(annotate, clicks, small_2d, tmp_path):
    """Automatic model names carry the time to the second; a second name in the same second must
    not point at (and replace) the first model."""
    _, train, _ = _setup(annotate, clicks, small_2d, tmp_path, "napari process")
    project = train.session.project
    first = train._automatic_model_name("rf")
    project.model_dir(first).mkdir(parents=True)
    second = train._automatic_model_name("rf")
    if second.split("-")[:3] == first.split("-")[:3]:  # the clock did not tick in between
        assert second == f"{first}-2"
    project.model_dir(second).mkdir(parents=True)
    assert train._automatic_model_name("rf") not in (first, second)
