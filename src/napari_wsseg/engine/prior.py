"""Correcting the class prior that class-balanced training implies. Imports no Qt.

Methods that draw training crops around annotations, every class equally often, learn as if the
classes were as common as their labelled pixels in those crops. After training, the image's own
prior is estimated as the mean predicted probability over random places (one EM step of Saerens
et al. 2002, "Adjusting the outputs of a classifier to new a priori probabilities") and each
prediction is re-weighted by ``image prior / training prior`` (Bayes' rule for a change of prior).
"""

from __future__ import annotations

import numpy as np


def log_prior_shift(image_prior: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """``log(image prior / training prior)`` per class.

    The training prior is the class frequency of the labelled pixels the loss saw, add-one
    smoothed so that a class never labelled gets a finite shift.

    Examples
    --------
    >>> np.round(log_prior_shift(np.array([0.9, 0.1]), np.array([49, 49])), 3)
    array([ 0.588, -1.609])
    """
    counts = np.asarray(label_counts, dtype=np.float64)
    return np.log(np.maximum(image_prior, 1e-6) / training_prior(counts))


def training_prior(label_counts: np.ndarray) -> np.ndarray:
    """Add-one smoothed class frequency of the labelled pixels training saw."""
    counts = np.asarray(label_counts, dtype=np.float64)
    return (counts + 1) / (counts.sum() + len(counts))
