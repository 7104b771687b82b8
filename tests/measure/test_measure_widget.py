"""The Measure widget in a real viewer: instance
layer, sortable table, row selection, CSV export."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from qtpy.QtCore import Qt
from scipy import ndimage as ndi

from napari_wsseg.sample import make_phantom

WAIT_MS = 60_000  # only guards against a hang

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _no_triton_after_a_viewer():
    """A viewer loads libLLVM (OpenGL under Xvfb) and importing triton after that crashes the
    process, so later tests that train torch models must not import it."""
    yield
    from napari_wsseg.training import avoid_triton_llvm_crash

    avoid_triton_llvm_crash()


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during the test, in order."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(event):
        seen.append(str(event.value.message if hasattr(event, "value") else event.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def measured(make_napari_viewer, qtbot):
    from napari_wsseg.widgets._measure import MeasureWidget
    from napari_wsseg.widgets._session import session_for

    image, labels, classes = make_phantom((6, 64, 64), seed=2)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    viewer.add_labels(labels + 1, name="img prediction m1", scale=(2.0, 1.0, 1.0))
    session_for(viewer).classes = list(classes)
    widget = MeasureWidget(viewer)
    viewer.window.add_dock_widget(widget)
    widget.labels_combo.setCurrentText("img prediction m1")
    widget.image_combo.setCurrentText("img")
    widget.voxel_edit.setText("0.02,0.01,0.01")
    worker = widget.measure()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    return viewer, widget, labels, classes


def test_measure_adds_instances_and_a_table_with_one_row_per_object(measured):
    viewer, widget, labels, classes = measured
    expected = sum(ndi.label(labels == k)[1] for k in range(len(classes)))
    assert widget.table.rowCount() == expected
    instances = viewer.layers["img prediction m1 instances"]
    assert np.asarray(instances.data).max() == expected
    assert tuple(instances.scale) == (2.0, 1.0, 1.0)
    headers = [
        widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())
    ]
    assert "volume_um3" in headers and "mean_intensity" in headers
    names = {
        widget.table.item(r, headers.index("class")).text() for r in range(widget.table.rowCount())
    }
    assert names <= {c.name for c in classes}


def test_table_sorts_numerically_and_selection_centres_the_view(measured):
    viewer, widget, _, _ = measured
    headers = [
        widget.table.horizontalHeaderItem(c).text() for c in range(widget.table.columnCount())
    ]
    column = headers.index("voxels")
    widget.table.sortItems(column, Qt.SortOrder.DescendingOrder)
    values = [
        widget.table.item(r, column).data(Qt.ItemDataRole.DisplayRole)
        for r in range(widget.table.rowCount())
    ]
    assert values == sorted(values, reverse=True) and values[0] > values[-1]
    row = widget.table.rowCount() - 1  # the smallest object
    widget.table.selectRow(row)
    centroid = [
        widget.table.item(row, headers.index(f"centroid_{a}")).data(Qt.ItemDataRole.DisplayRole)
        for a in "zyx"
    ]
    camera = viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera
    assert tuple(camera.center[-2:]) == pytest.approx((centroid[1], centroid[2]))
    assert viewer.dims.point[0] == pytest.approx(round(centroid[0]) * 2.0, abs=2.0)


def test_export_csv_writes_the_three_tables(measured, tmp_path):
    _, widget, _, _ = measured
    paths = widget.export_csv(tmp_path / "mito.csv")
    with open(paths["objects"]) as handle:
        assert len(list(csv.DictReader(handle))) == widget.table.rowCount()
    assert paths["summary"].is_file() and paths["per_slice"].is_file()


def test_lazy_layer_without_instances_path_is_a_notification(make_napari_viewer, notifications):
    import dask.array as da

    from napari_wsseg.widgets._measure import MeasureWidget

    viewer = make_napari_viewer()
    viewer.add_labels(
        da.zeros((4, 16, 16), dtype=np.uint8, chunks=(2, 16, 16)), name="lazy prediction"
    )
    widget = MeasureWidget(viewer)
    assert widget.measure() is None
    assert any("OUT.zarr" in message for message in notifications)


def test_voxel_size_falls_back_to_the_open_project(make_napari_viewer, tmp_path):
    from napari_wsseg.annotations.model import default_classes
    from napari_wsseg.project import Project
    from napari_wsseg.widgets._measure import MeasureWidget
    from napari_wsseg.widgets._session import session_for

    viewer = make_napari_viewer()
    layer = viewer.add_labels(np.zeros((3, 8, 8), dtype=np.uint8), name="p")
    widget = MeasureWidget(viewer)
    assert widget._measure_kwargs(layer)["voxel_size"] is None  # no project, unit scale
    project = Project.create(tmp_path / "proj", classes=default_classes(2), image_shape=(3, 8, 8))
    project.set_voxel_size((0.04, 0.005, 0.005))
    session_for(viewer).project = project
    assert widget._measure_kwargs(layer)["voxel_size"] == (0.04, 0.005, 0.005)
    widget.voxel_edit.setText("1,2,2")  # the form wins over the project
    assert widget._measure_kwargs(layer)["voxel_size"] == (1.0, 2.0, 2.0)


def test_layer_list_measure_action_measures_the_selected_labels(make_napari_viewer, qtbot):
    """The 'Measure objects' entry of the layer list's Measure menu, run as napari runs it."""
    from napari._app_model import get_app_model

    image, labels, _ = make_phantom((4, 48, 48), seed=3)
    viewer = make_napari_viewer()
    viewer.add_image(image, name="img")
    layer = viewer.add_labels(labels + 1, name="img prediction m1")
    viewer.layers.selection.active = layer
    app = get_app_model()
    menu_ids = {item.command.id for item in app.menus.get_menu("napari/layers/measure")}
    assert "napari-wsseg.measure_layer" in menu_ids
    worker = app.commands.execute_command("napari-wsseg.measure_layer").result()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        pass
    assert "img prediction m1 instances" in viewer.layers
    assert viewer.layers.selection.active is layer  # the action never moves the selection
