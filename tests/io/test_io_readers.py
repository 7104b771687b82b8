"""read_image / read_labels: every format, the axis rules, laziness and every error message."""

from __future__ import annotations

import dask.array as da
import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr

from napari_wsseg.errors import ImageFormatError
from napari_wsseg.io import read_image, read_labels, readers


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- TIFF ---------------------------------------------------------------------------------------


def test_tiff_2d_grey_round_trip(tmp_path, rng):
    array = rng.integers(0, 255, (12, 17), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", array)
    image = read_image(tmp_path / "a.tif")
    assert image.was_2d and image.data.shape == (1, 12, 17, 1)
    np.testing.assert_array_equal(image.slice(0)[..., 0], array)


def test_tiff_stack_uint16_becomes_z(tmp_path, rng):
    array = rng.integers(0, 60000, (5, 12, 17), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "a.tiff", array, photometric="minisblack")
    image = read_image(tmp_path / "a.tiff")
    assert not image.was_2d and image.data.shape == (5, 12, 17, 1) and image.dtype == np.uint16
    np.testing.assert_array_equal(image.slice(3)[..., 0], array[3])


def test_tiff_pages_appended_one_by_one_become_z(tmp_path, rng):
    pages = rng.integers(0, 255, (4, 10, 11), dtype=np.uint8)
    for page in pages:
        tifffile.imwrite(tmp_path / "pages.tif", page, append=True, metadata=None)
    image = read_image(tmp_path / "pages.tif")
    assert image.data.shape == (4, 10, 11, 1)
    np.testing.assert_array_equal(image.slice(2)[..., 0], pages[2])


def test_tiff_with_several_series_warns_and_reads_the_first(tmp_path, rng):
    pages = rng.integers(0, 255, (2, 10, 11), dtype=np.uint8)
    for page in pages:
        tifffile.imwrite(tmp_path / "series.tif", page, append=True)
    with pytest.warns(UserWarning, match=r"holds 2 image series; reading only the first"):
        image = read_image(tmp_path / "series.tif")
    np.testing.assert_array_equal(image.slice(0)[..., 0], pages[0])


def test_tiff_rgb_has_three_channels(tmp_path, rng):
    rgb = rng.integers(0, 255, (12, 17, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    image = read_image(tmp_path / "rgb.tif")
    assert image.was_2d and image.data.shape == (1, 12, 17, 3)
    np.testing.assert_array_equal(image.slice(0), rgb)


def test_tiff_of_three_planes_read_as_rgb_warns_how_to_save_a_stack(tmp_path, rng):
    planes = rng.integers(0, 255, (3, 12, 17), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "three.tif", planes)  # tifffile stores this as planar RGB
    with pytest.warns(
        UserWarning, match="three.tif says its 3 planes are colour samples.*minisblack"
    ):
        image = read_image(tmp_path / "three.tif")
    assert image.data.shape == (1, 12, 17, 3)
    tifffile.imwrite(tmp_path / "stack.tif", planes, photometric="minisblack")
    assert read_image(tmp_path / "stack.tif").data.shape == (3, 12, 17, 1)  # the fix works


def test_tiff_imagej_zcyx_moves_channels_last(tmp_path, rng):
    array = rng.integers(0, 1000, (4, 2, 12, 17), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", array, imagej=True, metadata={"axes": "ZCYX"})
    image = read_image(tmp_path / "ij.tif")
    assert image.data.shape == (4, 12, 17, 2)
    np.testing.assert_array_equal(image.slice(1), np.moveaxis(array[1], 0, -1))


def test_tiff_float32_kept_and_float64_converted(tmp_path, rng):
    array = rng.random((3, 8, 9))
    tifffile.imwrite(tmp_path / "f32.tif", array.astype(np.float32), photometric="minisblack")
    tifffile.imwrite(tmp_path / "f64.tif", array, photometric="minisblack")
    assert read_image(tmp_path / "f32.tif").dtype == np.float32
    image = read_image(tmp_path / "f64.tif")
    assert image.dtype == np.float32
    np.testing.assert_allclose(image.slice(0)[..., 0], array[0], rtol=1e-6)


def test_tiff_channel_axis_overrides_metadata(tmp_path, rng):
    array = rng.integers(0, 255, (2, 12, 17), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "c.tif", array, photometric="minisblack")
    image = read_image(tmp_path / "c.tif", channel_axis=0)
    assert image.was_2d and image.data.shape == (1, 12, 17, 2)


def test_big_tiff_is_opened_lazily(tmp_path, rng, monkeypatch):
    array = rng.integers(0, 255, (6, 16, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "big.tif", array, photometric="minisblack")
    monkeypatch.setattr(readers, "LAZY_TIFF_BYTES", array.nbytes - 1)
    image = read_image(tmp_path / "big.tif")
    assert isinstance(image.data, da.Array)
    np.testing.assert_array_equal(image.slice(4)[..., 0], array[4])
    monkeypatch.setattr(readers, "LAZY_TIFF_BYTES", array.nbytes)
    assert isinstance(read_image(tmp_path / "big.tif").data, np.ndarray)


# --- PNG / JPEG ---------------------------------------------------------------------------------


def test_png_grey_rgb_and_rgba(tmp_path, rng):
    grey = rng.integers(0, 255, (9, 10), dtype=np.uint8)
    rgba = rng.integers(0, 255, (9, 10, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "grey.png", grey)
    iio.imwrite(tmp_path / "rgb.png", rgba[..., :3])
    iio.imwrite(tmp_path / "rgba.png", rgba)
    assert read_image(tmp_path / "grey.png").data.shape == (1, 9, 10, 1)
    np.testing.assert_array_equal(read_image(tmp_path / "rgb.png").slice(0), rgba[..., :3])
    rgba_image = read_image(tmp_path / "rgba.png")
    assert rgba_image.n_channels == 3
    np.testing.assert_array_equal(rgba_image.slice(0), rgba[..., :3])


def test_png_uint16_and_jpeg(tmp_path, rng):
    iio.imwrite(tmp_path / "deep.png", rng.integers(0, 60000, (9, 10), dtype=np.uint16))
    iio.imwrite(tmp_path / "photo.jpg", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    assert read_image(tmp_path / "deep.png").dtype == np.uint16
    jpeg = read_image(tmp_path / "photo.jpg")
    assert jpeg.was_2d and jpeg.data.shape == (1, 16, 16, 3)


# --- .npy ---------------------------------------------------------------------------------------


def test_npy_is_memory_mapped_and_follows_ndim_rule(tmp_path, rng):
    volume = rng.integers(0, 255, (3, 8, 9), dtype=np.uint8)
    np.save(tmp_path / "v.npy", volume)
    image = read_image(tmp_path / "v.npy")
    assert isinstance(image.data, np.memmap)
    assert image.data.shape == (3, 8, 9, 1)
    np.save(tmp_path / "i.npy", volume[0])
    assert read_image(tmp_path / "i.npy").was_2d
    np.save(tmp_path / "c.npy", rng.random((3, 8, 9, 2)).astype(np.float32))
    assert read_image(tmp_path / "c.npy").data.shape == (3, 8, 9, 2)


def test_npy_channel_axis(tmp_path, rng):
    np.save(tmp_path / "zcyx.npy", rng.random((3, 5, 8, 9)).astype(np.float32))
    assert read_image(tmp_path / "zcyx.npy", channel_axis=1).data.shape == (3, 8, 9, 5)
    np.save(tmp_path / "yxc.npy", rng.random((8, 9, 3)).astype(np.float32))
    assert read_image(tmp_path / "yxc.npy", channel_axis=-1).data.shape == (1, 8, 9, 3)


def test_npy_that_looks_rgb_warns(tmp_path, rng):
    np.save(tmp_path / "rgb.npy", rng.integers(0, 255, (8, 9, 3), dtype=np.uint8))
    with pytest.warns(UserWarning, match="channel_axis=-1"):
        image = read_image(tmp_path / "rgb.npy")
    assert image.shape == (8, 9, 3)


def test_npy_float64_memmap_converted_lazily(tmp_path, rng):
    np.save(tmp_path / "f.npy", rng.random((3, 8, 9)))
    image = read_image(tmp_path / "f.npy")
    assert isinstance(image.data, da.Array) and image.dtype == np.float32
    assert image.slice(1).shape == (8, 9, 1)


def test_npy_other_integer_types_are_kept(tmp_path):
    np.save(tmp_path / "i16.npy", np.full((4, 5), -3, dtype=np.int16))
    image = read_image(tmp_path / "i16.npy")
    assert image.dtype == np.int16 and int(image.slice(0).min()) == -3


# --- zarr / OME-Zarr ----------------------------------------------------------------------------


def test_zarr_array_is_lazy(tmp_path, rng):
    volume = rng.integers(0, 255, (4, 10, 12), dtype=np.uint8)
    zarr.create_array(str(tmp_path / "a.zarr"), data=volume, chunks=(1, 5, 6))
    image = read_image(tmp_path / "a.zarr")
    assert isinstance(image.data, da.Array) and image.data.shape == (4, 10, 12, 1)
    np.testing.assert_array_equal(image.slice(2)[..., 0], volume[2])


def test_zarr_v2_array_and_group_with_one_array(tmp_path, rng):
    volume = rng.integers(0, 255, (4, 10, 12), dtype=np.uint16)
    zarr.create_array(str(tmp_path / "v2.zarr"), data=volume, zarr_format=2)
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", data=volume)
    for name in ("v2.zarr", "g.zarr"):
        image = read_image(tmp_path / name)
        assert isinstance(image.data, da.Array)
        np.testing.assert_array_equal(image.slice(3)[..., 0], volume[3])


def test_zarr_group_prefers_array_0(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("0", data=np.ones((4, 5), np.uint8))
    group.create_array("1", data=np.zeros((2, 3), np.uint8))
    assert read_image(tmp_path / "g.zarr").shape == (1, 4, 5)


def test_zarr_folder_without_suffix_is_recognised(tmp_path):
    zarr.create_array(str(tmp_path / "volume"), data=np.ones((2, 4, 5), np.uint8))
    assert read_image(tmp_path / "volume").shape == (2, 4, 5)


def _write_ome(path, data, axes, fmt=None):
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w", zarr_format=3 if fmt is None else fmt.zarr_format)
    write_image(data, group, axes=axes, scale_factors=(), fmt=fmt)


def test_ome_zarr_czyx_moves_channels_last(tmp_path, rng):
    data = rng.integers(0, 255, (2, 3, 16, 20), dtype=np.uint8)
    _write_ome(tmp_path / "img.zarr", data, "czyx")
    image = read_image(tmp_path / "img.zarr")
    assert isinstance(image.data, da.Array) and image.data.shape == (3, 16, 20, 2)
    np.testing.assert_array_equal(image.slice(1), np.moveaxis(data[:, 1], 0, -1))


def test_ome_zarr_v04_with_single_time_point(tmp_path, rng):
    from ome_zarr.format import FormatV04

    data = rng.integers(0, 255, (1, 1, 3, 16, 20), dtype=np.uint8)
    _write_ome(tmp_path / "img.zarr", data, "tczyx", fmt=FormatV04())
    image = read_image(tmp_path / "img.zarr")
    assert image.data.shape == (3, 16, 20, 1)
    np.testing.assert_array_equal(image.slice(2)[..., 0], data[0, 0, 2])


def test_ome_zarr_2d_cyx(tmp_path, rng):
    _write_ome(tmp_path / "img.zarr", rng.random((3, 16, 20)).astype(np.float32), "cyx")
    image = read_image(tmp_path / "img.zarr")
    assert image.was_2d and image.data.shape == (1, 16, 20, 3)


def test_ome_zarr_with_several_time_points_is_refused(tmp_path):
    _write_ome(tmp_path / "t.zarr", np.zeros((2, 3, 16, 20), np.uint8), "tzyx")
    with pytest.raises(ImageFormatError, match=r"t\.zarr: 2 time points .* save one as its own"):
        read_image(tmp_path / "t.zarr")


# --- read_image errors --------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(ImageFormatError, match=r"nope\.tif does not exist; check the path"):
        read_image(tmp_path / "nope.tif")


def test_unknown_extension_lists_supported(tmp_path):
    (tmp_path / "a.bmp").write_bytes(b"BM")
    with pytest.raises(ImageFormatError, match=r"extension '\.bmp'; supported: \.tif, \.tiff"):
        read_image(tmp_path / "a.bmp")


@pytest.mark.parametrize("name", ["broken.tif", "broken.npy", "broken.png"])
def test_unreadable_file(tmp_path, name):
    (tmp_path / name).write_bytes(b"not an image at all")
    with pytest.raises(ImageFormatError, match=rf"cannot read .*{name} as .*check that the file"):
        read_image(tmp_path / name)


def test_wrong_ndim(tmp_path):
    np.save(tmp_path / "5d.npy", np.zeros((2, 2, 3, 4, 5), np.uint8))
    with pytest.raises(ImageFormatError, match=r"shape \(2, 2, 3, 4, 5\) has 5 axes"):
        read_image(tmp_path / "5d.npy")


def test_4d_without_channel_axis_asks_for_it(tmp_path):
    np.save(tmp_path / "4d.npy", np.zeros((2, 5, 6, 7), np.uint8))
    with pytest.raises(ImageFormatError, match=r"cannot tell the channel axis .* channel_axis="):
        read_image(tmp_path / "4d.npy")


def test_channel_axis_out_of_range(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((5, 6), np.uint8))
    with pytest.raises(ImageFormatError, match=r"channel_axis=3 is out of range for shape"):
        read_image(tmp_path / "a.npy", channel_axis=3)


@pytest.mark.parametrize(
    ("dtype", "hint"), [(bool, "read it with read_labels"), (np.complex64, "convert it")]
)
def test_unsupported_dtypes(tmp_path, dtype, hint):
    np.save(tmp_path / "a.npy", np.zeros((5, 6), dtype))
    with pytest.raises(ImageFormatError, match=rf"unsupported dtype .*; {hint}"):
        read_image(tmp_path / "a.npy")


def test_tiff_with_two_stack_axes_is_refused(tmp_path):
    data = np.zeros((2, 3, 8, 9), np.uint8)
    tifffile.imwrite(tmp_path / "tz.tif", data, imagej=True, metadata={"axes": "TZYX"})
    with pytest.raises(ImageFormatError, match=r"more than one stack or channel axis"):
        read_image(tmp_path / "tz.tif")


def test_zarr_group_with_several_arrays_names_them(tmp_path):
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("a", data=np.zeros((4, 5), np.uint8))
    group.create_array("b", data=np.zeros((4, 5), np.uint8))
    with pytest.raises(ImageFormatError, match=r"holds arrays \['a', 'b'\]; point to one array"):
        read_image(tmp_path / "g.zarr")


# --- read_labels --------------------------------------------------------------------------------


def test_read_labels_npy_tif_png(tmp_path, rng):
    labels = rng.integers(0, 4, (3, 8, 9), dtype=np.uint8)
    np.save(tmp_path / "l.npy", labels)
    tifffile.imwrite(tmp_path / "l.tif", labels, photometric="minisblack")
    iio.imwrite(tmp_path / "l.png", labels[0])
    np.testing.assert_array_equal(read_labels(tmp_path / "l.npy"), labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), labels)
    np.testing.assert_array_equal(read_labels(tmp_path / "l.png"), labels[0])


def test_read_labels_bool_becomes_uint8(tmp_path):
    np.save(tmp_path / "m.npy", np.eye(4, dtype=bool))
    labels = read_labels(tmp_path / "m.npy")
    assert labels.dtype == np.uint8 and labels.sum() == 4


def test_read_labels_plain_zarr_is_lazy(tmp_path):
    zarr.create_array(str(tmp_path / "l.zarr"), data=np.ones((2, 4, 5), np.uint16))
    labels = read_labels(tmp_path / "l.zarr")
    assert isinstance(labels, da.Array) and labels.shape == (2, 4, 5)


def test_read_labels_inside_ome_zarr_image(tmp_path, rng):
    from ome_zarr.writer import write_labels as ome_write_labels

    labels = rng.integers(0, 3, (3, 16, 20), dtype=np.uint8)
    _write_ome(tmp_path / "img.zarr", np.zeros((3, 16, 20), np.uint8), "zyx")
    ome_write_labels(
        labels, str(tmp_path / "img.zarr"), name="cells", axes="zyx", scaler=None, scale_factors=()
    )
    for path in (tmp_path / "img.zarr", tmp_path / "img.zarr" / "labels" / "cells"):
        read = read_labels(path)
        assert isinstance(read, da.Array)
        np.testing.assert_array_equal(read, labels)
    ome_write_labels(
        labels, str(tmp_path / "img.zarr"), name="other", axes="zyx", scaler=None, scale_factors=()
    )
    with pytest.raises(ImageFormatError, match=r"holds label images \['cells', 'other'\]"):
        read_labels(tmp_path / "img.zarr")


def test_read_labels_errors(tmp_path):
    np.save(tmp_path / "f.npy", np.zeros((4, 5), np.float32))
    with pytest.raises(ImageFormatError, match=r"dtype float32 is not an integer type"):
        read_labels(tmp_path / "f.npy")
    iio.imwrite(tmp_path / "rgb.png", np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(ImageFormatError, match=r"PNG of shape \(4, 5, 3\) has colour channels"):
        read_labels(tmp_path / "rgb.png")
    with pytest.raises(ImageFormatError, match=r"labels file .*gone\.npy does not exist"):
        read_labels(tmp_path / "gone.npy")
    (tmp_path / "l.jpg").write_bytes(b"")
    with pytest.raises(ImageFormatError, match=r"unknown extension '\.jpg'; supported: \.tif"):
        read_labels(tmp_path / "l.jpg")


def test_read_labels_drops_leading_singletons_and_refuses_4d(tmp_path):
    np.save(tmp_path / "l5.npy", np.zeros((1, 1, 2, 4, 5), np.uint8))
    assert read_labels(tmp_path / "l5.npy").shape == (2, 4, 5)
    np.save(tmp_path / "l4.npy", np.zeros((2, 2, 4, 5), np.uint8))
    with pytest.raises(
        ImageFormatError, match=r"shape \(2, 2, 4, 5\) is not \(Y, X\) or \(Z, Y, X\)"
    ):
        read_labels(tmp_path / "l4.npy")
