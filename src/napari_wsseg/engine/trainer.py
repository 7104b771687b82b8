"""A generic torch training loop: AdamW, warm-up + cosine schedule, time budget, cancel, progress,
bf16 autocast on CUDA, best-checkpoint keeping. Imports no Qt.

A method supplies ``step_fn(step, fraction) -> {"loss": tensor, other terms...}`` computing the
losses of one batch; :func:`run_training` does the rest. ``fraction`` (0 to 1) is how far the
schedule is: the larger of ``step / max_steps`` and ``elapsed / time_budget``, so a time budget
compresses the whole schedule (warm-up, decay, any loss ramp the method keys on it) into the
budget.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..progress import Budget, ProgressCallback, ProgressEvent, report
from .results import FitResult

StepFunction = Callable[[int, float], dict]
#: ``after_step(step, fraction)``, called after each optimiser step (e.g. an EMA teacher update).
AfterStep = Callable[[int, float], None]


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and schedule.

    Attributes
    ----------
    lr : float, default 1e-3
        Peak learning rate of AdamW.
    weight_decay : float, default 0.01
    betas : (float, float), default (0.9, 0.999)
    warmup_fraction : float, default 0.05
        Share of the schedule with a linear warm-up from 0.
    final_lr_fraction : float, default 0.02
        The cosine decay ends at ``lr * final_lr_fraction``.
    max_steps : int, default 2000
        Steps when no time budget stops the run first.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_fraction: float = 0.05
    final_lr_fraction: float = 0.02
    max_steps: int = 2000


def lr_factor(fraction: float, warmup_fraction: float, final_lr_fraction: float) -> float:
    """Learning-rate multiplier at ``fraction`` of the schedule: linear warm-up, then cosine.

    Examples
    --------
    >>> lr_factor(0.0, 0.1, 0.0), lr_factor(0.1, 0.1, 0.0), round(lr_factor(1.0, 0.1, 0.0), 6)
    (0.0, 1.0, 0.0)
    """
    fraction = min(max(fraction, 0.0), 1.0)
    if fraction < warmup_fraction:
        return fraction / warmup_fraction
    progress = (fraction - warmup_fraction) / max(1.0 - warmup_fraction, 1e-12)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    return final_lr_fraction + (1.0 - final_lr_fraction) * cosine


class _BestKeeper:
    """Keeps a copy of the weights with the lowest moving average of a monitored loss."""

    def __init__(
        self,
        model: torch.nn.Module,
        key: str | None,
        after_fraction: float,
        smoothing: float = 0.98,
    ):
        self.model, self.key, self.after_fraction, self.smoothing = (
            model,
            key,
            after_fraction,
            smoothing,
        )
        self.average: float | None = None
        self.best: float = math.inf
        self.state: dict | None = None

    def update(self, losses: dict, fraction: float, step: int) -> None:
        if self.key is None:
            return
        value = float(losses[self.key])
        previous = value if self.average is None else self.average
        self.average = self.smoothing * previous + (1 - self.smoothing) * value
        warm = step >= 1.0 / (1.0 - self.smoothing)
        if fraction >= self.after_fraction and warm and self.average < self.best:
            self.best = self.average
            self.state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def restore(self) -> None:
        if self.state is not None:
            self.model.load_state_dict(self.state)


def run_training(
    model: torch.nn.Module,
    step_fn: StepFunction,
    *,
    optim: OptimConfig,
    device: torch.device,
    time_budget_s: float | None = None,
    cancel: threading.Event | None = None,
    progress: ProgressCallback | None = None,
    monitor: str | None = None,
    keep_best_after: float = 0.5,
    report_every_s: float = 0.5,
    params: list | None = None,
    autocast_cpu: bool = False,
    after_step: AfterStep | None = None,
) -> FitResult:
    """Train ``model`` with ``step_fn`` until ``optim.max_steps``, the time budget or ``cancel``.

    Parameters
    ----------
    model : torch.nn.Module
        Put in train mode here; its parameters are optimised unless ``params`` is given.
    step_fn : callable
        ``step_fn(step, fraction)`` returns a dict of scalar tensors with the total in ``"loss"``.
        It runs under bf16 autocast on CUDA.
    optim : OptimConfig
        Optimiser and schedule.
    device : torch.device
        Where the model lives (decides autocast).
    time_budget_s : float or None
        Wall-clock seconds; None: run ``optim.max_steps``.
    cancel : threading.Event or None
        Checked between steps; a cancelled run returns normally.
    progress : callable or None
        Receives a :class:`~napari_wsseg.progress.ProgressEvent` at most every
        ``report_every_s`` seconds and at the end, with the loss terms and the learning rate.
    monitor : str or None
        Loss key whose moving average picks the weights returned: the best ones seen after
        ``keep_best_after`` of the schedule. None: the final weights.
    autocast_cpu : bool, default False
        Also use bf16 autocast on a CPU, where it has native bf16 support (about 2x faster on
        AVX512-BF16/AMX CPUs).
    after_step : callable or None, default None
        ``after_step(step, fraction)`` runs after each optimiser step (and after a skipped step
        without gradient), outside autocast and without gradients: the place for an EMA teacher
        update (:class:`~napari_wsseg.engine.ema.EMATeacher`). With ``monitor``, only the
        student's best weights are restored at the end; a teacher keeps its last state.

    Returns
    -------
    FitResult
    """
    model.train()
    optimizer = torch.optim.AdamW(
        params if params is not None else model.parameters(),
        lr=optim.lr,
        betas=tuple(optim.betas),
        weight_decay=optim.weight_decay,
    )
    budget = Budget(time_budget_s, total_steps=optim.max_steps, cancel=cancel)
    keeper = _BestKeeper(model, monitor, keep_best_after)
    use_autocast = device.type == "cuda" or (autocast_cpu and cpu_bf16_supported())
    outcome = FitResult()
    last_report = -math.inf
    step = 0
    while step < optim.max_steps and not budget.should_stop():
        fraction = _schedule_fraction(step, optim.max_steps, budget)
        lr = optim.lr * lr_factor(fraction, optim.warmup_fraction, optim.final_lr_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_autocast):
            losses = step_fn(step, fraction)
        optimizer.zero_grad(set_to_none=True)
        if losses["loss"].requires_grad:  # a batch without any target has nothing to learn
            losses["loss"].backward()
            optimizer.step()
        if after_step is not None:
            with torch.no_grad():
                after_step(step, fraction)
        step += 1
        values = {k: float(v.detach()) for k, v in losses.items()} | {"lr": lr}
        keeper.update(values, fraction, step)
        if time.monotonic() - last_report >= report_every_s:
            last_report = time.monotonic()
            outcome.history.append({"step": step, "seconds": round(budget.elapsed, 3)} | values)
            report(progress, _event(step, budget, values))
    outcome.stopped = budget.stop_reason() or "done"
    outcome.steps, outcome.seconds = step, budget.elapsed
    keeper.restore()
    model.eval()
    report(progress, ProgressEvent(step, step, f"training {outcome.stopped}", {}, 0.0))
    return outcome


def cpu_bf16_supported() -> bool:
    """Whether this CPU runs bf16 convolutions natively (oneDNN with AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


#: Share of a time budget that passes before the schedule may follow the clock.
CLOCK_GRACE = 0.05


def _schedule_fraction(step: int, max_steps: int, budget: Budget) -> float:
    """Progress through the schedule: by steps, or by the clock when the budget runs out first.

    The clock's share only counts after CLOCK_GRACE of the budget (rescaled to reach 1 at its
    end), so a run that keeps pace to finish its steps in time never reads the clock and the same
    seed gives the same model; the first steps, slowed by start-up, would otherwise set the
    learning rate from wall time.
    """
    fraction = step / max_steps
    if budget.seconds is not None:
        clock = (budget.elapsed / budget.seconds - CLOCK_GRACE) / (1 - CLOCK_GRACE)
        fraction = max(fraction, clock)
    return min(fraction, 1.0)


def _event(step: int, budget: Budget, values: dict) -> ProgressEvent:
    total = budget.total_steps
    if budget.seconds is not None and budget.elapsed > 0:
        total = min(total, max(step, int(step / budget.elapsed * budget.seconds)))
    return ProgressEvent(step, total, "training", values, budget.eta(step))
