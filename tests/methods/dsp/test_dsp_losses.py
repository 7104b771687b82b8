"""DSP losses: each pooling on hand-computed examples, log Z and the whole loss against a naive
reference that loops over pixels, classes and positives exactly as Eq. 6-9 are written."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from napari_wsseg.engine.augment import Geometry
from napari_wsseg.engine.prototype_losses import ce_loss, dsp_loss, filtered_pseudo_labels
from napari_wsseg.engine.weak_losses import log_partition, positives
from napari_wsseg.engine.weak_targets import BatchTargets, CropTargets, collate, transform_targets

WEIGHTS = {"mask": 0.1, "box": 0.2, "point": 0.3, "tag": 0.4}


def _targets(batch=1, classes=2, size=4, **given) -> BatchTargets:
    """Empty targets of a (batch, classes, size, size) batch, overridden by ``given``."""
    valid = [np.ones((size, size), bool)] * batch
    return dataclasses.replace(collate([CropTargets.empty(size, classes)] * batch, valid), **given)


# --------------------------------------------------------------------------------- pooling
def test_mask_positive_is_the_mean_over_each_component():
    logits = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    components = torch.tensor([[[1, 1, 0], [0, 0, 2], [0, 0, 2]]])
    targets = _targets(size=3, components=components, component_classes=torch.tensor([0, 1]))
    values, classes = positives(logits, targets)["mask"]
    # component 1: class 0 at (0,0),(0,1) -> (0+1)/2;
    # component 2: class 1 at (1,2),(2,2) -> (14+17)/2
    assert values.tolist() == [0.5, 15.5] and classes.tolist() == [0, 1]


def test_point_positive_is_the_pixel_itself():
    logits = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(1, 2, 3, 3)
    labels = torch.full((1, 3, 3), -1)
    labels[0, 2, 1] = 1
    labels[0, 0, 0] = 0
    is_point = labels >= 0
    labels[0, 1, 1] = 0  # a mask pixel: not a point positive
    values, classes = positives(logits, _targets(size=3, labels=labels, is_point=is_point))["point"]
    assert values.tolist() == [0.0, 16.0] and classes.tolist() == [0, 1]


def test_tag_positive_is_the_mean_over_valid_pixels():
    logits = torch.arange(2 * 2 * 2, dtype=torch.float32).reshape(1, 2, 2, 2)
    valid = torch.tensor([[[True, True], [True, False]]])
    tagged = torch.tensor([[False, True]])
    values, classes = positives(logits, _targets(size=2, valid=valid, tagged=tagged))["tag"]
    assert values.tolist() == [pytest.approx((4 + 5 + 6) / 3)] and classes.tolist() == [1]


def test_max_tag_pooling_scores_the_best_pixel_of_a_region_tag():
    """tag_pooling "max": the tag term is the cross-entropy of the tagged class at the pixel of
    its region where that class scores highest; pixels outside the region do not count."""
    logits = torch.zeros(1, 2, 4, 4, dtype=torch.float64)
    logits[0, 1, 0, 0] = 9.0  # outside the region: ignored
    logits[0, 1, 2, 3] = 2.0  # the region's best pixel of class 1
    logits[0, 0, 2, 3] = 0.5
    targets = _targets(
        size=4,
        region_boxes=torch.tensor([[1, 1, 3, 3]]),
        region_index=torch.tensor([0]),
        region_classes=torch.tensor([1]),
    )
    weights = {"mask": 0.0, "box": 0.0, "point": 0.0, "tag": 1.0}
    term = dsp_loss(logits, targets, weights, tag_pooling="max")["dsp_tag"]
    assert float(term) == pytest.approx(math.log(math.exp(0.5) + math.exp(2.0)) - 2.0)
    mean_term = dsp_loss(logits, targets, weights, tag_pooling="mean")["dsp_tag"]
    assert float(mean_term) != pytest.approx(float(term))


def test_box_positives_are_row_and_column_maxima():
    logits = torch.zeros(1, 2, 4, 5)
    logits[0, 1] = torch.tensor(
        [
            [9, 9, 9, 9, 9],
            [9, 1, 2, 3, 9],
            [9, 6, 5, 4, 9],
            [9, 9, 9, 9, 9],
        ],
        dtype=torch.float32,
    )
    targets = _targets(
        size=4,
        classes=2,
        boxes=torch.tensor([[1, 1, 2, 3]]),
        box_index=torch.tensor([0]),
        box_classes=torch.tensor([1]),
        box_rows_valid=torch.tensor([True]),
        box_cols_valid=torch.tensor([True]),
    )
    targets.valid = torch.ones(1, 4, 5, dtype=torch.bool)
    values, classes = positives(logits, targets)["box"]
    # rows 1, 2 -> max 3, 6; columns 1, 2, 3 -> max 6, 5, 4
    assert values.tolist() == [3.0, 6.0, 6.0, 5.0, 4.0] and classes.tolist() == [1] * 5


def test_clipped_box_keeps_only_complete_rows_or_columns():
    logits = torch.arange(4 * 4, dtype=torch.float32).reshape(1, 1, 4, 4).expand(1, 2, 4, 4).clone()
    targets = _targets(
        size=4,
        boxes=torch.tensor([[0, 1, 1, 2]]),
        box_index=torch.tensor([0]),
        box_classes=torch.tensor([0]),
        box_rows_valid=torch.tensor([False]),
        box_cols_valid=torch.tensor([True]),
    )
    values, _ = positives(logits, targets)["box"]
    assert values.tolist() == [5.0, 6.0]  # column maxima only


# --------------------------------------------------------------------------- negatives, log Z
def _naive_log_z(logits, allowed, valid):
    batch, n_classes, height, width = logits.shape
    out = []
    for c in range(n_classes):
        total = 0.0
        for b in range(batch):
            for y in range(height):
                for x in range(width):
                    if not valid[b, y, x]:
                        continue
                    for k in range(n_classes):
                        if (not allowed[b, c, y, x]) or k != c:
                            total += math.exp(float(logits[b, k, y, x]))
        out.append(math.log(total))
    return out


def test_log_partition_uses_exactly_the_negative_set_of_eq_8():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 4, 5, generator=gen, dtype=torch.float64) * 5
    allowed = torch.rand(2, 3, 4, 5, generator=gen) > 0.4
    valid = torch.rand(2, 4, 5, generator=gen) > 0.2
    expected = _naive_log_z(logits, allowed, valid)
    np.testing.assert_allclose(log_partition(logits, allowed, valid).numpy(), expected, rtol=1e-10)


def test_pair_j_c_is_a_negative_only_where_c_is_excluded():
    # two pixels, two classes; class 0 is allowed at pixel 0 only
    logits = torch.log(torch.tensor([[[[1.0, 2.0]], [[4.0, 8.0]]]], dtype=torch.float64))
    allowed = torch.tensor([[[[True, False]], [[True, True]]]])
    log_z = log_partition(logits, allowed, torch.ones(1, 1, 2, dtype=torch.bool))
    # Z_0 = class-1 terms (4 + 8) + class-0 term where 0 is excluded (pixel 1: 2) = 14
    # Z_1 = class-0 terms (1 + 2), class 1 allowed everywhere = 3
    np.testing.assert_allclose(log_z.exp().numpy(), [14.0, 3.0])


# ------------------------------------------------------------------------ whole L_DSP vs naive
def _naive_dsp(logits, t: BatchTargets, weights):
    batch, n_classes, height, width = logits.shape
    log_z = _naive_log_z(logits, t.allowed, t.valid)
    found = {kind: [] for kind in weights}
    for b in range(batch):
        for y in range(height):
            for x in range(width):
                if t.is_point[b, y, x] and t.labels[b, y, x] >= 0:
                    c = int(t.labels[b, y, x])
                    found["point"].append((float(logits[b, c, y, x]), c))
        for c in range(n_classes):
            if t.tagged[b, c]:
                pixels = [
                    float(logits[b, c, y, x])
                    for y in range(height)
                    for x in range(width)
                    if t.valid[b, y, x]
                ]
                found["tag"].append((sum(pixels) / len(pixels), c))
    for m, c in enumerate(t.component_classes.tolist()):
        pixels = [
            float(logits[b, c, y, x]) for b, y, x in zip(*np.nonzero(t.components.numpy() == m + 1))
        ]
        found["mask"].append((sum(pixels) / len(pixels), c))
    for (y0, x0, y1, x1), b, c, rows_ok, cols_ok in zip(
        t.boxes.tolist(),
        t.box_index.tolist(),
        t.box_classes.tolist(),
        t.box_rows_valid,
        t.box_cols_valid,
    ):
        # boxes: cross-entropy of the box class at the pixel holding each row's / column's maximum
        if rows_ok:
            for y in range(y0, y1 + 1):
                x = max(range(x0, x1 + 1), key=lambda x: float(logits[b, c, y, x]))
                found["box"].append(_naive_pixel_ce(logits, b, c, y, x))
        if cols_ok:
            for x in range(x0, x1 + 1):
                y = max(range(y0, y1 + 1), key=lambda y: float(logits[b, c, y, x]))
                found["box"].append(_naive_pixel_ce(logits, b, c, y, x))
    total = 0.0
    for kind, items in found.items():
        if items and kind == "box":
            total += weights[kind] * sum(items) / len(items)
        elif items:
            total += weights[kind] * sum(log_z[c] - v for v, c in items) / len(items)
    return total


def _naive_pixel_ce(logits, b: int, c: int, y: int, x: int) -> float:
    values = [float(logits[b, k, y, x]) for k in range(logits.shape[1])]
    return math.log(sum(math.exp(v) for v in values)) - values[c]


def _random_targets(gen, batch=2, classes=3, size=6) -> BatchTargets:
    labels = torch.full((batch, size, size), -1)
    components = torch.zeros(batch, size, size, dtype=torch.long)
    labels[0, 0:2, 0:3] = 1  # a mask component of class 1
    components[0, 0:2, 0:3] = 1
    labels[1, 3:5, 3:4] = 2  # and one of class 2
    components[1, 3:5, 3:4] = 2
    is_point = torch.zeros(batch, size, size, dtype=torch.bool)
    for b, y, x, c in [(0, 4, 4, 0), (1, 0, 5, 1), (1, 2, 2, 0)]:
        labels[b, y, x], is_point[b, y, x] = c, True
    allowed = torch.rand(batch, classes, size, size, generator=gen) > 0.3
    known = labels >= 0
    one_hot = torch.nn.functional.one_hot(labels.clamp(min=0), classes).permute(0, 3, 1, 2).bool()
    allowed = torch.where(known[:, None], one_hot, allowed)
    return _targets(
        batch=batch,
        classes=classes,
        size=size,
        labels=labels,
        is_point=is_point,
        components=components,
        component_classes=torch.tensor([1, 2]),
        allowed=allowed,
        valid=torch.rand(batch, size, size, generator=gen) > 0.1,
        boxes=torch.tensor([[1, 1, 3, 4], [0, 2, 5, 2], [2, 0, 2, 5]]),
        box_index=torch.tensor([0, 1, 1]),
        box_classes=torch.tensor([2, 0, 1]),
        box_rows_valid=torch.tensor([True, False, True]),
        box_cols_valid=torch.tensor([True, True, False]),
        tagged=torch.tensor([[True, False, True], [False, False, False]]),
    )


def test_vectorised_dsp_loss_equals_the_naive_reference():
    gen = torch.Generator().manual_seed(1)
    logits = (torch.rand(2, 3, 6, 6, generator=gen, dtype=torch.float64) * 2 - 1) / 0.05
    targets = _random_targets(gen)
    terms = dsp_loss(logits, targets, WEIGHTS)
    assert float(terms["dsp"]) == pytest.approx(_naive_dsp(logits, targets, WEIGHTS), rel=1e-9)
    assert all(float(terms[f"dsp_{kind}"]) > 0 for kind in WEIGHTS)


def test_exclusions_outside_the_contrastive_term_leave_z_to_the_other_classes():
    """exclusions "pseudo_labels" / "partial_ce": an unlabelled pixel is no negative of a class
    its A(j) excludes (labelled pixels still are); "partial_ce" adds the partial cross-entropy
    on the pixels whose A(j) excludes a class."""
    from napari_wsseg.engine.weak_losses import partial_ce_loss

    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64) * 3
    targets = _random_targets(gen)
    unlabelled = (targets.labels < 0)[:, None]
    assert not bool((targets.allowed | ~unlabelled).all())  # unlabelled pixels exclude classes
    only_labelled = dataclasses.replace(targets, allowed=targets.allowed | unlabelled)
    plain = dsp_loss(logits, only_labelled, WEIGHTS)
    for exclusions in ("pseudo_labels", "partial_ce"):
        terms = dsp_loss(logits, targets, WEIGHTS, exclusions=exclusions)
        assert float(terms["dsp"]) == pytest.approx(float(plain["dsp"]), rel=1e-12)
    assert "exclusion" not in dsp_loss(logits, targets, WEIGHTS, exclusions="pseudo_labels")
    partial = dsp_loss(logits, targets, WEIGHTS, exclusions="partial_ce")["exclusion"]
    assert float(partial) > 0
    assert float(partial) == pytest.approx(float(partial_ce_loss(logits, targets)))
    contrastive = dsp_loss(logits, targets, WEIGHTS)
    assert float(contrastive["dsp"]) > float(plain["dsp"])  # extra negatives raise log Z_c
    labels_only = dsp_loss(logits, only_labelled, WEIGHTS, exclusions="pseudo_labels")
    assert float(labels_only["dsp"]) == pytest.approx(float(plain["dsp"]), rel=1e-12)


def test_dsp_loss_is_zero_without_positives_and_has_gradients_with_them():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    assert float(dsp_loss(logits, _targets(), WEIGHTS)["dsp"]) == 0.0
    targets = _targets(tagged=torch.tensor([[True, False]]))
    dsp_loss(logits, targets, WEIGHTS)["dsp"].backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_positives_are_invariant_to_the_crop_geometry():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 3, 6, 6, generator=gen, dtype=torch.float64)
    targets = _random_targets(gen)
    geometries = [Geometry(True, 1), Geometry(False, 3)]
    moved_logits = torch.stack([g.apply(x) for g, x in zip(geometries, logits)])
    moved = positives(moved_logits, transform_targets(targets, geometries))
    for kind, (values, classes) in positives(logits, targets).items():
        new_values, new_classes = moved[kind]
        before = sorted((round(v, 9), c) for v, c in zip(values.tolist(), classes.tolist()))
        after = sorted((round(v, 9), c) for v, c in zip(new_values.tolist(), new_classes.tolist()))
        assert before == after and len(before) > 0, kind
    assert float(
        dsp_loss(moved_logits, transform_targets(targets, geometries), WEIGHTS)["dsp"]
    ) == pytest.approx(float(dsp_loss(logits, targets, WEIGHTS)["dsp"]))


# ----------------------------------------------------------------------------- L_CE, L_PLF
def test_pseudo_labels_follow_the_allowed_classes():
    logits = torch.tensor([[[[5.0, 5.0, 5.0]], [[1.0, 1.0, 9.0]], [[0.0, 3.0, 0.0]]]])
    allowed = torch.tensor([[[[True, False, True]], [[True, True, False]], [[True, True, True]]]])
    valid = torch.tensor([[[True, True, False]]])
    # pixel 0: free argmax; pixel 1: class 0 excluded (e.g. outside its boxes); pixel 2: padding
    assert filtered_pseudo_labels(logits, allowed, valid).tolist() == [[[0, 2, -1]]]
    # with a confidence threshold, pixel 0 (about 0.98 for class 0) stays, pixel 1
    # (softmax of 1 vs 3 over classes 1, 2: 0.88) is dropped at 0.9
    assert filtered_pseudo_labels(logits, allowed, valid, threshold=0.9).tolist() == [[[0, -1, -1]]]


def test_ce_ignores_unknown_pixels_and_is_zero_without_labels():
    logits = torch.tensor([[[[4.0, 0.0]], [[0.0, 0.0]]]])
    assert float(ce_loss(logits, torch.tensor([[[-1, -1]]]))) == 0.0
    expected = -torch.log_softmax(logits[0, :, 0, 0], 0)[0]
    assert float(ce_loss(logits, torch.tensor([[[0, -1]]]))) == pytest.approx(float(expected))
