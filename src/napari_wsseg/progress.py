"""Progress reporting, cancellation and time budgets for long-running work. Imports no Qt.

Long work (training, prediction, conversion) is a plain function taking ``progress`` (a callable
receiving a :class:`ProgressEvent`) and ``cancel`` (a :class:`threading.Event`). The CLI passes a
tqdm callback, the widgets one that emits a Qt signal.

This module sits at the bottom of the layering (beside ``errors``) and imports nothing else of
napari_wsseg, so ``io``, ``engine``, ``methods`` and ``predict`` can all use it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class ProgressEvent:
    """One progress report.

    Attributes
    ----------
    done, total : int
        Steps done and planned (``total`` may change, e.g. when a time budget sets the pace).
    message : str
        Short human-readable status ("training", "predicting slice 3").
    metrics : dict
        Numbers worth plotting (loss terms), by name.
    eta_s : float or None
        Estimated seconds left, when known.
    """

    done: int
    total: int
    message: str = ""
    metrics: dict = field(default_factory=dict)
    eta_s: float | None = None


ProgressCallback = Callable[[ProgressEvent], None]


def report(progress: ProgressCallback | None, event: ProgressEvent) -> None:
    """Send ``event`` to ``progress`` if there is one."""
    if progress is not None:
        progress(event)


def is_cancelled(cancel: threading.Event | None) -> bool:
    return cancel is not None and cancel.is_set()


class Budget:
    """Stops work after ``seconds`` (None: never) or when ``cancel`` is set; estimates the ETA.

    Examples
    --------
    >>> b = Budget(None, total_steps=10)
    >>> b.should_stop()
    False
    """

    def __init__(
        self, seconds: float | None, total_steps: int, cancel: threading.Event | None = None
    ):
        if seconds is not None and seconds <= 0:
            raise ValueError(
                f"time budget must be positive seconds, got {seconds}; omit it for no limit"
            )
        self.seconds = seconds
        self.total_steps = total_steps
        self.cancel = cancel
        self.start = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def stop_reason(self) -> str | None:
        """'cancelled', 'time_budget' or None."""
        if is_cancelled(self.cancel):
            return "cancelled"
        if self.seconds is not None and self.elapsed >= self.seconds:
            return "time_budget"
        return None

    def should_stop(self) -> bool:
        return self.stop_reason() is not None

    def eta(self, done: int) -> float | None:
        """Seconds left: the smaller of the step-rate estimate and the remaining budget."""
        estimates = []
        if done > 0:
            estimates.append(self.elapsed / done * max(self.total_steps - done, 0))
        if self.seconds is not None:
            estimates.append(max(self.seconds - self.elapsed, 0.0))
        return min(estimates) if estimates else None


def tqdm_progress(desc: str = "") -> tuple[ProgressCallback, Callable[[], None]]:
    """A progress callback drawing a tqdm bar on stderr, and a function that closes the bar."""
    from tqdm.auto import tqdm

    bar = tqdm(total=0, desc=desc, unit="step", dynamic_ncols=True)

    def _update(event: ProgressEvent) -> None:
        if bar.total != event.total:
            bar.total = event.total
        bar.n = event.done
        postfix = {k: f"{v:.4g}" for k, v in event.metrics.items() if isinstance(v, (int, float))}
        if event.message:
            bar.set_description(f"{desc} {event.message}".strip(), refresh=False)
        bar.set_postfix(postfix, refresh=False)
        bar.refresh()

    return _update, bar.close
