"""The per-class "all boxed in this slice" tick: the (slice, class) mark, saved with the project."""

from __future__ import annotations

from napari_wsseg.project import Project
from napari_wsseg.widgets._annotate import AnnotateWidget


def test_all_boxed_tick_is_saved_and_restored(annotate, make_napari_viewer, small_3d, tmp_path):
    image, _, classes = small_3d
    viewer, _, widget = annotate(image, classes)
    widget.new_project(tmp_path / "proj")
    viewer.dims.set_current_step(0, 2)
    boxed = widget.slice_panel.rows[1][3]
    boxed.setChecked(True)
    assert widget.session.exhaustive == {(2, 1)}
    assert widget.session.snapshot().exhaustive_boxes.tolist() == [[2, 1]]
    widget._update_status()
    assert "1 all-boxed slices" in widget.status.text()
    widget.save_now()
    assert Project.open(tmp_path / "proj").annotations.exhaustive_boxes.tolist() == [[2, 1]]
    viewer.dims.set_current_step(0, 1)
    assert not boxed.isChecked()  # another slice: its own marks
    boxed.setChecked(True)
    boxed.setChecked(False)
    assert widget.session.exhaustive == {(2, 1)}

    other = AnnotateWidget(make_napari_viewer())
    other.open_project(tmp_path / "proj")
    other.viewer.dims.set_current_step(0, 2)
    assert other.slice_panel.rows[1][3].isChecked()
    assert not other.slice_panel.rows[0][3].isChecked()
