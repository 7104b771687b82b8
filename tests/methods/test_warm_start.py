"""Warm start: fit(..., init=previous) continues from the previous model, or starts cold with a
warning when the classes changed; ``wsseg train --init`` does the same from the command line."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import Annotations, ClassInfo
from napari_wsseg.cli import main
from napari_wsseg.errors import WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.warm import WarmStartWarning

FAST = {
    "dsp": {"max_steps": 4, "batch_size": 2, "crop_size": 32, "prior_correction": False},
    "size": {"max_steps": 4, "batch_size": 2, "crop_size": 32},
    "mews": {"backbone": "test_vit", "backbone_weights": "random", "max_steps": 3},
    "rf": {"n_estimators": 5},
    "rewis3d": {
        "max_steps": 4,
        "depth_2d": 2,
        "depth_3d": 2,
        "width": 4,
        "crop_z": 4,
        "crop_yx": 32,
        "prior_correction": False,
    },
}


def _clicks(labels: np.ndarray, n_classes: int, per_class: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = []
    for z in range(labels.shape[0]):
        for cls in range(n_classes):
            ys, xs = np.nonzero(labels[z] == cls)
            pick = rng.choice(len(ys), min(per_class, len(ys)), replace=False)
            rows += [[z, ys[i], xs[i], cls] for i in pick]
    return np.array(rows, dtype=np.int64)


@pytest.fixture
def small(phantom_3d):
    image, labels, classes = phantom_3d
    return as_image(image[:3, :64, :64]), labels[:3, :64, :64], classes


def _weights(method) -> dict[str, torch.Tensor]:
    """Every weight and buffer of the method's network(s), by name."""
    nets = (
        {"2d.": method.net_2d, "3d.": method.net_3d}
        if hasattr(method, "net_3d")
        else {"": method.net}
    )
    return {
        f"{prefix}{k}": v.detach().clone()
        for prefix, net in nets.items()
        for k, v in net.state_dict().items()
    }


def _fit(name, image, annotations, *, init=None, seed=0, warm_steps=None):
    method = get_method(name)(**FAST[name])
    method.fit(
        image, annotations, FitOptions(device="cpu", seed=seed, warm_steps=warm_steps), init=init
    )
    return method


@pytest.mark.parametrize("name", ["dsp", "size", "rewis3d"])
def test_warm_start_resumes_from_the_saved_model_and_changes_it(name, small, tmp_path):
    image, labels, classes = small
    first = _fit(name, image, Annotations(classes, points=_clicks(labels, len(classes), 2, 0)))
    init = load_model(first.save(tmp_path / "first"))
    more = Annotations(classes, points=_clicks(labels, len(classes), 4, 1))

    with warnings.catch_warnings():
        warnings.simplefilter("error", WarmStartWarning)
        warm = _fit(name, image, more, init=init, warm_steps=3)
    cold = _fit(name, image, more)

    start, after, scratch = _weights(init), _weights(warm), _weights(cold)
    assert any(not torch.equal(start[k], after[k]) for k in start)  # it trained
    assert any(not torch.equal(scratch[k], after[k]) for k in start)  # not from scratch
    assert warm.fit_info["steps"] == 3 and cold.fit_info["steps"] == FAST[name]["max_steps"]
    assert warm.config.max_steps == FAST[name]["max_steps"]  # the model keeps its own options
    assert (
        warm.training_summary["warm_start"] is True and cold.training_summary["warm_start"] is False
    )
    assert warm.normalization == init.normalization


def test_warm_start_begins_at_the_previous_weights(small):
    """With a negligible learning rate a warm run keeps the previous network's parameters
    (batch-norm statistics still follow the new batches, so only parameters are compared)."""
    image, labels, classes = small
    ann = Annotations(classes, points=_clicks(labels, len(classes), 2, 0))
    first = _fit("dsp", image, ann)
    still = get_method("dsp")(**(FAST["dsp"] | {"lr": 1e-12}))
    still.fit(image, ann, FitOptions(device="cpu", seed=3, warm_steps=2), init=first)
    kept = dict(still.net.named_parameters())
    for key, value in first.net.named_parameters():
        torch.testing.assert_close(kept[key], value, atol=1e-6, rtol=0)


