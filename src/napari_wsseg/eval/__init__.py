"""Evaluation: segmentation metrics and a weak-annotation simulator (benchmarks). Imports no Qt."""

from .metrics import confusion_matrix, dice_per_class, evaluate, format_evaluation, iou_per_class
from .simulate import (
    choose_slices,
    class_fractions,
    corrupt_sizes,
    relative_errors,
    simulate_annotations,
    size_noise_mre,
)

__all__ = [
    "choose_slices",
    "class_fractions",
    "confusion_matrix",
    "corrupt_sizes",
    "dice_per_class",
    "evaluate",
    "format_evaluation",
    "iou_per_class",
    "relative_errors",
    "simulate_annotations",
    "size_noise_mre",
]
