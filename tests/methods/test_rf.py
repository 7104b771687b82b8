"""The rf baseline: learns from points and masks, beats chance, refuses unsafe model files."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.errors import ModelError, WssegError
from napari_wsseg.eval.metrics import evaluate
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.rf import RandomForestMethod
from napari_wsseg.predict.slices import predict_image


def test_rf_from_full_masks_segments_held_out_slice_well(phantom_3d):
    image, labels, classes = phantom_3d
    masks = np.zeros_like(labels)
    masks[[0, 3]] = labels[[0, 3]] + 1  # two densely labelled slices
    rf = RandomForestMethod(n_estimators=30)
    rf.fit(as_image(image), Annotations(classes=classes, masks=masks), FitOptions(seed=0))
    pred = rf.predict_slice(image[7][..., None])
    scores = evaluate(pred, labels[7], n_classes=len(classes))
    majority = np.bincount(labels[7].ravel()).max() / labels[7].size
    assert scores["pixel_accuracy"] > majority + 0.05
    assert scores["dice"][1] > 0.6  # thin dark membranes, not separable by intensity alone


def test_rf_clicked_pixels_carry_their_class(phantom_2d):
    image, labels, classes = phantom_2d
    rng = np.random.default_rng(0)
    rows = []
    for cls in range(len(classes)):
        ys, xs = np.nonzero(labels == cls)
        pick = rng.choice(len(ys), 5, replace=False)
        rows += [[0, ys[i], xs[i], cls] for i in pick]
    points = np.array(rows)
    rf = RandomForestMethod(n_estimators=20)
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=0))
    pred = predict_image(rf, as_image(image))[0]
    assert (pred[points[:, 1], points[:, 2]] == points[:, 3]).mean() >= 0.9


def test_rf_needs_pixel_labels(phantom_2d):
    image, _, classes = phantom_2d
    ann = Annotations(classes=classes, tags=[[0, 0], [0, 1]])
    with pytest.raises(WssegError, match="points or a mask"):
        RandomForestMethod().fit(as_image(image), ann)


def test_rf_is_repeatable_with_a_seed(phantom_2d):
    image, labels, classes = phantom_2d
    points = np.array(
        [
            [0, 10, 10, int(labels[10, 10])],
            [0, 60, 70, int(labels[60, 70])],
            [0, 100, 30, int(labels[100, 30])],
        ]
    )
    preds = []
    for _ in range(2):
        rf = RandomForestMethod(n_estimators=5)
        rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=3))
        preds.append(rf.predict_proba_slice(image[..., None]))
    np.testing.assert_array_equal(preds[0], preds[1])


def test_rf_refuses_a_corrupted_tree(phantom_2d, tmp_path):
    image, labels, classes = phantom_2d
    points = np.array([[0, 10, 10, int(labels[10, 10])], [0, 60, 70, int(labels[60, 70])]])
    rf = RandomForestMethod(n_estimators=2)
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=0))
    rf.forest.estimators_[0].tree_.children_left[0] = (
        10_000  # out of range: would read out of bounds
    )
    folder = rf.save(tmp_path / "m")
    with pytest.raises(ModelError, match="corrupt tree"):
        load_model(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_rf_model_is_plain_arrays_and_reloads_the_same_forest(phantom_2d, tmp_path):
    from safetensors.numpy import load_file

    image, labels, classes = phantom_2d
    points = np.array(
        [
            [0, 10, 10, int(labels[10, 10])],
            [0, 60, 70, int(labels[60, 70])],
            [0, 100, 30, int(labels[100, 30])],
        ]
    )
    rf = RandomForestMethod(n_estimators=4)
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=1))
    folder = rf.save(tmp_path / "m")
    tensors = load_file(str(folder / "model.safetensors"))
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in tensors.values())
    reloaded = load_model(folder)
    for before, after in zip(rf.forest.estimators_, reloaded.forest.estimators_):
        np.testing.assert_array_equal(before.tree_.threshold, after.tree_.threshold)
        np.testing.assert_array_equal(before.tree_.value, after.tree_.value)
    features = rf.features(image[..., None]).reshape(-1, rf.forest.n_features_in_)
    np.testing.assert_array_equal(
        rf.forest.predict_proba(features), reloaded.forest.predict_proba(features)
    )


def test_rf_folder_of_an_older_release_asks_for_retraining(phantom_2d, tmp_path):
    image, labels, classes = phantom_2d
    points = np.array([[0, 10, 10, int(labels[10, 10])], [0, 60, 70, int(labels[60, 70])]])
    rf = RandomForestMethod(n_estimators=2)
    rf.fit(as_image(image), Annotations(classes=classes, points=points))
    folder = rf.save(tmp_path / "m")
    (folder / "model.safetensors").rename(folder / "model.skops")
    with pytest.raises(ModelError, match="older napari-wsseg.*retrain"):
        load_model(folder)
    (folder / "model.skops").write_bytes(b"not a safetensors file")
    (folder / "model.skops").rename(folder / "model.safetensors")
    with pytest.raises(ModelError, match="not a valid safetensors file"):
        load_model(folder)


def test_rf_channel_mismatch_is_refused(phantom_2d, tmp_path):
    image, labels, classes = phantom_2d
    points = np.array([[0, 10, 10, int(labels[10, 10])], [0, 60, 70, int(labels[60, 70])]])
    rf = RandomForestMethod(n_estimators=2)
    rf.fit(as_image(image), Annotations(classes=classes, points=points))
    rgb = as_image(np.stack([image] * 3, axis=-1), channel_axis=-1)
    with pytest.raises(ModelError, match="3 channel"):
        predict_image(rf, rgb)


def test_rf_says_once_per_fit_that_it_ignores_region_tags(phantom_2d):
    image, labels, classes = phantom_2d
    points = [[0, 5, 5, int(labels[5, 5])], [0, 40, 40, int(labels[40, 40])]]
    region_tags = [[0, 0, 0, 0, 15, 15], [0, 1, 0, 0, 15, 15], [0, 0, 16, 16, 31, 31]]
    ann = Annotations(classes=classes, points=points, region_tags=region_tags)
    rf = RandomForestMethod(n_estimators=5)
    for _ in range(2):  # a second fit starts a new summary: still one warning
        with pytest.warns(UserWarning, match="rf ignores the 3 region tag row") as record:
            rf.fit(as_image(image), ann, FitOptions(seed=0))
        assert sum("region tag" in str(w.message) for w in record) == 1
        notes = [w for w in rf.training_summary["warnings"] if "region tag" in w]
        assert len(notes) == 1 and "use dsp or cpews" in notes[0]
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=0))
    assert not any("region tag" in w for w in rf.training_summary["warnings"])


def test_chunked_forest_prediction_equals_scikit_learns(phantom_2d, monkeypatch):
    from napari_wsseg.methods import rf as rf_module

    image, labels, classes = phantom_2d
    rows = [[0, *np.argwhere(labels == k)[i], k] for k in range(len(classes)) for i in (0, 9)]
    model = RandomForestMethod(n_estimators=12)
    model.fit(as_image(image), Annotations(classes=classes, points=np.array(rows)), FitOptions())
    features = model.features(image[..., None]).reshape(-1, model.forest.n_features_in_)
    monkeypatch.setattr(rf_module, "PREDICT_CHUNK", 1000)  # several chunks, a ragged last one
    np.testing.assert_allclose(
        rf_module.forest_proba(model.forest, features),
        model.forest.predict_proba(features),
        atol=1e-12,
    )


def test_a_draft_predicts_with_the_first_trees_and_ends_with_the_with_block(phantom_2d):
    from napari_wsseg.methods.rf import DRAFT_TREES

    image, labels, classes = phantom_2d
    rows = [[0, *np.argwhere(labels == k)[i], k] for k in range(len(classes)) for i in (0, 9)]
    model = RandomForestMethod(n_estimators=2 * DRAFT_TREES, prior="training")  # the trees' votes
    model.fit(as_image(image), Annotations(classes=classes, points=np.array(rows)), FitOptions())
    features = model.features(image[..., None]).reshape(-1, model.forest.n_features_in_)
    first = np.mean([t.predict_proba(features) for t in model.forest.estimators_[:DRAFT_TREES]], 0)
    full = model.predict_proba_slice(image[..., None])
    with model.draft() as cheaper:
        draft = model.predict_proba_slice(image[..., None])
    assert cheaper
    np.testing.assert_allclose(draft.reshape(len(classes), -1).T, first, atol=1e-6)
    assert not np.allclose(draft, full)  # the subforest differs from the forest
    np.testing.assert_array_equal(model.predict_proba_slice(image[..., None]), full)


def test_a_small_forest_has_no_draft(phantom_2d):
    from napari_wsseg.methods.rf import DRAFT_TREES

    image, labels, classes = phantom_2d
    rows = [[0, *np.argwhere(labels == k)[0], k] for k in range(len(classes))]
    model = RandomForestMethod(n_estimators=2 * DRAFT_TREES - 1)
    model.fit(as_image(image), Annotations(classes=classes, points=np.array(rows)), FitOptions())
    with model.draft() as cheaper:
        assert not cheaper
        assert model._draft_trees is None


def _lopsided_clicks(labels, per_class: list[int], seed: int = 0) -> np.ndarray:
    """Random clicks: ``per_class[c]`` of class c on a 2D label image, as (z, y, x, class) rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls, count in enumerate(per_class):
        ys, xs = np.nonzero(labels == cls)
        pick = rng.choice(len(ys), count, replace=False)
        rows += [[0, ys[i], xs[i], cls] for i in pick]
    return np.array(rows)


