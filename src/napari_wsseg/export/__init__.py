"""Model export to other tools: bioimage.io model packages. Imports no Qt.

Sits beside :mod:`napari_wsseg.predict`: it loads model folders through
:mod:`napari_wsseg.methods` and never imports Qt. See ``docs/export.md``.
"""

from .bioimageio import EXPORTABLE, check_exportable, check_inference, export_bioimageio

__all__ = ["EXPORTABLE", "check_exportable", "check_inference", "export_bioimageio"]
