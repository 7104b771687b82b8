"""The size method's losses: forward KL on hand-computed values, zero avoidance, tag sizes, the
CRF loss against a naive double loop, partial CE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_wsseg.methods.size.losses import crf_loss, partial_ce, size_kl, tag_size_loss


def test_size_kl_matches_hand_computed_values():
    target = torch.tensor([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    mean = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.25, 0.75]])
    expected = [0.2 * math.log(0.2 / 0.5) + 0.8 * math.log(0.8 / 0.5), 0.0, math.log(1 / 0.25)]
    np.testing.assert_allclose(
        size_kl(target, mean, eps=0.0).numpy(), expected, rtol=1e-6, atol=1e-7
    )


def test_size_kl_is_forward_not_reverse():
    target = torch.tensor([[0.9, 0.1]])
    mean = torch.tensor([[0.6, 0.4]])
    forward = 0.9 * math.log(0.9 / 0.6) + 0.1 * math.log(0.1 / 0.4)
    reverse = 0.6 * math.log(0.6 / 0.9) + 0.4 * math.log(0.4 / 0.1)
    value = float(size_kl(target, mean, eps=0.0))
    assert value == pytest.approx(forward, rel=1e-6) and value != pytest.approx(reverse, rel=1e-2)


def test_size_kl_epsilon_keeps_a_vanished_class_finite():
    value = size_kl(torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]), eps=1e-6)
    assert torch.isfinite(value).all()
    assert float(value) == pytest.approx(
        0.5 * math.log(0.5 / (1 + 1e-6)) + 0.5 * math.log(0.5 / 1e-6), rel=1e-5
    )


def _mean_softmax_and_grad(target, logits):
    logits = logits.clone().requires_grad_(True)
    mean = torch.softmax(logits, dim=0).mean(dim=(1, 2))
    loss = size_kl(target[None], mean[None]).sum()
    loss.backward()
    return mean.detach(), logits.grad


def test_gradient_pushes_a_vanishing_target_class_up_and_harder_the_smaller_it_is():
    target = torch.tensor([0.7, 0.3])
    pushes = []
    for gap in (4.0, 10.0):  # class 1 has logit -gap everywhere: a small, then a vanishing size
        logits = torch.stack([torch.zeros(8, 8), torch.full((8, 8), -gap)])
        mean, grad = _mean_softmax_and_grad(target, logits)
        assert float(mean[1]) < 0.02
        assert bool((grad[1] < 0).all())  # descending the gradient raises class 1's logits
        pushes.append(-float(grad[1].sum()))
    assert pushes[1] > pushes[0] * 0.9  # the push does not fade as the class vanishes


def test_descending_the_size_loss_recovers_a_vanished_class_and_suppresses_an_absent_one():
    target = torch.tensor([0.6, 0.4, 0.0])
    logits = torch.stack(
        [torch.zeros(6, 6), torch.full((6, 6), -12.0), torch.zeros(6, 6)]
    ).requires_grad_(True)
    for _ in range(40):  # plain gradient descent
        mean = torch.softmax(logits, dim=0).mean(dim=(1, 2))
        (grad,) = torch.autograd.grad(size_kl(target[None], mean[None]).sum(), logits)
        logits = (logits - 100.0 * grad).detach().requires_grad_(True)
    final = torch.softmax(logits, dim=0).mean(dim=(1, 2)).detach()
    np.testing.assert_allclose(final.numpy(), target.numpy(), atol=0.03)


def test_tag_size_loss_penalises_absent_and_too_small_present_classes_only():
    present = torch.tensor([[True, True, False]])
    assert float(tag_size_loss(present, torch.tensor([[0.6, 0.4, 0.0]]), 0.01)) == pytest.approx(
        0.0, abs=1e-6
    )
    absent_predicted = float(tag_size_loss(present, torch.tensor([[0.5, 0.3, 0.2]]), 0.01))
    assert absent_predicted == pytest.approx(-math.log(0.8), rel=1e-4)
    too_small = float(tag_size_loss(present, torch.tensor([[0.999, 0.001, 0.0]]), 0.01))
    assert too_small == pytest.approx(math.log(0.01 / 0.001), rel=1e-3)


def _naive_crf(probabilities, image, valid, radius, sigma_intensity, sigma_xy):
    """Sum_k S_k^T W (1 - S_k) with W built pixel pair by pixel pair (reference only)."""
    n_classes, height, width = probabilities.shape
    coords = [(y, x) for y in range(height) for x in range(width)]
    s = probabilities.reshape(n_classes, -1)
    w = np.zeros((len(coords), len(coords)))
    for i, (yi, xi) in enumerate(coords):
        for j, (yj, xj) in enumerate(coords):
            near = i != j and abs(yi - yj) <= radius and abs(xi - xj) <= radius
            if near and valid[yi, xi] and valid[yj, xj]:
                colour = np.sum((image[:, yi, xi] - image[:, yj, xj]) ** 2) / (
                    2 * sigma_intensity**2
                )
                space = ((yi - yj) ** 2 + (xi - xj) ** 2) / (2 * sigma_xy**2)
                w[i, j] = np.exp(-colour - space)
    total = sum(s[k] @ w @ (1 - s[k]) for k in range(n_classes))
    return total / valid.sum()


def test_crf_loss_equals_a_naive_double_loop():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 6))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=0)
    image = rng.random((2, 5, 6))
    valid = np.ones((5, 6), bool)
    valid[4, 3:] = False
    expected = _naive_crf(probabilities, image, valid, radius=2, sigma_intensity=0.3, sigma_xy=1.2)
    value = crf_loss(
        torch.tensor(probabilities[None]),
        torch.tensor(image[None]),
        torch.tensor(valid[None]),
        radius=2,
        sigma_intensity=0.3,
        sigma_xy=1.2,
    )
    assert float(value) == pytest.approx(expected, rel=1e-10)


def test_crf_loss_prefers_boundaries_on_intensity_edges():
    image = torch.zeros(1, 1, 8, 8)
    image[..., 4:] = 1.0  # an edge between columns 3 and 4
    on_edge = torch.zeros(1, 2, 8, 8)
    on_edge[:, 0, :, :4] = 1
    on_edge[:, 1, :, 4:] = 1
    off_edge = torch.roll(on_edge, 2, dims=-1)
    uniform = torch.zeros(1, 2, 8, 8)
    uniform[:, 0] = 1
    assert float(crf_loss(uniform, image)) == 0.0
    assert float(crf_loss(on_edge, image)) < 0.01 * float(crf_loss(off_edge, image))


def test_partial_ce_ignores_unlabeled_pixels():
    logits = torch.tensor([[[[2.0, -5.0]], [[0.0, 5.0]]]], requires_grad=True)  # (1, 2, 1, 2)
    value = partial_ce(logits, torch.tensor([[[0, -1]]]))
    assert float(value.detach()) == pytest.approx(math.log(1 + math.exp(-2.0)), rel=1e-6)
    value.backward()
    assert float(logits.grad[0, :, 0, 1].abs().sum()) == 0.0
    empty = partial_ce(logits, torch.full((1, 1, 2), -1))
    assert float(empty.detach()) == 0.0 and empty.requires_grad
