"""Losses of the size-target method: size KL, tag sizes, CRF (Potts) and partial CE. Imports no Qt.

- :func:`size_kl`: the forward KL divergence ``KL(v || y_bar) = sum_k v_k log(v_k / y_bar_k)``
  between a slice's target size distribution ``v`` and its mean softmax prediction ``y_bar``
  (paper Eq. 2). Zero-avoiding: a class with ``v_k > 0`` whose predicted size goes to 0 costs an
  unbounded penalty, so it can never vanish; classes with ``v_k = 0`` add nothing and are pushed
  to zero size through the softmax normalisation. ``y_bar`` is guarded by a small epsilon. The
  reverse KL ``KL(y_bar || v)`` is NOT used: it is undefined where ``v_k = 0`` (paper Sec. 2).
- :func:`tag_size_loss`: tags as size constraints with unknown fractions: an untagged class of a
  tagged slice must have size 0 (``-log(1 - y_bar_k)``), a tagged class at least a small fraction
  (a flat-bottomed log barrier, paper Eq. 11, so no particular size is favoured).
- :func:`crf_loss`: the bilinear relaxation of the Potts model ``sum_k S_k^T W (1 - S_k)``
  (paper Eq. 3) with Gaussian affinities
  ``w_ij = exp(-|I_i - I_j|^2 / 2 sigma_I^2 - |p_i - p_j|^2 / 2 sigma_xy^2)`` between pixels of a
  local ``(2r + 1)^2`` window, computed with one tensor shift per window offset.
- :func:`partial_ce`: cross-entropy on the pixels whose class is known (points, mask pixels).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

#: Default guard of the mean prediction inside the logarithm of the size losses.
KL_EPSILON = 1e-6


def size_kl(
    target: torch.Tensor, mean_prediction: torch.Tensor, eps: float = KL_EPSILON
) -> torch.Tensor:
    """Forward KL divergence ``KL(v || y_bar)`` per row.

    Parameters
    ----------
    target : (B, C) tensor
        Target size distributions ``v`` (rows sum to 1; zeros allowed).
    mean_prediction : (B, C) tensor
        Mean softmax prediction ``y_bar`` of each slice (rows sum to 1).
    eps : float, default 1e-6
        Added to ``y_bar`` inside the logarithm so an (almost) vanished class gives a large but
        finite loss and gradient.

    Returns
    -------
    (B,) tensor
        ``sum_k v_k (log v_k - log(y_bar_k + eps))``, with ``0 log 0 = 0``.

    Examples
    --------
    >>> v = torch.tensor([[0.5, 0.5, 0.0]])
    >>> round(float(size_kl(v, torch.tensor([[0.25, 0.5, 0.25]]), eps=0.0)), 6)  # 0.5 log 2
    0.346574
    """
    target = target.to(mean_prediction.dtype)
    return (torch.xlogy(target, target) - target * torch.log(mean_prediction + eps)).sum(dim=-1)


def tag_size_loss(
    present: torch.Tensor,
    mean_prediction: torch.Tensor,
    min_fraction: float,
    eps: float = KL_EPSILON,
) -> torch.Tensor:
    """Size loss of a tagged slice with unknown fractions: absent classes to 0, present ones > 0.

    Parameters
    ----------
    present : (B, C) bool tensor
        Tagged (present) classes; the others are absent from the slice.
    mean_prediction : (B, C) tensor
        Mean softmax prediction ``y_bar`` of each slice.
    min_fraction : float
        A present class costs ``log(min_fraction / y_bar_k)`` while its size is below this
        fraction and nothing above (a flat-bottomed barrier, no bias to equal sizes).
    eps : float, default 1e-6
        Guard inside the logarithms.

    Returns
    -------
    (B,) tensor
        ``sum_{absent} -log(1 - y_bar_k) + sum_{present} relu(log(min_fraction) - log(y_bar_k))``.

    Examples
    --------
    >>> y = torch.tensor([[0.5, 0.5, 0.0]])
    >>> float(tag_size_loss(torch.tensor([[True, True, False]]), y, 0.01))
    0.0
    """
    absent = -torch.log1p(-mean_prediction.clamp(max=1.0 - eps)) * (~present)
    barrier = F.relu(math.log(min_fraction) - torch.log(mean_prediction + eps)) * present
    return (absent + barrier).sum(dim=-1)


def window_offsets(radius: int) -> list[tuple[int, int]]:
    """Half of the non-zero offsets ``(dy, dx)`` of a ``(2 radius + 1)^2`` window: one of each
    ``+-`` pair, so each unordered pixel pair is visited once.

    Examples
    --------
    >>> window_offsets(1)
    [(0, 1), (1, -1), (1, 0), (1, 1)]
    """
    return [
        (dy, dx)
        for dy in range(radius + 1)
        for dx in range(-radius, radius + 1)
        if dy > 0 or dx > 0
    ]


def _shifted_pair(x: torch.Tensor, dy: int, dx: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of ``x[..., H, W]`` at pixels ``p`` and ``p + (dy, dx)`` where both are inside."""
    height, width = x.shape[-2:]
    y0, y1 = max(0, -dy), height - max(0, dy)
    x0, x1 = max(0, -dx), width - max(0, dx)
    return x[..., y0:y1, x0:x1], x[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]


