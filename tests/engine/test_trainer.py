"""The generic training loop: schedule, stopping rules, progress and best-checkpoint keeping."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_wsseg.engine.trainer import OptimConfig, lr_factor, run_training

CPU = torch.device("cpu")


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor():
    assert lr_factor(0.05, 0.1, 0.02) == pytest.approx(0.5)
    assert lr_factor(0.1, 0.1, 0.02) == pytest.approx(1.0)
    assert lr_factor(1.0, 0.1, 0.02) == pytest.approx(0.02)
    assert lr_factor(0.55, 0.1, 0.0) == pytest.approx(0.5)
    decay = [lr_factor(f / 10, 0.1, 0.0) for f in range(1, 11)]
    assert decay == sorted(decay, reverse=True)


def _regression():
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    return model, lambda step, fraction: {"loss": (model.weight[0, 0] - 3.0) ** 2}


def test_training_converges_and_stops_after_max_steps():
    model, step_fn = _regression()
    outcome = run_training(
        model, step_fn, optim=OptimConfig(lr=0.1, max_steps=300, weight_decay=0.0), device=CPU
    )
    assert outcome.stopped == "done" and outcome.steps == 300
    assert model.weight.item() == pytest.approx(3.0, abs=0.05)
    assert not model.training


def test_time_budget_and_cancel_stop_early():
    model, step_fn = _regression()
    outcome = run_training(
        model, step_fn, optim=OptimConfig(max_steps=10**9), device=CPU, time_budget_s=0.2
    )
    assert outcome.stopped == "time_budget" and 0 < outcome.steps < 10**9 and outcome.seconds >= 0.2
    cancel = threading.Event()
    cancel.set()
    outcome = run_training(
        model, step_fn, optim=OptimConfig(max_steps=10), device=CPU, cancel=cancel
    )
    assert outcome.stopped == "cancelled" and outcome.steps == 0


def test_progress_reports_losses_lr_and_eta():
    model, step_fn = _regression()
    events = []
    run_training(
        model,
        step_fn,
        optim=OptimConfig(max_steps=5),
        device=CPU,
        progress=events.append,
        report_every_s=0.0,
    )
    training = [e for e in events if e.message == "training"]
    assert [e.done for e in training] == [1, 2, 3, 4, 5]
    assert {"loss", "lr"} <= set(training[0].metrics) and training[0].eta_s is not None
    assert events[-1].message == "training done"


def test_best_weights_by_the_monitored_loss_are_restored():
    model = torch.nn.Linear(1, 1, bias=False)
    seen = []

    def step_fn(step, fraction):
        seen.append(model.weight.detach().clone())
        # the monitored score improves until step 70, then gets much worse
        score = torch.tensor(1.0 - step * 1e-3 if step < 70 else 100.0)
        return {"loss": (model.weight[0, 0] - 5.0) ** 2, "score": score}

    run_training(
        model,
        step_fn,
        optim=OptimConfig(lr=0.05, max_steps=100),
        device=CPU,
        monitor="score",
        keep_best_after=0.5,
    )
    assert torch.equal(model.weight.detach(), seen[70])
    assert not torch.equal(model.weight.detach(), seen[-1])


def test_a_batch_without_gradient_is_skipped():
    model = torch.nn.Linear(1, 1, bias=False)
    before = model.weight.detach().clone()
    run_training(
        model, lambda s, f: {"loss": torch.tensor(0.0)}, optim=OptimConfig(max_steps=3), device=CPU
    )
    assert torch.equal(model.weight.detach(), before)
