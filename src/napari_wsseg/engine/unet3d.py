"""An anisotropy-aware 3D U-Net (for methods that see volumes). Imports no Qt.

Serial-section EM stacks have sections several times thicker than their pixels (ssTEM: ~50 nm
vs ~4 nm). As nnU-Net does, this network pools and convolves along z only once the voxels of a
level are near-isotropic: a level whose z spacing is more than
:data:`~napari_wsseg.io.voxel_size.NEAR_ISOTROPIC_RATIO` times its y/x spacing uses ``1x3x3``
convolutions and ``1x2x2`` pooling, so the y/x resolution catches up with z before z is touched.
The plan comes from the voxel size (:func:`level_plan`); an unknown voxel size is taken as
isotropic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import WssegError
from ..io.voxel_size import NEAR_ISOTROPIC_RATIO, check_voxel_size
from .unet import decode_with_skips, xavier_init


@dataclass(frozen=True)
class UNet3DConfig:
    """Architecture of a :class:`UNet3D`.

    Attributes
    ----------
    in_channels, out_channels : int, default 1 and 2
        Image channels and class logits.
    depth : int, default 3
        Down-sampling steps (``depth + 1`` resolution levels).
    width : int, default 8
        Channels at full resolution, doubling per level up to ``max_width``.
    max_width : int, default 128
    voxel_size_zyx : (float, float, float), default (1.0, 1.0, 1.0)
        Physical voxel size (any unit; only ratios count), which sets :func:`level_plan`.
    """

    in_channels: int = 1
    out_channels: int = 2
    depth: int = 3
    width: int = 8
    max_width: int = 128
    voxel_size_zyx: tuple[float, float, float] = (1.0, 1.0, 1.0)

    def __post_init__(self) -> None:
        for name in ("in_channels", "out_channels", "width", "max_width"):
            if getattr(self, name) < 1:
                raise WssegError(f"3D U-Net {name} is {getattr(self, name)}; it must be at least 1")
        if self.depth < 0:
            raise WssegError(f"3D U-Net depth is {self.depth}; it must be 0 or more")
        check_voxel_size(self.voxel_size_zyx, 3, source="3D U-Net voxel size")

    def level_widths(self) -> list[int]:
        return [min(self.width * 2**level, self.max_width) for level in range(self.depth + 1)]


def level_plan(voxel_size_zyx, depth: int) -> list[tuple[bool, bool]]:
    """Per level ``(3x3x3 convolutions?, pool z before it?)``: z is used only once near-isotropic.

    Level 0 is never pooled. After each pooling the spacing doubles along the pooled axes.

    Examples
    --------
    >>> level_plan((0.05, 0.005, 0.005), 4)  # ssTEM-like: 10x thicker sections
    [(False, False), (False, False), (False, False), (True, False), (True, True)]
    >>> level_plan((1.0, 1.0, 1.0), 2)
    [(True, False), (True, True), (True, True)]
    """
    sz, sy, _ = check_voxel_size(voxel_size_zyx, 3)
    plan = []
    for level in range(depth + 1):
        pool_z = level > 0 and sz <= NEAR_ISOTROPIC_RATIO * sy
        if level > 0:
            sz, sy = (sz * 2 if pool_z else sz), sy * 2
        plan.append((sz <= NEAR_ISOTROPIC_RATIO * sy, pool_z))
    return plan


def receptive_radius_zyx(config: UNet3DConfig) -> tuple[int, int]:
    """Upper bounds ``(z, y/x)`` on the voxels of context on each side that influence one output.

    Examples
    --------
    >>> receptive_radius_zyx(UNet3DConfig(depth=2, voxel_size_zyx=(10.0, 1.0, 1.0)))[0]
    0
    """
    plan = level_plan(config.voxel_size_zyx, config.depth)
    radii = []
    for axis in ("z", "yx"):
        factor, radius = 1, 0
        for level, (full, pool_z) in enumerate(plan):
            pooled = level > 0 and (axis == "yx" or pool_z)
            if pooled:
                radius += factor + 2 * factor  # the pooling window, then linear up-sampling
                factor *= 2
            kernel_half = 1 if (axis == "yx" or full) else 0
            convs = 4 if level < config.depth else 2  # encoder and decoder blocks; bottom: one
            radius += convs * kernel_half * factor
        radii.append(radius)
    return radii[0], radii[1]


def _conv_block(channels_in: int, channels_out: int, full: bool) -> nn.Sequential:
    kernel, padding = ((3, 3, 3), (1, 1, 1)) if full else ((1, 3, 3), (0, 1, 1))
    return nn.Sequential(
        nn.Conv3d(channels_in, channels_out, kernel, padding=padding, bias=False),
        nn.BatchNorm3d(channels_out),
        nn.LeakyReLU(0.01, inplace=True),
        nn.Conv3d(channels_out, channels_out, kernel, padding=padding, bias=False),
        nn.BatchNorm3d(channels_out),
        nn.LeakyReLU(0.01, inplace=True),
    )


class UNet3D(nn.Module):
    """3D U-Net with anisotropy-aware convolutions and pooling (:func:`level_plan`).

    Batch normalisation, as in the 2D U-Net: in eval mode it uses running statistics, so a
    voxel's output depends only on its receptive field and block-wise prediction has no seams
    (instance normalisation would make it depend on the whole block).

    Examples
    --------
    >>> net = UNet3D(UNet3DConfig(out_channels=3, depth=2, width=4, voxel_size_zyx=(4.0, 1.0, 1.0)))
    >>> net.size_multiple, tuple(net(torch.zeros(1, 1, 3, 8, 8)).shape)
    ((1, 4, 4), (1, 3, 3, 8, 8))
    """

    def __init__(self, config: UNet3DConfig) -> None:
        super().__init__()
        self.config = config
        self.plan = level_plan(config.voxel_size_zyx, config.depth)
        widths = config.level_widths()
        self.encoders = nn.ModuleList()
        channels = config.in_channels
        for width, (full, _) in zip(widths, self.plan):
            self.encoders.append(_conv_block(channels, width, full))
            channels = width
        self.decoders = nn.ModuleList()
        for level in reversed(range(config.depth)):
            full = self.plan[level][0]
            self.decoders.append(_conv_block(channels + widths[level], widths[level], full))
            channels = widths[level]
        self.head = nn.Conv3d(channels, config.out_channels, 1)
        self.apply(xavier_init)

    @property
    def size_multiple(self) -> tuple[int, int, int]:
        """Input ``(Z, Y, X)`` sizes must be multiples of these."""
        return self.z_multiple(self.config), 2**self.config.depth, 2**self.config.depth

    @staticmethod
    def z_multiple(config: UNet3DConfig) -> int:
        """``2 ** (poolings along z)`` of a network with ``config``."""
        return 2 ** sum(pool_z for _, pool_z in level_plan(config.voxel_size_zyx, config.depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, in_channels, Z, Y, X)`` -> ``(B, out_channels, Z, Y, X)``."""
        skips = []
        for encoder, (_, pool_z) in zip(self.encoders, self.plan):
            if skips:
                x = F.max_pool3d(x, (2 if pool_z else 1, 2, 2))
            x = encoder(x)
            skips.append(x)
        skips.pop()
        return self.head(decode_with_skips(x, skips, self.decoders, "trilinear"))
