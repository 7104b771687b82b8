"""The MEWS feature cache: memory LRU, zarr store with a provenance signature, slice keys."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.errors import ModelError
from napari_wsseg.io.normalize import Normalization
from napari_wsseg.methods.mews.cache import FeatureCache, slice_key

SIGNATURE = {
    "backbone": "test_vit",
    "weights_hash": "ab" * 32,
    "patch_size": 16,
    "tile_patches": 64,
    "halo_patches": 4,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}
NORM = Normalization((0.0,), (255.0,))


def _features(seed: int, shape=(3, 4, 8)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float16)


class _Backbone:
    """Counts how many slices it is asked to compute."""

    def __init__(self):
        self.calls = 0

    def __call__(self, missing):
        self.calls += len(missing)
        return [_features(i) for i in missing]


def test_memory_hits_skip_the_backbone():
    cache, backbone = FeatureCache(SIGNATURE), _Backbone()
    first = cache.get_many(["a", "b"], backbone)
    again = cache.get_many(["b", "a", "c"], backbone)
    assert backbone.calls == 3  # a, b, then only c
    np.testing.assert_array_equal(again[0], first[1])
    assert cache.stats == {"memory_hits": 2, "disk_hits": 0, "computed": 3}


def test_disk_cache_is_reused_by_a_new_session(tmp_path):
    FeatureCache(SIGNATURE, tmp_path / "c").get_many(["a", "b"], _Backbone())
    backbone = _Backbone()
    reopened = FeatureCache(SIGNATURE, tmp_path / "c")
    feats = reopened.get_many(["a", "b"], backbone)
    assert backbone.calls == 0 and reopened.stats["disk_hits"] == 2
    np.testing.assert_array_equal(feats[1], _features(1))


def test_predictions_do_not_write_to_disk(tmp_path):
    FeatureCache(SIGNATURE, tmp_path / "c").get_many(["a"], _Backbone(), persist=False)
    assert FeatureCache(SIGNATURE, tmp_path / "c").get("a") is None


@pytest.mark.parametrize(
    "key, value", [("weights_hash", "cd" * 32), ("tile_patches", 32), ("backbone", "other")]
)
def test_a_cache_with_another_signature_is_refused(tmp_path, key, value):
    FeatureCache(SIGNATURE, tmp_path / "c").get_many(["a"], _Backbone())
    with pytest.raises(
        ModelError,
        match=rf"feature cache .*c was computed with different settings \({key}: "
        r"cached .* vs now .*\); delete that folder or give another cache_dir",
    ):
        FeatureCache({**SIGNATURE, key: value}, tmp_path / "c")


def test_a_folder_that_is_not_a_cache_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ModelError, match="not a feature cache"):
        FeatureCache(SIGNATURE, tmp_path)


def test_an_interrupted_write_is_ignored(tmp_path):
    cache = FeatureCache(SIGNATURE, tmp_path / "c")
    cache.put("a", _features(0))
    del cache._group["a"].attrs[
        "complete"
    ]  # as if the process died before marking the entry complete
    assert FeatureCache(SIGNATURE, tmp_path / "c").get("a") is None


def test_memory_is_bounded_least_recently_used_first():
    one_entry_mb = _features(0, (64, 64, 64)).nbytes / 2**20
    cache = FeatureCache(SIGNATURE, max_memory_mb=2.5 * one_entry_mb)
    for key in "abc":
        cache.put(key, _features(0, (64, 64, 64)))
    assert cache.get("a") is None and cache.get("c") is not None
    assert cache.memory_bytes <= 2.5 * one_entry_mb * 2**20


def test_slice_keys_depend_on_pixels_and_normalisation():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    key = slice_key(image, NORM)
    assert key == slice_key(image.copy(), NORM)
    edited = image.copy()
    edited[0, 0] = 99
    assert slice_key(edited, NORM) != key
    assert slice_key(image, Normalization((1.0,), (255.0,))) != key
    assert slice_key(image.astype(np.uint16), NORM) != key
