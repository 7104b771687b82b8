"""`wsseg train --method mews` and `wsseg predict` on a 2D image and a 3D volume."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_wsseg.cli import main


def _write_points(path, rows, *, with_z: bool) -> None:
    header = "z,y,x,class" if with_z else "y,x,class"
    lines = [",".join(str(v) for v in (row if with_z else row[1:])) for row in rows]
    path.write_text("\n".join([header, *lines]) + "\n")


@pytest.mark.parametrize("volume", [True, False], ids=["3d", "2d"])
def test_train_and_predict_from_the_command_line(
    volume, blocky_phantom, blocky_clicks, tmp_path, capsys
):
    image, _, _ = blocky_phantom
    data, clicks = (
        (image, blocky_clicks) if volume else (image[0], blocky_clicks[blocky_clicks[:, 0] == 0])
    )
    np.save(tmp_path / "image.npy", data)
    _write_points(tmp_path / "points.csv", clicks.tolist(), with_z=volume)
    argv = [
        "train",
        str(tmp_path / "image.npy"),
        "--points",
        str(tmp_path / "points.csv"),
        "--method",
        "mews",
        "--backbone",
        "test_vit",
        "--backbone-weights",
        "random",
        "--max-steps",
        "3",
        "--device",
        "cpu",
        "--out",
        str(tmp_path / "model"),
    ]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["method"] == "mews" and report["steps"] == 3
    assert any("RANDOM weights" in w for w in report["warnings"])  # shown to the CLI user
    out = tmp_path / "p.npy"
    assert (
        main(["predict", str(tmp_path / "model"), str(tmp_path / "image.npy"), "--out", str(out)])
        == 0
    )
    pred = np.load(tmp_path / "p.npy")
    assert pred.shape == data.shape and pred.max() < 4


def test_cli_reports_an_unknown_backbone_in_one_line(
    blocky_phantom, blocky_clicks, tmp_path, capsys
):
    np.save(tmp_path / "image.npy", blocky_phantom[0])
    _write_points(tmp_path / "points.csv", blocky_clicks.tolist(), with_z=True)
    argv = [
        "train",
        str(tmp_path / "image.npy"),
        "--points",
        str(tmp_path / "points.csv"),
        "--method",
        "mews",
        "--backbone",
        "vit_base_patch16_dinov9",
        "--out",
        str(tmp_path / "model"),
    ]
    assert main(argv) != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith(
        "wsseg: error: unknown backbone 'vit_base_patch16_dinov9'"
    )
    assert "did you mean vit_base_patch16_dinov3" in errors[0] and not (tmp_path / "model").exists()