def _fit_rf(image, classes, points, prior: str) -> RandomForestMethod:
    rf = RandomForestMethod(n_estimators=20, prior=prior)
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=0))
    return rf


def test_rf_prior_reweights_the_same_forest(phantom_2d):
    image, labels, classes = phantom_2d
    # Class 0 clicked 8 times as often as the others: the training prior leans to it.
    points = _lopsided_clicks(labels, [40] + [5] * (len(classes) - 1))
    models = {p: _fit_rf(image, classes, points, p) for p in ("training", "balanced", "image")}
    proba = {p: m.predict_proba_slice(image[..., None]) for p, m in models.items()}
    assert models["training"].log_prior_shift is None
    np.testing.assert_array_equal(
        models["training"].forest.estimators_[0].tree_.threshold,
        models["balanced"].forest.estimators_[0].tree_.threshold,
    )
    # Bayes' rule for the new prior, pixel by pixel, from the training prior's probabilities.
    weights = np.exp(models["balanced"].log_prior_shift)
    expected = proba["training"] * weights[:, None, None]
    expected /= expected.sum(axis=0, keepdims=True)
    np.testing.assert_allclose(proba["balanced"], expected, atol=1e-5)
    assert (proba["balanced"].argmax(0) == 0).sum() < (proba["training"].argmax(0) == 0).sum()
    info = models["image"].prior_info
    assert set(info) == {"train_prior", "image_prior"}
    assert info["train_prior"][0] == pytest.approx(40 / (40 + 5 * (len(classes) - 1)), abs=1e-4)
    assert sum(info["image_prior"]) == pytest.approx(1.0, abs=1e-3)


def test_rf_prior_survives_save_and_load(phantom_2d, tmp_path):
    image, labels, classes = phantom_2d
    rf = _fit_rf(image, classes, _lopsided_clicks(labels, [20] + [4] * (len(classes) - 1)), "image")
    rf.save(tmp_path / "model")
    loaded = load_model(tmp_path / "model")
    assert loaded.config.prior == "image"
    np.testing.assert_allclose(loaded.log_prior_shift, rf.log_prior_shift)
    np.testing.assert_array_equal(
        loaded.predict_slice(image[..., None]), rf.predict_slice(image[..., None])
    )


def test_rf_prior_is_a_closed_choice():
    with pytest.raises(WssegError, match="prior"):
        RandomForestMethod(prior="uniform")
