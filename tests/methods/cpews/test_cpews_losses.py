"""Each CPEWS loss against a naive loop on tiny tensors; CAM shapes; pools and prototypes."""

from __future__ import annotations

import math

import pytest
import torch

from napari_wsseg.methods.cpews.losses import (
    PrototypePools,
    anchor_features,
    batched_kmeans,
    box_mil_loss,
    class_activation_maps,
    classification_loss,
    exclusion_loss,
    ism_loss,
    ism_pseudo_labels,
    pdl_loss,
    ssl_loss,
)

B, C, D, H, W = 2, 3, 4, 3, 3


@pytest.fixture
def data():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(B, D, H, W, generator=gen)
    valid = torch.ones(B, H, W, dtype=torch.bool)
    valid[1, 2, :] = False  # the second image's last token row is padding
    y = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    classifier = torch.nn.Conv2d(D, C, 1, bias=False)
    with torch.no_grad():
        classifier.weight.copy_(torch.randn(C, D, 1, 1, generator=gen))
    return features, valid, y, classifier


def _tokens(features, valid, b):
    """The valid tokens of image b as a list of (index, (D,) vector)."""
    return [(i * W + j, features[b, :, i, j]) for i in range(H) for j in range(W) if valid[b, i, j]]


def test_classification_loss_is_the_soft_margin_of_max_pooled_valid_tokens(data):
    features, valid, y, classifier = data
    loss, logits = classification_loss(features, valid, classifier, y)
    weight = classifier.weight[:, :, 0, 0]
    expected = 0.0
    for b in range(B):
        pooled = torch.stack([v for _, v in _tokens(features, valid, b)]).amax(dim=0)
        for c in range(C):
            x = float(weight[c] @ pooled)
            assert logits[b, c].item() == pytest.approx(x, abs=1e-5)
            sig = 1 / (1 + math.exp(-x))
            expected -= y[b, c].item() * math.log(sig) + (1 - y[b, c].item()) * math.log(1 - sig)
    assert loss.item() == pytest.approx(expected / (B * C), abs=1e-5)


def test_cams_are_relu_of_the_classifier_at_every_token(data):
    features, _, _, classifier = data
    cams = class_activation_maps(features, classifier)
    assert cams.shape == (B, C, H, W) and (cams >= 0).all()
    weight = classifier.weight[:, :, 0, 0]
    for b, c, i, j in [(0, 0, 0, 0), (1, 2, 2, 1), (0, 1, 1, 2)]:
        assert cams[b, c, i, j].item() == pytest.approx(
            max(0.0, float(weight[c] @ features[b, :, i, j])), abs=1e-5
        )
    assert (cams == 0).any()  # some tokens are negative for some class and clipped


def test_pseudo_labels_follow_alpha_and_beta():
    cams = torch.zeros(1, 3, 1, 4)
    cams[0, 0] = torch.tensor([[1.0, 0.9, 0.5, 0.8]])  # class 0 normalised: 1.0, 0.9, 0.5, 0.8
    cams[0, 1] = torch.tensor([[0.0, 0.1, 0.0, 1.0]])  # class 1 normalised: 0, 0.1, 0, 1.0
    cams[0, 2] = torch.tensor([[9.0, 9.0, 9.0, 9.0]])  # class 2 is not in the image: ignored
    y = torch.tensor([[1.0, 1.0, 0.0]])
    valid = torch.ones(1, 1, 4, dtype=torch.bool)
    labels = ism_pseudo_labels(cams, valid, y, alpha=0.25, beta=0.7)
    # token 0: 1.0 >= beta, other 0 < alpha -> 0; token 1: 0.9 / 0.1 -> 0;
    # token 2: 0.5 < beta -> -1; token 3: both high -> -1
    assert labels.tolist() == [[[0, 0, -1, -1]]]
    single = ism_pseudo_labels(cams, valid, torch.tensor([[0.0, 1.0, 0.0]]), 0.25, 0.7)
    assert single.tolist() == [[[1, 1, 1, 1]]]  # one tagged class: every token is of it
    valid[0, 0, 0] = False
    assert ism_pseudo_labels(cams, valid, y, 0.25, 0.7)[0, 0, 0].item() == -1


def test_ism_loss_equals_a_loop_over_token_pairs(data):
    features = data[0]
    labels = torch.tensor(
        [[[0, 0, 1], [1, -1, 2], [0, 2, 2]], [[1, 1, 1], [0, 0, -1], [-1, -1, -1]]]
    )
    pos_sum = neg_sum = 0.0
    pos_n = neg_n = 0
    for b in range(B):
        flat = labels[b].flatten().tolist()
        vecs = features[b].flatten(1).T
        for i in range(H * W):
            for j in range(H * W):
                if i == j or flat[i] < 0 or flat[j] < 0:
                    continue
                cos = torch.nn.functional.cosine_similarity(vecs[i], vecs[j], dim=0).item()
                if flat[i] == flat[j]:
                    pos_sum, pos_n = pos_sum + 1 - cos, pos_n + 1
                else:
                    neg_sum, neg_n = neg_sum + max(cos, 0.0), neg_n + 1
    expected = pos_sum / pos_n + neg_sum / neg_n
    assert ism_loss(features, labels).item() == pytest.approx(expected, abs=1e-5)


