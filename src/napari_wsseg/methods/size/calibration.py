"""Size calibration: per-class logit offsets that make the *labels* match the size targets. No Qt.

The size loss constrains the mean of the soft predictions. A network can satisfy it with
unconfident pixels (in the limit every pixel predicting the target distribution itself), and then
the arg-max labels do not follow the sizes: on drosophila_vnc, rare classes covered 2-5 times
their target share of the labels although their mean probability matched. After training,
:func:`fit_class_bias` finds one additive offset per class for the log-probabilities so that the
arg-max class fractions on the annotated slices equal the (pooled) target sizes; prediction adds
these offsets. This is a prior correction with the same annotations, not part of the paper (see
``docs/methods/size.md``).
"""

from __future__ import annotations

import numpy as np


def label_fractions(log_probs: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Fractions of the rows of ``log_probs + bias`` whose arg-max is each class.

    Examples
    --------
    >>> label_fractions(np.log([[0.6, 0.4], [0.45, 0.55]]), np.zeros(2)).tolist()
    [0.5, 0.5]
    """
    labels = np.argmax(log_probs + bias, axis=1)
    return np.bincount(labels, minlength=log_probs.shape[1]) / len(labels)


def fit_class_bias(log_probs: np.ndarray, target: np.ndarray, iterations: int = 300) -> np.ndarray:
    """Per-class offsets so that the arg-max fractions of ``log_probs + bias`` match ``target``.

    Damped updates ``b_k += rate * log(target_k / fraction_k)`` (each step clipped to +-1, the
    rate shrinking whenever the L1 error grows), keeping the offsets with the smallest L1 error
    seen. Classes with target 0 keep offset 0: the size loss has already suppressed them.

    Parameters
    ----------
    log_probs : (N, C) float array
        Log class probabilities of sampled pixels.
    target : (C,) float array
        Target class fractions (sum 1).
    iterations : int, default 300

    Returns
    -------
    (C,) float64 array
        Offsets with mean 0 over the calibrated classes.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> log_probs = np.log(rng.dirichlet([1, 1, 1], size=5000))
    >>> bias = fit_class_bias(log_probs, np.array([0.7, 0.2, 0.1]))
    >>> label_fractions(log_probs, bias).round(2).tolist()
    [0.7, 0.2, 0.1]
    """
    target = np.asarray(target, dtype=np.float64)
    active = target > 0
    bias = np.zeros(len(target))
    best, best_error = bias.copy(), np.inf
    floor = 0.5 / len(log_probs)
    rate, previous = 0.5, np.inf
    for _ in range(iterations):
        fractions = label_fractions(log_probs, bias)
        error = np.abs(fractions - target)[active].sum()
        if error < best_error:
            best, best_error = bias.copy(), error
        if error < 1e-4:
            break
        rate = rate * 0.7 if error > previous else rate
        previous = error
        log_ratio = np.log(target[active]) - np.log(np.maximum(fractions[active], floor))
        step = np.clip(rate * log_ratio, -1, 1)
        bias[active] += step - step.mean()
    return best
