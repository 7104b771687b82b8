"""MEWS end to end with timm's tiny randomly initialised ViT: training, saving, loading, errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.errors import AnnotationError, ModelError, WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.mews.method import MEWSConfig, MEWSMethod

PATCH = 16  # patch size of timm's tiny test_vit
FAST = {"backbone": "test_vit", "backbone_weights": "random", "lr": 1e-2}


@pytest.fixture(scope="module")
def trained(blocky_phantom, blocky_clicks):
    """A MEWS model trained 100 steps on the blocky phantom, and its fit result."""
    image, _, classes = blocky_phantom
    with pytest.warns(UserWarning, match="RANDOM weights"):
        method = MEWSMethod(**FAST, max_steps=100)
        method.backbone
    result = method.fit(
        as_image(image), Annotations(classes, points=blocky_clicks), FitOptions(device="cpu")
    )
    return method, result


def _predict(method, image) -> np.ndarray:
    return np.stack([method.predict_slice(image[z][..., None]) for z in range(len(image))])


def _prototype_baseline_accuracy(method, image, clicks) -> float:
    """Clicked-pixel accuracy of nearest class centroid
    on the raw backbone features (no training)."""
    feats = method._features([image[z][..., None] for z in range(len(image))], persist=False)
    x = F.normalize(torch.from_numpy(np.stack(feats)).float(), dim=-1)
    at_clicks = x[clicks[:, 0], clicks[:, 1] // PATCH, clicks[:, 2] // PATCH]
    labels = torch.as_tensor(clicks[:, 3])
    centroids = torch.stack([at_clicks[labels == c].mean(0) for c in range(int(labels.max()) + 1)])
    guess = (at_clicks @ F.normalize(centroids, dim=-1).T).argmax(1)
    return float((guess == labels).float().mean())


def test_training_reduces_the_loss_and_predicts_the_clicked_pixels(
    trained, blocky_phantom, blocky_clicks
):
    method, result = trained
    image, labels, classes = blocky_phantom
    losses = [h["loss"] for h in result.history]
    assert result.stopped == "done" and result.steps == 100
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) - 0.5
    assert {"l_corr", "l_proto", "l_triplet"} <= set(result.history[0])
    pred = _predict(method, image)
    hit = pred[blocky_clicks[:, 0], blocky_clicks[:, 1], blocky_clicks[:, 2]] == blocky_clicks[:, 3]
    # A random ViT only sees coarse contrast, so a perfect fit of every click is not guaranteed;
    # training must still fit nearly all clicks, and clearly better than the untrained prototypes.
    assert hit.mean() >= 0.9
    assert hit.mean() > _prototype_baseline_accuracy(method, image, blocky_clicks) + 0.1
    assert set(np.unique(pred)) == set(range(len(classes)))


def test_probabilities_are_normalised_and_match_labels(trained, blocky_phantom):
    method, _ = trained
    image = blocky_phantom[0]
    proba = method.predict_proba_slice(image[1][..., None])
    assert proba.shape == (4, 176, 176) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    np.testing.assert_array_equal(proba.argmax(axis=0), method.predict_slice(image[1][..., None]))


def test_checkpoint_round_trip_references_the_backbone_by_hash(trained, blocky_phantom, tmp_path):
    method, _ = trained
    image = blocky_phantom[0]
    folder = method.save(tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    backbone = meta["state"]["backbone"]
    assert backbone["name"] == "test_vit" and backbone["weights_source"] == "random"
    assert (
        backbone["weights_hash"] == method.backbone.weights_hash
        and len(backbone["weights_hash"]) == 64
    )
    assert any("RANDOM weights" in w for w in meta["training_summary"]["warnings"])
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    assert (folder / "model.safetensors").stat().st_size < 200_000  # heads + centroids, no backbone
    reloaded = load_model(folder)
    assert isinstance(reloaded, MEWSMethod) and reloaded.config == method.config
    for z in range(2):
        np.testing.assert_allclose(
            reloaded.predict_proba_slice(image[z][..., None]),
            method.predict_proba_slice(image[z][..., None]),
            atol=1e-6,
        )


def test_loading_with_a_different_backbone_is_refused(trained, tmp_path):
    method, _ = trained
    folder = method.save(tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["state"]["backbone"]["weights_hash"] = "0" * 64
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=r"weights hash .* trained with 000000000000.*retrain"):
        load_model(folder)


def test_feature_cache_hit_on_retraining(blocky_phantom, blocky_clicks, tmp_path):
    image, _, classes = blocky_phantom
    img, options = as_image(image), FitOptions(device="cpu")
    ann = Annotations(classes, points=blocky_clicks)
    first = MEWSMethod(**FAST, max_steps=2, cache_dir=str(tmp_path / "cache"))
    first.fit(img, ann, options)
    assert first.feature_cache.stats["computed"] == 2
    first.fit(
        img, Annotations(classes, points=blocky_clicks[:-1]), options
    )  # a click removed: retrain
    assert first.feature_cache.stats == {"memory_hits": 2, "disk_hits": 0, "computed": 2}
    first.fit(img, ann, options)
    second = MEWSMethod(**FAST, max_steps=2, cache_dir=str(tmp_path / "cache"))  # a new session
    second.fit(img, ann, options)
    assert second.feature_cache.stats == {"memory_hits": 0, "disk_hits": 2, "computed": 0}
    np.testing.assert_allclose(
        second.predict_proba_slice(image[0][..., None]),
        first.predict_proba_slice(image[0][..., None]),
        atol=1e-6,
    )


def test_models_with_the_same_backbone_share_features(blocky_phantom, blocky_clicks):
    image, _, classes = blocky_phantom
    img, ann, options = (
        as_image(image),
        Annotations(classes, points=blocky_clicks),
        FitOptions(device="cpu"),
    )
    first = MEWSMethod(**FAST, max_steps=1)
    first.fit(img, ann, options)
    ablation = MEWSMethod(**FAST, max_steps=1, use_triplet=False)
    ablation.share_feature_cache(first)
    ablation.fit(img, ann, options)
    assert (
        ablation.feature_cache is first.feature_cache and first.feature_cache.stats["computed"] == 2
    )
    with pytest.raises(ModelError, match="cannot share the feature cache"):
        MEWSMethod(backbone="test_vit3", backbone_weights="random").share_feature_cache(first)


def test_loss_switches_select_the_terms(blocky_phantom, blocky_clicks):
    image, _, classes = blocky_phantom
    method = MEWSMethod(**FAST, max_steps=2, use_corr=False, use_triplet=False)
    result = method.fit(
        as_image(image), Annotations(classes, points=blocky_clicks), FitOptions(device="cpu")
    )
    assert set(result.history[-1]) == {"step", "loss", "l_proto"}
    sampled = MEWSMethod(**FAST, max_steps=2, corr_patches=8)
    assert (
        "l_corr"
        in sampled.fit(
            as_image(image), Annotations(classes, points=blocky_clicks), FitOptions(device="cpu")
        ).history[-1]
    )
    with pytest.raises(WssegError, match="keep at least one"):
        MEWSConfig(use_corr=False, use_proto=False, use_triplet=False)


def test_a_class_with_no_clicks_is_a_clear_error(blocky_phantom, blocky_clicks):
    image, _, classes = blocky_phantom
    clicks = blocky_clicks[blocky_clicks[:, 3] != 2]
    with pytest.raises(
        AnnotationError, match=r"class 2 'mitochondrion' has no clicks.*add at least one point"
    ):
        MEWSMethod(**FAST).fit(
            as_image(image), Annotations(classes, points=clicks), FitOptions(device="cpu")
        )


def test_a_slice_smaller_than_one_patch_is_a_clear_error():
    from napari_wsseg.annotations.model import default_classes

    ann = Annotations(default_classes(2), points=[[0, 2, 2, 0], [0, 8, 8, 1]])
    with pytest.raises(
        WssegError, match=r"slice of shape \(12, 40\) is smaller than one 16x16 patch"
    ):
        MEWSMethod(**FAST).fit(
            as_image(np.zeros((12, 40), np.uint8)), ann, FitOptions(device="cpu")
        )


def test_unknown_backbone_name_suggests_close_names():
    with pytest.raises(
        ModelError, match=r"unknown backbone 'vit_bsae_patch16_dinov3'.*vit_base_patch16_dinov3"
    ):
        MEWSMethod(backbone="vit_bsae_patch16_dinov3", backbone_weights="random").backbone


def test_weights_file_of_the_wrong_architecture(tmp_path):
    import timm
    from safetensors.torch import save_file

    other = timm.create_model("test_vit3", pretrained=False)  # 96 features, 9 blocks
    save_file(
        {k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "w.safetensors")
    )
    with pytest.raises(
        ModelError, match=r"does not fit backbone 'test_vit': \d+ missing keys, \d+ unexpected"
    ):
        MEWSMethod(backbone="test_vit", backbone_weights=str(tmp_path / "w.safetensors")).backbone


def test_cancel_during_features_leaves_the_model_untrained(blocky_phantom, blocky_clicks):
    import threading

    image, _, classes = blocky_phantom
    cancel = threading.Event()
    cancel.set()
    method = MEWSMethod(**FAST, max_steps=5, feature_batch=1)
    result = method.fit(
        as_image(image),
        Annotations(classes, points=blocky_clicks),
        FitOptions(device="cpu", cancel=cancel),
    )
    assert result.stopped == "cancelled" and result.steps == 0
    with pytest.raises(ModelError, match="untrained"):
        method.save("unused")


def test_time_budget_stops_training_with_a_usable_model(blocky_phantom, blocky_clicks):
    image, _, classes = blocky_phantom
    events = []
    method = MEWSMethod(**FAST, max_steps=100_000)
    result = method.fit(
        as_image(image),
        Annotations(classes, points=blocky_clicks),
        FitOptions(device="cpu", time_budget_s=5.0, progress=events.append),
    )
    assert result.stopped == "time_budget" and 0 < result.steps < 100_000
    assert events and events[-1].metrics and "loss" in events[-1].metrics
    assert method.predict_proba_slice(image[0][..., None]).shape == (4, 176, 176)


def test_registered_as_mews_and_2d_images_work():
    from napari_wsseg.annotations.model import default_classes

    image = np.zeros((48, 64), np.uint8)
    image[:, 32:] = 200
    ann = Annotations(default_classes(2), points=[[0, 20, 8, 0], [0, 30, 50, 1]])
    method = get_method("mews")(**FAST, max_steps=3)
    method.fit(as_image(image), ann, FitOptions(device="cpu"))
    assert method.predict_slice(image[..., None]).shape == (48, 64)


def test_a_moved_weights_file_is_found_by_name_and_checked_by_hash(
    blocky_phantom, blocky_clicks, tmp_path, monkeypatch
):
    import shutil

    import timm
    from safetensors.torch import save_file

    def write_weights(path, seed):
        torch.manual_seed(seed)
        vit = timm.create_model("test_vit", pretrained=False)
        save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, str(path))

    image, _, classes = blocky_phantom
    (tmp_path / "train_machine").mkdir()
    weights = tmp_path / "train_machine" / "vit.safetensors"
    write_weights(weights, seed=0)
    method = MEWSMethod(backbone="test_vit", backbone_weights=str(weights), max_steps=2)
    method.fit(
        as_image(image[:2]),
        Annotations(classes, points=blocky_clicks[blocky_clicks[:, 0] < 2]),
        FitOptions(device="cpu"),
    )
    folder = method.save(tmp_path / "model")
    expected = method.predict_proba_slice(image[0][..., None])
    (tmp_path / "elsewhere").mkdir()
    weights.rename(tmp_path / "elsewhere" / "vit.safetensors")  # the model travels, the file moves

    monkeypatch.delenv("WSSEG_WEIGHTS_DIR", raising=False)
    with pytest.raises(
        ModelError,
        match=r"vit.safetensors .* does not exist; copy vit.safetensors into the "
        r"model folder or set WSSEG_WEIGHTS_DIR",
    ):
        load_model(folder)
    monkeypatch.setenv("WSSEG_WEIGHTS_DIR", str(tmp_path / "elsewhere"))
    np.testing.assert_allclose(
        load_model(folder).predict_proba_slice(image[0][..., None]), expected, atol=1e-6
    )

    monkeypatch.delenv("WSSEG_WEIGHTS_DIR")
    shutil.copy(tmp_path / "elsewhere" / "vit.safetensors", folder / "vit.safetensors")
    assert load_model(folder).predict_slice(image[0][..., None]).shape == image[0].shape
    write_weights(folder / "vit.safetensors", seed=1)  # same name, other weights
    with pytest.raises(ModelError, match="weights hash .* retrain"):
        load_model(folder)