def test_anchor_features_are_cam_weighted_means(data):
    features, valid, _, classifier = data
    cams = class_activation_maps(features, classifier)
    anchors = anchor_features(features, cams, valid)
    assert anchors.shape == (B, C, D)
    for b in range(B):
        for c in range(C):
            weights = [(cams[b, c].flatten()[i], v) for i, v in _tokens(features, valid, b)]
            total = sum(w for w, _ in weights)
            expected = sum(w * v for w, v in weights) / (total + 1e-6)
            torch.testing.assert_close(anchors[b, c], expected, atol=1e-4, rtol=1e-4)


def _prototypes():
    gen = torch.Generator().manual_seed(1)
    p_pos = torch.randn(C, 2, D, generator=gen)
    p_neg = torch.randn(C, 2, D, generator=gen)
    pos_valid = torch.tensor([[True, True], [True, False], [True, True]])
    neg_valid = torch.tensor([[True, False], [True, True], [False, False]])  # class 2: no negatives
    return p_pos, pos_valid, p_neg, neg_valid


def test_pdl_loss_equals_a_loop_over_present_classes():
    gen = torch.Generator().manual_seed(2)
    anchors = torch.randn(B, C, D, generator=gen)
    y = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    p_pos, pos_valid, p_neg, neg_valid = _prototypes()
    t = 13.0
    total, count = 0.0, 0
    for b in range(B):
        for c in range(C):
            if y[b, c] < 0.5 or not pos_valid[c].any() or not neg_valid[c].any():
                continue  # class 2 has no negative prototype
            centre = p_pos[c][pos_valid[c]].mean(dim=0)
            r_pos = math.exp(-(anchors[b, c] - centre).norm().item() / t)
            nearest = min((anchors[b, c] - p).norm().item() for p in p_neg[c][neg_valid[c]])
            r_neg = math.exp(-nearest / t)
            total += math.log(r_pos) + math.log(1 - r_neg)
            count += 1
    assert count == 3
    loss = pdl_loss(anchors, y, p_pos, pos_valid, p_neg, neg_valid, t)
    assert loss.item() == pytest.approx(-total / count, abs=1e-5)


def test_ssl_loss_equals_a_loop_over_suppressed_pixels(data):
    features, valid, y, classifier = data
    cams = class_activation_maps(features, classifier)
    p_pos, pos_valid, p_neg, neg_valid = _prototypes()
    total, count = 0.0, 0
    for b in range(B):
        for c in range(C):
            if y[b, c] < 0.5 or not neg_valid[c].any():
                continue
            for i, vec in _tokens(features, valid, b):
                near_neg = min((vec - p).norm().item() for p in p_neg[c][neg_valid[c]])
                near_pos = min((vec - p).norm().item() for p in p_pos[c][pos_valid[c]])
                if near_neg < near_pos:
                    total += cams[b, c].flatten()[i].item()
                    count += 1
    assert count > 0
    loss = ssl_loss(features, cams, valid, y, p_pos, pos_valid, p_neg, neg_valid)
    assert loss.item() == pytest.approx(total / count, abs=1e-5)


def test_kmeans_finds_two_separated_clusters_per_class():
    points = torch.zeros(2, 6, 2)
    points[0] = torch.tensor(
        [[0, 0], [10, 10], [0, 1], [10, 11], [1, 0], [11, 10]], dtype=torch.float
    )
    points[1, :3] = torch.tensor([[5, 5], [5, 6], [6, 5]], dtype=torch.float)  # 3 entries filled
    filled = torch.tensor([[True] * 6, [True] * 3 + [False] * 3])
    centres, valid = batched_kmeans(points, filled, k=2, iters=10)
    found = sorted(tuple(c.tolist()) for c in centres[0])
    assert found == [pytest.approx((1 / 3, 1 / 3)), pytest.approx((31 / 3, 31 / 3))]
    assert valid.tolist() == [[True, True], [True, True]]
    # class 1's three entries: the unfilled entries never pull a centre
    assert centres[1].min().item() >= 5.0


