"""A prototype network (DSP, Reiß et al. 2023): a U-Net with an embedding head and learned class
prototypes; dsp's network and rewis3d's 2D student. Imports no Qt.

Each class ``c`` has ``K`` prototypes ``p_c^j``; the class score of a pixel embedding ``f`` is the
mean cosine similarity ``s_c(f) = 1/K sum_j cos(f, p_c^j)`` (Eq. 1-2 of Reiß et al. 2023), and
class probabilities are ``softmax_c(s_c / tau)`` (Eq. 3). Because the mean of cosines equals
the dot product of the unit embedding with the mean of the unit prototypes, the scores cost one
``(D -> C)`` projection per pixel.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .unet import UNet, UNetConfig


class PrototypeHead(nn.Module):
    """Class scores from pixel embeddings: mean cosine similarity to each class's prototypes.

    Parameters
    ----------
    n_classes : int
    n_prototypes : int
        Prototypes per class (``|P_c|``).
    dim : int
        Embedding dimension ``D``.
    """

    def __init__(self, n_classes: int, n_prototypes: int, dim: int) -> None:
        super().__init__()
        prototypes = torch.randn(n_classes, n_prototypes, dim)
        self.prototypes = nn.Parameter(F.normalize(prototypes, dim=2))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(B, D, H, W)`` embeddings -> ``(B, C, H, W)`` float32 scores in [-1, 1].

        The projection runs in the embeddings' precision (bf16 under autocast: a third of a CPU
        training step is spent here at D = 64 otherwise); the division by the norm in float32.
        """
        centres = F.normalize(self.prototypes.float(), dim=2).mean(dim=1)  # (C, D)
        projection = F.conv2d(embeddings, centres[:, :, None, None].to(embeddings.dtype))
        norm = torch.linalg.vector_norm(embeddings, dim=1, keepdim=True).float().clamp(min=1e-12)
        return projection.float() / norm


class PrototypeUNet(nn.Module):
    """U-Net embedding backbone + :class:`PrototypeHead`; ``forward`` returns class scores ``s``."""

    def __init__(
        self, in_channels: int, n_classes: int, depth: int, width: int, dim: int, n_prototypes: int
    ) -> None:
        super().__init__()
        config = UNetConfig(
            in_channels=in_channels, out_channels=dim, depth=depth, width=width, head="embedding"
        )
        self.backbone = UNet(config)
        self.head = PrototypeHead(n_classes, n_prototypes, dim)

    @property
    def size_multiple(self) -> int:
        return self.backbone.size_multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))
