"""The Annotate widget's voxel size field: prefilled, validated, stored in the project."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_wsseg.annotations.model import default_classes
from napari_wsseg.project import Project


def test_typed_voxel_size_is_stored_in_the_project_and_shown_again(annotate, small_3d, tmp_path):
    image, _, _ = small_3d
    viewer, _, widget = annotate(image, default_classes(3))
    assert not widget.voxel_size_row.isHidden()  # a volume: the field is offered
    assert widget.voxel_size_edit.text() == ""  # an array made in napari: size unknown
    widget.new_project(tmp_path / "proj")
    widget.voxel_size_edit.setText("0.05, 0.004,0.004")
    widget.voxel_size_edit.editingFinished.emit()
    assert Project.open(tmp_path / "proj").voxel_size_zyx == (0.05, 0.004, 0.004)

    viewer2, _, widget2 = annotate(image, None)
    widget2.open_project(tmp_path / "proj")
    assert widget2.voxel_size_edit.text() == "0.05,0.004,0.004"


def test_bad_voxel_size_is_one_line_and_changes_nothing(
    annotate, small_3d, tmp_path, notifications
):
    image, _, _ = small_3d
    _, _, widget = annotate(image, default_classes(3))
    widget.new_project(tmp_path / "proj")
    assert widget.set_voxel_size("0.01")  # one number: isotropic
    assert not widget.set_voxel_size("0.05,-1,0.004")
    assert not widget.set_voxel_size("fifty")
    bad = [m for m in notifications if "voxel size" in m]
    assert len(bad) == 2 and all("\n" not in m and "micrometres" in m for m in bad)
    assert Project.open(tmp_path / "proj").voxel_size_zyx == (0.01, 0.01, 0.01)
    assert widget.set_voxel_size("")  # empty: unknown again
    assert Project.open(tmp_path / "proj").voxel_size_zyx is None


def test_voxel_size_is_prefilled_from_tiff_metadata_and_hidden_for_2d(
    make_napari_viewer, annotate, small_2d, tmp_path
):
    from napari_wsseg.widgets._annotate import AnnotateWidget

    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 16, 16), np.uint8),
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.004),
        metadata={"spacing": 0.05, "unit": "um"},
    )
    viewer = make_napari_viewer()
    viewer.open(str(path), plugin="napari-wsseg")
    widget = AnnotateWidget(viewer)
    values = [float(v) for v in widget.voxel_size_edit.text().split(",")]
    assert np.allclose(values, [0.05, 0.004, 0.004])
    widget.new_project(tmp_path / "proj")
    assert np.allclose(Project.open(tmp_path / "proj").voxel_size_zyx, [0.05, 0.004, 0.004])

    image, _, _ = small_2d
    _, _, widget2d = annotate(image, None)
    assert widget2d.voxel_size_row.isHidden()
