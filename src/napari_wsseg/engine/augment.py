"""Training augmentations as torch tensor ops: flips,
90° rotations, intensity jitter, CutOut. No Qt.

Geometric transforms (:class:`Geometry`) act on the last two axes of any tensor, so the same
transform is applied to an image and to its target maps; :meth:`Geometry.apply_boxes` moves
axis-aligned boxes with them. Photometric transforms (:func:`jitter`, :func:`cutout`) change
images only. All randomness comes from a ``torch.Generator`` so runs are repeatable.

Crops are square, so a 90° rotation keeps their shape.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Geometry:
    """``rot90`` quarter turns (0-3, counter-clockwise in the (Y, X) plane) after an optional
    flip of the X axis."""

    flip_x: bool = False
    rot90: int = 0

    @classmethod
    def random(cls, generator: torch.Generator) -> "Geometry":
        """One of the 8 symmetries of the square, uniformly."""
        draw = int(torch.randint(0, 8, (1,), generator=generator))
        return cls(flip_x=bool(draw // 4), rot90=draw % 4)

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Transform the last two axes (Y, X) of ``x``."""
        if self.flip_x:
            x = torch.flip(x, dims=(-1,))
        return torch.rot90(x, self.rot90, dims=(-2, -1)) if self.rot90 else x

    def apply_boxes(self, boxes: torch.Tensor, size: int) -> tuple[torch.Tensor, bool]:
        """Transform ``(N, 4)`` boxes ``(y0, x0, y1, x1)`` (inclusive) in a ``size``-square crop.

        Returns the boxes, normalised so that ``y0 <= y1`` and ``x0 <= x1``, and whether rows and
        columns were swapped (odd number of quarter turns).
        """
        y0, x0, y1, x1 = boxes.unbind(-1)
        if self.flip_x:
            x0, x1 = size - 1 - x1, size - 1 - x0
        for _ in range(self.rot90):
            # torch.rot90 on (Y, X) maps pixel (y, x) to (size - 1 - x, y)
            y0, x0, y1, x1 = size - 1 - x1, y0, size - 1 - x0, y1
        return torch.stack([y0, x0, y1, x1], dim=-1), self.rot90 % 2 == 1


def random_geometries(n: int, generator: torch.Generator) -> list[Geometry]:
    """``n`` independent random :class:`Geometry` draws."""
    return [Geometry.random(generator) for _ in range(n)]


def apply_geometries(x: torch.Tensor, geometries: list[Geometry]) -> torch.Tensor:
    """Apply ``geometries[i]`` to ``x[i]`` for a batch ``x`` of shape ``(B, ..., S, S)``."""
    return torch.stack([g.apply(item) for g, item in zip(geometries, x)])


def jitter(images: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Random brightness and contrast per sample, each factor in ``[1 - strength, 1 + strength]``.

    ``images`` is ``(B, C, H, W)``; brightness scales the intensities, contrast scales their
    deviation from the sample's mean (as torchvision's ``ColorJitter`` does).
    """
    if strength <= 0:
        return images
    batch = images.shape[0]
    low, high = 1.0 - strength, 1.0 + strength
    brightness = torch.empty(batch, 1, 1, 1).uniform_(low, high, generator=generator)
    contrast = torch.empty(batch, 1, 1, 1).uniform_(low, high, generator=generator)
    brightness, contrast = brightness.to(images.device), contrast.to(images.device)
    images = images * brightness
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    return (images - mean) * contrast + mean


def cutout(
    images: torch.Tensor,
    generator: torch.Generator,
    max_holes: int = 9,
    max_fraction: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Erase up to ``max_holes`` random rectangles per sample (set to the sample mean).

    Returns the images and a ``(B, H, W)`` bool mask of the erased pixels. Hole sides are drawn
    uniformly up to ``max_fraction`` of the crop side.
    """
    batch, _, height, width = images.shape
    n_holes = torch.randint(0, max_holes + 1, (batch,), generator=generator)
    slots = torch.arange(max_holes)[None, :] < n_holes[:, None]  # (B, max_holes) active holes
    longest_h, longest_w = (
        max(2, int(height * max_fraction) + 1),
        max(2, int(width * max_fraction) + 1),
    )
    size_h = torch.randint(1, longest_h, (batch, max_holes), generator=generator)
    size_w = torch.randint(1, longest_w, (batch, max_holes), generator=generator)
    top = (torch.rand(batch, max_holes, generator=generator) * (height - size_h + 1)).long()
    left = (torch.rand(batch, max_holes, generator=generator) * (width - size_w + 1)).long()
    ys = torch.arange(height)[None, None, :]
    xs = torch.arange(width)[None, None, :]
    in_rows = (ys >= top[..., None]) & (ys < (top + size_h)[..., None])  # (B, holes, H)
    in_cols = (xs >= left[..., None]) & (xs < (left + size_w)[..., None])  # (B, holes, W)
    holes = (in_rows[..., :, None] & in_cols[..., None, :] & slots[..., None, None]).any(dim=1)
    holes = holes.to(images.device)
    fill = images.mean(dim=(2, 3), keepdim=True)
    return torch.where(holes[:, None], fill, images), holes
