"""The DSP losses of a prototype network, vectorised: L_CE, L_DSP (Eq. 6-9 of Reiß et al. 2023)
and L_PLF. Shared by dsp and rewis3d's prototype student. Imports no Qt.

Notation: ``logits = s / tau`` with ``s`` the ``(B, C, H, W)`` class scores (mean cosine
similarity to a class's prototypes). For a positive association ``v`` (a pooled logit) of class
``c``::

    L(v, c) = -v + log Z_c,
    Z_c = sum over pixels j and classes k with (c not in A(j) or k != c) of exp(logit_k(j)).

The targets (``A(j)``, components, boxes, tags) come from
:mod:`napari_wsseg.engine.weak_targets`; ``log Z_c``, the pooled positives and the box loss
from :mod:`napari_wsseg.engine.weak_losses`, which other methods share. This module combines
them into L_DSP and adds L_CE and L_PLF.

Positives by annotation type: mask components (mean over each connected component, via
``index_add``), points (the pixel), tags and sizes above 0 (mean over the
crop; a region tag: mean over its
region, when the region lies wholly in the crop), boxes (the maximum along every
complete row and every complete column of the box, via a masked max). Each type's loss is the
mean over its positives times its weight λ (the paper sums; the mean keeps the scale independent
of crop and batch size). No Python loop runs over pixels, annotations or components.

Boxes differ from the paper in one respect (:func:`box_loss`): the pixel holding a row's or
column's maximum is scored against the other classes at that pixel (a cross-entropy there), not
against ``Z_c``. Against ``Z_c`` a box lowers every other class at every pixel of the batch and
nothing pushes back outside a box that is not exhaustive, so a boxed class spread over the slice
(on the phantom, partial boxes of the membrane network took its predicted share from 8 % to
20-33 % and its Dice down). Exhaustive boxes still exclude their class outside them through A(j).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from .weak_losses import (
    box_loss,
    log_partition,
    partial_ce_loss,
    positives,
    tag_loss,
)
from .weak_targets import BatchTargets

KINDS = ("mask", "box", "point", "tag")


# ------------------------------------------------------------------------------------ L_DSP
def dsp_loss(
    logits: torch.Tensor,
    targets: BatchTargets,
    weights: dict[str, float],
    tag_pooling: str = "mean",
    exclusions: str = "contrastive",
) -> dict[str, torch.Tensor]:
    """L_DSP by kind and in total (key ``"dsp"``).

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        ``s / tau``.
    targets : BatchTargets
    weights : dict
        λ by kind (``"mask"``, ``"box"``, ``"point"``, ``"tag"``).
    tag_pooling : {"mean", "max"}
        "mean": a tag's positive is its class's mean logit over the area, against ``Z_c`` (the
        paper); "max": :func:`tag_loss`, the cross-entropy at the area's best pixel of the class.
    exclusions : {"contrastive", "partial_ce", "pseudo_labels"}
        "contrastive": a pixel whose ``A(j)`` excludes class c is a negative of c in ``Z_c`` (the
        paper); otherwise only labelled pixels (points, masks) are, and an unlabelled pixel
        whose ``A(j)`` excludes classes is not ("partial_ce" adds :func:`partial_ce_loss` on
        those pixels under the key ``"exclusion"``, which the caller weights; "pseudo_labels":
        their exclusions only filter L_PLF's pseudo-labels).

    Returns
    -------
    dict of scalar tensors: ``"dsp_<kind>"`` (mean over that kind's positives, unweighted; 0 when
    there is none) and ``"dsp"`` (the weighted sum).
    """
    allowed = targets.allowed
    if exclusions != "contrastive":  # labelled pixels stay negatives of the other classes
        allowed = allowed | (targets.labels < 0)[:, None]
    log_z = log_partition(logits, allowed, targets.valid)
    terms = {}
    total = logits.new_zeros(())
    for kind, (values, classes) in positives(logits, targets).items():
        if kind == "box":
            term = box_loss(logits, targets)
        elif kind == "tag" and tag_pooling == "max":
            term = tag_loss(logits, targets)
        else:
            term = (log_z[classes] - values).mean() if len(values) else logits.new_zeros(())
        terms[f"dsp_{kind}"] = term
        total = total + weights[kind] * term
    terms["dsp"] = total
    if exclusions == "partial_ce":
        terms["exclusion"] = partial_ce_loss(logits, targets)
    return terms


# ----------------------------------------------------------------------------- L_CE, L_PLF
def ce_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on pixels with a known class (``labels >= 0``); 0 when there are none."""
    if not bool((labels >= 0).any()):
        return logits.new_zeros(())
    return F.cross_entropy(logits, labels, ignore_index=-1)


def filtered_pseudo_labels(
    logits: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor, threshold: float = 0.0
) -> torch.Tensor:
    """Pseudo-label filtering: the argmax over the classes still allowed at each pixel.

    Excluding a class where ``A(j)`` forbids it covers all of the paper's filters at once:
    classes absent by the slice's tags, a class outside all its boxes, and the known class at
    point and mask pixels. Padding pixels, and pixels whose filtered probability is below
    ``threshold`` (FixMatch's confidence mask; 0 keeps all, as the paper does), get -1 (ignored).
    """
    filtered = logits.detach().float().masked_fill(~allowed, float("-inf"))
    confidence, labels = F.softmax(filtered, dim=1).max(dim=1)
    return labels.masked_fill(~valid | (confidence < threshold), -1)


def plf_loss(logits_strong: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """L_PLF: cross-entropy of the strongly augmented view against the filtered pseudo-labels."""
    return ce_loss(logits_strong, pseudo_labels)
