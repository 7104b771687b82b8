"""The size method ignores region tags and says so, once per fit."""

from __future__ import annotations

import warnings

import pytest

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions
from napari_wsseg.methods.size.method import SizeMethod

TINY = dict(width=4, depth=1, crop_size=32, batch_size=2, tile=64, tile_overlap=16, max_steps=1)


@pytest.fixture(scope="module")
def phantom():
    from napari_wsseg.sample import make_phantom

    return make_phantom((1, 64, 64), seed=0, n_classes=3)


def test_region_tags_are_ignored_with_one_warning_naming_their_count(phantom):
    image, labels, classes = phantom
    sizes = [[0, k, float((labels == k).mean())] for k in range(len(classes))]
    region_tags = [[0, 0, 0, 0, 15, 15], [0, 1, 16, 16, 31, 31]]
    method = SizeMethod(**TINY)
    for _ in range(2):  # a second fit starts a new summary: still one warning
        with pytest.warns(UserWarning, match="ignores the 2 region tag row") as record:
            method.fit(
                as_image(image),
                Annotations(classes, sizes=sizes, region_tags=region_tags),
                FitOptions(device="cpu", seed=0),
            )
        assert sum("region tag" in str(w.message) for w in record) == 1
        notes = [w for w in method.training_summary["warnings"] if "region tag" in w]
        assert len(notes) == 1 and "gives no size" in notes[0]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        method.fit(as_image(image), Annotations(classes, sizes=sizes), FitOptions(device="cpu"))
    assert not any("region tag" in str(w.message) for w in record)
    assert not any("region tag" in w for w in method.training_summary["warnings"])
