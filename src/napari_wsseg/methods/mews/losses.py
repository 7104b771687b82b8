"""MEWS losses (paper §3.3) and the batched 1D Gaussian-mixture thresholds they use. No Qt.

Every function works on whole batches as tensor operations: the per-patch GMMs of ``L_corr`` are
fitted for all patches at once, never in a Python loop per patch.

Shapes used throughout: ``B`` crops, ``N`` patches per crop, ``D`` backbone features, ``C`` classes,
``P`` projected features per head, ``K`` clicked prototype patches. Backbone features ``x`` are
L2-normalised; projections ``z`` are not (cosines normalise them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

GMM_INIT_MEANS = (0.04, 0.30)
GMM_INIT_STD = 0.1


@dataclass
class Gmm1d:
    """Parameters of M independent two-component 1D Gaussian mixtures, each ``(M, 2)``."""

    means: torch.Tensor
    variances: torch.Tensor
    weights: torch.Tensor
    iterations: int

    def high_logit(self, values: torch.Tensor) -> torch.Tensor:
        """``(M, N)`` log-odds that each value belongs to component 1 rather than component 0.

        For two 1D Gaussians this is a quadratic in the value, so the E-step needs one pass over
        the data instead of evaluating both log-densities.
        """
        inv = 0.5 / self.variances  # (M, 2)
        quad = inv[:, 0] - inv[:, 1]
        lin = 2 * (self.means[:, 1] * inv[:, 1] - self.means[:, 0] * inv[:, 0])
        const = (
            self.means[:, 0] ** 2 * inv[:, 0]
            - self.means[:, 1] ** 2 * inv[:, 1]
            + torch.log(self.weights[:, 1] / self.weights[:, 0])
            - 0.5 * torch.log(self.variances[:, 1] / self.variances[:, 0])
        )
        return (quad[:, None] * values + lin[:, None]) * values + const[:, None]


def fit_gmm_1d(
    values: torch.Tensor,
    *,
    init_means: tuple[float, float] = GMM_INIT_MEANS,
    init_std: float = GMM_INIT_STD,
    max_iter: int = 50,
    tol: float = 1e-4,
    reg_covar: float = 1e-6,
) -> Gmm1d:
    """Fit one 2-component 1D Gaussian mixture per row of ``values`` by EM, all rows at once.

    Parameters
    ----------
    values : (M, N) float tensor
        Row m is the sample of mixture m (e.g. patch m's similarities to all patches).
    init_means : (float, float), default (0.04, 0.30)
        Initial means of the low- and high-similarity components; initial weights are 1/2 and
        initial standard deviations ``init_std``.
    max_iter : int, default 50
        At most this many EM iterations.
    tol : float, default 1e-4
        Stop early when no mean moves by more than this; 0 runs ``max_iter`` iterations.
    reg_covar : float, default 1e-6
        Added to the variances, as in scikit-learn's ``GaussianMixture`` (whose updates these are).

    Returns
    -------
    Gmm1d
        The M mixtures' means, variances and weights (each ``(M, 2)``).
    """
    values = values if values.is_floating_point() else values.float()
    m, n = values.shape
    means = torch.tensor(init_means, dtype=values.dtype, device=values.device).expand(m, 2).clone()
    gmm = Gmm1d(means, torch.full_like(means, init_std**2), torch.full_like(means, 0.5), 0)
    tiny = 10 * torch.finfo(values.dtype).eps
    # Per row: count, sum and sum of squares; the M-step
    # only needs these weighted by the responsibilities.
    powers = torch.stack([torch.ones_like(values), values, values * values], dim=-1)  # (M, N, 3)
    totals = powers.sum(dim=1)  # (M, 3)
    for iteration in range(1, max_iter + 1):
        resp_high = torch.sigmoid(gmm.high_logit(values))  # (M, N)
        high = (resp_high[:, None, :] @ powers)[:, 0, :]  # (M, 3)
        stats = torch.stack([totals - high, high], dim=1)  # (M, 2 components, 3)
        nk = stats[..., 0] + tiny
        new_means = stats[..., 1] / nk
        variances = (stats[..., 2] / nk - new_means**2).clamp(min=0) + reg_covar
        shift = (new_means - gmm.means).abs().max()
        gmm = Gmm1d(new_means, variances, nk / nk.sum(dim=1, keepdim=True), iteration)
        if shift <= tol:
            break
    return gmm


def gmm_thresholds(values: torch.Tensor, **gmm_options) -> torch.Tensor:
    """β per row: the mean of the two means of a 2-component GMM fitted to the row, ``(M,)``.

    Keyword arguments go to :func:`fit_gmm_1d`.
    """
    return fit_gmm_1d(values, **gmm_options).means.mean(dim=1)


def high_cluster_minimum(values: torch.Tensor, **gmm_options) -> torch.Tensor:
    """Per row, the smallest value the GMM assigns to its high-similarity component, ``(M,)``.

    Rows whose high component claims no value fall back to the GMM threshold (mean of the means).
    """
    gmm = fit_gmm_1d(values, **gmm_options)
    logit = gmm.high_logit(values)  # > 0 where component 1 is more likely
    component_1_is_high = (gmm.means[:, 1] >= gmm.means[:, 0])[:, None]
    in_high = torch.where(component_1_is_high, logit > 0, logit < 0)
    masked = torch.where(in_high, values, torch.full_like(values, torch.inf))
    minimum = masked.min(dim=1).values
    return torch.where(torch.isfinite(minimum), minimum, gmm.means.mean(dim=1))


def prototype_class_thresholds(
    proto_x: torch.Tensor,
    proto_labels: torch.Tensor,
    patches_x: torch.Tensor,
    n_classes: int,
    **gmm_options,
) -> torch.Tensor:
    """β_pc of ``L_proto``, ``(C,)``, from the clicked patches' minimum similarities.

    For each clicked patch of class c, the smallest cosine to the other clicked patches of class c
    (the lowest similarity inside the class's own cluster); β_pc is the mean of these minima over
    the class's clicks, a conservative bound on how similar a patch of class c is to its prototypes.
    A class with a single click has no such pair: its β_pc is the smallest similarity of the
    high-similarity component of a 2-component GMM over that click's similarities to ``patches_x``.

    Parameters
    ----------
    proto_x : (K, D) tensor
        L2-normalised backbone features of the clicked patches.
    proto_labels : (K,) int tensor
    patches_x : (M, D) tensor
        L2-normalised backbone features of (a sample of) the training patches, for single clicks.
    n_classes : int
    **gmm_options
        Passed to :func:`fit_gmm_1d`.
    """
    sims = proto_x @ proto_x.T
    same = (proto_labels[:, None] == proto_labels[None, :]) & ~torch.eye(
        len(proto_x), dtype=torch.bool, device=proto_x.device
    )
    minima = torch.where(same, sims, torch.full_like(sims, torch.inf)).min(dim=1).values  # (K,)
    paired = torch.isfinite(minima)
    if not bool(paired.all()):
        lonely = ~paired
        minima = minima.clone()
        minima[lonely] = high_cluster_minimum(proto_x[lonely] @ patches_x.T, **gmm_options)
    return _class_mean(minima[:, None], proto_labels, n_classes)[:, 0]


def _averaging_matrix(labels: torch.Tensor, n_classes: int, dtype) -> torch.Tensor:
    """``(K, C)`` matrix whose column c averages the entries labelled c."""
    one_hot = F.one_hot(labels, n_classes).to(dtype)
    return one_hot / one_hot.sum(dim=0).clamp(min=1)


def _class_mean(values: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean of rows ``(K, F)`` per class label -> ``(C, F)``."""
    return _averaging_matrix(labels, n_classes, values.dtype).T @ values


def correlation_loss(
    x: torch.Tensor, z: torch.Tensor, betas: torch.Tensor, *, clamp: float = -0.25
) -> torch.Tensor:
    """``L_corr``, STEGO's correlation loss with per-patch thresholds, summed over the C heads.

    ``-1/N² Σ_ij (x_i·x_j - β_i) · max(cos(z_ci, z_cj), clamp)``, averaged over the batch.

    Parameters
    ----------
    x : (B, N, D) tensor
        L2-normalised backbone features.
    z : (C, B, N, P) tensor
        Every head's projection of ``x``.
    betas : (B, N) tensor
        Per-patch thresholds (:func:`gmm_thresholds` of the rows of ``x @ x.T``).
    """
    target = x @ x.transpose(1, 2) - betas[..., None]  # (B, N, N)
    zn = F.normalize(z, dim=-1)
    zz = (zn @ zn.transpose(-1, -2)).clamp(min=clamp)  # (C, B, N, N)
    return -(target * zz).mean(dim=(-1, -2)).mean(dim=-1).sum()


def prototype_loss(
    x: torch.Tensor,
    z: torch.Tensor,
    proto_x: torch.Tensor,
    proto_labels: torch.Tensor,
    centroids_z: torch.Tensor,
    beta_proto: torch.Tensor,
) -> torch.Tensor:
    """``L_proto``: keep each patch's similarity to the class prototypes after projection.

    ``-1/N Σ_i (s_ic - β_pc) · max(cos(z_ci, z̄_pc), 0)`` summed over classes, averaged over the
    batch, where ``s_ic`` is the mean cosine of backbone feature ``x_i`` to class c's clicked
    patches.

    Parameters
    ----------
    x : (B, N, D) tensor
        L2-normalised backbone features.
    z : (C, B, N, P) tensor
        Every head's projection of ``x``.
    proto_x : (K, D) tensor and proto_labels : (K,) int tensor
        L2-normalised features and classes of the clicked patches.
    centroids_z : (C, P) tensor
        Projected class centroids z̄_pc (head c applied to class c's mean prototype).
    beta_proto : (C,) tensor
        Class thresholds (:func:`prototype_class_thresholds`).
    """
    average = _averaging_matrix(proto_labels, z.shape[0], x.dtype)  # (K, C)
    s = ((x @ proto_x.T) @ average).permute(2, 0, 1)  # (C, B, N)
    y = torch.einsum("cbnp,cp->cbn", F.normalize(z, dim=-1), F.normalize(centroids_z, dim=-1))
    return -((s - beta_proto[:, None, None]) * y.clamp(min=0)).mean(dim=(1, 2)).sum()


def triplet_loss(
    proto_z: torch.Tensor, proto_labels: torch.Tensor, *, margin: float = 0.25
) -> torch.Tensor:
    """``L_triplet`` with the class centroid as anchor and hard-in-batch mining, summed over
    classes.

    In head c's space (unit vectors): anchor ``a = z̄_pc``, hard positive = class c's clicked patch
    farthest from ``a``, hard negative = the nearest other class centroid (projected by head c);
    ``max(d(a, pos) - d(a, neg) + margin, 0)``. Exactly zero when no class violates the margin.

    Parameters
    ----------
    proto_z : (C, K, P) tensor
        Every head's projection of every clicked patch.
    proto_labels : (K,) int tensor
    margin : float, default 0.25
    """
    n_classes = proto_z.shape[0]
    if n_classes < 2:
        return proto_z.sum() * 0.0
    units = F.normalize(proto_z, dim=-1)  # (C, K, P)
    centroids = F.normalize(
        torch.stack([_class_mean(u, proto_labels, n_classes) for u in units]), dim=-1
    )
    classes = torch.arange(n_classes, device=proto_z.device)
    anchors = centroids[classes, classes]  # (C, P): class c's centroid in head c
    d_pos = torch.linalg.vector_norm(units - anchors[:, None, :], dim=-1)  # (C, K)
    own = proto_labels[None, :] == classes[:, None]
    hard_pos = torch.where(own, d_pos, torch.full_like(d_pos, -torch.inf)).max(dim=1).values
    d_neg = torch.linalg.vector_norm(centroids - anchors[:, None, :], dim=-1)  # (C, C)
    hard_neg = d_neg.masked_fill(
        torch.eye(n_classes, dtype=torch.bool, device=d_neg.device), torch.inf
    )
    return F.relu(hard_pos - hard_neg.min(dim=1).values + margin).sum()
