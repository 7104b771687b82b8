"""napari-wsseg: weakly-supervised segmentation of microscopy images and volumes.

The core library (io, annotations, project, methods, engine, predict, eval, cli) imports no Qt;
napari GUI code lives in :mod:`napari_wsseg.widgets` only.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("napari-wsseg")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
