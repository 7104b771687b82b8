"""Voxel sizes: the one parser, and metadata read from
OME-Zarr and TIFF into ``Image.voxel_size_zyx``."""

import numpy as np
import pytest
import tifffile
import zarr

from napari_wsseg.errors import WssegError
from napari_wsseg.io import as_image, read_image
from napari_wsseg.io.image import Image
from napari_wsseg.io.readers import read_tiff_lazily
from napari_wsseg.io.voxel_size import (
    anisotropy,
    check_voxel_size,
    is_near_isotropic,
    parse_voxel_size,
    voxel_size_from_metadata,
)


def _write_ome(path, data, scale, units):
    """An NGFF 0.5 image written with zarr directly (ome-zarr-py's writer drops units)."""
    axes = [
        {"name": n, "type": "space", **({"unit": u} if u else {})} for n, u in zip("zyx", units)
    ]
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", data=data)
    dataset = {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(scale)}]}
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": [dataset]}]}


def test_ome_zarr_scale_with_units_becomes_micrometres(tmp_path):
    _write_ome(
        tmp_path / "img.zarr", np.zeros((3, 8, 8), np.uint8), (50.0, 4.0, 5.0), ("nanometer",) * 3
    )
    image = read_image(tmp_path / "img.zarr")
    assert image.voxel_size_zyx == pytest.approx((0.05, 0.004, 0.005))


def test_ome_zarr_scale_without_unit_is_unknown(tmp_path):
    _write_ome(tmp_path / "img.zarr", np.zeros((3, 8, 8), np.uint8), (50.0, 4.0, 4.0), (None,) * 3)
    assert read_image(tmp_path / "img.zarr").voxel_size_zyx is None


def test_imagej_tiff_spacing_and_resolution(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 0.004, 1 / 0.005),
        metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"},
    )
    assert read_image(path).voxel_size_zyx == pytest.approx((0.03, 0.005, 0.004))
    assert read_tiff_lazily(path).voxel_size_zyx == pytest.approx((0.03, 0.005, 0.004))


def test_imagej_tiff_in_nanometres(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(1 / 4.0, 1 / 4.0),
        metadata={"spacing": 40.0, "unit": "nm", "axes": "ZYX"},
    )
    assert read_image(path).voxel_size_zyx == pytest.approx((0.04, 0.004, 0.004))


def test_ome_tiff_physical_sizes_with_units(tmp_path):
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        metadata={
            "axes": "ZYX",
            "PhysicalSizeZ": 60.0,
            "PhysicalSizeZUnit": "nm",
            "PhysicalSizeY": 0.006,
            "PhysicalSizeX": 0.007,
        },
    )  # Y, X in the default unit, µm
    assert read_image(path).voxel_size_zyx == pytest.approx((0.06, 0.006, 0.007))


def test_resolution_tags_in_centimetres_give_yx_only(tmp_path):
    path = tmp_path / "slice.tif"
    tifffile.imwrite(
        path,
        np.zeros((8, 8), np.uint8),
        resolution=(1e4 / 0.5, 1e4 / 0.25),
        resolutionunit="CENTIMETER",
    )
    assert voxel_size_from_metadata(path, 2) == pytest.approx((0.25, 0.5))
    assert voxel_size_from_metadata(path, 3) is None  # no z spacing in the file
    assert read_image(path).voxel_size_zyx is None  # 2D images carry none


def test_files_without_metadata_have_no_voxel_size(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((3, 8, 8), np.uint8))
    np.save(tmp_path / "plain.npy", np.zeros((3, 8, 8), np.uint8))
    assert read_image(tmp_path / "plain.tif").voxel_size_zyx is None
    assert read_image(tmp_path / "plain.npy").voxel_size_zyx is None
    assert voxel_size_from_metadata(tmp_path / "missing.tif") is None


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "0,1,1", "-1,1,1", "nan,1,1", "inf,1,1", ""])
def test_parse_refuses_bad_text_in_one_line(text):
    with pytest.raises(WssegError) as info:
        parse_voxel_size(text)
    message = str(info.value)
    assert "--voxel-size" in message and "Z,Y,X" in message and "\n" not in message


def test_parse_accepts_three_numbers_or_one_isotropic():
    assert parse_voxel_size("0.05, 0.004,0.004") == (0.05, 0.004, 0.004)
    assert parse_voxel_size("0.01") == (0.01, 0.01, 0.01)
    assert parse_voxel_size("0.004,0.005", 2) == (0.004, 0.005)


