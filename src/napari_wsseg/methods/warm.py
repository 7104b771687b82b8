"""Warm start: whether a previous model may seed a new training, and how long the short run is.

Not itself a method: :meth:`Method.fit(..., init=previous) <napari_wsseg.methods.base.Method.fit>`
calls :func:`warm_start_source`, and each method decides what it reuses from the model it gets
back (torch methods: the network weights; rf: the filter features of the training slices; mews:
the feature cache and the heads). A previous model whose classes, channels or learned-shape
options differ gives a cold start with a :class:`WarmStartWarning`, which a widget shows as a
notification. No Qt.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import TYPE_CHECKING

from ..errors import WssegError

if TYPE_CHECKING:
    from ..annotations.model import Annotations
    from .base import Method

#: Options that may change between the previous model and the new training without ruling out a
#: warm start: they steer how long or how a run trains, or how it predicts, not what is learned.
FREE_OPTIONS = frozenset(
    {
        "max_steps",
        "lr",
        "weight_decay",
        "warmup_fraction",
        "batch_size",
        "tile",
        "tile_overlap",
        "cpu_bf16",
        "cache_dir",
        "cache_memory_mb",
        "n_estimators",
        "max_depth",
        "max_samples_per_class",
        "random_crop_fraction",
        "prior",
    }
)
#: Steps of a warm-started torch training (dsp, size, cpews) when FitOptions.warm_steps is None:
#: issue 17 asks for a warm retraining of at most 60 s, and 100 dsp steps took 47-54 s on 2 idle
#: CPU cores (1024² slices, session 9; it was 200, estimated at 35 s, in fact about 100 s).
TORCH_WARM_STEPS = 100
#: Steps of a live run of a torch slice method (dsp, size, cpews) unless the user sets them: a
#: live run must show a click's effect within seconds (issue 17: 10 s for the deep methods). On
#: 2 idle CPU cores (1024² slice, session 10) a click showed on the whole slice 7.3-8.3 s later
#: with 10 steps, 12.7-14.1 s with 20; over 6 corrective clicks per dataset 9 of 12 showed at
#: once with 10 steps, 10 of 12 with 20 (benchmarks/interactive_loop.py live).
LIVE_WARM_STEPS = 10
#: Share of a warm run's annotation crops centred on ``FitOptions.focus`` (live mode: the clicks
#: and boxes added since the last run). A 10-step live run draws about 60 annotation crops; spread
#: over every annotation alone, a new click among 200 would be in none of them 3 times in 4.
FOCUS_SHARE = 0.25
#: A warm run's peak learning rate as a share of the configured one. A fresh AdamW moves every
#: weight by about the learning rate per step whatever its gradient, so the cold run's peak
#: knocks a trained model off: one 100-step dsp warm run after adding a click per class and slice
#: took drosophila_vnc (validation, seed 0) from 56.3 to 46.3 Dice at the full rate. Chained over
#: rounds (benchmarks/interactive_loop.py warm, session 9, seed 0) a tenth drifted down on
#: drosophila_vnc (56.3 → 52.7, 52.6, 50.5, 53.0, 51.7; cdeep3m_mito 56.0 → 57.1, 56.9, 57.0,
#: 58.7, 57.6); 0.03 gave 56.4, 57.0, 54.5 and 56.0, 56.9, 57.7 (3 rounds): better on average,
#: though a round can still lose 2.5 points (cause not yet analysed).
WARM_LR_FACTOR = 0.03
#: A live run's learning-rate share (``FitOptions.warm_lr_factor`` from the Train widget). Six
#: corrective clicks on drosophila_vnc slice 0, each followed by a focused 20-step dsp run
#: (session 9, benchmarks/interactive_loop.py live and live_latency.py --corrective): at
#: WARM_LR_FACTOR none showed; at 0.1, 5 showed and the validation Dice went 56.3 -> 52.2; at 0.3
#: all 6 showed and it went to 42.6. A trade between the slice being corrected and the rest.
LIVE_LR_FACTOR = 0.1
#: Share of the previous model's weights a warm torch model keeps (``FitOptions.warm_keep``):
#: the trained weights are blended with the ones the run started from (weight averaging of a
#: fine-tuned model with its start, as WiSE-FT; batch-norm statistics are blended too). 0: over 5
#: warm dsp rounds (validation, seed 0, session 11) keeping half cut drosophila_vnc's fall at
#: round 5 (55.1 against 52.7) but slowed cdeep3m_mito's gains on every round (mean 57.4 against
#: 57.7), so it did not help on both real datasets.
WARM_KEEP = 0.0
#: The share a live run's model keeps (the Train widget passes it as ``FitOptions.warm_keep``): a
#: live model is a quick correction the next Train press does not continue from, and keeping
#: the previous weights would halve what a click shows.
LIVE_KEEP = 0.0
#: Linear warm-up share of a warm run. AdamW's moments are not saved with a model, so the
#: optimiser restarts from zero and a short ramp keeps its first large steps off the weights.
WARM_WARMUP_FRACTION = 0.1


class WarmStartWarning(UserWarning):
    """A warm start was asked for but the training starts from scratch (the message says why)."""


def warm_start_source(
    method: "Method", init: "Method | None", annotations: "Annotations", n_channels: int
) -> "Method | None":
    """The previous model to continue from, or None for a cold start.

    Parameters
    ----------
    method : Method
        The model about to be trained (its config decides the learned shapes).
    init : Method or None
        The previous model; None asks for a cold start.
    annotations : Annotations
        The new annotations; their class names must equal ``init``'s, in the same order.
    n_channels : int
        Channels of the image to train on.

    Returns
    -------
    Method or None
        ``init`` when it can seed the training; None otherwise (with a :class:`WarmStartWarning`
        saying why, unless ``init`` was None).

    Raises
    ------
    WssegError
        When ``init`` is not a trained model of the same method (a user error, not a surprise).
    """
    if init is None:
        return None
    from .base import Method

    if not isinstance(init, Method):
        raise WssegError(
            f"init must be a trained napari-wsseg model, got {type(init).__name__}; pass the "
            "previous model (e.g. load_model(folder)) or None to train from scratch"
        )
    if init.name != method.name:
        raise WssegError(
            f"init is a '{init.name}' model and cannot warm-start '{method.name}'; give a "
            f"'{method.name}' model or train from scratch"
        )
    if not init.classes or init.normalization is None:
        raise WssegError(
            f"init '{init.name}' model is not trained; train it first or train from scratch"
        )
    reason = _cold_reason(method, init, annotations, n_channels)
    if reason is not None:
        warnings.warn(
            f"{method.name}: training from scratch, not warm: {reason}",
            WarmStartWarning,
            stacklevel=3,
        )
        return None
    return init


def _cold_reason(
    method: "Method", init: "Method", annotations: "Annotations", n_channels: int
) -> str | None:
    """Why ``init`` cannot seed ``method``'s training, in words; None when it can."""
    old = [c.name for c in init.classes]
    new = list(annotations.class_names)
    if old != new:
        return f"the classes changed ({_class_change(old, new)}; previous model: {old})"
    if init.n_channels != n_channels:
        return f"the image has {n_channels} channel(s), the previous model {init.n_channels}"
    changed = [
        f.name
        for f in dataclasses.fields(method.config)
        if f.name not in FREE_OPTIONS
        and getattr(method.config, f.name) != getattr(init.config, f.name)
    ]
    if changed:
        return f"option(s) {', '.join(changed)} differ from the previous model's"
    return None


def _class_change(old: list[str], new: list[str]) -> str:
    """How the class list changed, in words: added, removed, renamed or reordered."""
    if set(old) == set(new):
        return "reordered"
    if len(old) == len(new):
        pairs = [f"{o!r} to {n!r}" for o, n in zip(old, new) if o != n]
        return f"renamed {', '.join(pairs)}"
    added, removed = sorted(set(new) - set(old)), sorted(set(old) - set(new))
    return ", ".join(
        filter(None, [f"added {added}" if added else "", f"removed {removed}" if removed else ""])
    )


def check_warm_steps(steps: int | None) -> int | None:
    """``steps`` if None or an integer from 1 to 1,000,000; raises WssegError otherwise."""
    if steps is None:
        return None
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 1_000_000:
        raise WssegError(
            f"warm_steps {steps!r} is not a step count; give an integer from 1 to 1000000 "
            "(--warm-steps) or None for the method's default"
        )
    return steps