@pytest.mark.parametrize("change", ["added", "removed", "renamed"])
def test_a_changed_class_list_forces_a_cold_start_with_a_warning(change, small):
    image, labels, classes = small
    first = _fit("dsp", image, Annotations(classes, points=_clicks(labels, len(classes), 2, 0)))
    points = _clicks(labels, len(classes), 2, 1)
    if change == "added":
        new_classes = [*classes, ClassInfo("extra", "#ffffff")]
    elif change == "removed":
        new_classes, points = classes[:-1], points[points[:, 3] < len(classes) - 1]
    else:
        new_classes = [ClassInfo("other", classes[0].color), *classes[1:]]
    with pytest.warns(WarmStartWarning, match=f"from scratch.*classes changed.*{change}"):
        again = _fit("dsp", image, Annotations(new_classes, points=points), init=first)
    assert again.training_summary["warm_start"] is False
    assert again.fit_info["steps"] == FAST["dsp"]["max_steps"]


def test_changed_architecture_forces_a_cold_start(small):
    image, labels, classes = small
    ann = Annotations(classes, points=_clicks(labels, len(classes), 2, 0))
    first = _fit("dsp", image, ann)
    wider = get_method("dsp")(**(FAST["dsp"] | {"width": 8}))
    with pytest.warns(WarmStartWarning, match="option.*width"):
        wider.fit(image, ann, FitOptions(device="cpu"), init=first)
    assert wider.training_summary["warm_start"] is False


def test_warm_steps_must_be_a_step_count():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(WssegError, match="warm_steps"):
            FitOptions(warm_steps=bad)


def test_a_focus_steers_a_warm_dsp_run_only(small):
    image, labels, classes = small
    ann = Annotations(classes, points=_clicks(labels, len(classes), 2, 0))
    first = _fit("dsp", image, ann)
    focus = np.array([[2, 60, 3]])

    def trained(init, focus):
        method = get_method("dsp")(**FAST["dsp"])
        method.fit(image, ann, FitOptions(device="cpu", seed=1, focus=focus), init=init)
        return _weights(method)

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    assert not same(trained(first, focus), trained(first, None))  # crops moved to the focus
    assert same(trained(None, focus), trained(None, None))  # a cold run has nothing to focus on


def test_warm_lr_factor_changes_the_warm_run_not_the_saved_options(small):
    image, labels, classes = small
    ann = Annotations(classes, points=_clicks(labels, len(classes), 2, 0))
    first = _fit("dsp", image, ann)
    weights = []
    for factor in (None, 0.5):
        method = get_method("dsp")(**FAST["dsp"])
        method.fit(image, ann, FitOptions(device="cpu", warm_lr_factor=factor), init=first)
        weights.append(_weights(method))
        assert method.config.lr == get_method("dsp")(**FAST["dsp"]).config.lr  # its own option
    assert not all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    for bad in (0, 1.5, True, "0.1"):
        with pytest.raises(WssegError, match="warm_lr_factor"):
            FitOptions(warm_lr_factor=bad)


@pytest.mark.parametrize("name", ["dsp", "size", "rewis3d"])
def test_warm_keep_blends_the_trained_weights_with_the_previous_ones(name, small):
    image, labels, classes = small
    ann = Annotations(classes, points=_clicks(labels, len(classes), 2, 0))
    first = _fit(name, image, ann)
    previous = _weights(first)

    def warm(keep):
        method = get_method(name)(**FAST[name])
        method.fit(image, ann, FitOptions(device="cpu", seed=1, warm_keep=keep), init=first)
        return method

    trained, kept = _weights(warm(0.0)), warm(0.25)
    assert kept.fit_info["warm_keep"] == 0.25
    blended = _weights(kept)
    for key, value in blended.items():
        if value.is_floating_point():
            expected = 0.25 * previous[key] + 0.75 * trained[key]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    assert _weights(first).keys() == previous.keys()  # the previous model is left as it was
    assert all(torch.equal(_weights(first)[k], previous[k]) for k in previous)
    cold = get_method(name)(**FAST[name])
    cold.fit(image, ann, FitOptions(device="cpu", warm_keep=0.5))
    assert "warm_keep" not in cold.fit_info  # nothing to keep in a cold run
    for bad in (1, -0.1, True, "0.5"):
        with pytest.raises(WssegError, match="warm_keep"):
            FitOptions(warm_keep=bad)


def test_focus_must_be_zyx_rows():
    assert FitOptions(focus=[[1, 2, 3]]).focus.dtype == np.int64
    for bad in ([[1, 2]], [[1.5, 2, 3]], [1, 2, 3]):
        with pytest.raises(WssegError, match="focus"):
            FitOptions(focus=bad)


