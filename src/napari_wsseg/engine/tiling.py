"""Tiled 2D prediction with overlapping tiles blended without seams. Imports no Qt.

Any per-tile function ``fn(tile (C_in, h, w) float32) -> (K, h, w)`` can be run over a slice of
any size: the slice is padded (reflect) to a multiple of ``align``, cut into ``tile``-sized tiles
that overlap by at least ``overlap`` pixels, and the tile outputs are averaged with weights that
are zero in a band of ``overlap // 4`` pixels along every tile side that lies inside the slice,
ramp up linearly across the rest of the overlap and are one in the tile centre. So a pixel never
takes its value from a tile edge where the tile lacked context: for a function whose receptive
field radius is at most ``overlap // 4``, tiled and untiled outputs are equal.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``length`` with the given ``step``.

    Examples
    --------
    >>> tile_starts(10, 4, 3)
    [0, 3, 6]
    >>> tile_starts(4, 4, 3)
    [0]
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _axis_weights(tile: int, overlap: int, at_start: bool, at_end: bool) -> np.ndarray:
    """Blending weights along one tile axis; ``at_start``/``at_end``: that side is a border."""
    margin = overlap // 4
    ramp = np.ones(tile, dtype=np.float32)
    rising = np.clip((np.arange(tile) - margin + 1) / (overlap - 2 * margin + 1), 0.0, 1.0)
    if not at_start:
        ramp = np.minimum(ramp, rising)
    if not at_end:
        ramp = np.minimum(ramp, rising[::-1])
    return ramp.astype(np.float32)


def predict_tiled(
    fn: Callable[[np.ndarray], np.ndarray],
    image: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 128,
    align: int = 1,
) -> np.ndarray:
    """Run ``fn`` over overlapping tiles of ``image`` and blend the results.

    Parameters
    ----------
    fn : callable
        Maps a ``(C_in, h, w)`` float32 tile to a ``(K, h, w)`` array (e.g. class probabilities).
    image : (C_in, H, W) array
        One slice, channels first.
    tile : int, default 512
        Tile side in pixels (rounded up to a multiple of ``align``).
    overlap : int, default 128
        Minimum overlap of neighbouring tiles; outputs are exact for functions whose receptive
        field radius is at most ``overlap // 4``.
    align : int, default 1
        Tile sides and offsets are multiples of this (a U-Net's ``2 ** depth``), and the slice is
        reflect-padded to a multiple of it.

    Returns
    -------
    (K, H, W) float32 array

    Examples
    --------
    >>> image = np.arange(2 * 50 * 70, dtype=np.float32).reshape(2, 50, 70)
    >>> out = predict_tiled(lambda t: t.sum(0, keepdims=True), image, tile=32, overlap=8)
    >>> out.shape, bool(np.allclose(out[0], image.sum(0)))
    ((1, 50, 70), True)
    """
    if image.ndim != 3:
        raise ValueError(f"predict_tiled expects a (C, H, W) slice, got shape {image.shape}")

    def one_tile(batch: np.ndarray) -> np.ndarray:
        return np.asarray(fn(batch[0]))[None]

    return predict_tiled_batch(one_tile, image[None], tile=tile, overlap=overlap, align=align)[0]


def predict_tiled_batch(
    fn: Callable[[np.ndarray], np.ndarray],
    images: np.ndarray,
    *,
    tile: int = 512,
    overlap: int = 128,
    align: int = 1,
) -> np.ndarray:
    """:func:`predict_tiled` for a batch of same-sized slices, one ``fn`` call per tile position.

    ``fn`` maps ``(N, C_in, h, w)`` float32 tiles (the same window of every slice) to
    ``(N, K, h, w)``, so a network sees N tiles per forward pass (what a GPU wants).

    Examples
    --------
    >>> images = np.random.default_rng(0).random((3, 1, 40, 60), dtype=np.float32)
    >>> out = predict_tiled_batch(lambda t: 2 * t, images, tile=16, overlap=8)
    >>> out.shape, bool(np.allclose(out, 2 * images))
    ((3, 1, 40, 60), True)
    """
    if images.ndim != 4:
        raise ValueError(
            f"predict_tiled_batch expects (N, C, H, W) slices, got shape {images.shape}"
        )
    tile = -(-tile // align) * align
    if overlap >= tile:
        raise ValueError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    step = max(align, (tile - overlap) // align * align)
    height, width = images.shape[2:]
    padded = _pad_to(
        images, max(-(-height // align) * align, 1), max(-(-width // align) * align, 1)
    )
    padded_h, padded_w = padded.shape[2:]
    tile_h, tile_w = min(tile, padded_h), min(tile, padded_w)
    out = weight_sum = None
    starts_y, starts_x = tile_starts(padded_h, tile_h, step), tile_starts(padded_w, tile_w, step)
    for y in starts_y:
        weight_y = _axis_weights(tile_h, overlap, y == 0, y + tile_h >= padded_h)
        for x in starts_x:
            weight_x = _axis_weights(tile_w, overlap, x == 0, x + tile_w >= padded_w)
            window = np.ascontiguousarray(padded[..., y : y + tile_h, x : x + tile_w])
            result = np.asarray(fn(window), dtype=np.float32)
            if out is None:
                out = np.zeros(result.shape[:2] + (padded_h, padded_w), dtype=np.float32)
                weight_sum = np.zeros((padded_h, padded_w), dtype=np.float32)
            weight = weight_y[:, None] * weight_x[None, :]
            out[..., y : y + tile_h, x : x + tile_w] += result * weight
            weight_sum[y : y + tile_h, x : x + tile_w] += weight
    out /= weight_sum
    return out[..., :height, :width]


def _pad_to(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Reflect-pad ``(..., H, W)`` at the bottom and right to ``(..., height, width)``."""
    pad_h, pad_w = height - images.shape[-2], width - images.shape[-1]
    if pad_h == 0 and pad_w == 0:
        return np.asarray(images, dtype=np.float32)
    mode = "reflect" if images.shape[-2] > pad_h and images.shape[-1] > pad_w else "symmetric"
    leading = ((0, 0),) * (images.ndim - 2)
    return np.pad(
        np.asarray(images, dtype=np.float32), leading + ((0, pad_h), (0, pad_w)), mode=mode
    )
