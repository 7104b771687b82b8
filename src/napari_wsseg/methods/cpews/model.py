"""The CPEWS network: a timm ViT, two 1x1-conv classifiers and a segmentation head. No Qt.

The ViT's tokens after block ``intermediate_block`` (``F_m``) and after the last block and norm
(``F_h``) are returned as ``(B, D, H/p, W/p)`` maps. The classifiers give the class scores and the
CAMs of each; the segmentation head turns ``F_h`` into class logits per token, upsamples them to
pixels and refines them with two 3x3 convolutions over the logits and the image.
:func:`multiscale_probabilities` is the paper's multi-scale testing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ModelError

#: Channels of the pixel refinement convolutions.
REFINE_WIDTH = 16


def create_vit(arch: str, model_kwargs: dict | None = None) -> nn.Module:
    """A randomly initialised timm ViT without classifier head that accepts any image size."""
    import timm

    try:
        vit = timm.create_model(
            arch, pretrained=False, num_classes=0, dynamic_img_size=True, **(model_kwargs or {})
        )
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelError(
            f"backbone '{arch:.60}' cannot be built as a timm ViT ({str(exc)[:80]}); choose a "
            "vit_* model such as vit_small_patch16_224"
        ) from None
    if not hasattr(vit, "blocks") or not hasattr(vit, "patch_embed"):
        raise ModelError(f"backbone '{arch:.60}' is not a Vision Transformer; choose a vit_* model")
    return vit


class CPEWSNet(nn.Module):
    """ViT backbone + intermediate/final classifiers + segmentation head.

    Parameters
    ----------
    vit : timm VisionTransformer
    n_channels : int
        Channels of the (normalised) input image.
    n_classes : int
    intermediate_block : int
        Index of the block whose output is ``F_m`` (negative counts from the end).
    mean, std : sequence of float
        Per backbone input channel, applied after mapping the image channels onto them.
    """

    def __init__(
        self, vit: nn.Module, n_channels: int, n_classes: int, intermediate_block: int, mean, std
    ) -> None:
        super().__init__()
        self.vit = vit
        depth = len(vit.blocks)
        self.intermediate = intermediate_block % depth
        self.n_channels = n_channels
        self.in_chans = int(vit.patch_embed.proj.in_channels)
        self.patch = int(vit.patch_embed.patch_size[0])
        self.size_multiple = self.patch
        dim = int(vit.embed_dim)
        self.register_buffer(
            "mean", torch.tensor(list(mean), dtype=torch.float32)[None, :, None, None]
        )
        self.register_buffer(
            "std", torch.tensor(list(std), dtype=torch.float32)[None, :, None, None]
        )
        self.classifier_m = nn.Conv2d(dim, n_classes, 1, bias=False)
        self.classifier_h = nn.Conv2d(dim, n_classes, 1, bias=False)
        self.seg_head = nn.Sequential(
            nn.Conv2d(dim, dim, 1), nn.GELU(), nn.Conv2d(dim, n_classes, 1)
        )
        self.refine = nn.Sequential(
            nn.Conv2d(n_classes + n_channels, REFINE_WIDTH, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(REFINE_WIDTH, n_classes, 3, padding=1),
        )

    def features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(F_m, F_h)``, each ``(B, D, ceil(H/p), ceil(W/p))``, of normalised ``(B, C, H, W)``."""
        x = self._padded(x)
        grid = (x.shape[2] // self.patch, x.shape[3] // self.patch)
        vit = self.vit
        tokens = vit.norm_pre(
            vit.patch_drop(vit._pos_embed(vit.patch_embed(self._backbone_input(x))))
        )
        middle = None
        for i, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if i == self.intermediate:
                middle = tokens
        final = vit.norm(tokens)
        return self._as_map(middle, grid), self._as_map(final, grid)

    def segment(self, x: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """Per-pixel class logits ``(B, K, H, W)`` of images ``x`` with final features ``final``."""
        height, width = x.shape[2:]
        coarse = self.seg_head(final)
        size = (coarse.shape[2] * self.patch, coarse.shape[3] * self.patch)
        fine = F.interpolate(coarse, size=size, mode="bilinear", align_corners=False)
        fine = fine[:, :, :height, :width]
        return fine + self.refine(torch.cat([fine, x], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segment(x, self.features(x)[1])

    def _padded(self, x: torch.Tensor) -> torch.Tensor:
        pad_y, pad_x = -x.shape[2] % self.patch, -x.shape[3] % self.patch
        return F.pad(x, (0, pad_x, 0, pad_y)) if pad_y or pad_x else x

    def _backbone_input(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.in_chans:
            x = x.mean(dim=1, keepdim=True).expand(-1, self.in_chans, -1, -1)
        return (x - self.mean) / self.std

    def _as_map(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        patches = tokens[:, self.vit.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)


def multiscale_probabilities(
    net: CPEWSNet, tiles: torch.Tensor, scales: tuple[float, ...] = (1.0,)
) -> torch.Tensor:
    """Class probabilities ``(B, K, H, W)`` of ``(B, C, H, W)`` tiles, averaged over scales.

    At each scale the tiles are resized (bilinear, anti-aliased when shrunk), classified, and the
    softmax probabilities resized back (bilinear: convex weights, so they still sum to 1). A
    scale that leaves the size unchanged is the plain forward pass, so ``scales=(1.0,)`` is
    exactly ``softmax(net(tiles))``.
    """
    height, width = tiles.shape[2:]
    total = None
    for scale in scales:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        if size == (height, width):
            proba = F.softmax(net(tiles), dim=1)
        else:
            resized = F.interpolate(
                tiles, size=size, mode="bilinear", align_corners=False, antialias=scale < 1
            )
            proba = F.interpolate(
                F.softmax(net(resized), dim=1),
                size=(height, width),
                mode="bilinear",
                align_corners=False,
            )
        total = proba if total is None else total + proba
    return total / len(scales)
