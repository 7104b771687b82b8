"""The Train widget's "Learn features from this image" panel (issue 14): tiny real runs, each in
its own pretraining process."""

from __future__ import annotations

import json
import os

import pytest

from napari_wsseg.annotations.model import default_classes
from napari_wsseg.engine.pretrain import PretrainConfig, can_resume
from napari_wsseg.errors import ProjectError
from napari_wsseg.project import Project
from napari_wsseg.widgets._pretrain import RESUME
from napari_wsseg.widgets._train import TrainWidget

WAIT_MS = 120_000  # only guards against a hang
TINY = dict(
    arch="test_vit",
    patch_size=8,
    batch=2,
    global_px=32,
    local_px=16,
    n_local=2,
    out_dim=32,
    hidden_dim=32,
    bottleneck_dim=16,
    lr=1e-3,
    seed=0,
)


def _setup(annotate, phantom, tmp_path, steps):
    image, _, classes = phantom
    viewer, _, annotate_widget = annotate(image, classes)
    annotate_widget.new_project(tmp_path / "proj")
    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train)
    train.device_combo.setCurrentText("cpu")
    panel = train.pretrain_panel
    panel.config = PretrainConfig(**TINY, steps=steps)
    panel.budget_spin.setValue(0)  # until done: the steps decide
    return viewer, train, panel


def test_learnt_features_become_the_projects_mews_backbone(
    annotate, small_3d, tmp_path, qtbot, notifications
):
    viewer, train, panel = _setup(annotate, small_3d, tmp_path, steps=4)
    losses, pids = [], []
    panel._signals.progress.connect(lambda e: losses.append(e.metrics.get("loss")))
    panel._signals.started.connect(pids.append)
    panel.fast_views_check.setChecked(True)
    worker = panel.learn()
    assert worker is not None and not panel.learn_button.isEnabled()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert len(pids) == 1 and pids[0] != os.getpid()  # trained in another process
    assert panel.child_pid is None  # and that process is gone
    folder = tmp_path / "proj" / "backbones" / "learned"
    info = json.loads((folder / "backbone.json").read_text())
    assert info["arch"] == "test_vit"
    trained = info["training"]["config"]  # the panel's config with the fast views ticked
    assert (trained["global_px"], trained["n_local"], trained["out_dim"]) == (
        64,
        4,
        TINY["out_dim"],
    )
    assert losses and all(isinstance(v, float) for v in losses)
    assert panel.label.text().startswith("features learnt for 4 steps")
    assert any("MEWS now uses backbone" in m for m in notifications), notifications
    assert Project.open(tmp_path / "proj").mews_backbone == folder  # stored in project.json
    train.method_combo.setCurrentText("mews")
    assert train.options.config().backbone_weights == str(folder)
    train.method_combo.setCurrentText("rf")  # other methods are untouched
    assert "backbone_weights" not in train.options.config().__dataclass_fields__


def test_cancel_keeps_a_checkpoint_and_the_next_press_resumes(annotate, small_3d, tmp_path, qtbot):
    viewer, train, panel = _setup(annotate, small_3d, tmp_path, steps=100_000)
    seen = []
    panel._signals.progress.connect(lambda e: seen.append(e.done))
    worker = panel.learn()
    qtbot.waitUntil(lambda: bool(seen) and seen[-1] >= 2, timeout=WAIT_MS)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        panel.cancel()
    folder = tmp_path / "proj" / "backbones" / "learned"
    assert can_resume(folder) and panel.learn_button.text() == RESUME
    first = seen[-1]
    seen.clear()
    worker = panel.learn()
    qtbot.waitUntil(lambda: bool(seen), timeout=WAIT_MS)
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        panel.cancel()
    assert seen[0] > first  # continued from the checkpoint, not from step 0
    assert "cancelled (press Resume to continue)" in panel.label.text()


def test_closing_the_widget_stops_the_process_and_keeps_a_resumable_checkpoint(
    annotate, small_3d, tmp_path, qtbot
):
    viewer, train, panel = _setup(annotate, small_3d, tmp_path, steps=100_000)
    seen = []
    panel._signals.progress.connect(lambda e: seen.append(e.done))
    worker = panel.learn()
    qtbot.waitUntil(lambda: bool(seen) and seen[-1] >= 2, timeout=WAIT_MS)
    pid = panel.child_pid
    assert pid is not None and pid != os.getpid()
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        viewer.window.remove_dock_widget(train)
        train.deleteLater()  # the panel, its child, goes with it
    folder = tmp_path / "proj" / "backbones" / "learned"
    assert can_resume(folder)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # ended and reaped


def test_without_a_project_it_says_create_one(annotate, small_3d, notifications):
    image, _, classes = small_3d
    viewer, _, _ = annotate(image, classes)
    train = TrainWidget(viewer)
    assert train.pretrain_panel.learn() is None
    assert any("create one first" in m for m in notifications)


def test_the_projects_mews_backbone_is_stored_relative_and_checked(tmp_path):
    classes = default_classes(2, ["background", "cell"])
    project = Project.create(tmp_path / "proj", classes=classes, image_shape=(2, 32, 32))
    assert project.mews_backbone is None
    project.set_mews_backbone(project.backbone_dir())
    meta = json.loads((tmp_path / "proj" / "project.json").read_text())
    assert meta["defaults"]["mews_backbone_weights"] == "backbones/learned"  # moves with it
    elsewhere = tmp_path / "shared" / "backbone"
    project.set_mews_backbone(elsewhere)
    assert Project.open(tmp_path / "proj").mews_backbone == elsewhere.resolve()
    project.set_mews_backbone(None)
    assert Project.open(tmp_path / "proj").mews_backbone is None
    meta["defaults"]["mews_backbone_weights"] = "../outside"
    (tmp_path / "proj" / "project.json").write_text(json.dumps(meta))
    with pytest.raises(ProjectError, match="leads outside the project"):
        _ = Project.open(tmp_path / "proj").mews_backbone
