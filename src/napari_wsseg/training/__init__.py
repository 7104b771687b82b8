"""One training run as the napari widgets start it: live previews, the final slice, saving. No Qt.

:func:`run_training` fits a method in the calling thread; :func:`run_training_in_subprocess`
does the same in a fresh Python process started as ``python -m napari_wsseg.training`` (never
the user's ``__main__``); :class:`TrainingProcess` keeps one such process for many runs (live
mode). Both take plain callbacks, so the Train widget wraps them in a napari
thread worker and tests and benchmarks call them without a viewer.
"""

from .process import TrainingProcess, remove_temporary_model, run_training_in_subprocess
from .run import (
    SlicePrediction,
    TrainingJob,
    TrainingOutcome,
    avoid_triton_llvm_crash,
    dense_slice_dice,
    dense_slices,
    entropy_map,
    predict_slice,
    run_training,
    throttle,
)

__all__ = [
    "SlicePrediction",
    "TrainingJob",
    "TrainingOutcome",
    "TrainingProcess",
    "avoid_triton_llvm_crash",
    "dense_slice_dice",
    "dense_slices",
    "entropy_map",
    "predict_slice",
    "remove_temporary_model",
    "run_training",
    "run_training_in_subprocess",
    "throttle",
]
