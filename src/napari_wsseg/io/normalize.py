"""Robust percentile intensity normalisation shared by every method. Imports no Qt.

Per channel, the ``low``/``high`` percentiles of the image (estimated from a bounded sample of
slices for large volumes) are mapped to 0 and 1. The values are stored with each trained model
so that prediction normalises exactly as training did.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_PERCENTILES = (1.0, 99.5)
MAX_SAMPLE_SLICES = 16


@dataclass(frozen=True)
class Normalization:
    """Per-channel intensity mapping ``(x - low) / (high - low)``.

    Examples
    --------
    >>> n = Normalization(low=(10.0,), high=(20.0,))
    >>> n.apply(np.array([[[10], [15], [20]]], dtype=np.uint8))[..., 0].tolist()
    [[0.0, 0.5, 1.0]]
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_image(cls, image, percentiles=DEFAULT_PERCENTILES, max_slices: int = MAX_SAMPLE_SLICES):
        """Estimate from an :class:`~napari_wsseg.io.image.Image`, reading at most ``max_slices`` slices."""
        z_indices = np.unique(np.linspace(0, image.n_slices - 1, min(image.n_slices, max_slices)).astype(int))
        sample = np.stack([image.slice(z) for z in z_indices]).reshape(-1, image.n_channels)
        return cls.from_array(sample, percentiles)

    @classmethod
    def from_array(cls, values: np.ndarray, percentiles=DEFAULT_PERCENTILES):
        """Estimate from ``(..., C)`` values."""
        flat = np.asarray(values, dtype=np.float32).reshape(-1, values.shape[-1])
        low, high = np.percentile(flat, percentiles, axis=0)
        high = np.where(high > low, high, low + 1.0)  # constant images: avoid division by zero
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Normalise ``(..., C)`` values to float32 (0 at ``low``, 1 at ``high``; not clipped)."""
        low = np.asarray(self.low, dtype=np.float32)
        scale = np.asarray(self.high, dtype=np.float32) - low
        return (np.asarray(values, dtype=np.float32) - low) / scale

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, values: dict):
        return cls(tuple(values["low"]), tuple(values["high"]))
