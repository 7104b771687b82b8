"""The training run of the widgets, without a viewer: in-process and in a separate process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.errors import WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions
from napari_wsseg.training import (
    TrainingJob,
    remove_temporary_model,
    run_training,
    run_training_in_subprocess,
)


@pytest.fixture(scope="module")
def tiny():
    """(image, annotations, labels) of a 64 x 64 phantom with 3 classes and 6 clicks per class."""
    from napari_wsseg.sample import make_phantom

    image, labels, classes = make_phantom((64, 64), seed=3, n_classes=3)
    rng = np.random.default_rng(0)
    rows = []
    for k in range(3):
        coords = np.argwhere(labels == k)
        for y, x in coords[rng.choice(len(coords), 6, replace=False)]:
            rows.append([0, y, x, k])
    return as_image(image), Annotations(classes=classes, points=np.array(rows)), labels


def _rf_job(tiny, **kwargs):
    image, annotations, _ = tiny
    method = get_method("rf")(n_estimators=5)
    return TrainingJob(method, image, annotations, FitOptions(device="cpu"), **kwargs)


def test_in_process_run_predicts_the_slice_and_saves(tiny):
    saved = []
    job = _rf_job(tiny, save_model=lambda method, folder: saved.append(method) or "rf-a")
    outcome = run_training(job)
    assert outcome.trained and outcome.model_name == "rf-a" and saved == [job.method]
    labels = tiny[2]
    assert np.mean(outcome.final.labels == labels) > 0.6  # three classes: chance is about 0.33


def test_a_late_cancel_saves_nothing(tiny):
    cancel = threading.Event()
    saved = []
    job = _rf_job(tiny, save_model=lambda method, folder: saved.append(method) or "x")
    job.options.cancel = cancel

    def cancel_at_the_last_step(event):
        if event.done >= event.total:
            cancel.set()  # the fit finishes anyway: the model exists, but the user cancelled

    outcome = run_training(job, progress=cancel_at_the_last_step)
    assert outcome.trained and outcome.model_name is None and saved == []


def test_separate_process_trains_with_every_core_and_hands_back_its_model(tiny, tmp_path):
    from napari_wsseg.methods.base import load_model

    infos, folders = [], []
    job = _rf_job(tiny, save_model=lambda method, folder: folders.append(folder) or "rf-b")
    outcome = run_training_in_subprocess(job, info=infos.append)
    assert outcome.trained and outcome.model_name == "rf-b" and folders == [outcome.model_dir]
    assert infos[0].n_jobs == len(os.sched_getaffinity(0))  # the child inherits this affinity
    model = load_model(outcome.model_dir)
    np.testing.assert_array_equal(model.predict_slice(job.image.slice(0)), outcome.final.labels)
    assert remove_temporary_model(outcome.model_dir) and not outcome.model_dir.exists()


def test_remove_temporary_model_leaves_other_folders_alone(tmp_path):
    (tmp_path / "mine" / "rf").mkdir(parents=True)
    assert not remove_temporary_model(tmp_path / "mine" / "rf")
    assert (tmp_path / "mine" / "rf").is_dir()


def test_user_error_in_the_process_reaches_the_caller_whole(tiny):
    image, annotations, _ = tiny
    boxes_only = Annotations(classes=annotations.classes, boxes=np.array([[0, 2, 2, 10, 10, 1]]))
    job = TrainingJob(get_method("rf")(), image, boxes_only, FitOptions(device="cpu"))
    with pytest.raises(WssegError) as caught:
        run_training_in_subprocess(job)
    assert "rf method learns from labelled pixels" in str(caught.value)
    assert str(caught.value).rstrip().endswith("not enough for rf)")


def test_a_script_without_main_guard_is_not_run_again_by_the_training_process(tmp_path):
    """multiprocessing's spawn would import this script again in the child (a second run)."""
    marker = tmp_path / "runs.txt"
    script = tmp_path / "user_script.py"
    script.write_text(
        textwrap.dedent(f"""
        import numpy as np
        from napari_wsseg.annotations.model import Annotations
        from napari_wsseg.io.image import as_image
        from napari_wsseg.methods import get_method
        from napari_wsseg.methods.base import FitOptions
        from napari_wsseg.sample import make_phantom
        from napari_wsseg.training import TrainingJob, run_training_in_subprocess

        with open({str(marker)!r}, "a") as fh:
            fh.write("run\\n")
        image, labels, classes = make_phantom((64, 64), seed=3, n_classes=3)
        points = np.array([[0, *np.argwhere(labels == k)[0], k] for k in range(3)])
        job = TrainingJob(get_method("rf")(n_estimators=2), as_image(image),
                          Annotations(classes=classes, points=points), FitOptions(device="cpu"))
        print("trained", run_training_in_subprocess(job).trained)
    """)
    )
    result = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "trained True" in result.stdout
    assert marker.read_text().count("run") == 1


