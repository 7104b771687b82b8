"""Whole-slice mean predictions while training on crops: a cache of per-cell prediction sums. No Qt.

A size target is the class distribution of a WHOLE slice, so the size loss needs the mean
prediction ``y_bar`` over every pixel of the slice, while training on a CPU can only afford crops
(a forward and backward pass of a 1024 x 1024 slice costs as much as 64 crops of 128 x 128).
:class:`SliceMeanCache` keeps, for each constrained slice, the sum of the latest (detached)
softmax prediction in every ``cell x cell`` block. Crops are aligned to these cells, so for a crop

    y_bar = (sum of the crop's current predictions + cached sums of the cells outside it) / N

is the whole-slice mean with exact gradients inside the crop and slightly stale values outside
it; the cells under the crop are then refreshed with its new predictions. When a crop covers the
whole slice, this is the exact mean. Before a cell has been predicted it holds the slice's target
sizes (or a uniform split over its tagged classes), so early crops are pulled towards the target
as if the rest of the slice already matched it.
"""

from __future__ import annotations

import numpy as np
import torch

from ...engine.crops import Crop


class SliceMeanCache:
    """Per-cell sums of the latest predictions of each constrained slice.

    Parameters
    ----------
    shape_yx : (Y, X) tuple of int
        Slice shape.
    cell : int
        Cell side in pixels; crop origins and sizes must be multiples of it.
    initial : dict of int to (C,) array
        Per slice ``z``, the class distribution that fills its cells before any prediction.

    Examples
    --------
    >>> cache = SliceMeanCache((4, 4), 2, {0: np.array([0.75, 0.25])})
    >>> crop = Crop(0, 0, 0, 2)
    >>> cache.mean_with([crop], torch.tensor([[0.0, 4.0]])).tolist()  # 4 px all class 1
    [[0.5625, 0.4375]]
    """

    def __init__(
        self, shape_yx: tuple[int, int], cell: int, initial: dict[int, np.ndarray]
    ) -> None:
        self.cell = int(cell)
        height, width = (int(s) for s in shape_yx)
        self.n_pixels = height * width
        rows = np.minimum(self.cell, height - self.cell * np.arange(-(-height // self.cell)))
        cols = np.minimum(self.cell, width - self.cell * np.arange(-(-width // self.cell)))
        self.cell_pixels = np.outer(rows, cols).astype(np.float64)  # pixels of each cell
        self.sums = {
            int(z): np.asarray(v, np.float64)[:, None, None] * self.cell_pixels[None]
            for z, v in initial.items()
        }

    def __contains__(self, z: int) -> bool:
        return int(z) in self.sums

    def _cells(self, crop: Crop) -> tuple[slice, slice]:
        cy, cx = crop.y // self.cell, crop.x // self.cell
        n = crop.size // self.cell
        return slice(cy, cy + n), slice(cx, cx + n)

    def outside(self, crops: list[Crop]) -> np.ndarray:
        """``(B, C)`` cached prediction sums of each crop's slice outside the crop."""
        rows = []
        for crop in crops:
            sums = self.sums[crop.z]
            inside = sums[(slice(None), *self._cells(crop))].sum(axis=(1, 2))
            rows.append(sums.sum(axis=(1, 2)) - inside)
        return np.stack(rows)

    def mean_with(self, crops: list[Crop], crop_sums: torch.Tensor) -> torch.Tensor:
        """``(B, C)`` whole-slice mean predictions: the crops' own ``crop_sums`` (differentiable)
        plus the cached rest, divided by the slice's pixel count."""
        rest = torch.as_tensor(self.outside(crops), dtype=crop_sums.dtype, device=crop_sums.device)
        return (crop_sums + rest) / self.n_pixels

    def update(self, crops: list[Crop], cell_sums: np.ndarray) -> None:
        """Store each crop's ``(C, S / cell, S / cell)`` per-cell prediction sums (cells outside
        the slice are dropped)."""
        for crop, sums in zip(crops, cell_sums):
            if crop.z not in self.sums:
                continue
            rows, cols = self._cells(crop)
            target = self.sums[crop.z][:, rows, cols]
            target[...] = sums[:, : target.shape[1], : target.shape[2]]


def align_crops(crops: list[Crop], cell: int, size: int) -> list[Crop]:
    """Snap crop origins down to multiples of ``cell`` and give them side ``size``.

    A crop drawn with side ``size - cell`` around an anchor still contains the anchor after the
    snap (the origin moves at most ``cell - 1`` pixels up/left and the side grows by ``cell``).

    Examples
    --------
    >>> align_crops([Crop(0, 13, 40, 8)], 8, 16)
    [Crop(z=0, y=8, x=40, size=16)]
    """
    return [Crop(c.z, c.y - c.y % cell, c.x - c.x % cell, size) for c in crops]


def uniform_aligned_crops(
    slices: np.ndarray,
    shape_yx: tuple[int, int],
    size: int,
    cell: int,
    n: int,
    rng: np.random.Generator,
) -> list[Crop]:
    """``n`` crops of side ``size`` at uniformly random cell-aligned places of the given slices.

    Origins run over multiples of ``cell`` up to the first one whose crop reaches the slice's end
    (the crop may then stick out by less than a cell; that part is padding).

    Examples
    --------
    >>> crops = uniform_aligned_crops(np.array([3]), (40, 40), 16, 8, 50, np.random.default_rng(0))
    >>> sorted({c.y for c in crops}), {c.z for c in crops}
    ([0, 8, 16, 24], {3})
    """
    height, width = shape_yx
    last_y = -(-max(height - size, 0) // cell)
    last_x = -(-max(width - size, 0) // cell)
    z = rng.choice(slices, size=n)
    ys = rng.integers(0, last_y + 1, size=n) * cell
    xs = rng.integers(0, last_x + 1, size=n) * cell
    return [Crop(int(a), int(b), int(c), size) for a, b, c in zip(z, ys, xs)]
