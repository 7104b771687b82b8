"""Measurements: counts and volumes against scipy on the phantom, block-wise == in memory, units."""

from __future__ import annotations

import csv
import threading

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from napari_wsseg.cli import main
from napari_wsseg.errors import WssegError
from napari_wsseg.io import read_labels
from napari_wsseg.measure import measure_labels, voxel_size_from_metadata
from napari_wsseg.sample import make_phantom


@pytest.fixture(scope="module")
def phantom():
    image, labels, classes = make_phantom((20, 80, 72), seed=3)
    return image, labels, [c.name for c in classes]


def _zarr(path, array, chunks):
    store = zarr.create_array(str(path), shape=array.shape, chunks=chunks, dtype=array.dtype)
    store[...] = array
    return store


def _object_key(row):
    """Everything about an object except its id (ids depend on the block order)."""
    return tuple((k, v) for k, v in row.items() if k != "id")


def test_phantom_counts_and_volumes_match_scipy(phantom):
    image, labels, names = phantom
    result = measure_labels(labels, image=image, class_names=names)
    for class_id in range(len(names)):
        truth, n = ndi.label(labels == class_id)
        sizes = np.bincount(truth.ravel())[1:]
        rows = [r for r in result.objects if r["class_id"] == class_id]
        assert len(rows) == n
        assert sorted(r["voxels"] for r in rows) == sorted(sizes.tolist())
        summary = next(r for r in result.summary if r["class_id"] == class_id)
        assert summary["count"] == n
        assert summary["voxels"] == int((labels == class_id).sum())
        assert summary["volume_fraction"] == pytest.approx((labels == class_id).mean(), rel=1e-5)
    # the mean intensity of one object, computed independently
    mito = next(r for r in result.objects if r["class_id"] == 2)
    instance = result.instances == mito["id"]
    assert mito["mean_intensity"] == pytest.approx(image[instance].mean(), rel=1e-5)
    assert np.array_equal(result.instances > 0, np.isin(labels, range(len(names))))


def test_blockwise_equals_in_memory_with_objects_crossing_blocks(phantom, tmp_path):
    image, labels, names = phantom
    whole = measure_labels(labels, image=image, classes=[1, 2, 3])
    source = _zarr(tmp_path / "labels.zarr", labels, chunks=(3, 17, 13))
    blocked = measure_labels(
        source,
        image=image,
        classes=[1, 2, 3],
        block=(5, 23, 19),
        instances_out=tmp_path / "instances.zarr",
    )
    # objects do cross block borders here: a membrane and big cells span many blocks
    assert any(r["bbox_z1"] - r["bbox_z0"] > 5 for r in whole.objects)
    _assert_same_objects(blocked, whole)
    assert blocked.summary == whole.summary
    assert blocked.per_slice == whole.per_slice
    written = np.asarray(read_labels(blocked.instances))
    pairs = np.unique(np.stack([written.ravel(), whole.instances.ravel()]), axis=1)
    assert (
        len(pairs.T) == len(np.unique(written)) == len(np.unique(whole.instances))
    )  # a relabelling


def _assert_same_objects(a, b) -> None:
    keys_a = sorted(map(_object_key, a.objects))
    keys_b = sorted(map(_object_key, b.objects))
    for ra, rb in zip(keys_a, keys_b, strict=True):
        for (ka, va), (kb, vb) in zip(ra, rb, strict=True):
            assert ka == kb
            assert va == (vb if isinstance(vb, (str, bool)) else pytest.approx(vb, rel=1e-4)), ka


def test_surface_area_is_the_marching_cubes_area_of_the_padded_object():
    from skimage.measure import marching_cubes, mesh_surface_area

    z, y, x = np.ogrid[:15, :20, :20]
    ball = ((z - 7) ** 2 + (y - 9) ** 2 + (x - 10) ** 2 <= 36).astype(np.uint8)
    ball[0:3, 0:4, 0:4] = 1  # a second object touching the volume corner
    spacing = (0.5, 0.25, 0.25)
    blocked = measure_labels(
        ball, classes=[1], voxel_size=spacing, block=(4, 6, 7), instances_out=None
    )
    for row in blocked.objects:
        mask = np.pad(blocked.instances == row["id"], 1).astype(np.float32)
        vertices, faces, _, _ = marching_cubes(mask, 0.5, spacing=spacing)
        assert row["surface_area_um2"] == pytest.approx(
            mesh_surface_area(vertices, faces), rel=1e-5
        )
    assert [r["touches_border"] for r in blocked.objects] == [True, False]


def test_units_follow_the_voxel_size(phantom):
    _, labels, _ = phantom
    voxels = measure_labels(labels, classes=[2])
    physical = measure_labels(labels, classes=[2], voxel_size=(0.02, 0.01, 0.01))
    assert "volume_vox" in voxels.objects[0] and "volume_um3" not in voxels.objects[0]
    assert voxels.units == "voxels" and physical.units == "um"
    for a, b in zip(voxels.objects, physical.objects, strict=True):
        assert b["volume_um3"] == pytest.approx(a["voxels"] * 0.02 * 0.01 * 0.01, rel=1e-5)
        assert b["centroid_z"] == a["centroid_z"]  # centroids and boxes stay in voxel indices
    doubled = measure_labels(labels, classes=[2], voxel_size=(2.0, 2.0, 2.0))
    for a, b in zip(voxels.objects, doubled.objects, strict=True):
        assert b["surface_area_um2"] == pytest.approx(4 * a["surface_area_vox2"], rel=1e-5)
    slice_rows = [r for r in physical.per_slice if r["z"] == 5]
    assert slice_rows[0]["area_um2"] == pytest.approx(slice_rows[0]["pixels"] * 1e-4, rel=1e-5)


