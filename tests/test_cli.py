"""End to end through the `wsseg` command line, and its one-line errors."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from napari_wsseg.cli import main


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample")
    assert main(["sample", "--out", str(out), "--shape", "6,96,96", "--seed", "0"]) == 0
    return out


def test_sample_simulate_train_predict_evaluate(sample_dir, tmp_path, capsys):
    code, out, _ = run(
        [
            "simulate",
            sample_dir / "labels.tif",
            "--out",
            tmp_path / "ann",
            "--slices",
            "2",
            "--slice-range",
            "0-2",
            "--points",
            "4",
            "--tags",
            "--seed",
            "1",
        ],
        capsys,
    )
    assert code == 0, out
    assert (tmp_path / "ann" / "points.csv").read_text().startswith("z,y,x,class")

    code, out, err = run(
        [
            "train",
            sample_dir / "image.tif",
            "--points",
            tmp_path / "ann" / "points.csv",
            "--classes",
            sample_dir / "classes.json",
            "--method",
            "rf",
            "--out",
            tmp_path / "model",
            "--n-estimators",
            "20",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["method"] == "rf"

    code, out, err = run(
        [
            "predict",
            tmp_path / "model",
            sample_dir / "image.tif",
            "--out",
            tmp_path / "pred.tif",
            "--slices",
            "4,5",
        ],
        capsys,
    )
    assert code == 0, err
    pred = tifffile.imread(tmp_path / "pred.tif")
    gt = tifffile.imread(sample_dir / "labels.tif")
    assert pred.shape == gt.shape
    assert not pred[:4].any()  # only the asked slices are computed

    code, out, err = run(
        [
            "evaluate",
            tmp_path / "pred.tif",
            sample_dir / "labels.tif",
            "--slices",
            "4,5",
            "--classes",
            sample_dir / "classes.json",
        ],
        capsys,
    )
    assert code == 0, err
    scores = json.loads(out)
    assert scores["pixel_accuracy"] > 0.6


def test_predict_to_zarr_and_npy(sample_dir, tmp_path, capsys):
    from napari_wsseg.io import read_labels

    ann = tmp_path / "ann"
    assert (
        run(
            ["simulate", sample_dir / "labels.tif", "--out", ann, "--slices", "1", "--points", "3"],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(
            [
                "train",
                sample_dir / "image.tif",
                "--points",
                ann / "points.csv",
                "--method",
                "rf",
                "--out",
                tmp_path / "m",
                "--n-estimators",
                "5",
            ],
            capsys,
        )[0]
        == 0
    )
    for suffix in (".zarr", ".npy"):
        code, _, err = run(
            [
                "predict",
                tmp_path / "m",
                sample_dir / "image.tif",
                "--out",
                tmp_path / f"p{suffix}",
                "--slices",
                "0",
            ],
            capsys,
        )
        assert code == 0, err
        labels = np.asarray(read_labels(tmp_path / f"p{suffix}"))
        assert labels.shape == (6, 96, 96) and labels[0].any() and not labels[1:].any()


def test_2d_image_gives_2d_prediction(tmp_path, capsys):
    assert run(["sample", "--out", tmp_path / "s", "--shape", "80,80"], capsys)[0] == 0
    assert (
        run(
            ["simulate", tmp_path / "s" / "labels.tif", "--out", tmp_path / "a", "--points", "3"],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(
            [
                "train",
                tmp_path / "s" / "image.tif",
                "--points",
                tmp_path / "a" / "points.csv",
                "--method",
                "rf",
                "--out",
                tmp_path / "m",
                "--n-estimators",
                "5",
            ],
            capsys,
        )[0]
        == 0
    )
    assert (
        run(
            ["predict", tmp_path / "m", tmp_path / "s" / "image.tif", "--out", tmp_path / "p.npy"],
            capsys,
        )[0]
        == 0
    )
    assert np.load(tmp_path / "p.npy").shape == (80, 80)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "missing.tif", "--method", "rf", "--out", "m"], "missing.tif"),
        (["predict", "no-model", "x.tif", "--out", "p.npy"], "no config.json"),
        (["evaluate", "a.npy", "b.npy"], "a.npy"),
        (["train", "x.tif", "--method", "rf", "--out", "m", "--classes", ""], ""),
    ],
)
def test_bad_input_is_one_line_without_traceback(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsseg: error:"), err
    assert message in lines[0]


def test_a_choice_option_lists_its_choices(sample_dir, tmp_path, capsys):
    """dsp's --tag-pooling takes one of its choices; another value is refused before training."""
    argv = ["train", sample_dir / "image.tif", "--method", "dsp", "--out", tmp_path / "m"]
    code, _, err = run(argv + ["--tag-pooling", "median"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--tag-pooling: invalid choice: 'median' (choose from 'mean', 'max')" in err
    assert not (tmp_path / "m").exists()


def test_train_with_annotations_of_unknown_class(sample_dir, tmp_path, capsys):
    points = tmp_path / "points.csv"
    points.write_text("z,y,x,class\n0,5,5,0\n0,6,6,7\n")
    code, _, err = run(
        [
            "train",
            sample_dir / "image.tif",
            "--points",
            points,
            "--classes",
            sample_dir / "classes.json",
            "--method",
            "rf",
            "--out",
            tmp_path / "m",
        ],
        capsys,
    )
    assert code == 2 and "class" in err and len(err.strip().splitlines()) == 1


def test_predict_refuses_to_overwrite(sample_dir, tmp_path, capsys):
    ann = tmp_path / "ann"
    run(
        ["simulate", sample_dir / "labels.tif", "--out", ann, "--slices", "1", "--points", "2"],
        capsys,
    )
    run(
        [
            "train",
            sample_dir / "image.tif",
            "--points",
            ann / "points.csv",
            "--method",
            "rf",
            "--out",
            tmp_path / "m",
            "--n-estimators",
            "3",
        ],
        capsys,
    )
    (tmp_path / "p.npy").write_bytes(b"")
    code, _, err = run(
        ["predict", tmp_path / "m", sample_dir / "image.tif", "--out", tmp_path / "p.npy"], capsys
    )
    assert code == 2 and "--overwrite" in err


def test_method_options_come_from_the_config(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--method", "rf", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps the help text
    assert "--n-estimators INT Trees in the forest. (default 100)" in out


def test_every_method_option_has_a_help_sentence():
    from napari_wsseg.methods import available_methods, get_method
    from napari_wsseg.methods.base import option_summaries

    for name in available_methods():
        config_class = get_method(name).config_class
        summaries = option_summaries(config_class.__doc__)
        missing = [f.name for f in dataclasses.fields(config_class) if not summaries.get(f.name)]
        assert not missing, f"{name}: options without a docstring entry: {missing}"


def test_console_script_help_runs():
    exe = os.path.join(os.path.dirname(sys.executable), "wsseg")
    out = subprocess.run([exe, "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for command in ("sample", "import", "simulate", "train", "predict", "evaluate"):
        assert command in out.stdout


def test_import_tiff_stack_to_omezarr(tmp_path, capsys):
    from napari_wsseg.io import read_image

    stack = np.random.default_rng(0).integers(0, 65535, (5, 40, 30), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    code, out, err = run(
        ["import", tmp_path / "stack.tif", "--out", tmp_path / "vol.zarr", "--chunks", "2,16,16"],
        capsys,
    )
    assert code == 0, err
    image = read_image(tmp_path / "vol.zarr")
    assert image.shape == (5, 40, 30)
    np.testing.assert_array_equal(image.slice(3)[..., 0], stack[3])
    code, _, err = run(["import", tmp_path / "stack.tif", "--out", tmp_path / "vol.zarr"], capsys)
    assert code == 2 and "exists" in err


@pytest.mark.parametrize("n_slices", [3, 4])
def test_sample_of_3_or_4_slices_reads_back_as_slices(n_slices, tmp_path, capsys):
    from napari_wsseg.io import read_image, read_labels

    assert run(["sample", "--out", tmp_path, "--shape", f"{n_slices},16,16"], capsys)[0] == 0
    image = read_image(
        tmp_path / "image.tif"
    )  # tifffile alone would store (3|4, Y, X) as planar RGB
    assert (image.shape, image.n_channels) == ((n_slices, 16, 16), 1)
    assert read_labels(tmp_path / "labels.tif").shape == (n_slices, 16, 16)


def test_overwrite_replaces_only_our_own_outputs(sample_dir, tmp_path, capsys):
    from napari_wsseg.methods.base import read_model_config

    assert run(["sample", "--out", tmp_path / "s", "--shape", "8,8"], capsys)[0] == 0
    code, _, err = run(["sample", "--out", tmp_path / "s", "--shape", "8,8", "--seed", "3"], capsys)
    assert code == 2 and "--overwrite" in err
    assert run(["sample", "--out", tmp_path / "s", "--shape", "8,8", "--overwrite"], capsys)[0] == 0

    simulate = ["simulate", sample_dir / "labels.tif", "--out", tmp_path / "ann", "--points", "2"]
    assert run(simulate, capsys)[0] == 0
    code, _, err = run(simulate, capsys)
    assert code == 2 and "points.csv" in err and "--overwrite" in err
    assert run([*simulate, "--overwrite", "--seed", "4"], capsys)[0] == 0

    train = [
        "train",
        sample_dir / "image.tif",
        "--points",
        tmp_path / "ann" / "points.csv",
        "--method",
        "rf",
        "--out",
        tmp_path / "m",
        "--n-estimators",
        "2",
    ]
    assert run(train, capsys)[0] == 0
    code, _, err = run([*train[:-1], "3"], capsys)
    assert code == 2 and "already holds a model" in err
    assert read_model_config(tmp_path / "m")["config"]["n_estimators"] == 2
    assert run([*train[:-1], "3", "--overwrite"], capsys)[0] == 0
    assert read_model_config(tmp_path / "m")["config"]["n_estimators"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left


def test_argument_errors_are_one_short_line(capsys):
    code, out, err = run(
        ["predict", "m", "x.tif", "--out", "p.zarr", "--workers", "9" * 100_000], capsys
    )
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith("wsseg: error: argument --workers")
    assert len(err) < 500


def test_python_warnings_print_as_one_wsseg_line(tmp_path, capsys):
    import warnings

    labels = (np.arange(2 * 16 * 16).reshape(2, 16, 16) % 2).astype(np.uint8)
    with tifffile.TiffWriter(tmp_path / "pred.tif") as tif:  # two series: the reader warns
        tif.write(labels, photometric="minisblack")
        tif.write(labels[0, :8, :8], photometric="minisblack")
    tifffile.imwrite(tmp_path / "gt.tif", labels, photometric="minisblack")
    before = warnings.showwarning
    code, _, err = run(["evaluate", tmp_path / "pred.tif", tmp_path / "gt.tif"], capsys)
    assert code == 0, err
    lines = err.strip().splitlines()
    assert lines == [
        f"wsseg: warning: TIFF {tmp_path / 'pred.tif'} holds 2 image series; reading only the "
        "first, QYX (2, 16, 16); save the stack as one series to read it all"
    ]
    assert warnings.showwarning is before  # the hook is removed when main returns
