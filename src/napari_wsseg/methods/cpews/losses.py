"""The CPEWS losses (Shao et al., sections 3.1-3.4), vectorised over images, classes and tokens.

Shapes: ``B`` images, ``C`` classes, ``D`` feature channels, ``H x W`` tokens. ``y`` is the
multi-hot image label ``(B, C)`` (float), ``valid`` marks tokens inside an image ``(B, H, W)``.

- :func:`classification_loss`: global max pooling of the valid tokens, a 1x1-conv classifier and
  the multi-label soft-margin loss (``L_cls^m``, ``L_cls^h``);
- :func:`class_activation_maps`: Eq. 4, ``CAM_c = ReLU(sum_i W^{i,c} F^i)``;
- :func:`ism_pseudo_labels` and :func:`ism_loss`: the intermediate CAM turned into token labels
  with thresholds alpha < beta, and Eq. 5 on the final features. Eq. 5 as printed has ``1 - CosSim``
  in both sums, which would pull different-label pairs together; the text says their similarity is
  minimised, so negative pairs contribute ``max(CosSim, 0)``;
- :func:`anchor_features`: Eq. 6, CAM-weighted average pooling of the final features;
- :class:`PrototypePools`: the positive and negative pools and their prototypes (k-means over the
  positive pool, top-K by predicted class probability over the negative pool);
- :func:`pdl_loss`: Eq. 7-9; :func:`ssl_loss`: Eq. 10-11 (no superclasses, Eq. 12: EM classes
  have none).

Imports no Qt.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: Avoids division by zero and log(0).
EPS = 1e-6


def classification_loss(
    features: torch.Tensor,
    valid: torch.Tensor,
    classifier: torch.nn.Module,
    y: torch.Tensor,
    known: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multi-label soft-margin loss of the classifier on max-pooled valid tokens.

    ``known`` ``(B, C)`` bool marks the classes whose presence ``y`` states (a box says that its
    class is present and nothing of the others); the loss of each image is then the mean over its
    known classes. None: every class is known (the plain multi-label soft margin).

    Returns ``(loss, logits (B, C))``.
    """
    masked = features.masked_fill(~valid[:, None], float("-inf"))
    pooled = masked.amax(dim=(2, 3), keepdim=True)  # (B, D, 1, 1)
    logits = classifier(pooled)[:, :, 0, 0]
    if known is None:
        return F.multilabel_soft_margin_loss(logits, y), logits
    terms = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * known
    per_image = terms.sum(dim=1) / known.sum(dim=1).clamp(min=1)
    return per_image.mean(), logits


def class_activation_maps(features: torch.Tensor, classifier: torch.nn.Module) -> torch.Tensor:
    """Eq. 4: ``(B, C, H, W)`` ReLU of the classifier applied to every token."""
    return F.relu(classifier(features))


