"""Exponential-moving-average (mean-teacher) copies of a network. Imports no Qt.

A teacher is a frozen copy of a student whose weights follow the student's slowly:
``teacher = m * teacher + (1 - m) * student`` after every optimiser step (Tarvainen & Valpola
2017; Rewis3d's 2D and 3D branches). Floating-point buffers (batch-norm running statistics) are
averaged the same way, integer buffers (batch counters) copied. Hook :meth:`EMATeacher.update`
into :func:`~napari_wsseg.engine.trainer.run_training` through its ``after_step`` argument.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMATeacher:
    """A frozen copy of ``student`` updated as an exponential moving average of its weights.

    Parameters
    ----------
    student : nn.Module
        The network being trained; copied once here (weights, buffers, device).
    momentum : float, default 0.99
        Share of the teacher kept at each update, in [0, 1]; 0 copies the student.

    Examples
    --------
    >>> student = nn.Linear(1, 1, bias=False)
    >>> _ = nn.init.constant_(student.weight, 1.0)
    >>> teacher = EMATeacher(student, momentum=0.75)
    >>> _ = nn.init.constant_(student.weight, 5.0)
    >>> teacher.update(student)
    >>> float(teacher.module.weight)
    2.0
    """

    def __init__(self, student: nn.Module, momentum: float = 0.99) -> None:
        self.momentum = check_momentum(momentum)
        self.module = copy.deepcopy(student)
        self.module.eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)

    @torch.no_grad()
    def update(self, student: nn.Module, momentum: float | None = None) -> None:
        """Move the teacher towards ``student`` (``momentum`` overrides the default once)."""
        m = self.momentum if momentum is None else check_momentum(momentum)
        ema_update(self.module, student, m)

    def __call__(self, *args, **kwargs):
        """The teacher's output, without gradients."""
        with torch.no_grad():
            return self.module(*args, **kwargs)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher = momentum * teacher + (1 - momentum) * student`` for parameters and float
    buffers; other buffers are copied. ``student`` may live on another device.

    Raises
    ------
    ValueError
        When the two networks' parameters or buffers differ in names or shapes.
    """
    teacher_params = dict(teacher.named_parameters())
    student_params = dict(student.named_parameters())
    teacher_buffers = dict(teacher.named_buffers())
    student_buffers = dict(student.named_buffers())
    _check_same(teacher_params, student_params, "parameters")
    _check_same(teacher_buffers, student_buffers, "buffers")
    for name, value in teacher_params.items():
        source = student_params[name].detach().to(value.device, value.dtype)
        value.mul_(momentum).add_(source, alpha=1 - momentum)
    for name, value in teacher_buffers.items():
        source = student_buffers[name].detach()
        if value.is_floating_point():
            value.mul_(momentum).add_(source.to(value.device, value.dtype), alpha=1 - momentum)
        else:
            value.copy_(source)


def check_momentum(momentum: float) -> float:
    """``momentum`` as a float in [0, 1]; raises ValueError otherwise."""
    value = float(momentum)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"EMA momentum {momentum} must be between 0 and 1 (e.g. 0.99)")
    return value


def _check_same(teacher: dict, student: dict, what: str) -> None:
    shapes_t = {k: tuple(v.shape) for k, v in teacher.items()}
    shapes_s = {k: tuple(v.shape) for k, v in student.items()}
    if shapes_t != shapes_s:
        differing = sorted(set(shapes_t.items()) ^ set(shapes_s.items()))[:3]
        raise ValueError(
            f"EMA teacher and student {what} differ ({differing}); "
            "build the teacher from the same network"
        )


def run_momentum(momentum: float, steps: int, horizon_share: float = 0.1) -> float:
    """``momentum``, lowered so the average spans at most ``horizon_share`` of a ``steps``-step run.

    An EMA with momentum m averages over about 1 / (1 - m) steps; over a short run that window
    would reach back to weights the run has long left behind (0.99 averages ~100 steps, most of
    an 80-step run).

    Examples
    --------
    >>> run_momentum(0.99, 1200), run_momentum(0.99, 200), run_momentum(0.99, 5)
    (0.99, 0.95, 0.0)
    """
    cap = 1.0 - 1.0 / (horizon_share * steps) if steps > 0 else 0.0
    return min(check_momentum(momentum), max(cap, 0.0))


def debiased_momentum(momentum: float, updates: int) -> float:
    """Momentum of the ``updates``-th update (from 1) that makes the teacher the bias-corrected
    average of the student's weights, ignoring the weights it was copied from.

    With ``S_t = m S_(t-1) + (1 - m) w_t`` started from 0, the teacher ``S_t / (1 - m^t)`` (as
    Adam corrects its moments) follows ``A_t = b_t A_(t-1) + (1 - b_t) w_t`` with
    ``b_t = m (1 - m^(t-1)) / (1 - m^t)``: the first update copies the student, later ones
    approach ``m``.

    Examples
    --------
    >>> debiased_momentum(0.75, 1), round(debiased_momentum(0.75, 2), 4), debiased_momentum(0.0, 3)
    (0.0, 0.4286, 0.0)
    """
    m = check_momentum(momentum)
    if m in (0.0, 1.0) or updates <= 1:
        return m if updates > 1 else 0.0
    return m * (1.0 - m ** (updates - 1)) / (1.0 - m**updates)
