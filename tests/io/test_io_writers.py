"""write_labels / create_labels_zarr / finalize_labels_zarr: round trips, NGFF metadata, errors."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_wsseg.annotations.model import ClassInfo, default_classes
from napari_wsseg.errors import ImageFormatError
from napari_wsseg.io import (
    create_labels_zarr,
    finalize_labels_zarr,
    read_label_classes,
    read_labels,
    write_labels,
)
from napari_wsseg.io.readers import ome_attrs


@pytest.fixture
def labels_3d():
    return np.random.default_rng(0).integers(0, 3, (3, 130, 140)).astype(np.int64)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".tiff", ".zarr"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_round_trip(tmp_path, labels_3d, suffix, ndim):
    labels = labels_3d if ndim == 3 else labels_3d[0]
    path = write_labels(tmp_path / f"pred{suffix}", labels, classes=default_classes(3))
    read = read_labels(path)
    assert read.shape == labels.shape and read.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(read), labels)


@pytest.mark.parametrize("suffix", [".npy", ".tif", ".zarr"])
def test_dask_labels_are_written_block_by_block(tmp_path, labels_3d, suffix):
    lazy = da.from_array(labels_3d.astype(np.uint8), chunks=(1, 64, 64))
    path = write_labels(tmp_path / f"pred{suffix}", lazy)
    np.testing.assert_array_equal(np.asarray(read_labels(path)), labels_3d)


def test_zarr_output_is_read_lazily(tmp_path, labels_3d):
    write_labels(tmp_path / "pred.zarr", labels_3d)
    read = read_labels(tmp_path / "pred.zarr")
    assert isinstance(read, da.Array)
    np.testing.assert_array_equal(read[1].compute(), labels_3d[1])


def test_dtype_depends_on_number_of_classes(tmp_path):
    labels = np.array([[0, 299], [1, 2]])
    write_labels(tmp_path / "many.npy", labels, classes=default_classes(300))
    assert read_labels(tmp_path / "many.npy").dtype == np.uint16
    write_labels(tmp_path / "auto.tif", labels)
    assert read_labels(tmp_path / "auto.tif").dtype == np.uint16
    write_labels(tmp_path / "few.tif", labels % 256)
    assert read_labels(tmp_path / "few.tif").dtype == np.uint8


def test_ngff_label_metadata(tmp_path, labels_3d):
    classes = [
        ClassInfo("cytoplasm", "#7f7f7f"),
        ClassInfo("membrane", "#ff8c00"),
        ClassInfo("mito", "#dc1e1e"),
    ]
    write_labels(tmp_path / "pred.zarr", labels_3d, classes=classes, chunks=(1, 64, 64))
    group = zarr.open_group(str(tmp_path / "pred.zarr"), mode="r")
    assert group.metadata.zarr_format == 3
    attrs = ome_attrs(group)
    assert attrs["version"] == "0.5"
    image_label = attrs["image-label"]
    assert image_label["colors"][1] == {"label-value": 1, "rgba": [255, 140, 0, 255]}
    assert [p["name"] for p in image_label["properties"]] == ["cytoplasm", "membrane", "mito"]
    multiscale = attrs["multiscales"][0]
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    scales = [d["coordinateTransformations"][0]["scale"] for d in multiscale["datasets"]]
    assert scales == [[1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    assert group["0"].chunks == (1, 64, 64)
    np.testing.assert_array_equal(group["1"][:], labels_3d[:, ::2, ::2])
    assert read_label_classes(tmp_path / "pred.zarr") == classes


def test_output_validates_as_ngff_label_image(tmp_path, labels_3d):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image_label import ImageLabel

    write_labels(tmp_path / "pred.zarr", labels_3d, classes=default_classes(3))
    model = open_ome_zarr(zarr.open_group(str(tmp_path / "pred.zarr"), mode="r"))
    assert isinstance(model, ImageLabel)


def test_ome_zarr_reader_shows_labels_with_class_colours(tmp_path, labels_3d):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Reader

    write_labels(tmp_path / "pred.zarr", labels_3d, classes=default_classes(3))
    node = next(iter(Reader(parse_url(str(tmp_path / "pred.zarr")))()))
    assert node.load(Label) is not None
    assert [d.shape for d in node.data] == [(3, 130, 140), (3, 65, 70)]
    assert node.metadata["color"][2] == pytest.approx([44 / 255, 160 / 255, 44 / 255, 1.0])
    assert node.metadata["properties"][0] == {"name": "class0"}


def test_pyramid_levels_stop_at_64_pixels(tmp_path):
    labels = np.random.default_rng(3).integers(0, 5, (1, 256, 300), dtype=np.uint8)
    write_labels(tmp_path / "p.zarr", labels)
    group = zarr.open_group(str(tmp_path / "p.zarr"), mode="r")
    assert [group[k].shape for k in ("0", "1", "2")] == [(1, 256, 300), (1, 128, 150), (1, 64, 75)]
    assert "3" not in group
    np.testing.assert_array_equal(group["2"][:], labels[:, ::4, ::4])


def test_create_fill_finalize(tmp_path, labels_3d):
    path = tmp_path / "big.zarr"
    target = create_labels_zarr(path, labels_3d.shape, classes=default_classes(3))
    assert target.dtype == np.uint8 and target.chunks == (1, 130, 140)
    for z in range(labels_3d.shape[0]):
        target[z] = labels_3d[z]
    np.testing.assert_array_equal(read_labels(path).compute(), labels_3d)  # valid before finalize
    finalize_labels_zarr(path)
    target[0] = 0
    finalize_labels_zarr(path)  # again after a change: levels are rebuilt
    group = zarr.open_group(str(path), mode="r")
    assert sorted(group.array_keys()) == ["0", "1"]
    assert not np.asarray(group["1"][0]).any()
    np.testing.assert_array_equal(group["1"][1], labels_3d[1, ::2, ::2])


def test_create_refuses_existing_paths(tmp_path):
    create_labels_zarr(tmp_path / "out.zarr", (4, 5))
    with pytest.raises(ImageFormatError, match=r"out\.zarr already exists; pass overwrite=True"):
        create_labels_zarr(tmp_path / "out.zarr", (4, 5))
    create_labels_zarr(tmp_path / "out.zarr", (2, 3), overwrite=True)
    assert read_labels(tmp_path / "out.zarr").shape == (2, 3)
    zarr.create_array(str(tmp_path / "image.zarr"), data=np.ones((4, 5), np.uint8))
    with pytest.raises(ImageFormatError, match=r"image\.zarr already exists and is not a wsseg"):
        create_labels_zarr(tmp_path / "image.zarr", (4, 5), overwrite=True)
    assert (tmp_path / "image.zarr").exists()
    with pytest.raises(ImageFormatError, match=r"image\.zarr already exists and is not a wsseg"):
        write_labels(tmp_path / "image.zarr", np.zeros((4, 5), np.uint8))


def test_overwrite_leaves_a_label_image_of_another_tool_alone(tmp_path):
    from ome_zarr.writer import write_labels as ome_write_labels

    theirs = tmp_path / "theirs.zarr"
    labels = np.arange(20, dtype=np.uint8).reshape(4, 5) % 3
    zarr.open_group(str(theirs), mode="w", zarr_format=3)
    ome_write_labels(
        labels, str(theirs), name="cells.zarr", axes="yx", scaler=None, scale_factors=()
    )
    cells = theirs / "labels" / "cells.zarr"  # an OME label image, written by ome-zarr-py
    before = sorted(p.relative_to(theirs) for p in theirs.rglob("*"))
    for store in (theirs, cells):
        with pytest.raises(ImageFormatError, match=r"not a wsseg label image .*never replaced"):
            create_labels_zarr(store, (4, 5), overwrite=True)
        with pytest.raises(ImageFormatError, match=r"is not a wsseg label image"):
            write_labels(store, np.zeros((4, 5), np.uint8))
    assert sorted(p.relative_to(theirs) for p in theirs.rglob("*")) == before
    np.testing.assert_array_equal(read_labels(cells), labels)


def test_a_store_made_here_carries_the_attribute_that_allows_replacing_it(tmp_path):
    path = tmp_path / "pred.zarr"
    write_labels(path, np.ones((4, 5), np.uint8))
    assert zarr.open_group(str(path), mode="r").attrs["napari_wsseg"]["kind"] == "labels"
    write_labels(path, np.zeros((2, 3), np.uint8))
    assert read_labels(path).shape == (2, 3)


def test_write_labels_replaces_previous_outputs(tmp_path):
    for value in (1, 2):
        for name in ("p.npy", "p.tif", "p.zarr"):
            write_labels(tmp_path / name, np.full((4, 5), value, np.uint8))
            assert int(np.asarray(read_labels(tmp_path / name)).max()) == value


def test_write_errors(tmp_path):
    with pytest.raises(ImageFormatError, match=r"extension '\.png'; supported: \.npy, \.tif"):
        write_labels(tmp_path / "p.png", np.zeros((4, 5), np.uint8))
    with pytest.raises(ImageFormatError, match=r"dtype float32 is not a \(Y, X\) or \(Z, Y, X\)"):
        write_labels(tmp_path / "p.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(ImageFormatError, match=r"shape \(2, 2, 4, 5\)"):
        write_labels(tmp_path / "p.npy", np.zeros((2, 2, 4, 5), np.uint8))
    with pytest.raises(ImageFormatError, match=r"class ids range 0\.\.3, outside 0\.\.1"):
        write_labels(tmp_path / "p.npy", np.array([[0, 3]]), classes=default_classes(2))
    with pytest.raises(ImageFormatError, match=r"class ids range -1\.\.0"):
        write_labels(tmp_path / "p.npy", np.array([[0, -1]]))
    with pytest.raises(ImageFormatError, match=r"class 'bad': colour 'red' is not '#rrggbb'"):
        write_labels(
            tmp_path / "p.zarr", np.zeros((4, 5), np.uint8), classes=[ClassInfo("bad", "red")]
        )
    with pytest.raises(ImageFormatError, match=r"chunks \(1, 2\) do not fit shape \(3, 4, 5\)"):
        create_labels_zarr(tmp_path / "c.zarr", (3, 4, 5), chunks=(1, 2))
    with pytest.raises(ImageFormatError, match=r"shape \(4,\) is not a positive"):
        create_labels_zarr(tmp_path / "c.zarr", (4,))
    with pytest.raises(ImageFormatError, match=r"out\.n5: name must end in \.zarr"):
        create_labels_zarr(tmp_path / "out.n5", (4, 5))
    with pytest.raises(ImageFormatError, match=r"is not a label image made by create_labels_zarr"):
        finalize_labels_zarr(tmp_path / "missing.zarr")
