"""Pretraining in a separate process (training/pretrain_job): the protocol with a real child.

Each run is real DINO training of timm's tiny ``test_vit`` on a 2 x 64 x 64 phantom in a real
``python -m napari_wsseg.training.pretrain_job`` process.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from multiprocessing.connection import Connection

import pytest

from napari_wsseg.engine.backbones import read_backbone_info
from napari_wsseg.engine.pretrain import PretrainConfig, can_resume
from napari_wsseg.errors import WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.sample import make_phantom
from napari_wsseg.training.pretrain_job import PretrainJob, run_pretraining_in_subprocess

TINY = PretrainConfig(
    arch="test_vit",
    patch_size=8,
    steps=100_000,  # only a cancel or a time budget ends these runs
    batch=2,
    global_px=32,
    local_px=16,
    n_local=2,
    out_dim=32,
    hidden_dim=32,
    bottleneck_dim=16,
    seed=0,
)


@pytest.fixture(scope="module")
def image():
    return as_image(make_phantom((2, 64, 64), seed=3, n_classes=4)[0], source="phantom")


def test_a_cancelled_run_in_another_process_keeps_a_checkpoint_that_resumes(image, tmp_path):
    cancel, pids, seen = threading.Event(), [], []

    def cancel_after_three(event):
        seen.append(event.done)
        if event.done >= 3:
            cancel.set()

    job = PretrainJob(image, tmp_path / "bb", TINY, device="cpu")
    result = run_pretraining_in_subprocess(
        job, progress=cancel_after_three, cancel=cancel, started=pids.append
    )
    assert len(pids) == 1 and pids[0] != os.getpid()
    assert result.stopped == "cancelled" and result.steps >= 3 and seen[-1] >= 3
    assert can_resume(tmp_path / "bb")
    assert read_backbone_info(tmp_path / "bb").training["steps"] == result.steps
    resumed = run_pretraining_in_subprocess(
        PretrainJob(image, tmp_path / "bb", device="cpu", resume=True, time_budget_s=0.5)
    )
    assert resumed.steps > result.steps  # continued from the checkpoint's step
    assert resumed.history[: result.steps] == result.history


def test_a_user_error_in_the_process_arrives_as_one_line(image, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    job = PretrainJob(image, tmp_path / "mine", TINY, device="cpu")
    with pytest.raises(WssegError, match="not written by wsseg pretrain") as caught:
        run_pretraining_in_subprocess(job)
    assert "\n" not in str(caught.value)
    assert [p.name for p in (tmp_path / "mine").iterdir()] == ["notes.txt"]


def test_a_parent_that_goes_away_makes_the_process_checkpoint_and_exit(image, tmp_path):
    """napari closed (or killed) mid-run: the end of the stream cancels the run."""
    process = subprocess.Popen(
        [sys.executable, "-m", "napari_wsseg.training.pretrain_job"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    to_child = Connection(os.dup(process.stdin.fileno()), readable=False)
    from_child = Connection(os.dup(process.stdout.fileno()), writable=False)
    process.stdin.close()
    process.stdout.close()
    spec = {
        "image": image,
        "out": str(tmp_path / "bb"),
        "config": TINY.to_dict(),
        "time_budget_s": None,
        "device": "cpu",
        "resume": False,
        "checkpoint_every_s": 3600.0,  # no periodic checkpoint: only the one on cancel
    }
    try:
        to_child.send(("job", spec))
        while True:
            kind, payload = from_child.recv()
            assert kind in ("info", "progress"), (kind, payload)
            if kind == "progress" and payload.done >= 2:
                break
        to_child.close()  # the parent's end of the stream goes away
        messages = []
        while True:
            try:
                messages.append(from_child.recv())
            except EOFError:
                break
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        to_child.close()
        from_child.close()
    assert messages[-1][0] == "done" and messages[-1][1].stopped == "cancelled"
    assert can_resume(tmp_path / "bb")
