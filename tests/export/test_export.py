"""bioimage.io export: the package passes bioimageio.core's
model test and reproduces wsseg predict."""

from __future__ import annotations

import dataclasses
import json
import warnings
import zipfile

import numpy as np
import pytest

from napari_wsseg.cli import main
from napari_wsseg.errors import WssegError
from napari_wsseg.eval.simulate import simulate_annotations
from napari_wsseg.export import check_exportable, check_inference, export_bioimageio
from napari_wsseg.io import read_labels
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.sample import make_phantom

TINY = {
    "dsp": dict(max_steps=3, batch_size=2, crop_size=32, depth=2, width=4, embed_dim=8),
    "size": dict(max_steps=3, batch_size=2, crop_size=32, depth=2, width=4),
    "mews": dict(backbone="test_vit", backbone_weights="random", max_steps=3),
    "cpews": dict(backbone="test_vit", max_steps=3, batch_size=2, region_size=32),
    "rewis3d": dict(max_steps=3, depth_2d=2, depth_3d=2, width=4, crop_z=4, crop_yx=16),
    "rewis3d-classifier": dict(
        max_steps=3, depth_2d=2, depth_3d=2, width=4, crop_z=4, crop_yx=16, student_2d="classifier"
    ),
}
#: Methods trained on a small volume (the others on one 2D slice).
VOLUME_METHODS = ("rewis3d",)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny models of every exportable method (the ViT ones on timm's test_vit, random weights)
    trained for three steps, and the image whose first slice they export."""
    folder = tmp_path_factory.mktemp("models")
    image, labels, classes = make_phantom((96, 80), seed=3)  # every class present
    np.save(folder / "image.npy", image)
    annotations = simulate_annotations(labels[None], classes=classes, points=3, sizes=True, seed=0)
    volume, volume_labels, _ = make_phantom((8, 96, 80), seed=3)
    volume_annotations = simulate_annotations(volume_labels, classes=classes, points=3, seed=0)
    models = {}
    for name, options in TINY.items():
        method = get_method(name.split("-")[0])(**options)  # "<method>-<variant>"
        data, weak = (
            (volume, volume_annotations) if method.name in VOLUME_METHODS else (image, annotations)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # mews ignores sizes; random backbone weights
            method.fit(as_image(data), weak, FitOptions(device="cpu"))
        models[name] = method.save(folder / name)
    return folder, models


@pytest.mark.parametrize("method", sorted(TINY))
def test_package_passes_the_bioimageio_model_test_and_matches_wsseg_predict(
    trained, method, tmp_path
):
    from bioimageio.core import (
        create_prediction_pipeline,
        load_model_description,
        predict,
        test_model,
    )

    folder, models = trained
    out = export_bioimageio(
        models[method],
        tmp_path / f"{method}.zip",
        licence="MIT",
        authors=["A. Tester"],
        image=as_image(np.load(folder / "image.npy")),
    )
    summary = test_model(out)
    assert summary.status == "passed", summary.format()

    with zipfile.ZipFile(out) as package:
        names = set(package.namelist())
        test_input = np.load(package.open("test_input.npy"))
        readme = package.read("README.md").decode()
    assert {"rdf.yaml", "weights.pt", "README.md"} <= names
    assert ("weights_torchscript.pt" in names) == (method not in ("mews", "cpews"))
    assert "MIT" in readme and "points" in readme and "mitochondrion" in readme

    np.save(tmp_path / "crop.npy", test_input[0, 0].astype(np.uint8))
    assert (
        main(
            [
                "predict",
                str(models[method]),
                str(tmp_path / "crop.npy"),
                "--out",
                str(tmp_path / "pred.npy"),
            ]
        )
        == 0
    )
    expected = np.asarray(read_labels(tmp_path / "pred.npy"))
    descr = load_model_description(out)
    formats = [f for f in ("pytorch_state_dict", "torchscript") if getattr(descr.weights, f)]
    for weight_format in formats:
        pipeline = create_prediction_pipeline(descr, weight_format=weight_format)
        probabilities = predict(model=pipeline, inputs=test_input).members["probabilities"].data
        probabilities = np.asarray(probabilities)
        assert np.ptp(probabilities) > 0.01  # not a constant output
        labels = probabilities.argmax(axis=1)[0]
        assert labels.shape == expected.shape
        assert np.mean(labels == expected) > 0.999, weight_format


def test_rf_is_refused_with_the_exportable_methods(tmp_path, capsys):
    with pytest.raises(WssegError, match="exportable methods: dsp, size, mews"):
        check_exportable("rf")
    with pytest.raises(WssegError, match="no bioimage.io exporter for this method yet"):
        check_exportable("not-a-method")
    for method in ("dsp", "size", "mews", "rewis3d", "cpews"):
        check_exportable(method)
    folder = tmp_path / "rf_model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"format_version": 1, "method": "rf"}))
    assert main(["export", str(folder), "--out", str(tmp_path / "rf.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsseg: error: rf models cannot be exported") and "\n" not in err
    assert not (tmp_path / "rf.zip").exists()


def test_bad_licence_and_existing_package_are_clear_errors(trained, tmp_path, capsys):
    _, models = trained
    with pytest.raises(WssegError, match="licen"):
        export_bioimageio(models["size"], tmp_path / "m.zip", licence="my-own-licence")
    assert not (tmp_path / "m.zip").exists()
    (tmp_path / "taken.zip").write_bytes(b"user file")
    assert main(["export", str(models["size"]), "--out", str(tmp_path / "taken.zip")]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "taken.zip").read_bytes() == b"user file"
    with pytest.raises(WssegError, match=r"\.zip"):
        export_bioimageio(models["size"], tmp_path / "model.yaml")
    (tmp_path / "folder.zip").mkdir()
    (tmp_path / "folder.zip" / "keep.txt").write_text("user file")
    with pytest.raises(WssegError, match="is a folder"):
        export_bioimageio(models["size"], tmp_path / "folder.zip", overwrite=True)
    assert (tmp_path / "folder.zip" / "keep.txt").read_text() == "user file"


@pytest.mark.parametrize("inference", ["3d", "average"])
def test_rewis3d_with_3d_inference_is_refused_naming_the_fix(trained, inference, tmp_path, capsys):
    _, models = trained
    model = load_model(models["rewis3d"])
    model.config = dataclasses.replace(model.config, inference=inference)
    with pytest.raises(WssegError, match=r"inference=.*retrain with --inference 2d"):
        check_inference(model)
    folder = model.save(tmp_path / f"rewis3d_{inference}")
    assert main(["export", str(folder), "--out", str(tmp_path / "r.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsseg: error: rewis3d models with inference=") and "\n" not in err
    assert not (tmp_path / "r.zip").exists()
