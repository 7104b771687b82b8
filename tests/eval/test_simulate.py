"""The weak-label simulator: points, boxes, tags, sizes, masks and scribbles from dense labels."""

import dask.array as da
import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_wsseg.annotations import validate_annotations
from napari_wsseg.errors import WssegError
from napari_wsseg.eval import (
    choose_slices,
    class_fractions,
    corrupt_sizes,
    relative_errors,
    simulate_annotations,
    size_noise_mre,
)
from napari_wsseg.sample import make_phantom


@pytest.fixture(scope="module")
def blocks():
    """4 slices: 0 background, 1 a thick square, 2 a 1-px line, 3 two blobs (slices 0-1 only)."""
    gt = np.zeros((4, 40, 50), dtype=np.uint8)
    gt[:, 5:25, 5:25] = 1
    gt[:, 30, 2:48] = 2
    gt[:2, 5:12, 30:40] = 3
    gt[:2, 15:22, 32:45] = 3
    return gt


@pytest.fixture(scope="module")
def phantom_labels():
    return make_phantom((6, 96, 96), seed=4, n_classes=5)[1]


def test_points_inside_class_and_away_from_border(phantom_labels):
    ann = simulate_annotations(phantom_labels, points=6, min_border_px=3, seed=1)
    z, y, x, k = ann.points.T
    assert np.array_equal(phantom_labels[z, y, x], k)
    for zi, yi, xi, ki in ann.points:
        depth = ndi.distance_transform_edt(phantom_labels[zi] == ki)
        if np.count_nonzero(depth >= 3) >= 6:  # the class is thick enough
            assert depth[yi, xi] >= 3


def test_thin_class_gets_points_on_it(blocks):
    ann = simulate_annotations(blocks, slices=[0], points=4, min_border_px=3, seed=0)
    line = ann.points[ann.points[:, 3] == 2]
    assert len(line) == 4 and np.all(line[:, 1] == 30)


def test_point_counts_per_class_and_slice(blocks):
    ann = simulate_annotations(blocks, slices=[1, 3], points=3, seed=0)
    pairs, counts = np.unique(ann.points[:, [0, 3]], axis=0, return_counts=True)
    counts = {(z, k): n for (z, k), n in zip(pairs.tolist(), counts.tolist())}
    assert counts == {(1, 0): 3, (1, 1): 3, (1, 2): 3, (1, 3): 3, (3, 0): 3, (3, 1): 3, (3, 2): 3}


def test_points_capped_by_class_size():
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[4, 4:6] = 1  # 2 pixels
    ann = simulate_annotations(gt, points=5, seed=0)
    assert np.count_nonzero(ann.points[:, 3] == 1) == 2


def test_boxes_are_tight_around_distinct_components(blocks):
    ann = simulate_annotations(blocks, slices=[0], points=0, boxes=2, seed=3)
    blob_boxes = ann.boxes[ann.boxes[:, 5] == 3]
    assert len(blob_boxes) == 2 and len({tuple(b) for b in blob_boxes}) == 2
    for z, y0, x0, y1, x1, k in ann.boxes:
        components, _ = ndi.label(blocks[z] == k)
        extents = {
            (s[0].start, s[1].start, s[0].stop - 1, s[1].stop - 1)
            for s in ndi.find_objects(components)
        }
        assert (y0, x0, y1, x1) in extents


def test_boxes_skip_specks_when_possible():
    gt = np.zeros((30, 30), dtype=np.uint8)
    gt[2:12, 2:12] = 1
    gt[25, 25] = 1  # a 1-pixel speck
    ann = simulate_annotations(gt, points=0, boxes=5, min_component_px=4, seed=0)
    assert ann.boxes[ann.boxes[:, 5] == 1, 1:5].tolist() == [[2, 2, 11, 11]]


def test_counted_boxes_are_not_exhaustive(blocks):
    ann = simulate_annotations(blocks, slices=[0], points=0, boxes=1, seed=3)
    assert len(ann.boxes[ann.boxes[:, 5] == 3]) == 1  # one of the two blobs boxed
    assert ann.exhaustive_boxes.shape == (0, 2)


def test_boxes_all_boxes_every_object_and_marks_every_class_exhaustive():
    gt = np.zeros((2, 30, 30), dtype=np.uint8)
    gt[:, 2:12, 2:12] = 1
    gt[0, 25, 25] = 1  # a 1-pixel speck: "all" boxes it too
    gt[0, 20:24, 2:6] = 2  # class 2 only in slice 0
    ann = simulate_annotations(gt, points=2, boxes="all", tags=True, seed=0)
    assert ann.boxes[ann.boxes[:, 5] == 1, :5].tolist() == [
        [0, 2, 2, 11, 11],
        [0, 25, 25, 25, 25],
        [1, 2, 2, 11, 11],
    ]
    # every class of every annotated slice is exhaustive, class 2 in slice 1 with no box (absent)
    assert ann.exhaustive_boxes.tolist() == [[z, k] for z in (0, 1) for k in (0, 1, 2)]
    validate_annotations(ann, gt.shape)  # points, tags and exhaustive boxes agree


def test_boxes_must_be_a_count_or_all(blocks):
    with pytest.raises(WssegError, match=r"boxes='some'.*or 'all'"):
        simulate_annotations(blocks, boxes="some")


