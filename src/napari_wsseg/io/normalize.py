"""Robust percentile intensity normalisation shared by every method. Imports no Qt.

Per channel, the ``low``/``high`` percentiles of the image (estimated from a bounded sample of
slices for large volumes) are mapped to 0 and 1. The values are stored with each trained model
so that prediction normalises exactly as training did.

Only finite pixels count for the percentiles: one NaN or inf in a float image must not turn the
whole normalisation into NaN. When such pixels are normalised they become finite: NaN and -inf
map to 0 (the low percentile), +inf to 1 (the high percentile), so they are predicted like the
darkest or brightest common pixels instead of spreading NaN through a network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import ImageFormatError, ModelError

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
    >>> n.apply(np.array([[np.nan, np.inf, -np.inf]])[..., None])[..., 0].tolist()
    [[0.0, 1.0, 0.0]]
    """

    low: tuple[float, ...]
    high: tuple[float, ...]

    @classmethod
    def from_image(
        cls, image, percentiles=DEFAULT_PERCENTILES, max_slices: int = MAX_SAMPLE_SLICES
    ):
        """Estimate from an :class:`~napari_wsseg.io.image.Image` (at most ``max_slices`` slices).

        Raises
        ------
        ImageFormatError
            When a channel of the sampled slices has no finite value.
        """
        z_indices = np.unique(
            np.linspace(0, image.n_slices - 1, min(image.n_slices, max_slices)).astype(int)
        )
        sample = np.stack([image.slice(z) for z in z_indices]).reshape(-1, image.n_channels)
        return cls.from_array(sample, percentiles, source=f"image {image.name}")

    @classmethod
    def from_array(
        cls, values: np.ndarray, percentiles=DEFAULT_PERCENTILES, *, source: str = "values"
    ):
        """Estimate from ``(..., C)`` values, ignoring NaN and inf.

        Examples
        --------
        >>> values = np.array([0.0, 1.0, 2.0, np.nan, np.inf])[:, None]
        >>> Normalization.from_array(values, (0, 100))
        Normalization(low=(0.0,), high=(2.0,))
        """
        flat = np.asarray(values, dtype=np.float32).reshape(-1, values.shape[-1])
        finite = np.isfinite(flat)
        if finite.all():
            low, high = np.percentile(flat, percentiles, axis=0)
        else:
            _check_some_finite(finite, source)
            low, high = np.nanpercentile(np.where(finite, flat, np.nan), percentiles, axis=0)
        high = np.where(high > low, high, low + 1.0)  # constant images: avoid division by zero
        return cls(tuple(float(v) for v in low), tuple(float(v) for v in high))

    def apply(self, values: np.ndarray) -> np.ndarray:
        """Normalise ``(..., C)`` values to float32 (0 at ``low``, 1 at ``high``; not clipped).

        NaN and -inf become 0, +inf becomes 1 (see the module docstring).
        """
        low = np.asarray(self.low, dtype=np.float32)
        scale = np.asarray(self.high, dtype=np.float32) - low
        out = (np.asarray(values, dtype=np.float32) - low) / scale
        return np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)

    def to_dict(self) -> dict:
        return {"low": list(self.low), "high": list(self.high)}

    @classmethod
    def from_dict(cls, values: dict):
        """Read what :meth:`to_dict` wrote, refusing anything but finite ``low < high`` per channel.

        Examples
        --------
        >>> Normalization.from_dict({"low": [0, 1], "high": [1, 2]}).high
        (1.0, 2.0)
        """
        try:
            low, high = list(values["low"]), list(values["high"])
            pairs = [(float(a), float(b)) for a, b in zip(low, high, strict=True)]
        except (KeyError, TypeError, ValueError):
            pairs = []
        if not pairs or not all(math.isfinite(a) and math.isfinite(b) and a < b for a, b in pairs):
            text = str(values)
            raise ModelError(
                f"normalization {text[:80]}{'...' if len(text) > 80 else ''} is not a list of "
                "finite low < high values per channel; retrain the model"
            )
        return cls(tuple(a for a, _ in pairs), tuple(b for _, b in pairs))


def _check_some_finite(finite: np.ndarray, source: str) -> None:
    empty = np.flatnonzero(~finite.any(axis=0))
    if len(empty):
        raise ImageFormatError(
            f"{source}: channel {int(empty[0])} has no finite value (all NaN or inf) in the "
            "slices read for normalisation; give an image with real intensities"
        )
