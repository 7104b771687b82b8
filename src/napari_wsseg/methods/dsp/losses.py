"""The DSP losses, vectorised: L_CE, L_DSP (Eq. 6-9 of Reiß et al. 2023) and L_PLF. Imports no Qt.

Notation: ``logits = s / tau`` with ``s`` the ``(B, C, H, W)`` class scores (mean cosine
similarity to a class's prototypes). For a positive association ``v`` (a pooled logit) of class
``c``::

    L(v, c) = -v + log Z_c,
    Z_c = sum over pixels j and classes k with (c not in A(j) or k != c) of exp(logit_k(j)).

``log Z_c`` is computed once per class per batch without materialising the (C, N, C) negative
set: ``Z_c = sum_{k != c} sum_j exp(logit_k(j)) + sum_{j: c not in A(j)} exp(logit_c(j))``, i.e.
a log-sum-exp over the per-class column log-sum-exps plus one masked log-sum-exp.

Positives by annotation type: mask components (mean over each connected component, via
``index_add``), points (the pixel), tags (mean over the crop; a region tag: mean over its
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

from dataclasses import dataclass, field, fields

import numpy as np
import torch
from torch.nn import functional as F

from ...engine.augment import Geometry
from .targets import CropTargets

#: Fill value for excluded logits: exp underflows to 0 but, unlike -inf, gradients stay finite.
NEG = -1e4
KINDS = ("mask", "box", "point", "tag")


@dataclass
class BatchTargets:
    """:class:`~napari_wsseg.methods.dsp.targets.CropTargets` of a batch as tensors.

    ``components`` ids are unique over the batch (1..M, 0 none); boxes carry the index of their
    crop in ``box_index``; ``valid`` marks pixels inside the image (not padding).
    """

    labels: torch.Tensor  # (B, H, W) long, -1 unknown
    is_point: torch.Tensor  # (B, H, W) bool
    components: torch.Tensor  # (B, H, W) long
    component_classes: torch.Tensor  # (M,) long
    allowed: torch.Tensor  # (B, C, H, W) bool
    valid: torch.Tensor  # (B, H, W) bool
    boxes: torch.Tensor  # (NB, 4) long
    box_index: torch.Tensor  # (NB,) long
    box_classes: torch.Tensor  # (NB,) long
    box_rows_valid: torch.Tensor  # (NB,) bool
    box_cols_valid: torch.Tensor  # (NB,) bool
    tagged: torch.Tensor  # (B, C) bool
    region_boxes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, 4, dtype=torch.long))
    region_index: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    region_classes: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))

    def to(self, device) -> "BatchTargets":
        return BatchTargets(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


def collate(crops: list[CropTargets], valid: list[np.ndarray]) -> BatchTargets:
    """Stack per-crop targets into a :class:`BatchTargets` (component ids made batch-unique)."""
    offsets = np.cumsum([0] + [len(c.component_classes) for c in crops[:-1]])
    components = np.stack(
        [np.where(c.components > 0, c.components + o, 0) for c, o in zip(crops, offsets)]
    )
    box_counts = [len(c.box_classes) for c in crops]
    region_counts = [len(c.region_classes) for c in crops]
    return BatchTargets(
        labels=torch.from_numpy(np.stack([c.labels for c in crops])),
        is_point=torch.from_numpy(np.stack([c.is_point for c in crops])),
        components=torch.from_numpy(components),
        component_classes=torch.from_numpy(
            np.concatenate([c.component_classes for c in crops])
        ).long(),
        allowed=torch.from_numpy(np.stack([c.allowed for c in crops])),
        valid=torch.from_numpy(np.stack(valid)),
        boxes=torch.from_numpy(np.concatenate([c.boxes for c in crops]).reshape(-1, 4)).long(),
        box_index=torch.from_numpy(np.repeat(np.arange(len(crops)), box_counts)).long(),
        box_classes=torch.from_numpy(np.concatenate([c.box_classes for c in crops])).long(),
        box_rows_valid=torch.from_numpy(np.concatenate([c.box_rows_valid for c in crops])),
        box_cols_valid=torch.from_numpy(np.concatenate([c.box_cols_valid for c in crops])),
        tagged=torch.from_numpy(np.stack([c.tagged for c in crops])),
        region_boxes=torch.from_numpy(
            np.concatenate([c.region_boxes for c in crops]).reshape(-1, 4)
        ).long(),
        region_index=torch.from_numpy(np.repeat(np.arange(len(crops)), region_counts)).long(),
        region_classes=torch.from_numpy(np.concatenate([c.region_classes for c in crops])).long(),
    )


def transform_targets(targets: BatchTargets, geometries: list[Geometry]) -> BatchTargets:
    """Apply crop ``i``'s geometry to its maps and boxes (crops are square)."""
    size = targets.labels.shape[-1]

    def per_crop(x: torch.Tensor) -> torch.Tensor:
        return torch.stack([g.apply(item) for g, item in zip(geometries, x)])

    boxes = targets.boxes.clone()
    rows_valid, cols_valid = targets.box_rows_valid.clone(), targets.box_cols_valid.clone()
    for i, geometry in enumerate(geometries):
        mine = targets.box_index == i
        if mine.any():
            boxes[mine], swapped = geometry.apply_boxes(targets.boxes[mine], size)
            if swapped:
                rows_valid[mine] = targets.box_cols_valid[mine]
                cols_valid[mine] = targets.box_rows_valid[mine]
    maps = {
        name: per_crop(getattr(targets, name))
        for name in ("labels", "is_point", "components", "allowed", "valid")
    }
    regions = targets.region_boxes.clone()
    for i, geometry in enumerate(geometries):
        mine = targets.region_index == i
        if mine.any():
            regions[mine] = geometry.apply_boxes(targets.region_boxes[mine], size)[0]
    rest = {f.name: getattr(targets, f.name) for f in fields(targets)}
    moved_boxes = {
        "boxes": boxes,
        "box_rows_valid": rows_valid,
        "box_cols_valid": cols_valid,
        "region_boxes": regions,
    }
    return BatchTargets(**(rest | maps | moved_boxes))


