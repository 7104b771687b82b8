"""The losses of rewis3d (paper Eq. 2-7) on logits ``(B, K, ...)``. Imports no Qt.

Voxels carry a target class, or -1 where they are unlabelled; ``valid`` marks voxels inside the
image (crops are padded at its borders). The weak parts of the supervised loss (partial
cross-entropy, box and tag positives) come from :mod:`napari_wsseg.engine.weak_losses`.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from ...engine.weak_losses import box_loss, partial_ce_loss, tag_loss
from ...engine.weak_targets import BatchTargets


def supervised_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over labelled voxels (``target >= 0``);
    0 (with a graph) when there are none."""
    labelled = target >= 0
    if not labelled.any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, target.clamp(min=0), reduction="none")[labelled].mean()


def supervised_terms(
    logits: torch.Tensor, targets: BatchTargets, weights: dict[str, float]
) -> dict[str, torch.Tensor]:
    """L_S of one branch from every annotation kind, and its parts.

    Parameters
    ----------
    logits : (B, K, H, W) float tensor
        Class scores of ``B`` slices (a training box's slices).
    targets : BatchTargets
        The weak targets of the same slices.
    weights : dict
        Weights of the parts ``"partial"``, ``"box"`` and ``"tag"`` (the cross-entropy's is 1).

    Returns
    -------
    dict of scalar tensors: ``"ce"`` (labelled voxels), ``"partial"`` (unlabelled voxels whose
    allowed classes are restricted), ``"box"`` and ``"tag"`` (multiple-instance positives), each
    unweighted and 0 when nothing in the batch gives it, and ``"supervised"``, their weighted sum.
    """
    parts = {
        "ce": supervised_loss(logits, targets.labels),
        "partial": partial_ce_loss(logits, targets),
        "box": box_loss(logits, targets),
        "tag": tag_loss(logits, targets),
    }
    total = parts["ce"] + sum(weights[k] * parts[k] for k in ("partial", "box", "tag"))
    return parts | {"supervised": total}


def consistency_loss(
    student: torch.Tensor, teacher: torch.Tensor, unlabelled: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(KL(σ(teacher) || σ(student)), w_t)`` over unlabelled voxels (Eq. 2 and 3).

    ``w_t`` is the share of unlabelled voxels whose teacher confidence is at least ``tau``; the
    caller weighs the KL term with it (Eq. 4).
    """
    if not unlabelled.any():
        zero = student.sum() * 0.0
        return zero, zero.detach()
    log_s = F.log_softmax(student.float(), dim=1)
    log_t = F.log_softmax(teacher.float(), dim=1)
    kl = (log_t.exp() * (log_t - log_s)).sum(dim=1)[unlabelled].mean()
    confident = log_t.exp().amax(dim=1)[unlabelled] >= tau
    return kl, confident.float().mean()


def cross_view_loss(
    student: torch.Tensor, teacher: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Eq. 5-6: the teacher's hard labels supervise the other view's student, each voxel weighted
    by the teacher's confidence (max softmax). Averaged over ``valid`` voxels.

    The paper multiplies the weight by a reconstruction confidence; a voxel of an image volume is
    measured, not reconstructed, so that factor is 1 here.
    """
    if not valid.any():
        return student.sum() * 0.0
    probs = F.softmax(teacher.float(), dim=1)
    weight, pseudo = probs.max(dim=1)
    log_s = F.log_softmax(student.float(), dim=1)
    picked = log_s.gather(1, pseudo.unsqueeze(1)).squeeze(1)
    return -(weight * picked)[valid].mean()


def cross_view_weight(
    fraction: float, base_fraction: float, ramp_fraction: float, maximum: float
) -> float:
    """λ at ``fraction`` of the schedule: 0 during base training, then a linear ramp to ``maximum``.

    Examples
    --------
    >>> [round(cross_view_weight(f, 0.4, 0.2, 0.1), 6) for f in (0.2, 0.4, 0.5, 0.9)]
    [0.0, 0.0, 0.05, 0.1]
    """
    if fraction < base_fraction:
        return 0.0
    if ramp_fraction <= 0:
        return maximum
    return maximum * min((fraction - base_fraction) / ramp_fraction, 1.0)
