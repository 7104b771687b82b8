"""A model folder is untrusted input: crafted files are refused with one clear line, never a hang,
a crash or an allocation the file did not pay for.

Each test saves a real tiny model, edits one thing in its files the way an attacker (or a broken
disk) could, and loads it again.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.errors import ModelError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.rf import RandomForestMethod


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ------------------------------------------------------------------------------ rf forests
@pytest.fixture(scope="module")
def rf_folder(phantom_2d, tmp_path_factory):
    image, labels, classes = phantom_2d
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, labels.shape[0], 60), rng.integers(0, labels.shape[1], 60)
    points = np.stack([np.zeros_like(ys), ys, xs, labels[ys, xs]], axis=1)
    rf = RandomForestMethod(n_estimators=2, max_depth=4, sigma_max=4.0)
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=0))
    return rf.save(tmp_path_factory.mktemp("rf") / "model")


def _crafted_rf(rf_folder, tmp_path, edit) -> tuple:
    """A copy of ``rf_folder`` whose weights went through ``edit(tensors, metadata)``."""
    import shutil

    from safetensors import safe_open

    folder = tmp_path / "crafted"
    shutil.copytree(rf_folder, folder)
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(path))
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    return folder, path


def _inner(tensors) -> int:
    """An inner node of tree 0 other than the root."""
    left = tensors["tree0.left_child"]
    return int(np.flatnonzero(left != -1)[1])


def _set(name, index, value):
    def edit(tensors, metadata):
        array = tensors[f"tree0.{name}"].copy()
        array[index(tensors) if callable(index) else index] = value
        tensors[f"tree0.{name}"] = array
    return edit


RF_CRAFTS = {
    "root points to itself": (
        lambda t, m: [_set(side, 0, 0)(t, m) for side in ("left_child", "right_child")],
        "not after its parent"),
    "inner node points back to the root (a cycle)": (
        lambda t, m: _set("right_child", _inner(t), 0)(t, m), "not after its parent"),
    "child -1 on one side only": (_set("left_child", 0, -1), "one child"),
    "child index out of range": (_set("right_child", 0, 10**9), "out of range"),
    "child index below -1": (_set("right_child", 0, -7), "out of range"),
    "both children the same node": (
        lambda t, m: _set("right_child", 0, int(t["tree0.left_child"][0]))(t, m), "several parents"),
    "feature index beyond the feature count": (_set("feature", 0, 10**6), "feature index"),
    "negative feature index": (_set("feature", 0, -3), "feature index"),
    "NaN threshold": (_set("threshold", 0, np.nan), "threshold"),
    "leaf values of the wrong shape": (
        lambda t, m: t.__setitem__("tree0.values", t["tree0.values"][:, :, :1].copy()), "leaf values"),
    "negative leaf value": (_set("values", 0, -1.0), "leaf values"),
    "node field of the wrong length": (
        lambda t, m: t.__setitem__("tree0.feature", t["tree0.feature"][:-1].copy()), "field feature"),
    "10^9 trees declared": (lambda t, m: m.__setitem__("n_trees", str(10**9)), "declares"),
    "fewer trees declared than stored": (lambda t, m: m.__setitem__("n_trees", "1"), "declares"),
    "feature count that is not a number": (lambda t, m: m.__setitem__("n_features", "many"), "forest description"),
    "feature count of another filter bank": (
        lambda t, m: m.__setitem__("n_features", str(int(m["n_features"]) + 1)), "filter bank"),
    "class id beyond the class list": (
        lambda t, m: t.__setitem__("classes", t["classes"] + 5), "class ids"),
    "classes not increasing": (
        lambda t, m: t.__setitem__("classes", t["classes"][::-1].copy()), "classes"),
}


@pytest.mark.parametrize("craft", list(RF_CRAFTS))
def test_crafted_rf_forest_is_refused_naming_the_file(rf_folder, tmp_path, craft):
    edit, expected = RF_CRAFTS[craft]
    folder, path = _crafted_rf(rf_folder, tmp_path, edit)
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(error, str(path), expected, "retrain")


def test_untouched_rf_copy_loads_and_predicts(rf_folder, tmp_path, phantom_2d):
    """The crafting helper itself changes nothing: the refusals above come from the edits."""
    folder, _ = _crafted_rf(rf_folder, tmp_path, lambda t, m: None)
    image = phantom_2d[0][..., None]
    np.testing.assert_array_equal(load_model(folder).predict_slice(image),
                                  load_model(rf_folder).predict_slice(image))
