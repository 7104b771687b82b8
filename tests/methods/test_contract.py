"""Contract test over the method registry: build, train briefly, save, reload, same predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.errors import ModelError, WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import available_methods, get_method
from napari_wsseg.methods.base import FitOptions, load_model

# Short settings that keep every registered method's contract test to a few seconds on a CPU.
FAST_OPTIONS = {
    "rf": {"n_estimators": 10},
    "dsp": {"max_steps": 3},
    "mews": {"backbone": "test_vit", "backbone_weights": "random", "max_steps": 3},
    "size": {"max_steps": 3},
    "rewis3d": {
        "max_steps": 3,
        "depth_2d": 2,
        "depth_3d": 2,
        "width": 4,
        "crop_z": 4,
        "crop_yx": 16,
    },
    "cpews": {"backbone": "test_vit", "max_steps": 3, "batch_size": 2, "region_size": 32},
}


def _clicks(labels: np.ndarray, n_classes: int, per_class: int = 3) -> np.ndarray:
    rng = np.random.default_rng(0)
    rows = []
    for z in range(0, labels.shape[0], 2):
        for cls in range(n_classes):
            ys, xs = np.nonzero(labels[z] == cls)
            if len(ys):
                pick = rng.choice(len(ys), min(per_class, len(ys)), replace=False)
                rows += [[z, ys[i], xs[i], cls] for i in pick]
    return np.array(rows, dtype=np.int64)


@pytest.mark.parametrize("name", available_methods())
def test_method_trains_saves_and_reloads_identically(name, phantom_3d, tmp_path):
    image, labels, classes = phantom_3d
    img = as_image(image[:4, :64, :64])
    ann = Annotations(classes=classes, points=_clicks(labels[:4, :64, :64], len(classes)))
    method = get_method(name)(**FAST_OPTIONS.get(name, {}))
    result = method.fit(img, ann, FitOptions(device="cpu", seed=0))
    assert result.stopped in ("done", "time_budget")
    before = method.predict_proba_slice(img.slice(1))
    assert before.shape == (len(classes), 64, 64)
    np.testing.assert_allclose(before.sum(axis=0), 1.0, atol=1e-4)

    folder = method.save(tmp_path / name)
    meta = json.loads((folder / "config.json").read_text())
    assert meta["method"] == name and meta["classes"][0]["name"] == classes[0].name
    assert not list(folder.glob("*.pkl")) and not list(folder.glob("*.pickle"))
    reloaded = load_model(folder)
    np.testing.assert_allclose(reloaded.predict_proba_slice(img.slice(1)), before, atol=1e-5)


@pytest.mark.parametrize("name", available_methods())
def test_batch_prediction_equals_slice_prediction(name, phantom_3d):
    """Block-wise prediction hands slices over in batches when a method can take them."""
    image, labels, classes = phantom_3d
    img = as_image(image[:4, :64, :64])
    method = get_method(name)(**FAST_OPTIONS.get(name, {}))
    method.fit(
        img,
        Annotations(classes=classes, points=_clicks(labels[:4, :64, :64], len(classes))),
        FitOptions(device="cpu", seed=0),
    )
    slices = [img.slice(z) for z in range(3)] + [img.slice(3)[:40, :50]]  # two shapes
    # what block-wise prediction calls: predict_proba_block, whose default hands the slices to
    # predict_proba_batch (batched on a GPU for the torch methods)
    batched = method.predict_proba_batch(slices)
    block = method.predict_proba_block(np.stack(slices[:3]))
    assert block.shape == (len(classes), 3, 64, 64) and block.dtype == np.float32
    np.testing.assert_allclose(block, np.stack(batched[:3], axis=1), atol=1e-6)
    assert [b.shape for b in batched] == [(len(classes), 64, 64)] * 3 + [(len(classes), 40, 50)]
    for one, together in zip(slices, batched):
        np.testing.assert_allclose(together, method.predict_proba_slice(one), atol=1e-5)


@pytest.mark.parametrize("name", available_methods())
def test_method_refuses_empty_annotations(name, phantom_3d):
    image, _, classes = phantom_3d
    with pytest.raises(WssegError, match="no annotations"):
        get_method(name)(**FAST_OPTIONS.get(name, {})).fit(
            as_image(image[:2]), Annotations(classes=classes)
        )


@pytest.mark.parametrize("name", available_methods())
def test_untrained_method_cannot_save(name, tmp_path):
    with pytest.raises(ModelError, match="untrained"):
        get_method(name)().save(tmp_path / "m")


def test_time_budget_must_be_positive():
    with pytest.raises(WssegError, match="not positive"):
        FitOptions(time_budget_s=0)


def test_unknown_method_lists_available():
    with pytest.raises(WssegError, match="available methods: rf"):
        get_method("nope")