def test_pools_fill_ring_wise_and_give_topk_negatives():
    pools = PrototypePools(n_classes=2, dim=1, size=3, k=2, kmeans_iters=0)
    assert not pools.ready().any()
    anchors = torch.arange(4, dtype=torch.float).reshape(2, 2, 1)  # image b, class c -> 2b + c
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    scores = torch.tensor([[0.9, 0.2], [0.1, 0.7]])
    pools.update(anchors, y, scores)
    assert pools.pos_count.tolist() == [2, 0] and pools.neg_count.tolist() == [0, 2]
    assert pools.pos[0, :2, 0].tolist() == [0.0, 2.0] and pools.neg[1, :2, 0].tolist() == [1.0, 3.0]
    pools.update(anchors + 10, y, scores)  # class 0's third and fourth entries wrap to slot 0
    assert pools.pos[0, :, 0].tolist() == [12.0, 2.0, 10.0]
    assert pools.ready().tolist() == [False, False]
    pools.update(anchors, torch.tensor([[0.0, 1.0], [0.0, 1.0]]), scores)
    assert pools.ready().tolist() == [True, True]
    _, _, p_neg, neg_valid = pools.prototypes()
    # class 1's negatives: 1 (score .2), 3 (.7), 11 (.2), 13 (.7) in a ring of 3 -> 13, 3, 11
    assert sorted(p_neg[1, :, 0].tolist()) == [3.0, 13.0] and neg_valid[1].all()
    # class 0's negatives were added last: anchors 0 (score .9) and 2 (.1) -> both, .9 first
    assert p_neg[0, :, 0].tolist() == [0.0, 2.0]


def test_classification_loss_counts_only_known_classes(data):
    features, valid, y, classifier = data
    known = torch.tensor([[True, False, False], [True, True, True]])  # image 0: a box of class 0
    loss, logits = classification_loss(features, valid, classifier, y, known)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = (bce(logits[0, :1], y[0, :1]) + bce(logits[1], y[1])) / 2
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    everything = classification_loss(features, valid, classifier, y, torch.ones(B, C, dtype=bool))
    assert everything[0].item() == pytest.approx(
        classification_loss(features, valid, classifier, y)[0].item(), abs=1e-6
    )


def test_pools_take_negatives_only_where_a_class_is_known_absent():
    pools = PrototypePools(n_classes=3, dim=1, size=4, k=2, kmeans_iters=0)
    anchors = torch.zeros(1, 3, 1)
    y = torch.tensor([[1.0, 0.0, 0.0]])  # a box of class 0; class 2 ruled out, class 1 unknown
    pools.update(anchors, y, torch.zeros(1, 3), absent=torch.tensor([[False, False, True]]))
    assert pools.pos_count.tolist() == [1, 0, 0] and pools.neg_count.tolist() == [0, 0, 1]


def test_box_mil_loss_is_the_best_pixel_of_each_box_row_and_column():
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 4, 5, generator=gen)
    box = torch.zeros(2, 4, 5, dtype=torch.bool)
    box[0, 1:3, 1:4] = True  # rows 1-2, columns 1-3
    box[1, :, :] = True  # image 1 has no boxed class: its pixels do not count
    boxed = torch.tensor([[False, True, True], [False, False, False]])
    log_p = torch.log_softmax(logits, dim=1)
    terms = []
    for c in (1, 2):
        terms += [max(log_p[0, c, r, x].item() for x in range(1, 4)) for r in (1, 2)]
        terms += [max(log_p[0, c, r, x].item() for r in (1, 2)) for x in (1, 2, 3)]
    expected = -sum(terms) / len(terms)
    assert box_mil_loss(logits, box, boxed).item() == pytest.approx(expected, abs=1e-5)
    assert box_mil_loss(logits, box, torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


def test_exclusion_loss_is_minus_log_of_the_allowed_probability():
    gen = torch.Generator().manual_seed(2)
    logits = torch.randn(1, 3, 2, 2, generator=gen)
    allowed = torch.ones(1, 3, 2, 2, dtype=torch.bool)
    allowed[0, 1, 0, :] = False  # class 1 ruled out of the first row
    counted = torch.tensor([[[True, True], [False, True]]])
    p = torch.softmax(logits, dim=1)[0]
    expected = [-torch.log(p[0, 0, x] + p[2, 0, x]).item() for x in (0, 1)] + [0.0]
    loss = exclusion_loss(logits, allowed, counted)
    assert loss.item() == pytest.approx(sum(expected) / 3, abs=1e-5)


def test_negatives_from_images_with_a_sibling_class_are_left_out_of_ssl_prototypes():
    pools = PrototypePools(n_classes=3, dim=1, size=4, k=2, kmeans_iters=0)
    siblings = torch.tensor([[False, True, False], [True, False, False], [False, False, False]])
    anchors = torch.tensor([[[0.0], [1.0], [2.0]], [[3.0], [4.0], [5.0]]])
    y = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # class 1 (0's sibling), then class 2
    scores = torch.tensor([[0.9, 0.0, 0.1], [0.5, 0.3, 0.0]])
    pools.update(anchors, y, scores, siblings=siblings)
    # class 0's negatives: image 0 holds its sibling 1, image 1 does not
    assert pools.neg_sibling[0, :2].tolist() == [True, False]
    assert not pools.neg_sibling[1:].any()
    all_neg, all_valid = pools.negative_prototypes()
    assert all_neg[0, :, 0].tolist() == [0.0, 3.0] and all_valid[0].all()
    kept, kept_valid = pools.negative_prototypes(without_siblings=True)
    assert kept[0, 0, 0].item() == 3.0 and kept_valid[0].tolist() == [True, False]
    assert torch.equal(kept[2], all_neg[2])  # class 2 has no sibling: the same negatives
