"""MEWS losses and GMM thresholds on tiny hand-made tensors, and against scikit-learn."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_wsseg.methods.mews.losses import (
    correlation_loss,
    fit_gmm_1d,
    gmm_thresholds,
    high_cluster_minimum,
    prototype_class_thresholds,
    prototype_loss,
    triplet_loss,
)


def _bimodal_rows(n_rows: int, n: int, seed: int = 0) -> np.ndarray:
    """Rows that look like one patch's similarities: many low values, a few high ones."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_rows):
        high = int(n * (0.15 + 0.1 * i))
        rows.append(np.concatenate([rng.normal(0.05, 0.05, n - high), rng.normal(0.55, 0.1, high)]))
    return np.stack(rows)


def test_gmm_thresholds_match_sklearn_on_a_few_patches():
    from sklearn.mixture import GaussianMixture

    rows = _bimodal_rows(4, 300)
    ours = fit_gmm_1d(torch.from_numpy(rows), init_means=(0.04, 0.30), max_iter=50, tol=0.0)
    betas = gmm_thresholds(torch.from_numpy(rows), max_iter=50, tol=0.0)
    for i, row in enumerate(rows):
        gm = GaussianMixture(
            2,
            covariance_type="full",
            max_iter=50,
            tol=0.0,
            reg_covar=1e-6,
            means_init=[[0.04], [0.30]],
            weights_init=[0.5, 0.5],
            precisions_init=[[[100.0]], [[100.0]]],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ConvergenceWarning: we ask for exactly 50 iterations
            gm.fit(row[:, None])
        np.testing.assert_allclose(ours.means[i].numpy(), gm.means_[:, 0], atol=1e-8)
        np.testing.assert_allclose(ours.variances[i].numpy(), gm.covariances_[:, 0, 0], atol=1e-8)
        np.testing.assert_allclose(ours.weights[i].numpy(), gm.weights_, atol=1e-8)
        assert betas[i].item() == pytest.approx(gm.means_.mean(), abs=1e-8)
    assert 0.2 < betas.min() and betas.max() < 0.4  # between the two modes


def test_batched_gmm_equals_per_patch_reference():
    rows = torch.from_numpy(_bimodal_rows(6, 200, seed=1)).float()
    batched = fit_gmm_1d(rows, tol=0.0)
    for i in range(len(rows)):
        single = fit_gmm_1d(rows[i : i + 1], tol=0.0)
        torch.testing.assert_close(batched.means[i], single.means[0], rtol=0, atol=1e-6)
        torch.testing.assert_close(batched.variances[i], single.variances[0], rtol=0, atol=1e-6)


def test_gmm_stops_early_and_never_exceeds_max_iter():
    rows = torch.from_numpy(_bimodal_rows(3, 200)).float()
    assert fit_gmm_1d(rows, max_iter=50).iterations < 50
    assert fit_gmm_1d(rows, max_iter=7, tol=0.0).iterations == 7


def test_high_cluster_minimum_is_the_smallest_value_of_the_high_mode():
    values = torch.tensor([[0.0, 0.02, 0.05, 0.03, 0.6, 0.7, 0.65, 0.01]], dtype=torch.float64)
    assert high_cluster_minimum(values).item() == pytest.approx(0.6)


def test_correlation_loss_by_hand():
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])  # (B=1, N=2, D=2): x·x = identity
    betas = torch.tensor([[0.5, 0.5]])  # weights (x·x - β): +0.5 diagonal, -0.5 off-diagonal
    z = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])  # (C=1, B, N, P): cos = 1/sqrt(2) off-diagonal
    expected = -(0.5 + 0.5 - 2 * 0.5 / math.sqrt(2)) / 4
    assert correlation_loss(x, z, betas).item() == pytest.approx(expected)
    z_opposite = torch.tensor([[[[1.0, 0.0], [-1.0, 0.0]]]])  # cos = -1, clamped at r = -0.25
    assert correlation_loss(x, z_opposite, betas, clamp=-0.25).item() == pytest.approx(
        -(0.5 + 0.5 + 2 * 0.125) / 4
    )


def test_prototype_loss_by_hand():
    x = torch.tensor(
        [[[1.0, 0.0], [0.0, 1.0]]]
    )  # patch 0 is class 0's prototype, patch 1 class 1's
    proto_x, labels = torch.eye(2), torch.tensor([0, 1])
    z = torch.stack([x, x])  # both heads are the identity
    centroids = torch.eye(2)
    beta = torch.tensor([0.5, 0.5])
    # class 0: s = (1, 0), y = (1, 0) -> (0.5 * 1 + (-0.5) * 0) / 2; class 1 likewise
    assert prototype_loss(x, z, proto_x, labels, centroids, beta).item() == pytest.approx(-0.5)
    # a patch dissimilar to the prototypes (s < β) is pushed away: positive contribution
    z_wrong = torch.stack(
        [x.flip(1), x.flip(1)]
    )  # heads swap: each patch looks like the other class
    assert prototype_loss(x, z_wrong, proto_x, labels, centroids, beta).item() == pytest.approx(0.5)


def _unit(angle: float) -> list[float]:
    return [math.cos(angle), math.sin(angle)]


def test_triplet_loss_is_exactly_zero_when_the_margin_holds():
    labels = torch.tensor([0, 0, 1, 1])
    clicks = torch.tensor(
        [_unit(0.0), _unit(0.1), _unit(1.5), _unit(1.6)]
    )  # two tight, distant clusters
    proto_z = torch.stack([clicks, clicks])  # (C=2, K=4, P=2)
    loss = triplet_loss(proto_z, labels, margin=0.25)
    assert loss.item() == 0.0


def test_triplet_loss_by_hand_when_violated():
    labels = torch.tensor([0, 0, 1, 1])
    clicks = torch.tensor([_unit(0.0), _unit(1.0), _unit(1.4), _unit(1.4)])
    proto_z = torch.stack([clicks, clicks])
    margin = 0.5
    a0, a1 = F.normalize(clicks[:2].mean(0), dim=0), F.normalize(clicks[2:].mean(0), dim=0)
    d = torch.dist
    expected = max(d(clicks[0], a0) - d(a1, a0) + margin, 0) + max(
        d(clicks[2], a1) - d(a0, a1) + margin, 0
    )
    assert triplet_loss(proto_z, labels, margin=margin).item() == pytest.approx(
        float(expected), abs=1e-6
    )
    assert triplet_loss(proto_z, labels, margin=margin).item() > 0


def test_triplet_loss_is_zero_for_a_single_class():
    assert triplet_loss(torch.randn(1, 3, 4), torch.zeros(3, dtype=torch.long)).item() == 0.0


def test_prototype_thresholds_are_mean_minimum_within_class_similarity():
    x = torch.tensor([_unit(0.0), _unit(0.2), _unit(0.5), _unit(2.0)], dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    patches = torch.tensor([_unit(a) for a in np.linspace(0, 3, 40)], dtype=torch.float64)
    beta = prototype_class_thresholds(x, labels, patches, 2)
    # per click the least similar other click of its class: cos .5, cos .3, cos .5
    assert beta[0].item() == pytest.approx((2 * math.cos(0.5) + math.cos(0.3)) / 3)
    # a single click falls back to the high GMM cluster of its similarities to the patches
    assert beta[1].item() == pytest.approx(high_cluster_minimum(x[3:] @ patches.T).item())
