"""Multi-crop views of random windows of an image or volume, for self-supervised pretraining. No Qt.

Each training image is a *window* of ``window_factor * global_px`` pixels per side, read lazily
from one plane of the volume: an xy slice, and for near-isotropic volumes also an xz or yz plane
(:func:`training_planes`). Only the window is read, never the whole array, so zarr volumes larger
than memory work. From each window, DINO's multi-crop draws two *global* views (``global_scale``
of the window's area, resized to ``global_px``) and ``n_local`` *local* views (``local_scale``,
resized to ``local_px``), each with random flips, 90° rotations, contrast/brightness jitter,
Gaussian blur and noise. The scales keep the views near the image's own resolution, as MEWS reads
features at full resolution. Every random draw comes from one ``torch.Generator``, so the views
are a function of its state (deterministic and resumable).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..io.voxel_size import NEAR_ISOTROPIC_RATIO, check_voxel_size

PLANES = ("xy", "xz", "yz")
#: (fixed axis, first in-plane axis, second in-plane axis) of each plane, in (Z, Y, X).
_PLANE_AXES = {"xy": (0, 1, 2), "xz": (1, 0, 2), "yz": (2, 0, 1)}
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewSpec:
    """Sizes, scales and augmentation strengths of the multi-crop views.

    Attributes
    ----------
    global_px, local_px : int
        Side of the global and local views in pixels (DINO: 224 and 96).
    n_local : int
        Local views per window (DINO: 6 to 10).
    window_factor : float
        A window is ``window_factor * global_px`` pixels per side (clipped to the plane).
    global_scale, local_scale : (float, float)
        Fraction of the window's area a global / local view covers (DINO: (0.4, 1), (0.05, 0.4)).
    """

    global_px: int = 96
    local_px: int = 48
    n_local: int = 6
    window_factor: float = 1.5
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)

    @property
    def n_views(self) -> int:
        return 2 + self.n_local


def training_planes(
    shape_zyx: tuple[int, int, int], voxel_size_zyx=None, *, min_side: int = 1
) -> tuple[str, ...]:
    """Planes to train on: xy always; xz and yz too when the volume is near-isotropic.

    Near-isotropic means the voxel size is known and its largest side is at most
    :data:`NEAR_ISOTROPIC_RATIO` times its smallest; an unknown voxel size gives only xy (ssTEM
    and most FIB-SEM stacks have thicker sections than pixels). Planes with fewer than
    ``min_side`` slices across are left out.

    Examples
    --------
    >>> training_planes((100, 512, 512), (10.0, 8.0, 8.0))
    ('xy', 'xz', 'yz')
    >>> training_planes((100, 512, 512), (50.0, 4.0, 4.0)), training_planes((100, 512, 512))
    (('xy',), ('xy',))
    """
    if voxel_size_zyx is None or shape_zyx[0] < max(min_side, 2):
        return ("xy",)
    sizes = check_voxel_size(voxel_size_zyx, 3)
    if max(sizes) / min(sizes) > NEAR_ISOTROPIC_RATIO:
        return ("xy",)
    return PLANES


class ViewSampler:
    """Draws batches of multi-crop views from random windows of an image.

    Parameters
    ----------
    image : Image
        ``(Z, Y, X, C)``; numpy or lazy (dask) data, read window by window.
    normalization : Normalization
        Maps raw intensities to [0, 1] (values are clipped to it afterwards).
    planes : tuple of str
        From :func:`training_planes`.
    spec : ViewSpec
    mean, std : sequence of float
        Per channel, applied after normalisation, clipping and jitter.
    """

    def __init__(self, image, normalization, planes, spec: ViewSpec, mean, std) -> None:
        self.image = image
        self.normalization = normalization
        self.planes = tuple(planes)
        self.spec = spec
        self.mean = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def window(self, generator: torch.Generator) -> torch.Tensor:
        """One random window ``(C, h, w)`` of normalised intensities in [0, 1]."""
        plane = self.planes[_randint(generator, len(self.planes))]
        fixed, a, b = _PLANE_AXES[plane]
        shape = self.image.shape
        side = round(self.spec.window_factor * self.spec.global_px)
        ha, hb = min(side, shape[a]), min(side, shape[b])
        index = [slice(None)] * 3
        index[fixed] = _randint(generator, shape[fixed])
        start_a, start_b = (
            _randint(generator, shape[a] - ha + 1),
            _randint(generator, shape[b] - hb + 1),
        )
        index[a], index[b] = slice(start_a, start_a + ha), slice(start_b, start_b + hb)
        raw = np.asarray(self.image.data[tuple(index)])  # (ha, hb, C): only the window is read
        values = np.clip(self.normalization.apply(raw), 0.0, 1.0)
        return torch.from_numpy(np.ascontiguousarray(values.transpose(2, 0, 1)))

    def batch(self, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Multi-crop views of ``size`` random windows.

        Returns globals ``(2 * size, C, G, G)`` and locals ``(n_local * size, C, L, L)``, both
        view-major: all windows' view 0, then view 1, ... (as :class:`DINOLoss` reads).
        """
        spec = self.spec
        views: list[list[torch.Tensor]] = [[] for _ in range(spec.n_views)]
        for _ in range(size):
            window = self.window(generator)
            for v in range(spec.n_views):
                is_global = v < 2
                out = spec.global_px if is_global else spec.local_px
                scale = spec.global_scale if is_global else spec.local_scale
                blur_p = (1.0, 0.1)[v] if is_global else 0.5
                crop = _resized_crop(window, out, scale, generator)
                views[v].append(self._standardise(_augment(crop, blur_p, generator)))
        stacked = [torch.stack(v) for v in views]
        return torch.cat(stacked[:2]), torch.cat(stacked[2:]) if spec.n_local else torch.empty(0)

    def _standardise(self, crop: torch.Tensor) -> torch.Tensor:
        return (crop - self.mean) / self.std


