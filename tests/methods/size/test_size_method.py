"""The ``size`` method end to end: training from sizes
(+ points, tags), bad sizes, checkpoints, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.cli import main
from napari_wsseg.errors import AnnotationError, WssegError
from napari_wsseg.eval.metrics import evaluate
from napari_wsseg.eval.simulate import class_fractions, simulate_annotations
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.size.method import SizeConfig, SizeMethod

# A tiny network and 32 px crops on 64 px slices: the crops see a quarter of a slice, so the
# whole-slice mean cache is exercised.
TINY = dict(width=8, depth=2, crop_size=32, batch_size=4, lr=3e-3, tile=64, tile_overlap=16)


@pytest.fixture(autouse=True)
def _one_core():
    """Train on one core: on a shared, busy CI machine two torch threads spin against each other
    (about 10x slower for these tiny networks). ``resolve_device`` uses the affinity's core
    count."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    yield
    os.sched_setaffinity(0, before)


@pytest.fixture(scope="module")
def phantom():
    from napari_wsseg.sample import make_phantom

    return make_phantom((3, 64, 64), seed=0, n_classes=3)


def _fit(phantom, ann, steps=60, **options):
    image, _, _ = phantom
    method = SizeMethod(**(TINY | {"max_steps": steps} | options))
    method.fit(as_image(image), ann, FitOptions(device="cpu", seed=0))
    return method


def test_sizes_and_points_train_clearly_better_than_chance(phantom):
    image, labels, classes = phantom
    ann = simulate_annotations(
        labels, slices=[0, 2], points=2, sizes=True, size_noise=0.1, seed=0, classes=classes
    )
    method = _fit(phantom, ann)
    pred = method.predict_slice(as_image(image).slice(1))
    # random labels drawn with the class frequencies score Dice = frequency for each class
    chance = float(np.mean(class_fractions(labels[1], 3)[1:]))
    score = evaluate(pred, labels[1], n_classes=3)["mean_fg_dice"]
    assert score > max(3 * chance, 0.2), (score, chance)


def test_sizes_alone_pull_the_whole_slice_mean_to_the_targets(phantom):
    image, labels, classes = phantom
    ann = simulate_annotations(labels, slices=[0, 2], points=0, sizes=True, seed=0, classes=classes)
    method = _fit(phantom, ann, calibrate=False)
    for z in (0, 2):
        mean = method.predict_proba_slice(as_image(image).slice(z)).mean(axis=(1, 2))
        assert np.abs(mean - class_fractions(labels[z], 3)).sum() < 0.1, (z, mean)


def test_calibration_makes_the_labels_cover_the_target_sizes(phantom):
    image, labels, classes = phantom
    ann = simulate_annotations(labels, slices=[0, 2], points=1, sizes=True, seed=0, classes=classes)
    method = _fit(phantom, ann, steps=20)
    assert method.class_bias is not None
    pred = np.stack([method.predict_slice(as_image(image).slice(z)) for z in (0, 2)])
    target = (class_fractions(labels[0], 3) + class_fractions(labels[2], 3)) / 2
    np.testing.assert_allclose(class_fractions(pred, 3), target, atol=0.02)


def test_tags_suppress_an_absent_class(phantom):
    image, labels, classes = phantom
    ann = Annotations(classes, tags=[[0, 0], [0, 1]])  # slice 0: classes 0 and 1 only
    method = _fit(phantom, ann, steps=40)
    mean = method.predict_proba_slice(as_image(image).slice(0)).mean(axis=(1, 2))
    assert mean[2] < 0.1 and mean[0] > 0.002 and mean[1] > 0.002, mean  # 1/3 each at the start


def test_checkpoint_round_trip(phantom, tmp_path):
    image, labels, classes = phantom
    ann = simulate_annotations(labels, slices=[0], points=1, sizes=True, seed=0, classes=classes)
    method = _fit(phantom, ann, steps=3, crf_weight=0.25)
    before = method.predict_proba_slice(as_image(image).slice(1))
    folder = method.save(tmp_path / "model")
    assert (folder / "model.safetensors").is_file() and not list(folder.glob("*.pkl"))
    meta = json.loads((folder / "config.json").read_text())
    assert meta["method"] == "size" and meta["config"]["crf_weight"] == 0.25
    assert meta["state"]["fit"]["size_slices"] == [0] and len(meta["state"]["class_bias"]) == 3
    reloaded = load_model(folder)
    assert isinstance(reloaded, SizeMethod) and reloaded.config == method.config
    np.testing.assert_allclose(
        reloaded.predict_proba_slice(as_image(image).slice(1)), before, atol=1e-5
    )


