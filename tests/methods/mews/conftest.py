"""Fixtures of the MEWS tests: a phantom with blocky structures, clicks on it, tiny ViT weights."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

PATCH = 16  # patch size of timm's tiny test_vit


@pytest.fixture(autouse=True)
def _quiet_random_weights_warning():
    """Every test uses random backbone weights on purpose; their warning is tested explicitly."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM weights.*")
        yield


@pytest.fixture(scope="session")
def blocky_phantom():
    """(image, labels, classes) of a 2 x 176 x 176 phantom, upsampled 3x so that every class has
    whole 16 px patches (MEWS classifies patches)."""
    from napari_wsseg.sample import make_phantom

    image, labels, classes = make_phantom((2, 64, 64), seed=3, n_classes=4)
    up = lambda a: a.repeat(3, axis=1).repeat(3, axis=2)[:, :176, :176]  # noqa: E731
    return up(image), up(labels), classes


def patch_centre_clicks(
    labels: np.ndarray, n_classes: int, per_class: int, seed: int = 0
) -> np.ndarray:
    """Points ``(z, y, x, class)`` at the centres of patches that are >= 75 % one class."""
    z_, y_, x_ = labels.shape
    crop = labels[:, : y_ // PATCH * PATCH, : x_ // PATCH * PATCH]
    one_hot = np.eye(n_classes)[crop].reshape(z_, y_ // PATCH, PATCH, x_ // PATCH, PATCH, n_classes)
    purity = one_hot.mean(axis=(2, 4))
    rng = np.random.default_rng(seed)
    rows = []
    for cls in range(n_classes):
        z, py, px = np.nonzero(purity[..., cls] >= 0.75)
        for i in rng.choice(len(z), min(per_class, len(z)), replace=False):
            rows.append([z[i], py[i] * PATCH + PATCH // 2, px[i] * PATCH + PATCH // 2, cls])
    return np.array(rows, dtype=np.int64)


@pytest.fixture(scope="session")
def blocky_clicks(blocky_phantom):
    _, labels, classes = blocky_phantom
    return patch_centre_clicks(labels, len(classes), per_class=6, seed=2)