def test_cancel_ends_a_process_that_does_not_stop_within_the_grace_time(tiny, monkeypatch):
    """A process that ignores Cancel is ended; nothing is trained or saved."""
    from napari_wsseg.training import process

    monkeypatch.setattr(process, "CANCEL_GRACE_S", 0.2)
    cancel = threading.Event()
    cancel.set()  # pressed before the process could report anything
    saved = []
    job = _rf_job(tiny, save_model=lambda method, folder: saved.append(folder) or "x")
    job.options.cancel = cancel
    outcome = run_training_in_subprocess(job)
    assert saved == [] and outcome.model_name is None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_kept_process_serves_two_runs_and_filters_a_slice_only_once(tiny):
    """Live mode's TrainingProcess: the same process, and rf's features of slice 0 are reused."""
    from napari_wsseg.training import TrainingProcess

    keeper = TrainingProcess()
    infos, outcomes = [], []
    try:
        keeper.prepare("rf")  # started (and importing) before the first run
        pid = keeper.pid
        first = keeper.run(_rf_job(tiny), info=infos.append)
        outcomes.append(first)
        second = keeper.run(_rf_job(tiny, init=first.model_dir), info=infos.append)
        outcomes.append(second)
        assert [i.pid for i in infos] == [pid, pid] and [i.jobs for i in infos] == [1, 2]
        assert first.feature_cache["computed"] == 1  # slice 0, once; the final prediction reuses
        assert second.feature_cache == {"hits": 2, "computed": 0}  # fit and final prediction
        assert second.warm and second.trained
        np.testing.assert_array_equal(first.final.labels, second.final.labels)  # same clicks
    finally:
        keeper.close()
        for outcome in outcomes:
            remove_temporary_model(outcome.model_dir)
    assert keeper.pid is None and not _alive(pid)  # ended and reaped: no zombie


def test_prepare_with_the_image_and_a_model_filters_the_slices_before_the_first_run(tiny, tmp_path):
    """Live mode ticked after a Train run: the kept process gets the image and the model the next
    run continues from, filters the annotated slices ahead, and that run filters nothing."""
    from napari_wsseg.training import TrainingProcess

    image, annotations, _ = tiny
    trained = _rf_job(tiny).method
    trained.fit(image, annotations, FitOptions("cpu"))
    folder = trained.save(tmp_path / "rf-1")
    keeper = TrainingProcess()
    outcome = None
    try:
        keeper.prepare("rf", image, init=folder, annotations=annotations)
        outcome = keeper.run(_rf_job(tiny, init=folder))  # same image: not sent again
        assert outcome.trained and outcome.warm
        assert outcome.feature_cache == {"hits": 2, "computed": 0}  # fit and final prediction
    finally:
        keeper.close()
        if outcome is not None:
            remove_temporary_model(outcome.model_dir)


