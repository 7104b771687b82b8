"""DSP's per-crop targets: the engine's weak targets, shared with other methods. Imports no Qt.

They moved to :mod:`napari_wsseg.engine.weak_targets` (rewis3d uses them too); this module keeps
the name ``method.py`` imports.
"""

from __future__ import annotations

from ...engine.weak_targets import AnnotationIndex, CropTargets

__all__ = ["AnnotationIndex", "CropTargets"]
