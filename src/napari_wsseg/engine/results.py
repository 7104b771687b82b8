"""What a training run did: the one record that methods' ``fit`` and the training loop return.

Imports neither torch nor Qt, so methods without a network (rf) use it too.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FitResult:
    """What a training run did: why it stopped, how long, and the loss history.

    Attributes
    ----------
    stopped : str, default "done"
        ``'done'`` (the planned steps ran), ``'time_budget'`` or ``'cancelled'``.
    steps : int, default 0
        Optimisation steps (or, for rf, trees) completed.
    seconds : float, default 0.0
        Wall-clock time of the training.
    history : list of dict
        Logged loss terms, one dict per report (``step``, ``seconds`` and each term by name).

    Examples
    --------
    >>> FitResult("time_budget", steps=40, seconds=12.5)
    FitResult(stopped='time_budget', steps=40, seconds=12.5, history=[])
    """

    stopped: str = "done"
    steps: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def summary(self) -> dict:
        """``steps``, ``seconds`` (to 0.1 s) and ``stopped``: what a model's ``fit_info`` records.

        Examples
        --------
        >>> FitResult("done", steps=3, seconds=1.26).summary()
        {'steps': 3, 'seconds': 1.3, 'stopped': 'done'}
        """
        return {"steps": self.steps, "seconds": round(self.seconds, 1), "stopped": self.stopped}
