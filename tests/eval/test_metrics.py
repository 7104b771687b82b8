"""Metrics on hand-computed examples: confusion matrix, Dice/IoU, NaN rules, slices, masks."""

import json
import math

import dask.array as da
import numpy as np
import pytest
import zarr

from napari_wsseg.errors import WssegError
from napari_wsseg.eval import confusion_matrix, dice_per_class, evaluate, iou_per_class
from napari_wsseg.eval.metrics import format_evaluation


def test_confusion_matrix_rows_are_truth_columns_prediction():
    gt = np.array([[0, 0, 1], [1, 2, 2]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    cm = confusion_matrix(pred, gt, 3)
    assert cm.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]


def test_confusion_matrix_mask_scores_only_selected_pixels():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([1, 0, 1, 0])
    cm = confusion_matrix(pred, gt, 2, mask=np.array([False, True, True, False]))
    assert cm.tolist() == [[1, 0], [0, 1]]


def test_dice_and_iou_of_known_overlap():
    # class 1: 4 true pixels, 4 predicted, 2 shared -> Dice 0.5, IoU 1/3
    gt = np.zeros((4, 4), dtype=np.uint8)
    gt[0, :4] = 1
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[0, 2:] = 1
    pred[1, :2] = 1
    cm = confusion_matrix(pred, gt, 2)
    assert dice_per_class(cm)[1] == pytest.approx(0.5)
    assert iou_per_class(cm)[1] == pytest.approx(1 / 3)
    # class 0: 12 true, 12 predicted, 10 shared
    assert dice_per_class(cm)[0] == pytest.approx(20 / 24)


def test_class_absent_from_both_is_nan_and_left_out_of_means():
    gt = np.array([[0, 0, 1, 1]])
    result = evaluate(gt, gt, n_classes=3)
    assert result["dice"] == [1.0, 1.0, None] and result["iou"][2] is None
    assert result["mean_fg_dice"] == 1.0 and result["miou"] == 1.0
    assert math.isnan(dice_per_class(confusion_matrix(gt, gt, 3))[2])


def test_class_only_in_prediction_scores_zero():
    gt = np.array([[0, 0, 1, 1]])
    pred = np.array([[0, 2, 1, 1]])
    result = evaluate(pred, gt, n_classes=3)
    assert result["dice"][2] == 0.0
    assert result["mean_fg_dice"] == pytest.approx((1.0 + 0.0) / 2)


def test_foreground_excludes_background_class():
    gt = np.array([[0, 0, 0, 1]])
    pred = np.array([[0, 0, 1, 1]])
    result = evaluate(pred, gt)
    assert result["dice"] == pytest.approx([0.8, 2 / 3])
    assert result["mean_fg_dice"] == pytest.approx(2 / 3)
    assert result["mean_dice"] == pytest.approx((0.8 + 2 / 3) / 2)
    assert evaluate(pred, gt, background=None)["mean_fg_dice"] == pytest.approx(result["mean_dice"])
    assert result["pixel_accuracy"] == 0.75 and result["n_pixels"] == 4


def test_slices_option_scores_only_those_slices():
    gt = np.zeros((3, 4, 4), dtype=np.uint8)
    gt[:, :2] = 1
    pred = gt.copy()
    pred[1] = 0  # only slice 1 is wrong
    assert evaluate(pred, gt, slices=[0, 2])["mean_fg_dice"] == 1.0
    full = evaluate(pred, gt)
    assert full["dice"][1] == pytest.approx(2 * 16 / (16 + 24))  # 8 class-1 pixels per slice
    assert full["slices"] == [0, 1, 2] and full["n_pixels"] == 48
    assert evaluate(pred, gt, slices=(2, 0, 2))["slices"] == [0, 2]


def test_ignore_mask_removes_pixels():
    gt = np.array([[0, 1, 1, 1]])
    pred = np.array([[1, 1, 1, 1]])
    ignore = np.array([[True, False, False, False]])
    result = evaluate(pred, gt, n_classes=2, ignore_mask=ignore)
    assert result["n_pixels"] == 3 and result["pixel_accuracy"] == 1.0
    assert result["dice"] == [None, 1.0]


def test_2d_and_one_slice_volume_agree():
    rng = np.random.default_rng(0)
    gt, pred = rng.integers(0, 3, (2, 8, 9))
    assert evaluate(pred, gt) == evaluate(pred[None], gt[None])


def test_dask_and_zarr_inputs_match_numpy(tmp_path):
    rng = np.random.default_rng(1)
    gt = rng.integers(0, 4, (5, 12, 10)).astype(np.uint8)
    pred = np.where(rng.random(gt.shape) < 0.8, gt, 0).astype(np.uint8)
    expected = evaluate(pred, gt, slices=[1, 3])
    lazy_pred = da.from_array(pred, chunks=(1, 5, 7))
    lazy = evaluate(lazy_pred, da.from_array(gt, chunks=(2, 12, 10)), slices=[1, 3])
    stored = zarr.create_array(tmp_path / "gt.zarr", shape=gt.shape, chunks=(1, 12, 10), dtype="u1")
    stored[:] = gt
    assert lazy == expected
    assert evaluate(pred, stored, slices=[1, 3]) == expected


def test_n_classes_inferred_from_both_arrays():
    gt = np.array([[0, 1]])
    pred = np.array([[0, 3]])
    result = evaluate(pred, gt)
    assert len(result["dice"]) == 4 and result["dice"][2] is None


def test_result_is_strict_json_with_names():
    gt = np.array([[0, 1]])
    result = evaluate(gt, gt, n_classes=3, class_names=["a", "b", "c"])
    text = json.dumps(result, allow_nan=False)
    assert json.loads(text)["class_names"] == ["a", "b", "c"]
    assert "n/a" in format_evaluation(result)


@pytest.mark.parametrize(
    ("pred", "gt", "kwargs", "match"),
    [
        (np.zeros((4, 5)), np.zeros((4, 6)), {}, r"shape \(1, 4, 5\).*\(1, 4, 6\)"),
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 4)), {"slices": [5]}, r"slices \[5\]"),
        (np.full((2, 2), 3), np.zeros((2, 2)), {"n_classes": 2}, "class id 3"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"class_names": ["a"], "n_classes": 2}, "1 class nam"),
        (np.zeros(4), np.zeros(4), {}, r"shape \(4,\)"),
        (np.zeros((2, 2)), np.zeros((2, 2)), {"slices": []}, "slices is empty"),
    ],
)
def test_bad_inputs_raise_one_line_errors(pred, gt, kwargs, match):
    with pytest.raises(WssegError, match=match) as info:
        evaluate(pred.astype(int), gt.astype(int), **kwargs)
    assert "\n" not in str(info.value)


def test_float_labels_are_refused():
    with pytest.raises(WssegError, match="dtype float64"):
        evaluate(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.uint8))