# ------------------------------------------------------------------------------------ L_DSP
def log_partition(logits: torch.Tensor, allowed: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``log Z_c`` of Eq. 8 for every class: ``(C,)``.

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        ``s / tau``.
    allowed : (B, C, H, W) bool tensor
        ``A(j)`` as a mask.
    valid : (B, H, W) bool tensor
        Pixels that take part (padding excluded).
    """
    n_classes = logits.shape[1]
    flat = logits.permute(1, 0, 2, 3)[:, valid]  # (C, N)
    allowed_flat = allowed.permute(1, 0, 2, 3)[:, valid]
    per_class = torch.logsumexp(flat, dim=1)  # log sum_j exp(logit_k(j)) for every k
    not_self = ~torch.eye(n_classes, dtype=torch.bool, device=logits.device)
    others = torch.logsumexp(per_class[None, :].masked_fill(~not_self, NEG), dim=1)
    excluded = torch.logsumexp(flat.masked_fill(allowed_flat, NEG), dim=1)
    return torch.logaddexp(others, excluded)


def positives(
    logits: torch.Tensor, targets: BatchTargets
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Pooled positive logits and their classes by
    annotation kind: ``{kind: (values, classes)}``."""
    return {
        "mask": _mask_positives(logits, targets),
        "box": _box_positives(logits, targets),
        "point": _point_positives(logits, targets),
        "tag": _tag_positives(logits, targets),
    }


def _point_positives(logits, targets):
    selected = targets.is_point & (targets.labels >= 0)
    at_label = logits.gather(1, targets.labels.clamp(min=0)[:, None])[:, 0]
    return at_label[selected], targets.labels[selected]


def _mask_positives(logits, targets):
    n_components = len(targets.component_classes)
    inside = targets.components > 0
    ids = targets.components[inside] - 1
    if n_components == 0 or len(ids) == 0:
        return logits.new_zeros(0), targets.labels.new_zeros(0)
    class_map = targets.component_classes[(targets.components - 1).clamp(min=0)]
    values = logits.gather(1, class_map[:, None])[:, 0][inside]
    sums = logits.new_zeros(n_components).index_add(0, ids, values)
    counts = torch.bincount(ids, minlength=n_components)
    present = counts > 0  # components wholly under a CutOut hole drop out
    return sums[present] / counts[present], targets.component_classes[present]


def _tag_positives(logits, targets):
    valid = targets.valid[:, None].to(logits.dtype)
    means = (logits * valid).sum(dim=(2, 3)) / valid.sum(dim=(2, 3)).clamp(min=1)
    classes = torch.nonzero(targets.tagged)[:, 1]
    region_means, region_classes = _region_tag_means(logits, targets)
    return torch.cat([means[targets.tagged], region_means]), torch.cat([classes, region_classes])


def _region_tag_means(logits, targets):
    """Mean logit of each region tag's class over its region (regions lie inside their crop)."""
    if len(targets.region_classes) == 0:
        return logits.new_zeros(0), targets.region_classes
    height, width = logits.shape[-2:]
    scores = logits[targets.region_index, targets.region_classes]  # (NR, H, W)
    ys = torch.arange(height, device=logits.device)
    xs = torch.arange(width, device=logits.device)
    y0, x0, y1, x1 = targets.region_boxes.unbind(1)
    rows_in = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (NR, H)
    cols_in = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (NR, W)
    inside = (rows_in[:, :, None] & cols_in[:, None, :]).to(logits.dtype)
    means = (scores * inside).sum(dim=(1, 2)) / inside.sum(dim=(1, 2)).clamp(min=1)
    return means, targets.region_classes


def _box_positives(logits, targets):
    if len(targets.box_classes) == 0:
        return logits.new_zeros(0), targets.labels.new_zeros(0)
    height, width = logits.shape[-2:]
    scores = logits[targets.box_index, targets.box_classes]  # (NB, H, W)
    ys = torch.arange(height, device=logits.device)
    xs = torch.arange(width, device=logits.device)
    y0, x0, y1, x1 = targets.boxes.unbind(1)
    rows_in = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (NB, H)
    cols_in = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (NB, W)
    masked = scores.masked_fill(~(rows_in[:, :, None] & cols_in[:, None, :]), NEG)
    row_max, col_max = masked.amax(dim=2), masked.amax(dim=1)
    use_rows = rows_in & targets.box_rows_valid[:, None]
    use_cols = cols_in & targets.box_cols_valid[:, None]
    values = torch.cat([row_max[use_rows], col_max[use_cols]])
    classes = torch.cat(
        [
            targets.box_classes[:, None].expand_as(use_rows)[use_rows],
            targets.box_classes[:, None].expand_as(use_cols)[use_cols],
        ]
    )
    return values, classes


def box_loss(logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
    """Mean cross-entropy of the box class at the maximum of every complete box row and column.

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        ``s / tau``.
    targets : BatchTargets

    Returns
    -------
    Scalar tensor; 0 when no box has a complete row or column in the batch.
    """
    if len(targets.box_classes) == 0:
        return logits.new_zeros(())
    height, width = logits.shape[-2:]
    boxed = logits[targets.box_index]  # (NB, C, H, W)
    classes = targets.box_classes
    scores = boxed[torch.arange(len(classes), device=logits.device), classes]  # (NB, H, W)
    ys = torch.arange(height, device=logits.device)
    xs = torch.arange(width, device=logits.device)
    y0, x0, y1, x1 = targets.boxes.unbind(1)
    rows_in = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (NB, H)
    cols_in = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (NB, W)
    masked = scores.detach().masked_fill(~(rows_in[:, :, None] & cols_in[:, None, :]), NEG)
    n_classes = logits.shape[1]
    at_row_max = boxed.gather(
        3, masked.argmax(dim=2)[:, None, :, None].expand(-1, n_classes, -1, 1)
    )[..., 0]
    at_col_max = boxed.gather(
        2, masked.argmax(dim=1)[:, None, None, :].expand(-1, n_classes, 1, -1)
    )[:, :, 0]
    pick = classes[:, None, None]
    row_ce = (
        torch.logsumexp(at_row_max, dim=1) - at_row_max.gather(1, pick.expand(-1, 1, height))[:, 0]
    )
    col_ce = (
        torch.logsumexp(at_col_max, dim=1) - at_col_max.gather(1, pick.expand(-1, 1, width))[:, 0]
    )
    use_rows = rows_in & targets.box_rows_valid[:, None]
    use_cols = cols_in & targets.box_cols_valid[:, None]
    values = torch.cat([row_ce[use_rows], col_ce[use_cols]])
    return values.mean() if len(values) else logits.new_zeros(())


def dsp_loss(
    logits: torch.Tensor, targets: BatchTargets, weights: dict[str, float]
) -> dict[str, torch.Tensor]:
    """L_DSP by kind and in total (key ``"dsp"``).

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        ``s / tau``.
    targets : BatchTargets
    weights : dict
        λ by kind (``"mask"``, ``"box"``, ``"point"``, ``"tag"``).

    Returns
    -------
    dict of scalar tensors: ``"dsp_<kind>"`` (mean over that kind's positives, unweighted; 0 when
    there is none) and ``"dsp"`` (the weighted sum).
    """
    log_z = log_partition(logits, targets.allowed, targets.valid)
    terms = {}
    total = logits.new_zeros(())
    for kind, (values, classes) in positives(logits, targets).items():
        if kind == "box":
            term = box_loss(logits, targets)
        else:
            term = (log_z[classes] - values).mean() if len(values) else logits.new_zeros(())
        terms[f"dsp_{kind}"] = term
        total = total + weights[kind] * term
    terms["dsp"] = total
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