def normalized_cams(cams: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """CAMs divided by their maximum over the valid tokens of each image and class (in [0, 1])."""
    cams = cams * valid[:, None]
    peak = cams.amax(dim=(2, 3), keepdim=True)
    return cams / (peak + EPS)


def ism_pseudo_labels(
    cams: torch.Tensor, valid: torch.Tensor, y: torch.Tensor, alpha: float, beta: float
) -> torch.Tensor:
    """Token labels ``(B, H, W)`` long from normalised CAMs, -1 where unsure.

    Only the image's classes compete. A token takes class ``c`` when ``c`` is the only present
    class (the tag alone says so) or when its normalised ``CAM_c >= beta`` while every other
    present class stays below ``alpha``; tokens in between are left out, as the paper's
    thresholds leave uncertain tokens out.
    """
    scores = normalized_cams(cams, valid).masked_fill(y[:, :, None, None] < 0.5, -1.0)
    top2 = scores.topk(min(2, scores.shape[1]), dim=1).values
    best = scores.argmax(dim=1)
    second = top2[:, 1] if top2.shape[1] > 1 else torch.full_like(top2[:, 0], -1.0)
    single = (y.sum(dim=1) == 1)[:, None, None]
    sure = single | ((top2[:, 0] >= beta) & (second < alpha))
    return torch.where(sure & valid, best, torch.full_like(best, -1))


def ism_loss(features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 5 over the token pairs of each image: ``1 - cos`` for same-label pairs, ``max(cos, 0)``
    for different-label pairs, each averaged over its pairs (tokens labelled -1 take no part)."""
    tokens = F.normalize(features.flatten(2).transpose(1, 2), dim=-1)  # (B, N, D)
    cos = tokens @ tokens.transpose(1, 2)  # (B, N, N)
    flat = labels.flatten(1)
    known = (flat >= 0)[:, :, None] & (flat >= 0)[:, None, :]
    same = (flat[:, :, None] == flat[:, None, :]) & known
    same &= ~torch.eye(flat.shape[1], dtype=torch.bool, device=flat.device)[None]
    different = known & (flat[:, :, None] != flat[:, None, :])
    positive = ((1 - cos) * same).sum() / same.sum().clamp(min=1)
    negative = (cos.clamp(min=0) * different).sum() / different.sum().clamp(min=1)
    return positive + negative


def anchor_features(
    features: torch.Tensor, cams: torch.Tensor, valid: torch.Tensor
) -> torch.Tensor:
    """Eq. 6: ``A_c = sum_i CAM_c^i F^i / sum_i CAM_c^i`` per image, ``(B, C, D)``."""
    weights = cams * valid[:, None]
    pooled = torch.einsum("bchw,bdhw->bcd", weights, features)
    return pooled / (weights.sum(dim=(2, 3))[:, :, None] + EPS)


class PrototypePools:
    """Per-class positive and negative pools of anchor features and their K prototypes.

    Pools are rings of ``size`` entries per class. A positive entry of class ``c`` is ``A_c`` of an
    image tagged with ``c``; a negative entry is ``A_c`` of an image without ``c``, stored with the
    predicted probability of ``c`` (the top-K of those are the negative prototypes) and whether
    the image holds a class of ``c``'s superclass (Eq. 12 leaves those out of L_SSL).
    """

    def __init__(self, n_classes: int, dim: int, size: int, k: int, kmeans_iters: int = 10):
        self.size, self.k, self.kmeans_iters = int(size), int(k), int(kmeans_iters)
        self.pos = torch.zeros(n_classes, self.size, dim)
        self.neg = torch.zeros(n_classes, self.size, dim)
        self.neg_score = torch.full((n_classes, self.size), -1.0)
        self.neg_sibling = torch.zeros(n_classes, self.size, dtype=torch.bool)
        self.pos_count = torch.zeros(n_classes, dtype=torch.long)
        self.neg_count = torch.zeros(n_classes, dtype=torch.long)

    def update(
        self,
        anchors: torch.Tensor,
        y: torch.Tensor,
        scores: torch.Tensor,
        absent: torch.Tensor | None = None,
        siblings: torch.Tensor | None = None,
    ) -> None:
        """Add the ``(B, C, D)`` anchors of a batch: positives where ``y`` is 1, negatives where
        ``absent`` ``(B, C)`` bool is True (None: wherever ``y`` is 0). A class neither present
        nor known to be absent (other classes of a box) goes to neither pool. ``siblings``
        ``(C, C)`` bool marks pairs of distinct classes of one superclass (None: no superclasses).
        """
        anchors, y, scores = (
            anchors.detach().float().cpu(),
            y.cpu() > 0.5,
            scores.detach().float().cpu(),
        )
        absent = ~y if absent is None else absent.cpu().bool()
        with_sibling = (
            torch.zeros_like(y)
            if siblings is None
            else (y.float() @ siblings.cpu().float().T) > 0  # (B, C): a sibling of c is present
        )
        self._push(self.pos, self.pos_count, anchors, y, ())
        extras = ((self.neg_score, scores), (self.neg_sibling, with_sibling))
        self._push(self.neg, self.neg_count, anchors, absent, extras)

    def _push(self, pool, count, anchors, chosen, extras) -> None:
        """Write the chosen ``anchors[b, c]`` into class ``c``'s ring, and each ``(store, values)``
        of ``extras`` at the same slots."""
        b, c = torch.nonzero(chosen, as_tuple=True)  # entries in batch order, per class
        if not len(c):
            return
        order = torch.argsort(c, stable=True)
        b, c = b[order], c[order]
        rank = torch.arange(len(c)) - torch.searchsorted(c, c)  # position within its class
        slot = (count[c] + rank) % self.size
        pool[c, slot] = anchors[b, c]
        for store, values in extras:
            store[c, slot] = values[b, c]
        count += torch.bincount(c, minlength=len(count))

    def ready(self) -> torch.Tensor:
        """``(C,)`` bool: classes with at least one positive and one negative entry."""
        return (self.pos_count > 0) & (self.neg_count > 0)

    def prototypes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(P_pos (C, K, D), pos_valid (C, K), P_neg (C, K, D), neg_valid (C, K))``."""
        pos_filled = torch.arange(self.size)[None] < self.pos_count.clamp(max=self.size)[:, None]
        p_pos, pos_valid = batched_kmeans(self.pos, pos_filled, self.k, self.kmeans_iters)
        return (p_pos, pos_valid, *self.negative_prototypes())

    def negative_prototypes(self, without_siblings: bool = False):
        """``(P_neg (C, K, D), neg_valid (C, K))``: the top-K stored negatives by score; with
        ``without_siblings``, only among entries whose image held no class of the same
        superclass (Eq. 12)."""
        neg_filled = torch.arange(self.size)[None] < self.neg_count.clamp(max=self.size)[:, None]
        if without_siblings:
            neg_filled &= ~self.neg_sibling
        k = min(self.k, self.size)
        scores = self.neg_score.masked_fill(~neg_filled, float("-inf"))
        top = scores.topk(k, dim=1)
        p_neg = torch.gather(self.neg, 1, top.indices[:, :, None].expand(-1, -1, self.neg.shape[2]))
        return p_neg, torch.isfinite(top.values)


def batched_kmeans(
    points: torch.Tensor, filled: torch.Tensor, k: int, iters: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means for every class at once.

    Parameters
    ----------
    points : (C, P, D) tensor
    filled : (C, P) bool
        Which entries hold data; entries are filled from index 0.
    k, iters : int

    Returns
    -------
    centres : (C, k, D) tensor
        Started at the first ``k`` filled entries (a class with fewer entries keeps them).
    valid : (C, k) bool
        Centres that exist (``k`` or the class's entry count).
    """
    n_filled = filled.sum(dim=1)
    k = min(k, points.shape[1])
    valid = torch.arange(k)[None] < n_filled[:, None]
    centres = points[:, :k].clone()
    for _ in range(iters):
        dist = torch.cdist(points, centres).masked_fill(~valid[:, None], float("inf"))
        assign = F.one_hot(dist.argmin(dim=2), k).float() * filled[:, :, None]  # (C, P, k)
        sums = torch.einsum("cpk,cpd->ckd", assign, points)
        counts = assign.sum(dim=1)[:, :, None]
        centres = torch.where(counts > 0, sums / counts.clamp(min=1), centres)
    return centres, valid


def pdl_loss(
    anchors: torch.Tensor,
    y: torch.Tensor,
    p_pos: torch.Tensor,
    pos_valid: torch.Tensor,
    p_neg: torch.Tensor,
    neg_valid: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Eq. 7-9: pull ``A_c`` to the mean positive prototype, push it from the nearest negative one.

    ``R_pos = exp(-||A_c - C_pos^c|| / T)`` with ``C_pos^c`` the mean of the positive prototypes;
    ``R_neg = exp(-min_k ||A_c - P_neg^{c,k}|| / T)``. Only present classes whose pools hold both
    kinds count; 0 when there are none.
    """
    c_pos = (p_pos * pos_valid[..., None]).sum(1) / pos_valid.sum(1, keepdim=True).clamp(min=1)
    d_pos = (anchors - c_pos[None]).norm(dim=-1)  # (B, C)
    d_neg = torch.cdist(anchors.transpose(0, 1), p_neg).masked_fill(
        ~neg_valid[:, None], float("inf")
    )
    d_neg = d_neg.amin(dim=2).transpose(0, 1)  # (B, C)
    use = (y > 0.5) & pos_valid.any(1)[None] & neg_valid.any(1)[None]
    log_r_pos = -d_pos / temperature
    log_one_minus_r_neg = torch.log(-torch.expm1(-d_neg.clamp(min=EPS) / temperature))
    terms = (log_r_pos + log_one_minus_r_neg).masked_fill(~use, 0.0)
    return -terms.sum() / use.sum().clamp(min=1)


def ssl_loss(
    features: torch.Tensor,
    cams: torch.Tensor,
    valid: torch.Tensor,
    y: torch.Tensor,
    p_pos: torch.Tensor,
    pos_valid: torch.Tensor,
    p_neg: torch.Tensor,
    neg_valid: torch.Tensor,
) -> torch.Tensor:
    """Eq. 10-11: the mean CAM of present classes over the tokens nearer a negative prototype of
    the class than to any of its positive ones (``Phi_c``); 0 when no token is."""
    tokens = features.detach().flatten(2).transpose(1, 2)  # (B, N, D)
    b, n, d = tokens.shape
    flat = tokens.reshape(1, b * n, d).expand(p_pos.shape[0], -1, -1)  # (C, B*N, D)
    near_pos = torch.cdist(flat, p_pos).masked_fill(~pos_valid[:, None], float("inf")).amin(2)
    near_neg = torch.cdist(flat, p_neg).masked_fill(~neg_valid[:, None], float("inf")).amin(2)
    phi = (near_neg < near_pos).reshape(-1, b, n).transpose(0, 1)  # (B, C, N)
    phi &= (y > 0.5)[:, :, None] & valid.flatten(1)[:, None]
    phi &= (pos_valid.any(1) & neg_valid.any(1))[None, :, None]
    return (cams.flatten(2) * phi).sum() / phi.sum().clamp(min=1)


# ------------------------------------------------------------------- segmentation head
def exclusion_loss(
    logits: torch.Tensor, allowed: torch.Tensor, counted: torch.Tensor
) -> torch.Tensor:
    """Mean over the counted pixels of ``-log sum_{c allowed} p_c``: each pixel is of a class its
    annotations allow (a region's tags; not a class exhaustively boxed elsewhere in the slice).

    Parameters
    ----------
    logits : (B, K, H, W) float tensor
    allowed : (B, K, H, W) or (B, K, 1, 1) bool tensor
        The classes allowed at each pixel (every pixel allows at least one).
    counted : (B, H, W) bool tensor
        The pixels that take part.
    """
    log_p = F.log_softmax(logits, dim=1).masked_fill(~allowed, float("-inf"))
    inside = -torch.logsumexp(log_p, dim=1)
    return (inside * counted).sum() / counted.sum().clamp(min=1)


def box_mil_loss(logits: torch.Tensor, box: torch.Tensor, boxed: torch.Tensor) -> torch.Tensor:
    """Multiple-instance loss of boxes: ``-log p_c`` at the most likely pixel of class ``c`` along
    every row and every column of a box of class ``c`` (a tight box touches its object in each of
    them).

    Parameters
    ----------
    logits : (B, K, H, W) float tensor
    box : (B, H, W) bool tensor
        The box's pixels in each image (a rectangle; images without a box may hold anything).
    boxed : (B, K) bool tensor
        The classes a box of the image fits.

    Returns
    -------
    Scalar tensor: the mean over all rows and columns of all boxes; 0 when no image has a box.
    """
    if not bool(boxed.any()):
        return logits.sum() * 0.0
    log_p = F.log_softmax(logits, dim=1).masked_fill(~box[:, None], float("-inf"))
    rows = boxed[:, :, None] & box.any(dim=2)[:, None]  # (B, K, H)
    cols = boxed[:, :, None] & box.any(dim=1)[:, None]  # (B, K, W)
    values = torch.cat([log_p.amax(dim=3)[rows], log_p.amax(dim=2)[cols]])
    return -values.mean()
