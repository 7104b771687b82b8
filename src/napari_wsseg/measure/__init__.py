"""Organelle measurements: instances, per-object properties and summaries, in physical units.

Sits beside :mod:`napari_wsseg.predict`: it reads label images through :mod:`napari_wsseg.io`
and imports no Qt. See ``docs/measure.md``.
"""

from .objects import MeasureResult, measure_labels
from .tables import write_tables
from .voxel_size import parse_voxel_size, voxel_size_from_metadata

__all__ = [
    "MeasureResult",
    "measure_labels",
    "parse_voxel_size",
    "voxel_size_from_metadata",
    "write_tables",
]
