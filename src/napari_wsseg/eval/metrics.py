"""Segmentation metrics against dense ground truth: confusion matrix, Dice, IoU. Imports no Qt.

Volumes are scored slice by slice, so numpy arrays, memory maps, dask arrays and zarr arrays all
work with memory that does not grow with the number of slices. The confusion matrix has ground
truth along rows and predictions along columns: ``cm[g, p]`` counts pixels of true class ``g``
predicted as ``p``.

A class absent from both the prediction and the ground truth of the scored pixels has an
undefined Dice and IoU (0 / 0): it is reported as NaN (``None`` in :func:`evaluate`'s JSON-able
output) and left out of the means, so a class that never occurs neither helps nor hurts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import WssegError


def confusion_matrix(pred, gt, n_classes: int, *, mask=None) -> np.ndarray:
    """Count ``(true class, predicted class)`` pairs over pixels.

    Parameters
    ----------
    pred, gt : integer arrays of the same shape
        Predicted and true class ids, each in ``0..n_classes-1``.
    n_classes : int
        Number of classes C.
    mask : bool array of the same shape, optional
        Pixels to score (True = scored). By default every pixel is scored.

    Returns
    -------
    (C, C) int64 array
        ``cm[g, p]``: number of scored pixels of true class ``g`` predicted as ``p``.

    Raises
    ------
    WssegError
        If shapes differ or a class id is outside ``0..n_classes-1``.

    Examples
    --------
    >>> confusion_matrix(np.array([0, 1, 1, 1]), np.array([0, 0, 1, 1]), 2)
    array([[1, 1],
           [0, 2]])
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_same_shape(pred.shape, gt.shape, "prediction", "ground truth")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        _check_same_shape(mask.shape, gt.shape, "mask", "ground truth")
        pred, gt = pred[mask], gt[mask]
    _check_ids(pred, n_classes, "prediction")
    _check_ids(gt, n_classes, "ground truth")
    flat = gt.astype(np.int64).ravel() * n_classes + pred.astype(np.int64).ravel()
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def dice_per_class(cm: np.ndarray) -> np.ndarray:
    """Dice ``2 TP / (2 TP + FP + FN)`` of every class from a confusion matrix.

    NaN for a class absent from both prediction and ground truth.

    Examples
    --------
    >>> dice_per_class(np.array([[1, 1], [0, 2]]))
    array([0.66666667, 0.8       ])
    """
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """Intersection over union ``TP / (TP + FP + FN)`` of every class from a confusion matrix.

    NaN for a class absent from both prediction and ground truth.

    Examples
    --------
    >>> iou_per_class(np.array([[1, 1], [0, 2], ]))
    array([0.5       , 0.66666667])
    >>> iou_per_class(np.array([[3, 0], [0, 0]]))
    array([ 1., nan])
    """
    tp, fp, fn = _tp_fp_fn(cm)
    return _ratio(tp, tp + fp + fn)


def evaluate(
    pred,
    gt,
    *,
    n_classes: int | None = None,
    slices: Sequence[int] | None = None,
    ignore_mask=None,
    background: int | None = 0,
    class_names: Sequence[str] | None = None,
) -> dict:
    """Score a prediction against dense ground truth.

    Parameters
    ----------
    pred, gt : (Y, X) or (Z, Y, X) integer arrays
        numpy, memory-mapped, dask or zarr arrays of the same spatial shape (a 2D array and a
        one-slice volume match). Read one slice at a time.
    n_classes : int, optional
        Number of classes. By default ``max(gt.max(), pred.max()) + 1`` over the scored slices,
        or ``len(class_names)`` when names are given.
    slices : sequence of int, optional
        z indices to score (e.g. held-out slices never annotated). By default all slices.
    ignore_mask : bool array like ``gt``, optional
        True where pixels are NOT scored (e.g. unlabelled regions). By default none are ignored.
    background : int or None, default 0
        Class left out of ``mean_fg_dice``; "foreground" means every class except this one
        (class 0 by default). None makes ``mean_fg_dice`` the mean over all classes.
    class_names : sequence of str, optional
        Names for the report. By default ``class0``, ``class1``, ...

    Returns
    -------
    dict
        JSON-serialisable; NaN values are ``None``. Keys: ``class_names``, ``dice`` and ``iou``
        (lists, one per class), ``mean_fg_dice`` (mean Dice of the foreground classes),
        ``mean_dice``, ``miou`` (mean IoU over all classes), ``pixel_accuracy``, ``slices``
        (the z indices scored), ``n_pixels`` (pixels scored), ``background`` and
        ``confusion_matrix`` (rows true class, columns predicted class). Means skip classes
        whose score is undefined (absent from both prediction and ground truth).

    Raises
    ------
    WssegError
        If shapes differ, a slice index is out of range, or a class id exceeds ``n_classes``.

    Examples
    --------
    >>> gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1]])
    >>> pred = np.array([[0, 1, 1, 1], [0, 0, 1, 1]])
    >>> result = evaluate(pred, gt)
    >>> result["dice"], result["pixel_accuracy"], result["slices"]
    ([0.8571428571428571, 0.8888888888888888], 0.875, [0])
    """
    gt3, pred3 = _as_volume(gt), _as_volume(pred)
    _check_same_shape(tuple(pred3.shape), tuple(gt3.shape), "prediction", "ground truth")
    ignore3 = None
    if ignore_mask is not None:
        ignore3 = _as_volume(ignore_mask)
        _check_same_shape(tuple(ignore3.shape), tuple(gt3.shape), "ignore_mask", "ground truth")
    scored = _check_slices(slices, gt3.shape[0])
    if n_classes is None and class_names is not None:
        n_classes = len(class_names)
    cm = _accumulate(pred3, gt3, ignore3, scored, n_classes)
    n_classes = len(cm)
    names = [f"class{k}" for k in range(n_classes)] if class_names is None else list(class_names)
    if len(names) != n_classes:
        raise WssegError(
            f"evaluate: {len(names)} class names given for {n_classes} classes; "
            "pass one name per class"
        )
    return _summarise(cm, names, scored, background)