def test_a_user_error_keeps_the_process_and_a_cancel_that_is_not_obeyed_replaces_it(
    tiny, monkeypatch
):
    from napari_wsseg.training import TrainingProcess, process

    image, annotations, _ = tiny
    boxes_only = Annotations(classes=annotations.classes, boxes=np.array([[0, 2, 2, 10, 10, 1]]))
    keeper = TrainingProcess()
    try:
        with pytest.raises(WssegError, match="rf method learns from labelled pixels"):
            keeper.run(TrainingJob(get_method("rf")(), image, boxes_only, FitOptions("cpu")))
        pid = keeper.pid
        assert pid is not None  # a user error does not end the process
        monkeypatch.setattr(process, "CANCEL_GRACE_S", 0.0)
        job = _rf_job(tiny, save_model=lambda method, folder: "never")
        job.options.cancel = threading.Event()
        job.options.cancel.set()
        outcome = keeper.run(job)
        assert not outcome.trained and outcome.model_name is None
        assert keeper.pid is None and not _alive(pid)  # ended after the cancel, and reaped
        monkeypatch.setattr(process, "CANCEL_GRACE_S", 1.0)
        again = keeper.run(_rf_job(tiny))  # the next run starts a new process
        assert again.trained and keeper.pid not in (None, pid)
        remove_temporary_model(again.model_dir)
    finally:
        keeper.close()


def test_the_visible_window_is_previewed_before_the_whole_slice(tiny):
    window = (slice(8, 24), slice(16, 40))
    shown = []
    outcome = run_training(_rf_job(tiny, preview_region=window), preview=shown.append)
    assert [(p.region, p.final) for p in shown] == [(window, False), (None, True)]
    assert shown[0].labels.shape == (16, 24) and shown[1] is outcome.final
    np.testing.assert_array_equal(shown[0].labels, outcome.final.labels[window])


def test_a_window_of_most_of_the_slice_is_not_predicted_first(tiny):
    image, _, _ = tiny
    _, height, width = image.shape
    window = (slice(0, height), slice(0, width * 3 // 4))  # 75 % of the slice
    shown = []
    run_training(_rf_job(tiny, preview_region=window), preview=shown.append)
    assert [(p.region, p.final) for p in shown] == [(None, True)]  # the whole slice at once


def test_live_runs_preview_a_draft_of_the_slice_before_the_final_prediction(tiny):
    image, annotations, _ = tiny
    method = get_method("rf")(n_estimators=40)
    shown = []
    job = TrainingJob(method, image, annotations, FitOptions(device="cpu"), draft_first=True)
    outcome = run_training(job, preview=shown.append)
    assert [(p.region, p.final) for p in shown] == [(None, False), (None, True)]
    assert shown[1] is outcome.final
    assert method._draft_trees is None  # predictions after the draft use every tree


def test_a_draft_of_the_whole_slice_goes_before_the_visible_window(tiny):
    """With a draft, a zoomed view gets the whole slice's draft first and no window: the draft
    reuses the slice's features, a window would filter afresh and use every tree."""
    image, annotations, _ = tiny
    window = (slice(8, 24), slice(16, 40))
    method = get_method("rf")(n_estimators=40)
    job = TrainingJob(
        method, image, annotations, FitOptions("cpu"), draft_first=True, preview_region=window
    )
    shown = []
    run_training(job, preview=shown.append)
    assert [(p.region, p.final) for p in shown] == [(None, False), (None, True)]


def test_a_method_without_a_cheaper_version_previews_no_draft(tiny):
    shown = []
    run_training(_rf_job(tiny, draft_first=True), preview=shown.append)  # 5 trees: no draft
    assert [(p.region, p.final) for p in shown] == [(None, True)]


def test_closing_a_kept_process_during_a_run_ends_it_without_an_error(tiny):
    from napari_wsseg.training import TrainingProcess

    keeper = TrainingProcess()
    pids = []

    def close_once_started(info):
        pids.append(info.pid)
        keeper.close()  # as the Train widget going away while a live run trains

    outcome = keeper.run(_rf_job(tiny), info=close_once_started)
    assert not outcome.trained and outcome.model_name is None
    assert keeper.pid is None and not _alive(pids[0])
