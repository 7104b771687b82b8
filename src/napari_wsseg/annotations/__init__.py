"""Weak annotations: the data model, CSV interchange, validation and per-slice targets. No Qt.

See ``docs/annotations.md`` for the file formats and validation rules.
"""

from .csv import (
    find_annotation_files,
    load_annotations,
    read_boxes_csv,
    read_classes_json,
    read_points_csv,
    read_sizes_csv,
    read_tags_csv,
    write_annotations,
    write_boxes_csv,
    write_classes_json,
    write_points_csv,
    write_sizes_csv,
    write_tags_csv,
)
from .model import Annotations, ClassInfo, default_classes
from .targets import (
    allowed_classes_per_slice,
    box_masks,
    point_targets,
    sizes_for_slice,
    tag_matrix,
)
from .validate import validate_annotations

__all__ = [
    "Annotations",
    "ClassInfo",
    "allowed_classes_per_slice",
    "box_masks",
    "default_classes",
    "find_annotation_files",
    "load_annotations",
    "point_targets",
    "read_boxes_csv",
    "read_classes_json",
    "read_points_csv",
    "read_sizes_csv",
    "read_tags_csv",
    "sizes_for_slice",
    "tag_matrix",
    "validate_annotations",
    "write_annotations",
    "write_boxes_csv",
    "write_classes_json",
    "write_points_csv",
    "write_sizes_csv",
    "write_tags_csv",
]
