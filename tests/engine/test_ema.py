"""EMA (mean-teacher) copies and the training loop's after-step hook that updates them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from napari_wsseg.engine.ema import EMATeacher, ema_update
from napari_wsseg.engine.trainer import OptimConfig, run_training

CPU = torch.device("cpu")


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Conv2d(3, 2, 1))


def test_update_follows_the_formula_for_parameters_and_float_buffers():
    student = _net(0)
    teacher = EMATeacher(student, momentum=0.9)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student.train()
    student(torch.randn(4, 1, 8, 8))  # moves the batch-norm running statistics
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    teacher.update(student)
    after, current = teacher.state_dict(), student.state_dict()
    for name, value in after.items():
        if value.is_floating_point():
            expected = 0.9 * before[name] + 0.1 * current[name]
            torch.testing.assert_close(value, expected, rtol=1e-6, atol=1e-6)
        else:  # the batch counter is copied
            assert torch.equal(value, current[name]) and not torch.equal(value, before[name])


def test_teacher_is_a_frozen_independent_copy():
    student = _net(1)
    teacher = EMATeacher(student, momentum=0.5)
    assert all(not p.requires_grad for p in teacher.module.parameters())
    assert all(p.requires_grad for p in student.parameters())
    assert not teacher.module.training
    with torch.no_grad():
        next(student.parameters()).add_(1.0)
    assert not torch.equal(next(teacher.module.parameters()), next(student.parameters()))
    out = teacher(torch.randn(1, 1, 6, 6))
    assert out.shape == (1, 2, 4, 4) and not out.requires_grad


def test_momentum_zero_copies_and_one_keeps():
    student, other = _net(2), _net(3)
    teacher = EMATeacher(other, momentum=1.0)
    kept = {k: v.clone() for k, v in teacher.state_dict().items()}
    teacher.update(student)
    assert all(
        torch.equal(kept[k], v) for k, v in teacher.state_dict().items() if v.is_floating_point()
    )
    teacher.update(student, momentum=0.0)
    assert all(torch.equal(student.state_dict()[k], v) for k, v in teacher.state_dict().items())


def test_mismatched_networks_and_bad_momentum_are_refused():
    with pytest.raises(ValueError, match="between 0 and 1"):
        EMATeacher(_net(0), momentum=1.5)
    with pytest.raises(ValueError, match="differ"):
        ema_update(nn.Linear(2, 2), nn.Linear(3, 2), 0.9)


def test_after_step_hook_updates_the_teacher_once_per_step():
    torch.manual_seed(0)
    model = nn.Linear(1, 1, bias=False)
    teacher = EMATeacher(model, momentum=0.8)
    expected = float(model.weight)
    calls = []

    def after_step(step: int, fraction: float) -> None:
        nonlocal expected
        assert not torch.is_grad_enabled()
        calls.append((step, fraction))
        teacher.update(model)
        expected = 0.8 * expected + 0.2 * float(model.weight)  # naive recursion on the student

    result = run_training(
        model,
        lambda step, fraction: {"loss": (model.weight[0, 0] - 3.0) ** 2},
        optim=OptimConfig(lr=0.1, max_steps=12, warmup_fraction=0.0),
        device=CPU,
        after_step=after_step,
    )
    assert result.steps == 12 and [s for s, _ in calls] == list(range(12))
    assert [f for _, f in calls] == pytest.approx([s / 12 for s in range(12)])
    assert float(teacher.module.weight) == pytest.approx(expected, rel=1e-6)
    # the teacher lags behind the student on its way to 3
    assert abs(float(teacher.module.weight) - 3.0) > abs(float(model.weight) - 3.0)
