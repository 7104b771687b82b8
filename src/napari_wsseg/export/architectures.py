"""Network architectures a bioimage.io package names as its ``pytorch_state_dict`` callable. No Qt.

:class:`SliceProbabilities` wraps the network of a ``dsp`` or ``size`` model together with what
the method adds after it (DSP's temperature and prior correction, the size calibration offsets),
so that one forward pass maps a normalised ``(B, C, Y, X)`` batch to the class probabilities
``(B, K, Y, X)`` the method predicts. Its keyword arguments are written into the package's
``rdf.yaml``; the state dict holds the network's weights under ``net.``.
"""

from __future__ import annotations

import torch
from torch import nn

from ..engine.unet import UNet, UNetConfig

KINDS = ("dsp", "size")


class SliceProbabilities(nn.Module):
    """Class probabilities ``softmax(scale * net(x) + shift)`` of normalised 2D slices.

    Parameters
    ----------
    kind : {"dsp", "size"}
        ``dsp``: U-Net embedding + prototype head (class scores); ``size``: U-Net classifier.
    in_channels, n_classes, depth, width : int
        The network's image channels, classes, U-Net down-sampling steps and base width.
    embed_dim, n_prototypes : int, default 64 and 5
        DSP head: embedding dimension and prototypes per class (ignored for ``size``).
    scale : float, default 1.0
        Multiplies the network output (DSP: ``1 / tau``).
    shift : list of float, optional
        Added per class before the softmax (DSP: log prior shift; size: calibration offsets).
        None adds nothing.
    """

    def __init__(self, kind: str, in_channels: int, n_classes: int, depth: int, width: int,
                 embed_dim: int = 64, n_prototypes: int = 5, scale: float = 1.0,
                 shift: list[float] | None = None) -> None:
        super().__init__()
        if kind not in KINDS:
            raise ValueError(f"unknown network kind '{kind}'; use one of {', '.join(KINDS)}")
        if kind == "dsp":
            from ..methods.dsp.model import DSPNet

            self.net = DSPNet(in_channels, n_classes, depth, width, embed_dim, n_prototypes)
        else:
            self.net = UNet(UNetConfig(in_channels=in_channels, out_channels=n_classes, depth=depth,
                                       width=width, head="classifier"))
        self.scale = float(scale)
        shift_tensor = torch.tensor(shift if shift is not None else [0.0] * n_classes,
                                    dtype=torch.float32)
        self.register_buffer("shift", shift_tensor.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, Y, X)`` normalised float32 -> ``(B, K, Y, X)`` probabilities."""
        scores = self.net(x).float() * self.scale + self.shift
        return torch.softmax(scores, dim=1)