def test_init_of_another_method_is_refused(small):
    image, labels, classes = small
    ann = Annotations(classes, points=_clicks(labels, len(classes), 2, 0))
    forest = _fit("rf", image, ann)
    with pytest.raises(WssegError, match="'rf' model and cannot warm-start 'dsp'"):
        _fit("dsp", image, ann, init=forest)
    with pytest.raises(WssegError, match="init must be a trained"):
        _fit("rf", image, ann, init="model/")


def test_rf_warm_start_reuses_the_features_of_seen_slices(small):
    image, labels, classes = small
    first = _fit("rf", image, Annotations(classes, points=_clicks(labels[:2], len(classes), 2, 0)))
    assert first.feature_memo.stats == {"hits": 0, "computed": 2}
    warm = _fit(
        "rf", image, Annotations(classes, points=_clicks(labels, len(classes), 3, 1)), init=first
    )
    assert warm.feature_memo.stats == {"hits": 2, "computed": 3}  # only slice 2 was new
    cold = _fit("rf", image, Annotations(classes, points=_clicks(labels, len(classes), 3, 1)))
    np.testing.assert_allclose(
        warm.predict_proba_slice(image.slice(2)),
        cold.predict_proba_slice(image.slice(2)),
        atol=1e-6,
    )


def test_mews_warm_start_continues_the_heads_and_reuses_features(small):
    image, labels, classes = small
    first = _fit("mews", image, Annotations(classes, points=_clicks(labels, len(classes), 2, 0)))
    computed = first.feature_cache.stats["computed"]
    more = Annotations(classes, points=_clicks(labels, len(classes), 3, 1))
    warm = _fit("mews", image, more, init=first, warm_steps=2)
    cold = _fit("mews", image, more)
    assert (
        warm.feature_cache is first.feature_cache
        and warm.feature_cache.stats["computed"] == computed
    )
    heads = {k: v.clone() for k, v in warm._heads.state_dict().items()}
    assert any(not torch.equal(first._heads.state_dict()[k], v) for k, v in heads.items())
    assert any(not torch.equal(cold._heads.state_dict()[k], v) for k, v in heads.items())


def _write_inputs(tmp_path, small):
    from napari_wsseg.annotations.csv import write_classes_json, write_points_csv

    image, labels, classes = small
    np.save(tmp_path / "image.npy", np.asarray(image.data)[..., 0])
    write_points_csv(tmp_path / "points.csv", _clicks(labels, len(classes), 2, 0))
    write_classes_json(tmp_path / "classes.json", classes)


def test_cli_train_init_warm_starts_and_refuses_another_method(small, tmp_path, capsys):
    _write_inputs(tmp_path, small)
    base = [
        str(tmp_path / "image.npy"),
        "--points",
        str(tmp_path / "points.csv"),
        "--classes",
        str(tmp_path / "classes.json"),
        "--device",
        "cpu",
    ]
    dsp_options = ["--max-steps", "3", "--batch-size", "2", "--crop-size", "32"]
    assert (
        main(["train", *base, "--method", "dsp", *dsp_options, "--out", str(tmp_path / "m1")]) == 0
    )
    capsys.readouterr()
    code = main(
        [
            "train",
            *base,
            "--method",
            "dsp",
            *dsp_options,
            "--init",
            str(tmp_path / "m1"),
            "--warm-steps",
            "2",
            "--out",
            str(tmp_path / "m2"),
        ]
    )
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["warm_start"] is True and report["steps"] == 2
    first, second = load_model(tmp_path / "m1"), load_model(tmp_path / "m2")
    assert any(
        not torch.equal(first.net.state_dict()[k], v) for k, v in second.net.state_dict().items()
    )

    renamed = [*base[:3], "--classes", ",".join("abcdefgh"[: len(small[2])]), "--device", "cpu"]
    code = main(
        [
            "train",
            *renamed,
            "--method",
            "dsp",
            *dsp_options,
            "--init",
            str(tmp_path / "m1"),
            "--out",
            str(tmp_path / "m4"),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0 and json.loads(captured.out)["warm_start"] is False
    notes = [line for line in captured.err.splitlines() if line.startswith("wsseg: warning:")]
    assert len(notes) == 1 and "training from scratch, not warm: the classes changed" in notes[0]

    code = main(
        [
            "train",
            *base,
            "--method",
            "rf",
            "--init",
            str(tmp_path / "m1"),
            "--out",
            str(tmp_path / "m3"),
        ]
    )
    err = capsys.readouterr().err
    assert (
        code == 2
        and err.startswith("wsseg: error:")
        and "'dsp' model" in err
        and len(err.splitlines()) == 1
    )
    assert not (tmp_path / "m3").exists()
