"""A configurable 2D U-Net shared by the torch methods. Imports no Qt.

The backbone (``depth`` pooling levels, ``width`` channels at full resolution, doubling per level)
ends in one of two heads, chosen by :class:`UNetConfig`:

``"classifier"``
    a 1x1 convolution to ``out_channels`` class logits;
``"embedding"``
    the DSP head: BatchNorm -> 1x1 conv(``out_channels``) -> LeakyReLU -> 1x1
    conv(``out_channels``), giving a per-pixel embedding (Reiß et al. 2023, Sec. 5.2).

Every convolution is Xavier-initialised. Inputs must have a height and width divisible by
``2 ** depth`` (:attr:`UNet.size_multiple`); tiled prediction pads to that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WssegError

HEADS = ("classifier", "embedding")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`.

    Attributes
    ----------
    in_channels : int
        Image channels.
    out_channels : int
        Class count for the classifier head, embedding dimension for the embedding head.
    depth : int, default 3
        Number of 2x down-sampling steps (the network has ``depth + 1`` resolution levels).
    width : int, default 16
        Channels at full resolution; level ``l`` has ``width * 2**l`` (capped at ``max_width``).
    max_width : int, default 256
        Upper bound on the channels of any level.
    head : {"classifier", "embedding"}, default "classifier"
        Output head (see the module docstring).
    """

    in_channels: int = 1
    out_channels: int = 2
    depth: int = 3
    width: int = 16
    max_width: int = 256
    head: str = "classifier"

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise WssegError(f"unknown U-Net head '{self.head}'; use one of {', '.join(HEADS)}")
        for name in ("in_channels", "out_channels", "width", "max_width"):
            if getattr(self, name) < 1:
                raise WssegError(f"U-Net {name} is {getattr(self, name)}; it must be at least 1")
        if self.depth < 0:
            raise WssegError(f"U-Net depth is {self.depth}; it must be 0 or more")

    def level_widths(self) -> list[int]:
        return [min(self.width * 2**level, self.max_width) for level in range(self.depth + 1)]

    def receptive_radius(self) -> int:
        """Upper bound on the pixels of context on each side that influence one output pixel."""
        encoder = sum(2 * 2**level for level in range(self.depth + 1))  # two 3x3 convs a level
        decoder = sum(2 * 2**level for level in range(self.depth))
        pooling = sum(2**level for level in range(self.depth))
        upsampling = sum(2**level for level in range(1, self.depth + 1))  # bilinear: 1 px a level
        return encoder + decoder + pooling + upsampling


def _conv_block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
    )


def _make_head(config: UNetConfig, channels: int) -> nn.Module:
    if config.head == "classifier":
        return nn.Conv2d(channels, config.out_channels, 1)
    return nn.Sequential(
        nn.BatchNorm2d(channels),
        nn.Conv2d(channels, config.out_channels, 1),
        nn.LeakyReLU(inplace=True),
        nn.Conv2d(config.out_channels, config.out_channels, 1),
    )


class UNet(nn.Module):
    """2D U-Net: conv blocks with max-pooling down, bilinear up-sampling + skip concatenation up.

    Parameters
    ----------
    config : UNetConfig
        The architecture.

    Examples
    --------
    >>> net = UNet(UNetConfig(in_channels=1, out_channels=3, depth=2, width=4))
    >>> net(torch.zeros(1, 1, 16, 16)).shape
    torch.Size([1, 3, 16, 16])
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.level_widths()
        self.encoders = nn.ModuleList()
        channels = config.in_channels
        for width in widths:
            self.encoders.append(_conv_block(channels, width))
            channels = width
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            self.decoders.append(_conv_block(channels + widths[level], widths[level]))
            channels = widths[level]
        self.head = _make_head(config, channels)
        self.apply(xavier_init)

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this."""
        return 2**self.config.depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, H, W)`` -> ``(B, out_channels, H, W)``."""
        skips = []
        for level, encoder in enumerate(self.encoders):
            if level > 0:
                x = F.max_pool2d(x, 2)
            x = encoder(x)
            skips.append(x)
        skips.pop()
        return self.head(decode_with_skips(x, skips, self.decoders, "bilinear"))


def decode_with_skips(
    x: torch.Tensor, skips: list[torch.Tensor], decoders: nn.ModuleList, mode: str
) -> torch.Tensor:
    """The U-Net decoder path: per decoder, interpolate ``x`` (``mode``: ``"bilinear"`` in 2D,
    ``"trilinear"`` in 3D) to the last skip popped from ``skips``, concatenate, decode."""
    for decoder in decoders:
        skip = skips.pop()
        x = F.interpolate(x, size=skip.shape[2:], mode=mode, align_corners=False)
        x = decoder(torch.cat([x, skip], dim=1))
    return x


def xavier_init(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for 2D and 3D convolutions (``Module.apply``)."""
    if isinstance(module, (nn.Conv2d, nn.Conv3d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