def estimate_mean_std(
    image, normalization, planes, spec: ViewSpec, generator: torch.Generator, n_windows: int = 32
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of normalised, clipped intensities of ``n_windows`` windows."""
    sampler = ViewSampler(
        image, normalization, planes, spec, [0.0] * image.n_channels, [1.0] * image.n_channels
    )
    values = torch.cat([sampler.window(generator).flatten(1) for _ in range(n_windows)], dim=1)
    mean, std = values.mean(dim=1), values.std(dim=1).clamp_min(1e-3)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


# ------------------------------------------------------------------ helpers
def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def _randint(generator: torch.Generator, high: int) -> int:
    return int(torch.randint(max(int(high), 1), (), generator=generator))


def _resized_crop(
    window: torch.Tensor, out: int, scale: tuple[float, float], generator
) -> torch.Tensor:
    """A crop of ``scale`` of the window's area, aspect in [3/4, 4/3], resized to ``out``²."""
    _, h, w = window.shape
    area = h * w
    ch = cw = min(h, w)
    for _ in range(10):
        target = _uniform(generator, *scale) * area
        ratio = math.exp(_uniform(generator, math.log(3 / 4), math.log(4 / 3)))
        tw, th = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < tw <= w and 0 < th <= h:
            ch, cw = th, tw
            break
    y0, x0 = _randint(generator, h - ch + 1), _randint(generator, w - cw + 1)
    crop = window[None, :, y0 : y0 + ch, x0 : x0 + cw]
    return F.interpolate(
        crop, size=(out, out), mode="bilinear", align_corners=False, antialias=True
    )[0]


def _augment(crop: torch.Tensor, blur_p: float, generator) -> torch.Tensor:
    """Flips, a 90° rotation, contrast/brightness jitter, blur and noise, clipped to [0, 1]."""
    if _uniform(generator, 0, 1) < 0.5:
        crop = crop.flip(-1)
    crop = torch.rot90(crop, _randint(generator, 4), dims=(-2, -1))
    contrast, brightness = _uniform(generator, 0.6, 1.4), _uniform(generator, -0.2, 0.2)
    crop = (crop - 0.5) * contrast + 0.5 + brightness
    if _uniform(generator, 0, 1) < blur_p:
        crop = _gaussian_blur(crop, _uniform(generator, 0.1, 2.0))
    if _uniform(generator, 0, 1) < 0.5:
        noise = torch.randn(crop.shape, generator=generator) * _uniform(generator, 0.0, 0.05)
        crop = crop + noise
    return crop.clamp(0.0, 1.0)


def _gaussian_blur(crop: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``(C, H, W)`` with reflect padding."""
    radius = min(math.ceil(2 * sigma), crop.shape[-1] - 1, crop.shape[-2] - 1)
    if radius < 1:
        return crop
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    kernel = kernel / kernel.sum()
    channels = crop.shape[0]
    padded = F.pad(crop[None], (radius, radius, radius, radius), mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(rows, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)[0]