def crf_loss(
    probabilities: torch.Tensor,
    image: torch.Tensor,
    valid: torch.Tensor | None = None,
    *,
    radius: int = 2,
    sigma_intensity: float = 0.15,
    sigma_xy: float = 1.5,
) -> torch.Tensor:
    """Bilinear Potts relaxation ``sum_k S_k^T W (1 - S_k)`` over a local window, per valid pixel.

    ``W`` holds ``w_ij = exp(-|I_i - I_j|^2 / (2 sigma_intensity^2) - |p_i - p_j|^2 /
    (2 sigma_xy^2))`` for pixels ``i != j`` at most ``radius`` apart in y and in x (both inside the
    image and valid), 0 otherwise. For one-hot predictions the loss is the summed affinity across
    segment boundaries, so it favours short boundaries that follow intensity edges.

    Parameters
    ----------
    probabilities : (B, K, H, W) tensor
        Softmax predictions ``S``.
    image : (B, C_in, H, W) tensor
        The (normalised) input intensities ``I``; channels add up in ``|I_i - I_j|^2``.
    valid : (B, H, W) bool tensor, optional
        Pixels that take part (e.g. inside the image); by default all.
    radius : int, default 2
        Half-width of the window.
    sigma_intensity, sigma_xy : float, default 0.15 and 1.5
        Bandwidths of the intensity (normalised units) and spatial (pixels) Gaussians.

    Returns
    -------
    scalar tensor
        The Potts sum divided by the number of valid pixels.

    Examples
    --------
    >>> s = torch.tensor([[[[1.0, 0.0]], [[0.0, 1.0]]]])  # two pixels, two classes, one-hot
    >>> i = torch.zeros(1, 1, 1, 2)
    >>> round(float(crf_loss(s, i, radius=1, sigma_xy=1e9)), 4)  # both ordered pairs cut, / 2 px
    1.0
    """
    if valid is None:
        valid = torch.ones(
            probabilities.shape[0],
            *probabilities.shape[2:],
            dtype=torch.bool,
            device=probabilities.device,
        )
    valid_f = valid.to(probabilities.dtype)
    total = probabilities.new_zeros(())
    for dy, dx in window_offsets(radius):  # a loop over window offsets, never over pixels
        s_i, s_j = _shifted_pair(probabilities, dy, dx)
        i_i, i_j = _shifted_pair(image, dy, dx)
        v_i, v_j = _shifted_pair(valid_f, dy, dx)
        colour = ((i_i - i_j) ** 2).sum(dim=1) / (2 * sigma_intensity**2)
        distance = colour + (dy**2 + dx**2) / (2 * sigma_xy**2)
        weight = torch.exp(-distance) * v_i * v_j
        # both orders of the pair: sum_k S_ik (1 - S_jk) + S_jk (1 - S_ik)
        cut = (s_i + s_j - 2 * s_i * s_j).sum(dim=1)
        total = total + (weight * cut).sum()
    return total / valid_f.sum().clamp(min=1.0)


def partial_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over the labelled pixels (``labels >= 0``); 0 when there are none.

    Parameters
    ----------
    logits : (B, K, H, W) tensor
    labels : (B, H, W) int64 tensor
        Class ids, ``-1`` for unlabeled pixels.

    Examples
    --------
    >>> logits = torch.zeros(1, 2, 1, 2)
    >>> round(float(partial_ce(logits, torch.tensor([[[1, -1]]]))), 4)  # log 2
    0.6931
    """
    if not bool((labels >= 0).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits, labels, ignore_index=-1)
