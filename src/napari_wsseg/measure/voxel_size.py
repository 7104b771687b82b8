"""The physical size of a voxel for measurements, in micrometres. Imports no Qt.

Parsing and reading metadata live in :mod:`napari_wsseg.io.voxel_size` (one parser for every
command); this module re-exports them for ``wsseg measure``. Without a size, measurements stay in
voxels.
"""

from __future__ import annotations

from ..io.voxel_size import parse_voxel_size, voxel_size_from_metadata

__all__ = ["parse_voxel_size", "voxel_size_from_metadata"]