def format_evaluation(result: dict) -> str:
    """A plain-text table of an :func:`evaluate` result (for the CLI and logs).

    Examples
    --------
    >>> labels = np.array([[0, 1]])
    >>> print(format_evaluation(evaluate(labels, labels)))  # doctest: +NORMALIZE_WHITESPACE
    class      dice    iou
    class0    1.000  1.000
    class1    1.000  1.000
    mean foreground Dice 1.000 | mIoU 1.000 | pixel accuracy 1.000 | 2 pixels in 1 slice(s)
    """
    width = max(len(n) for n in result["class_names"] + ["class"])
    lines = [f"{'class':<{width}}  {'dice':>6} {'iou':>6}"]
    for name, dice, iou in zip(result["class_names"], result["dice"], result["iou"]):
        lines.append(f"{name:<{width}}  {_fmt(dice):>6} {_fmt(iou):>6}")
    lines.append(
        f"mean foreground Dice {_fmt(result['mean_fg_dice'])} | mIoU {_fmt(result['miou'])} | "
        f"pixel accuracy {_fmt(result['pixel_accuracy'])} | {result['n_pixels']} pixels in "
        f"{len(result['slices'])} slice(s)"
    )
    return "\n".join(lines)


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


class _OneSlice:
    """A 2D array seen as a one-slice volume without copying (zarr arrays cannot add axes)."""

    def __init__(self, array) -> None:
        self.array = array
        self.shape = (1, *array.shape)

    def __getitem__(self, z: int):
        return self.array


def _as_volume(array):
    if len(array.shape) == 2:
        return _OneSlice(array)
    if len(array.shape) != 3:
        raise WssegError(
            f"evaluate: got an array of shape {tuple(array.shape)}; give (Y, X) or (Z, Y, X) labels"
        )
    return array


def _check_same_shape(shape, expected, what: str, reference: str) -> None:
    if tuple(shape) != tuple(expected):
        raise WssegError(
            f"{what} has shape {tuple(shape)} but {reference} has shape {tuple(expected)}; "
            "they must cover the same pixels"
        )


def _check_ids(labels: np.ndarray, n_classes: int, what: str) -> None:
    if labels.dtype.kind not in "iub":
        raise WssegError(
            f"{what} has dtype {labels.dtype}; class ids must be integers (cast it with astype)"
        )
    if labels.size == 0:
        return
    low, high = int(labels.min()), int(labels.max())
    if low < 0 or high >= n_classes:
        bad = low if low < 0 else high
        raise WssegError(
            f"{what} contains class id {bad}, outside 0..{n_classes - 1}; "
            "pass the right n_classes or fix the labels"
        )


def _check_slices(slices, n_slices: int) -> list[int]:
    if slices is None:
        return list(range(n_slices))
    scored = sorted({int(z) for z in slices})
    if not scored:
        raise WssegError("evaluate: slices is empty; give at least one z index or None for all")
    bad = [z for z in scored if not 0 <= z < n_slices]
    if bad:
        raise WssegError(
            f"evaluate: slices {bad} are outside the volume's 0..{n_slices - 1}; "
            "pick z in that range"
        )
    return scored


def _accumulate(pred3, gt3, ignore3, scored: list[int], n_classes: int | None) -> np.ndarray:
    """Sum per-slice confusion matrices; grows the matrix when n_classes is inferred."""
    cm = np.zeros((n_classes or 0, n_classes or 0), dtype=np.int64)
    for z in scored:
        gt_z, pred_z = np.asarray(gt3[z]), np.asarray(pred3[z])
        keep = None if ignore3 is None else ~np.asarray(ignore3[z], dtype=bool)
        n = n_classes or _inferred_classes(gt_z, pred_z, len(cm))
        if n > len(cm):
            cm = np.pad(cm, ((0, n - len(cm)), (0, n - len(cm))))
        cm += confusion_matrix(pred_z, gt_z, len(cm), mask=keep)
    return cm


def _inferred_classes(gt_z: np.ndarray, pred_z: np.ndarray, current: int) -> int:
    top = max(int(gt_z.max(initial=0)), int(pred_z.max(initial=0)))
    return max(top + 1, current)


def _summarise(cm: np.ndarray, names: list[str], scored: list[int], background) -> dict:
    dice, iou = dice_per_class(cm), iou_per_class(cm)
    foreground = [k for k in range(len(cm)) if k != background]
    n_pixels = int(cm.sum())
    return {
        "class_names": names,
        "dice": _json_floats(dice),
        "iou": _json_floats(iou),
        "mean_fg_dice": _json_float(_nanmean(dice[foreground])),
        "mean_dice": _json_float(_nanmean(dice)),
        "miou": _json_float(_nanmean(iou)),
        "pixel_accuracy": _json_float(np.trace(cm) / n_pixels if n_pixels else math.nan),
        "slices": list(scored),
        "n_pixels": n_pixels,
        "background": background,
        "confusion_matrix": cm.tolist(),
    }


def _tp_fp_fn(cm: np.ndarray):
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    return tp, cm.sum(axis=0) - tp, cm.sum(axis=1) - tp


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=np.float64)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _json_float(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else value


def _json_floats(values) -> list:
    return [_json_float(v) for v in values]
