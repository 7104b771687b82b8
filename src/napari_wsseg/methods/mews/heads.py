"""MEWS projection heads: one linear map W_c: D -> P per class, and prototype-based scores. No Qt.

Classification follows paper §3.2: patch i belongs to ``argmax_c cos(W_c x_i, z̄_pc)`` where the
class centroid ``z̄_pc`` is head c applied to the mean of class c's clicked-patch features.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHeads(nn.Module):
    """C bias-free linear heads stored as one ``(C, D, P)`` weight, applied in one matmul.

    Parameters
    ----------
    n_classes, in_dim, out_dim : int
        C, D (backbone features) and P (projected features, 70 in the paper).
    generator : torch.Generator, optional
        Seeds the initialisation (uniform in ``±1/sqrt(D)``, as ``nn.Linear``).
    """

    def __init__(
        self, n_classes: int, in_dim: int, out_dim: int, generator: torch.Generator | None = None
    ):
        super().__init__()
        bound = 1.0 / math.sqrt(in_dim)
        weight = torch.empty(n_classes, in_dim, out_dim).uniform_(
            -bound, bound, generator=generator
        )
        self.weight = nn.Parameter(weight)

    @property
    def n_classes(self) -> int:
        return int(self.weight.shape[0])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project ``(..., D)`` features by every head -> ``(C, ..., P)``."""
        c, d, p = self.weight.shape
        flat = x.reshape(-1, d) @ self.weight.permute(1, 0, 2).reshape(d, c * p)
        return flat.reshape(*x.shape[:-1], c, p).movedim(-2, 0)

    def centroids(self, proto_x: torch.Tensor, proto_labels: torch.Tensor) -> torch.Tensor:
        """Projected class centroids ``(C, P)``: head c applied to class c's mean prototype."""
        mean_x = class_means(proto_x, proto_labels, self.n_classes)  # (C, D)
        return torch.einsum("cd,cdp->cp", mean_x, self.weight)

    def similarities(self, x: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
        """Cosine of each head's projection of ``(..., D)``
        features to its centroid -> ``(C, ...)``."""
        z = F.normalize(self(x), dim=-1)
        return torch.einsum("c...p,cp->c...", z, F.normalize(centroids, dim=-1))


def class_means(values: torch.Tensor, labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Mean row ``(C, F)`` of ``values`` ``(K, F)`` per
    label in ``0..C-1`` (zeros for absent labels)."""
    one_hot = F.one_hot(labels, n_classes).to(values.dtype)
    return (one_hot.T @ values) / one_hot.sum(dim=0).clamp(min=1)[:, None]
