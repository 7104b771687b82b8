"""Network architectures a bioimage.io package names as its ``pytorch_state_dict`` callable. No Qt.

:class:`SliceProbabilities` wraps the network of a ``dsp`` or ``size`` model together with what
the method adds after it (DSP's temperature and prior correction, the size calibration offsets),
so that one forward pass maps a normalised ``(B, C, Y, X)`` batch to the class probabilities
``(B, K, Y, X)`` the method predicts; ``rewis3d`` exports its 2D student (and its prior
correction) the same way.
:class:`MEWSProbabilities` and :class:`CPEWSProbabilities` rebuild the ViT methods. Their keyword
arguments are written into the package's ``rdf.yaml``; the state dict holds the network's weights.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.prototypes import PrototypeUNet
from ..engine.unet import UNet, UNetConfig

KINDS = ("dsp", "size", "rewis3d")


class SliceProbabilities(nn.Module):
    """Class probabilities ``softmax(scale * net(x) + shift)`` of normalised 2D slices.

    Parameters
    ----------
    kind : {"dsp", "size", "rewis3d"}
        ``dsp``: U-Net embedding + prototype head (class scores); ``size``: U-Net classifier;
        ``rewis3d``: its 2D student, a U-Net classifier with at least two outputs (the softmax
        runs over all of them, then the first ``n_classes`` are kept, as the method does).
    in_channels, n_classes, depth, width : int
        The network's image channels, classes, U-Net down-sampling steps and base width.
    embed_dim, n_prototypes : int, default 64 and 5
        DSP head: embedding dimension and prototypes per class (ignored for ``size``).
    scale : float, default 1.0
        Multiplies the network output (DSP: ``1 / tau``).
    shift : list of float, optional
        Added per class before the softmax (dsp, rewis3d: log prior shift; size: calibration
        offsets). None adds nothing.
    """

    def __init__(
        self,
        kind: str,
        in_channels: int,
        n_classes: int,
        depth: int,
        width: int,
        embed_dim: int = 64,
        n_prototypes: int = 5,
        scale: float = 1.0,
        shift: list[float] | None = None,
    ) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown network kind '{kind}'; use one of {', '.join(KINDS)}")
        if kind == "dsp":
            self.net = PrototypeUNet(in_channels, n_classes, depth, width, embed_dim, n_prototypes)
        else:
            self.net = UNet(
                UNetConfig(
                    in_channels=in_channels,
                    out_channels=max(n_classes, 2) if kind == "rewis3d" else n_classes,
                    depth=depth,
                    width=width,
                    head="classifier",
                )
            )
        self.scale, self.n_classes = float(scale), int(n_classes)
        n_outputs = max(n_classes, 2) if kind == "rewis3d" else n_classes
        shift_tensor = torch.tensor(
            shift if shift is not None else [0.0] * n_outputs, dtype=torch.float32
        )
        self.register_buffer("shift", shift_tensor.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Y, X)`` normalised float32 -> ``(B, K, Y, X)`` probabilities."""
        scores = self.net(x).float() * self.scale + self.shift
        return torch.softmax(scores, dim=1)[:, : self.n_classes]


class MEWSProbabilities(nn.Module):
    """Class probabilities of a MEWS model: frozen timm ViT, per-class heads, prototype cosines.

    Mirrors :meth:`napari_wsseg.methods.mews.method.MEWSMethod.predict_proba_slice` on one
    backbone tile: normalised input clipped to [0, 1], grey repeated to the backbone's channels,
    ImageNet-style ``mean``/``std``, patch tokens rounded to float16 (as the feature cache stores
    them) and L2-normalised, cosine of each head's projection to its class centroid divided by
    ``temperature``, bilinear up-sampling by the patch size, softmax over classes. Input sides
    must be multiples of ``patch_size``.

    Parameters
    ----------
    backbone : str
        timm model name (built with ``pretrained=False``; the weights come from the state dict).
    n_classes, in_dim, proj_dim : int
        Classes, backbone feature size and projected size of the heads.
    patch_size, num_prefix_tokens : int
        Backbone patch side and the class/register tokens in front of the patch tokens.
    temperature : float
        Cosines are divided by this before the softmax.
    mean, std : list of float
        Per-channel normalisation of the backbone input.
    """

    def __init__(
        self,
        backbone: str,
        n_classes: int,
        in_dim: int,
        proj_dim: int,
        patch_size: int,
        num_prefix_tokens: int,
        temperature: float,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        import timm

        from ..methods.mews.heads import ProjectionHeads

        self.backbone = timm.create_model(
            backbone, pretrained=False, num_classes=0, dynamic_img_size=True
        )
        self.heads = ProjectionHeads(n_classes, in_dim, proj_dim)
        self.register_buffer("centroids", torch.zeros(n_classes, proj_dim))
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.patch_size, self.num_prefix_tokens = int(patch_size), int(num_prefix_tokens)
        self.temperature = float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Y, X)`` normalised float32 -> ``(B, K, Y, X)`` probabilities."""
        from torch.nn import functional as F

        batch, channels, height, width = x.shape
        wanted = self.mean.shape[1]
        x = x.clamp(0.0, 1.0)
        if channels != wanted:
            x = (x if channels == 1 else x.mean(dim=1, keepdim=True)).expand(-1, wanted, -1, -1)
        tokens = self.backbone.forward_features((x - self.mean) / self.std)
        p = self.patch_size
        grid = tokens[:, self.num_prefix_tokens :, :].reshape(batch, height // p, width // p, -1)
        features = F.normalize(grid.half().float(), dim=-1)
        logits = self.heads.similarities(features, self.centroids) / self.temperature
        logits = F.interpolate(
            logits.transpose(0, 1), scale_factor=p, mode="bilinear", align_corners=False
        )
        return torch.softmax(logits, dim=1)


class CPEWSProbabilities(nn.Module):
    """Class probabilities of a CPEWS model: timm ViT, segmentation head and pixel refinement.

    Mirrors :meth:`napari_wsseg.methods.cpews.method.CPEWSMethod._tile_probabilities` on one
    tile: the :class:`~napari_wsseg.methods.cpews.model.CPEWSNet` logits, softmax over classes.
    The state dict holds the network's weights under ``net.``.

    Parameters
    ----------
    backbone : str
        timm ViT name (built with ``pretrained=False``; the weights come from the state dict).
    model_kwargs : dict or None
        Extra timm arguments of the backbone (an in-domain ``wsseg pretrain`` backbone's shape).
    in_channels, n_classes : int
        Image channels and classes.
    intermediate_block : int
        The ViT block whose tokens feed the intermediate classifier (part of the weights).
    mean, std : list of float
        Per-channel normalisation of the backbone input.
    """

    def __init__(
        self,
        backbone: str,
        model_kwargs: dict | None,
        in_channels: int,
        n_classes: int,
        intermediate_block: int,
        mean: list[float],
        std: list[float],
    ) -> None:
        super().__init__()
        from ..methods.cpews.model import CPEWSNet, create_vit

        vit = create_vit(backbone, model_kwargs)
        self.net = CPEWSNet(vit, in_channels, n_classes, intermediate_block, mean, std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Y, X)`` normalised float32 -> ``(B, K, Y, X)`` probabilities."""
        return torch.softmax(self.net(x), dim=1)
