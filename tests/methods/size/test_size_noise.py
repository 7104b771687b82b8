"""The size-noise protocol (paper Eq. 14-16) that the size benchmarks rely on."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.eval.simulate import (
    class_fractions,
    relative_errors,
    simulate_annotations,
    size_noise_mre,
)


@pytest.mark.parametrize("sigma", [0.1, 0.2, 0.4])
def test_empirical_mre_matches_sigma_sqrt_2_over_pi(sigma):
    # 20 equal classes: renormalisation shrinks errors
    # only by sqrt(1 - 1/20) (see docs/evaluation.md)
    gt = np.broadcast_to(np.arange(400).reshape(20, 20) % 20, (300, 20, 20)).astype(np.uint8)
    ann = simulate_annotations(gt, points=0, sizes=True, size_noise=sigma, seed=3)
    errors = []
    for z in range(len(gt)):
        rows = ann.sizes[ann.sizes[:, 0] == z]
        assert rows[:, 2].sum() == pytest.approx(1.0)
        errors.append(relative_errors(class_fractions(gt[z], 20), rows[:, 2]))
    mre = float(np.mean(np.concatenate(errors)))
    assert mre == pytest.approx(size_noise_mre(sigma), rel=0.06), (mre, size_noise_mre(sigma))


def test_exact_sizes_have_no_error():
    gt = np.broadcast_to(np.arange(64).reshape(8, 8) % 3, (2, 8, 8)).astype(np.uint8)
    ann = simulate_annotations(gt, points=0, sizes=True, size_noise=0.0)
    np.testing.assert_allclose(ann.sizes[:3, 2], class_fractions(gt[0], 3))