def test_registry_and_config_validation():
    assert get_method("size") is SizeMethod
    with pytest.raises(WssegError, match="multiple of size_cell"):
        SizeConfig(crop_size=100)
    with pytest.raises(WssegError, match="crf_weight=-1"):
        SizeConfig(crf_weight=-1)


@pytest.mark.parametrize(
    "rows, message",
    [
        ([[0, 0, 0.5], [0, 1, 0.2]], "sum to 0.7"),
        ([[0, 0, 1.2], [0, 1, -0.2]], "outside 0..1"),
        ([[0, 0, 0.5], [0, 7, 0.5]], "unknown class"),
    ],
)
def test_fit_rejects_bad_sizes(phantom, rows, message):
    image, _, classes = phantom
    with pytest.raises(AnnotationError, match=message):
        SizeMethod(**TINY).fit(
            as_image(image), Annotations(classes, sizes=rows), FitOptions(device="cpu")
        )


def test_boxes_alone_are_refused(phantom):
    image, _, classes = phantom
    with pytest.raises(WssegError, match="boxes alone"):
        SizeMethod(**TINY).fit(
            as_image(image),
            Annotations(classes, boxes=[[0, 1, 1, 5, 5, 1]]),
            FitOptions(device="cpu"),
        )


# ----------------------------------------------------------------------------------- CLI
def _write_sizes(path, text):
    path.write_text(text)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("volume", [False, True], ids=["2d", "3d"])
@pytest.mark.parametrize("with_points", [False, True], ids=["sizes", "sizes+points"])
def test_cli_trains_from_sizes_and_points_and_predicts(
    phantom, tmp_path, capsys, volume, with_points
):
    image, labels, classes = phantom
    data = image if volume else image[1]
    np.save(tmp_path / "image.npy", data)
    z = "z," if volume else ""
    zval = "1," if volume else ""
    fractions = class_fractions(labels[1], 3)
    sizes = "".join(f"{zval}{k},{fractions[k]:.4f}\n" for k in range(3))
    _write_sizes(tmp_path / "sizes.csv", f"{z}class,fraction\n{sizes}")
    ys, xs = np.nonzero(labels[1] == 2)
    (tmp_path / "points.csv").write_text(f"{z}y,x,class\n{zval}{ys[0]},{xs[0]},2\n")
    points = ["--points", tmp_path / "points.csv"] if with_points else []
    code, out, err = run(
        [
            "train",
            tmp_path / "image.npy",
            "--sizes",
            tmp_path / "sizes.csv",
            *points,
            "--classes",
            ",".join(c.name for c in classes),
            "--method",
            "size",
            "--out",
            tmp_path / "model",
            "--max-steps",
            "3",
            "--width",
            "4",
            "--depth",
            "2",
            "--crop-size",
            "32",
            "--tile",
            "64",
        ],
        capsys,
    )
    assert code == 0, err
    assert json.loads(out.strip().splitlines()[-1])["method"] == "size"
    code, _, err = run(
        ["predict", tmp_path / "model", tmp_path / "image.npy", "--out", tmp_path / "pred.npy"],
        capsys,
    )
    assert code == 0, err
    assert np.load(tmp_path / "pred.npy").shape == data.shape


@pytest.mark.parametrize(
    "sizes, message",
    [
        ("z,class,fraction\n0,0,0.5\n0,1,0.2\n", "sum to 0.7"),
        ("z,class,fraction\n0,0,1.1\n0,1,-0.1\n", "outside 0..1"),
        ("z,class,fraction\n0,0,0.5\n0,mito,0.5\n", "mito"),
        ("z,class,fraction\n0,0,0.5\n0,9,0.5\n", "class 9 is not a class id"),
    ],
)
def test_cli_reports_bad_sizes_in_one_line(phantom, tmp_path, capsys, sizes, message):
    image, _, classes = phantom
    np.save(tmp_path / "image.npy", image)
    _write_sizes(tmp_path / "sizes.csv", sizes)
    code, _, err = run(
        [
            "train",
            tmp_path / "image.npy",
            "--sizes",
            tmp_path / "sizes.csv",
            "--classes",
            ",".join(c.name for c in classes),
            "--method",
            "size",
            "--out",
            tmp_path / "m",
        ],
        capsys,
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "m").exists()


def test_cancelled_training_returns_a_model_that_saves_and_loads(phantom, tmp_path):
    import threading

    image, labels, classes = phantom
    ann = simulate_annotations(labels, slices=[0], points=1, sizes=True, seed=0, classes=classes)
    cancel = threading.Event()
    cancel.set()
    method = SizeMethod(**TINY)
    result = method.fit(as_image(image), ann, FitOptions(device="cpu", cancel=cancel))
    assert result.stopped == "cancelled" and method.class_bias is None
    reloaded = load_model(method.save(tmp_path / "m"))
    assert reloaded.predict_slice(as_image(image).slice(0)).shape == (64, 64)
