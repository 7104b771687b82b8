"""Size calibration: per-class offsets that make arg-max labels cover the target sizes."""

from __future__ import annotations

import numpy as np

from napari_wsseg.methods.size.calibration import fit_class_bias, label_fractions


def test_offsets_shrink_an_over_predicted_rare_class_to_its_target():
    rng = np.random.default_rng(0)
    # soft predictions whose arg-max gives the rare class 2 far more than its 5 % share
    probs = rng.dirichlet([4, 2, 2], size=20000)
    target = np.array([0.75, 0.2, 0.05])
    assert label_fractions(np.log(probs), np.zeros(3))[2] > 0.15
    bias = fit_class_bias(np.log(probs), target)
    np.testing.assert_allclose(label_fractions(np.log(probs), bias), target, atol=0.005)


def test_classes_without_target_keep_a_zero_offset():
    rng = np.random.default_rng(1)
    log_probs = np.log(rng.dirichlet([1, 1, 1, 1], size=5000))
    bias = fit_class_bias(log_probs, np.array([0.5, 0.5, 0.0, 0.0]))
    assert bias[2] == 0.0 and bias[3] == 0.0 and abs(bias[:2].mean()) < 1e-12
