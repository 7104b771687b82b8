"""Shared weak losses against naive references that loop over pixels as the formulas read."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from napari_wsseg.engine.weak_losses import partial_ce_loss, tag_loss
from napari_wsseg.engine.weak_targets import BatchTargets, CropTargets, collate


def _targets(batch=2, classes=3, size=5, **given) -> BatchTargets:
    """Empty targets of a (batch, classes, size, size) batch, overridden by ``given``."""
    valid = [np.ones((size, size), bool)] * batch
    return dataclasses.replace(collate([CropTargets.empty(size, classes)] * batch, valid), **given)


def _probs(logits, b, y, x):
    values = [math.exp(float(v)) for v in logits[b, :, y, x]]
    return [v / sum(values) for v in values]


def test_partial_ce_equals_a_naive_loop_over_restricted_unlabelled_pixels():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64) * 3
    allowed = torch.rand(2, 3, 5, 5, generator=gen) > 0.4
    allowed[0, :, 0, 0] = False  # no class left (contradiction): left out
    allowed[0, :, 0, 1] = True  # nothing excluded: left out
    labels = torch.full((2, 5, 5), -1)
    labels[1, 2, 2] = 0  # a labelled pixel: the ordinary CE's, not this loss's
    valid = torch.rand(2, 5, 5, generator=gen) > 0.2
    targets = _targets(labels=labels, allowed=allowed, valid=valid)
    terms = []
    for b in range(2):
        for y in range(5):
            for x in range(5):
                kept = [c for c in range(3) if allowed[b, c, y, x]]
                if not valid[b, y, x] or labels[b, y, x] >= 0 or len(kept) in (0, 3):
                    continue
                p = _probs(logits, b, y, x)
                terms.append(-math.log(sum(p[c] for c in kept)))
    assert len(terms) > 10
    assert float(partial_ce_loss(logits, targets)) == pytest.approx(np.mean(terms), rel=1e-6)


def test_partial_ce_is_zero_when_nothing_is_excluded_and_trains_otherwise():
    logits = torch.zeros(1, 2, 3, 3, requires_grad=True)
    assert float(partial_ce_loss(logits, _targets(batch=1, classes=2, size=3))) == 0.0
    allowed = torch.ones(1, 2, 3, 3, dtype=torch.bool)
    allowed[0, 1] = False  # class 1 absent (e.g. a size of 0)
    loss = partial_ce_loss(logits, _targets(batch=1, classes=2, size=3, allowed=allowed))
    assert float(loss) == pytest.approx(math.log(2))
    loss.backward()
    assert (logits.grad[0, 0] < 0).all() and (logits.grad[0, 1] > 0).all()  # class 0 up, 1 down


def test_tag_loss_is_the_ce_at_the_best_pixel_of_each_slice_tag_and_region():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    valid = torch.ones(2, 5, 5, dtype=torch.bool)
    valid[0, 4] = False  # padding of crop 0: not a candidate
    tagged = torch.tensor([[True, False, True], [False, False, False]])
    targets = _targets(
        valid=valid,
        tagged=tagged,
        region_boxes=torch.tensor([[1, 1, 2, 3]]),
        region_index=torch.tensor([1]),
        region_classes=torch.tensor([1]),
    )
    positives = [(0, 0, lambda y, x: valid[0, y, x]), (0, 2, lambda y, x: valid[0, y, x])]
    positives.append((1, 1, lambda y, x: 1 <= y <= 2 and 1 <= x <= 3))
    terms = []
    for b, c, inside in positives:
        pixels = [(y, x) for y in range(5) for x in range(5) if inside(y, x)]
        y, x = max(pixels, key=lambda p: float(logits[b, c, p[0], p[1]]))
        terms.append(-math.log(_probs(logits, b, y, x)[c]))
    assert float(tag_loss(logits, targets)) == pytest.approx(np.mean(terms), rel=1e-9)
    assert float(tag_loss(logits, _targets())) == 0.0
