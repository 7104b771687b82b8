"""Shared fixtures: small seeded phantoms and annotations derived from their ground truth."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def phantom_3d():
    """(image, labels, classes) of a small 3D phantom (8, 128, 128)."""
    from napari_wsseg.sample import make_phantom

    return make_phantom((8, 128, 128), seed=0)


@pytest.fixture(scope="session")
def phantom_2d():
    """(image, labels, classes) of a small 2D phantom (128, 128)."""
    from napari_wsseg.sample import make_phantom

    return make_phantom((128, 128), seed=1)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_collection_modifyitems(items):
    """Mark every test that uses a napari viewer ``gui``, so ``-m "not gui"`` runs the rest."""
    for item in items:
        if "make_napari_viewer" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.gui)
