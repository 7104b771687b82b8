"""Size-entry helpers: fractions from a painted mask and the counting grid."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.annotations.sizes import estimate_sizes_from_mask, grid_cell_fraction, grid_lines
from napari_wsseg.errors import AnnotationError


def test_estimate_from_a_fully_painted_slice_equals_the_class_fractions():
    labels = np.random.default_rng(0).integers(0, 4, size=(30, 40))
    fractions = estimate_sizes_from_mask(labels + 1, 4)
    np.testing.assert_allclose(fractions, np.bincount(labels.ravel(), minlength=4) / labels.size)


def test_estimate_counts_unpainted_pixels_as_the_given_class():
    mask = np.zeros((10, 10), np.uint8)
    mask[:2] = 2  # 20 % painted as class 1
    np.testing.assert_allclose(estimate_sizes_from_mask(mask, 3, unlabeled_as=0), [0.8, 0.2, 0.0])
    np.testing.assert_allclose(estimate_sizes_from_mask(mask, 3), [0.0, 1.0, 0.0])


@pytest.mark.parametrize(
    "mask, kwargs, message",
    [
        (np.zeros((4, 4), int), {}, "empty"),
        (np.full((4, 4), 5), {}, "label 5"),
        (np.full((4, 4), -1), {}, "label -1"),
        (np.ones((4, 4)), {}, "integer label slice"),
        (np.ones((4, 4), int), {"unlabeled_as": 3}, "unlabeled_as=3"),
    ],
)
def test_estimate_errors_name_the_problem(mask, kwargs, message):
    with pytest.raises(AnnotationError, match=message):
        estimate_sizes_from_mask(mask, 3, **kwargs)


@pytest.mark.parametrize("coarse, n", [(True, 5), (False, 10)])
def test_grid_cells_split_the_slice_into_equal_shares(coarse, n):
    lines = grid_lines((100, 60), coarse=coarse)
    assert lines.shape == (2 * (n - 1), 2, 2)
    horizontal, vertical = lines[: n - 1], lines[n - 1 :]
    edges_y = np.r_[-0.5, horizontal[:, 0, 0], 99.5]
    edges_x = np.r_[-0.5, vertical[:, 0, 1], 59.5]
    np.testing.assert_allclose(np.diff(edges_y), 100 / n)
    np.testing.assert_allclose(np.diff(edges_x), 60 / n)
    assert grid_cell_fraction(coarse) == pytest.approx(1 / n**2)
