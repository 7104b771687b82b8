"""import_tiff_to_omezarr: content, NGFF metadata, progress events, cancelling and refusals."""

from __future__ import annotations

import threading

import dask.array as da
import numpy as np
import pytest
import tifffile
import zarr

from napari_wsseg.errors import ImageFormatError
from napari_wsseg.io import import_tiff_to_omezarr, read_image
from napari_wsseg.io.readers import ome_attrs


@pytest.fixture
def stack(tmp_path):
    """A (10, 131, 141) uint16 TIFF stack (odd sizes: edge blocks of the pyramid) and its data."""
    data = np.random.default_rng(0).integers(0, 4000, (10, 131, 141), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
    return tmp_path / "stack.tif", data


def test_import_copies_every_slice_and_reports_each_batch(tmp_path, stack):
    src, data = stack
    events = []
    out = import_tiff_to_omezarr(
        src, tmp_path / "vol.zarr", chunks=(4, 64, 64), progress=events.append
    )
    assert out == tmp_path / "vol.zarr"
    # 3 batches of <= 4 slices, then 1 pyramid level (131 px // 2 >= 64)
    assert [(e.done, e.total) for e in events] == [(4, 11), (8, 11), (10, 11), (11, 11)]
    image = read_image(out)
    assert isinstance(image.data, da.Array) and image.data.shape == (10, 131, 141, 1)
    assert image.dtype == np.uint16
    np.testing.assert_array_equal(image.data[..., 0].compute(), data)


def test_import_writes_ngff_image_with_averaged_pyramid(tmp_path, stack):
    from ome_zarr_models import open_ome_zarr
    from ome_zarr_models.v05.image import Image as NgffImage

    src, data = stack
    out = import_tiff_to_omezarr(src, tmp_path / "vol.zarr", chunks=(4, 64, 64))
    group = zarr.open_group(str(out), mode="r")
    assert isinstance(open_ome_zarr(group), NgffImage)
    assert group["0"].chunks == (4, 64, 64)
    datasets = ome_attrs(group)["multiscales"][0]["datasets"]
    assert datasets[1]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 2.0]
    padded = np.pad(data, [(0, 0), (0, 1), (0, 1)], mode="edge").astype(np.float64)
    expected = padded.reshape(10, 66, 2, 71, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(group["1"][:], np.round(expected).astype(np.uint16))


def test_import_multichannel_stack_is_czyx(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (3, 2, 20, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, metadata={"axes": "ZCYX"})
    out = import_tiff_to_omezarr(tmp_path / "ij.tif", tmp_path / "ij.zarr", chunks=(2, 16, 16))
    multiscale = ome_attrs(zarr.open_group(str(out), mode="r"))["multiscales"][0]
    axes = [a["name"] for a in multiscale["axes"]]
    assert axes == ["c", "z", "y", "x"]
    image = read_image(out)
    assert image.data.shape == (3, 20, 24, 2)
    np.testing.assert_array_equal(image.slice(2), np.moveaxis(data[2], 0, -1))


def test_import_2d_rgb_image(tmp_path):
    rgb = np.random.default_rng(2).integers(0, 255, (20, 24, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    events = []
    out = import_tiff_to_omezarr(
        tmp_path / "rgb.tif", tmp_path / "rgb.zarr", progress=events.append
    )
    image = read_image(out)
    assert image.was_2d and image.data.shape == (1, 20, 24, 3)
    np.testing.assert_array_equal(image.slice(0), rgb)
    assert [(e.done, e.total) for e in events] == [(1, 1)]


def test_cancel_removes_partial_output(tmp_path, stack):
    src, _ = stack
    cancel = threading.Event()
    events = []

    def stop_after_first_batch(event):
        events.append(event)
        cancel.set()

    out = import_tiff_to_omezarr(
        src,
        tmp_path / "vol.zarr",
        chunks=(4, 64, 64),
        progress=stop_after_first_batch,
        cancel=cancel,
    )
    assert out is None and len(events) == 1
    assert not (tmp_path / "vol.zarr").exists()


def test_import_refusals(tmp_path, stack):
    src, _ = stack
    (tmp_path / "taken.zarr").mkdir()
    with pytest.raises(ImageFormatError, match=r"taken\.zarr already exists; delete it or pick"):
        import_tiff_to_omezarr(src, tmp_path / "taken.zarr")
    with pytest.raises(ImageFormatError, match=r"vol\.n5: name must end in \.zarr"):
        import_tiff_to_omezarr(src, tmp_path / "vol.n5")
    with pytest.raises(ImageFormatError, match=r"missing\.tif does not exist"):
        import_tiff_to_omezarr(tmp_path / "missing.tif", tmp_path / "a.zarr")
    np.save(tmp_path / "vol.npy", np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(ImageFormatError, match=r"extension '\.npy'; supported: \.tif, \.tiff"):
        import_tiff_to_omezarr(tmp_path / "vol.npy", tmp_path / "a.zarr")
    with pytest.raises(ImageFormatError, match=r"chunks \(8, 512\) are not three positive sizes"):
        import_tiff_to_omezarr(src, tmp_path / "a.zarr", chunks=(8, 512))
    assert not (tmp_path / "a.zarr").exists()