def test_tags_equal_presence(blocks):
    ann = simulate_annotations(blocks, points=0, tags=True, seed=0)
    expected = [(z, k) for z in range(4) for k in np.unique(blocks[z])]
    assert [tuple(r) for r in ann.tags] == expected


def test_exact_sizes_equal_true_fractions(blocks):
    ann = simulate_annotations(blocks, slices=[0, 3], points=0, sizes=True)
    for z in (0, 3):
        rows = ann.sizes[ann.sizes[:, 0] == z]
        assert rows[:, 1].tolist() == [0, 1, 2, 3]
        assert np.allclose(rows[:, 2], np.bincount(blocks[z].ravel(), minlength=4) / blocks[z].size)
    assert ann.sizes[-1, 2] == 0.0  # class 3 absent from slice 3


def test_noisy_sizes_mean_relative_error_matches_sigma():
    # many equal classes: renormalisation barely changes the errors (see docs/evaluation.md)
    true = np.full(20, 1 / 20)
    rng = np.random.default_rng(0)
    draws = [corrupt_sizes(true, 0.2, rng=rng) for _ in range(500)]
    errors = np.concatenate([relative_errors(true, noisy) for noisy in draws])
    assert errors.mean() == pytest.approx(size_noise_mre(0.2) * np.sqrt(0.95), rel=0.04)


def test_simulated_noisy_sizes_stay_distributions(phantom_labels):
    ann = simulate_annotations(phantom_labels, points=0, sizes=True, size_noise=0.3, seed=2)
    noisy = ann.sizes[:, 2].reshape(6, 5)
    exact = np.stack([class_fractions(s, 5) for s in phantom_labels])
    assert np.allclose(noisy.sum(axis=1), 1) and np.all(noisy >= 0)
    assert np.all((noisy == 0) == (exact == 0))
    assert 0.05 < relative_errors(exact, noisy).mean() < 0.5


def test_masks_are_full_labels_on_chosen_slices_only(blocks):
    ann = simulate_annotations(blocks, slices=[2], points=0, masks=True)
    assert ann.masks.shape == blocks.shape
    assert np.array_equal(ann.masks[2], blocks[2] + 1)
    assert not ann.masks[[0, 1, 3]].any()


def test_scribbles_lie_inside_their_class(phantom_labels):
    ann = simulate_annotations(phantom_labels, slices=[0, 5], points=0, scribbles=2, seed=0)
    labelled = ann.masks > 0
    assert np.array_equal(ann.masks[labelled] - 1, phantom_labels[labelled])
    assert set(np.unique(ann.masks[0])) == set(range(6))  # every class scribbled
    assert labelled[0].mean() < 0.1 and not labelled[1:5].any()


def test_same_seed_same_annotations_other_seed_differs(phantom_labels):
    kwargs = dict(slices=3, points=4, boxes=2, sizes=True, size_noise=0.2)
    a = simulate_annotations(phantom_labels, seed=5, **kwargs)
    b = simulate_annotations(phantom_labels, seed=5, **kwargs)
    c = simulate_annotations(phantom_labels, seed=6, **kwargs)
    for field in ("points", "boxes", "sizes"):
        assert np.array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.points, c.points)


def test_lazy_and_2d_ground_truth(blocks):
    lazy = simulate_annotations(da.from_array(blocks, chunks=(1, 20, 50)), points=2, seed=0)
    eager = simulate_annotations(blocks, points=2, seed=0)
    assert np.array_equal(lazy.points, eager.points)
    flat = simulate_annotations(blocks[0], points=2, tags=True, seed=0)
    assert np.all(flat.points[:, 0] == 0) and flat.tags[:, 0].tolist() == [0, 0, 0, 0]


def test_classes_default_and_given(blocks):
    names = simulate_annotations(blocks, points=0).class_names
    assert names == ["class0", "class1", "class2", "class3"]
    with pytest.raises(WssegError, match="class id 3"):
        simulate_annotations(blocks, n_classes=3)


def test_choose_slices_even_explicit_and_range():
    assert choose_slices(20, 8, slice_range=(0, 12)) == [0, 2, 3, 5, 7, 9, 10, 12]
    assert choose_slices(20, 1, slice_range=(4, 9)) == [4]
    assert choose_slices(20, 2, slice_range=(4, 9)) == [4, 9]
    assert choose_slices(10, [7, 3, 3]) == [3, 7]
    assert choose_slices(3) == [0, 1, 2]


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        ((20, 14), {"slice_range": (0, 12)}, "slices=14 but z 0..12 holds 13"),
        ((20, [13]), {"slice_range": (0, 12)}, r"slices \[13\]"),
        ((20, None), {"slice_range": (5, 25)}, r"slice_range \(5, 25\)"),
    ],
)
def test_choose_slices_errors(args, kwargs, match):
    with pytest.raises(WssegError, match=match):
        choose_slices(*args, **kwargs)


def test_negative_count_raises(blocks):
    with pytest.raises(WssegError, match="boxes=-1"):
        simulate_annotations(blocks, boxes=-1)


def test_float_ground_truth_is_refused():
    with pytest.raises(WssegError, match="dtype float32"):
        simulate_annotations(np.zeros((8, 8), dtype=np.float32))