def test_anisotropy_and_near_isotropy():
    assert anisotropy((0.05, 0.005, 0.005)) == pytest.approx(10.0)
    assert is_near_isotropic((0.01, 0.008, 0.008))
    assert not is_near_isotropic((0.05, 0.005, 0.005))
    assert not is_near_isotropic(None)
    with pytest.raises(WssegError, match="three positive numbers"):
        check_voxel_size((1.0, 1.0))


def test_image_checks_its_voxel_size():
    data = np.zeros((2, 4, 4, 1), np.uint8)
    assert Image(data, voxel_size_zyx=[1, 2, 3]).voxel_size_zyx == (1.0, 2.0, 3.0)
    with pytest.raises(WssegError, match="voxel size of image <array>"):
        Image(data, voxel_size_zyx=(1.0, 0.0, 1.0))
    assert as_image(np.zeros((2, 4, 4))).voxel_size_zyx is None


# ------------------------------------------------------- the project and the command line
def test_project_stores_the_voxel_size_from_metadata_or_given(tmp_path):
    from napari_wsseg.annotations.model import default_classes
    from napari_wsseg.project import Project

    path = tmp_path / "stack.tif"
    tifffile.imwrite(
        path,
        np.zeros((3, 8, 8), np.uint8),
        imagej=True,
        resolution=(250.0, 250.0),
        metadata={"spacing": 0.03, "unit": "um", "axes": "ZYX"},
    )
    project = Project.create(tmp_path / "p1", classes=default_classes(2), image=path)
    assert project.voxel_size_zyx == pytest.approx((0.03, 0.004, 0.004))
    project.set_voxel_size((0.05, 0.005, 0.005))
    reopened = Project.open(tmp_path / "p1")
    assert reopened.voxel_size_zyx == (0.05, 0.005, 0.005)
    assert reopened.load_image().voxel_size_zyx == (0.05, 0.005, 0.005)  # the project's wins
    with pytest.raises(WssegError, match="project voxel size"):
        reopened.set_voxel_size((0.05, -1, 0.005))
    assert Project.open(tmp_path / "p1").voxel_size_zyx == (0.05, 0.005, 0.005)  # unchanged
    plain = Project.create(tmp_path / "p2", classes=default_classes(2), image_shape=(3, 8, 8))
    assert plain.voxel_size_zyx is None


def test_cli_train_and_predict_take_a_voxel_size(tmp_path, capsys, monkeypatch):
    from napari_wsseg import cli
    from napari_wsseg.cli import main

    volume = np.random.default_rng(0).random((3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "image.npy", volume)
    (tmp_path / "points.csv").write_text("z,y,x,class\n1,2,2,0\n1,9,9,1\n")
    seen = []
    real = cli._with_voxel_size
    monkeypatch.setattr(
        cli,
        "_with_voxel_size",
        lambda image, size: seen.append(real(image, size).voxel_size_zyx) or image,
    )
    train = [
        "train",
        str(tmp_path / "image.npy"),
        "--points",
        str(tmp_path / "points.csv"),
        "--method",
        "rf",
        "--out",
        str(tmp_path / "model"),
        "--n-estimators",
        "3",
    ]
    assert main([*train, "--voxel-size", "0.05,0.004,0.004"]) == 0
    assert (
        main(
            [
                "predict",
                str(tmp_path / "model"),
                str(tmp_path / "image.npy"),
                "--out",
                str(tmp_path / "p.zarr"),
                "--voxel-size",
                "0.05,0.004,0.004",
            ]
        )
        == 0
    )
    assert seen == [(0.05, 0.004, 0.004)] * 2
    capsys.readouterr()
    assert main([*train[:-4], "--out", str(tmp_path / "m2"), "--voxel-size", "0,1,1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("wsseg: error:") and "Z,Y,X" in err[0]
    assert not (tmp_path / "m2").exists()


def test_cli_refuses_a_voxel_size_for_a_2d_image(tmp_path, capsys):
    from napari_wsseg.cli import main

    np.save(tmp_path / "image.npy", np.random.default_rng(0).random((16, 16)).astype(np.float32))
    (tmp_path / "points.csv").write_text("z,y,x,class\n0,2,2,0\n0,9,9,1\n")
    argv = [
        "train",
        str(tmp_path / "image.npy"),
        "--points",
        str(tmp_path / "points.csv"),
        "--method",
        "rf",
        "--out",
        str(tmp_path / "model"),
        "--voxel-size",
        "1,1,1",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is 2D" in err[0] and not (tmp_path / "model").exists()
