"""Losses on class scores from weak targets, shared by the methods that train on crops. No Qt.

They act on ``logits`` ``(B, C, H, W)`` (a 3D box passes its slices as the batch) and a
:class:`~napari_wsseg.engine.weak_targets.BatchTargets`:

- :func:`log_partition`: ``log Z_c`` of Reiß et al.'s Eq. 8 over the negative set the allowed
  classes ``A(j)`` define (dsp's contrastive positives are scored against it);
- :func:`positives`: the pooled positive logit of every annotation by kind (mask components:
  mean; points: the pixel; tags: mean over the crop, region tags: mean over the region; boxes:
  the maximum along every complete row and column);
- :func:`box_loss` and :func:`tag_loss`: multiple-instance positives scored by cross-entropy at
  the pixel where the class scores highest (each complete box row and column; the whole slice of
  a tag or size > 0, the region of a region tag), which stays bounded below for any logits;
- :func:`partial_ce_loss`: ``-log sum_{c in A(j)} p_c(j)`` on unlabelled pixels whose ``A(j)``
  excludes some class (tags, sizes of 0, region tags, exhaustive boxes).

``log Z_c`` is computed once per class per batch without materialising the (C, N, C) negative
set: ``Z_c = sum_{k != c} sum_j exp(logit_k(j)) + sum_{j: c not in A(j)} exp(logit_c(j))``, i.e.
a log-sum-exp over the per-class column log-sum-exps plus one masked log-sum-exp. No Python loop
runs over pixels, annotations or components.
"""

from __future__ import annotations

import torch

from .weak_targets import BatchTargets

#: Fill value for excluded logits: exp underflows to 0 but, unlike -inf, gradients stay finite.
NEG = -1e4


# ------------------------------------------------------------------------- negatives, log Z
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


def tag_loss(logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
    """Mean cross-entropy of each present class at the pixel where it scores highest in its area.

    Multiple-instance learning with max pooling: a class present somewhere in an area holds at
    least its best-scoring pixel. The area of a class present in a slice (``targets.tagged``: a
    tag or a size above 0, set only for crops that hold the whole slice) is the crop's valid
    pixels; that of a region tag is its region.

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        Class scores.
    targets : BatchTargets

    Returns
    -------
    Scalar tensor; 0 when the batch has no such positive.
    """
    height, width = logits.shape[-2:]
    slice_index, slice_classes = torch.nonzero(targets.tagged, as_tuple=True)
    region_areas = _box_areas(targets.region_boxes, height, width)
    index = torch.cat([slice_index, targets.region_index])
    classes = torch.cat([slice_classes, targets.region_classes])
    if len(classes) == 0:
        return logits.new_zeros(())
    areas = torch.cat([targets.valid[slice_index], region_areas]) & targets.valid[index]
    scores = logits[index, classes].detach().masked_fill(~areas, NEG)  # (N, H, W)
    best = scores.flatten(1).argmax(dim=1)
    at_best = logits.flatten(2)[index, :, best]  # (N, C)
    picked = at_best.gather(1, classes[:, None])[:, 0]
    return (torch.logsumexp(at_best, dim=1) - picked).mean()


def _box_areas(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``(N, H, W)`` bool: the pixels of each inclusive box ``(y0, x0, y1, x1)``."""
    ys = torch.arange(height, device=boxes.device)
    xs = torch.arange(width, device=boxes.device)
    y0, x0, y1, x1 = boxes.unbind(1)
    rows_in = (ys[None] >= y0[:, None]) & (ys[None] <= y1[:, None])  # (N, H)
    cols_in = (xs[None] >= x0[:, None]) & (xs[None] <= x1[:, None])  # (N, W)
    return rows_in[:, :, None] & cols_in[:, None, :]


def partial_ce_loss(logits: torch.Tensor, targets: BatchTargets) -> torch.Tensor:
    """Partial cross-entropy ``-log sum_{c in A(j)} p_c(j)`` over unlabelled pixels whose ``A(j)``
    excludes some class, averaged over them.

    Pixels with a known class are left to the ordinary cross-entropy, pixels where ``A(j)``
    allows every class carry no information, and pixels where it allows none (contradicting
    annotations) are left out.

    Parameters
    ----------
    logits : (B, C, H, W) float tensor
        Class scores.
    targets : BatchTargets

    Returns
    -------
    Scalar tensor; 0 when no pixel takes part.
    """
    allowed = targets.allowed
    counts = allowed.sum(dim=1)
    used = targets.valid & (targets.labels < 0) & (counts > 0) & (counts < allowed.shape[1])
    if not bool(used.any()):
        return logits.new_zeros(())
    scores = logits.float()
    kept = torch.logsumexp(scores.masked_fill(~allowed, NEG), dim=1)
    return (torch.logsumexp(scores, dim=1) - kept)[used].mean()