def test_surface_can_be_skipped(phantom):
    _, labels, _ = phantom
    with_surface = measure_labels(labels, classes=[2])
    without = measure_labels(labels, classes=[2], surface=False)
    assert "surface_area_vox2" not in without.objects[0]
    for a, b in zip(with_surface.objects, without.objects, strict=True):
        assert {k: v for k, v in a.items() if k != "surface_area_vox2"} == b


def test_2d_image_gets_areas_and_perimeters():
    labels = np.zeros((30, 40), np.uint8)
    labels[2:8, 3:9] = 1
    labels[20:25, 30:40] = 1
    result = measure_labels(labels, classes=[1], voxel_size=(0.5, 0.5))
    assert [r["area_um2"] for r in result.objects] == [36 * 0.25, 50 * 0.25]
    assert [r["touches_border"] for r in result.objects] == [False, True]
    assert "bbox_z0" not in result.objects[0] and result.objects[0]["perimeter_um"] > 0


def test_voxel_size_from_tiff_metadata(tmp_path):
    import tifffile

    path = tmp_path / "labels.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.005),
        metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"},
    )
    assert voxel_size_from_metadata(path, 3) == pytest.approx((0.03, 0.005, 0.004))
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.zeros((3, 8, 8), np.uint8))
    assert voxel_size_from_metadata(plain, 3) is None


def test_cancel_stops_before_tables_and_removes_the_temporary_store(phantom, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    _, labels, _ = phantom
    source = _zarr(tmp_path / "labels.zarr", labels, chunks=(5, 40, 40))
    cancel = threading.Event()
    cancel.set()
    result = measure_labels(source, classes=[2], block=(5, 40, 40), cancel=cancel)
    assert result.stopped == "cancelled" and result.objects == []
    done = measure_labels(source, classes=[2], block=(5, 40, 40))
    assert done.stopped == "done" and done.objects and done.instances is None
    assert list((tmp_path / "tmp").iterdir()) == []


def test_bad_inputs_get_one_line_errors(phantom, tmp_path):
    image, labels, _ = phantom
    measure_labels(labels, classes=[2], instances_out=tmp_path / "inst.zarr")
    with pytest.raises(WssegError, match="already exists"):
        measure_labels(labels, classes=[2], instances_out=tmp_path / "inst.zarr")
    assert (
        measure_labels(
            labels, classes=[2], instances_out=tmp_path / "inst.zarr", overwrite=True
        ).stopped
        == "done"
    )
    (tmp_path / "mine.zarr").mkdir()
    (tmp_path / "mine.zarr" / "notes.txt").write_text("a user's folder")
    with pytest.raises(WssegError):
        measure_labels(labels, classes=[2], instances_out=tmp_path / "mine.zarr", overwrite=True)
    assert (tmp_path / "mine.zarr" / "notes.txt").read_text() == "a user's folder"
    with pytest.raises(WssegError, match="spatial shape"):
        measure_labels(labels, image=image[:, :10])
    with pytest.raises(WssegError, match="class ids"):
        measure_labels(image.astype(np.float32))
    with pytest.raises(WssegError, match="voxel size"):
        measure_labels(labels, voxel_size=(1.0, 1.0))


def test_cli_writes_three_tables_and_instances(tmp_path, capsys):
    assert main(["sample", "--out", str(tmp_path / "s"), "--shape", "12,64,64"]) == 0
    out = tmp_path / "m" / "cells.csv"
    args = [
        "measure",
        str(tmp_path / "s" / "labels.tif"),
        "--image",
        str(tmp_path / "s" / "image.tif"),
        "--class-names",
        str(tmp_path / "s" / "classes.json"),
        "--classes",
        "mitochondrion,3",
        "--voxel-size",
        "0.01,0.005,0.005",
        "--instances",
        str(tmp_path / "inst.zarr"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    with open(out) as handle:
        rows = list(csv.DictReader(handle))
    assert rows and {r["class"] for r in rows} <= {"mitochondrion", "nucleus"}
    assert "volume_um3" in rows[0] and "surface_area_um2" in rows[0]
    labels = read_labels(tmp_path / "s" / "labels.tif")
    assert len(rows) == ndi.label(labels == 2)[1] + ndi.label(labels == 3)[1]
    assert (tmp_path / "m" / "cells_summary.csv").is_file()
    assert (tmp_path / "m" / "cells_per_slice.csv").is_file()
    assert np.asarray(read_labels(tmp_path / "inst.zarr")).max() == len(rows)
    capsys.readouterr()
    assert main(args) == 2  # tables exist and no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(args[:-2] + ["--classes", "golgi", "--out", str(tmp_path / "x.csv")]) == 2
    assert "golgi" in capsys.readouterr().err
