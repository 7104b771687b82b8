"""rewis3d: losses against naive references, a tiny fit, save/load/predict, 2D refusal, seams."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.errors import WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.rewis3d.losses import (
    consistency_loss,
    cross_view_loss,
    cross_view_weight,
    supervised_loss,
)
from napari_wsseg.methods.rewis3d.method import Rewis3dMethod
from napari_wsseg.predict.blocks import block_grid, block_region, predict_proba_region

TINY = {"max_steps": 10, "depth_2d": 2, "depth_3d": 2, "width": 4, "crop_z": 4, "crop_yx": 16}


def _softmax(v):
    e = [math.exp(a) for a in v]
    return [a / sum(e) for a in e]


def _random_logits(seed, shape=(1, 3, 2, 3, 4)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_supervised_loss_is_the_mean_ce_over_labelled_voxels():
    logits = _random_logits(0)
    target = torch.full((1, 2, 3, 4), -1)
    target[0, 0, 1, 2], target[0, 1, 2, 3] = 2, 0
    naive = []
    for (z, y, x), c in (((0, 1, 2), 2), ((1, 2, 3), 0)):
        probs = _softmax([float(logits[0, k, z, y, x]) for k in range(3)])
        naive.append(-math.log(probs[c]))
    assert float(supervised_loss(logits, target)) == pytest.approx(sum(naive) / 2, rel=1e-5)
    empty = supervised_loss(logits.requires_grad_(), torch.full((1, 2, 3, 4), -1))
    assert float(empty) == 0.0 and empty.requires_grad


def test_consistency_loss_is_kl_and_share_of_confident_teacher_voxels():
    student, teacher = _random_logits(1), 3 * _random_logits(2)
    unlabelled = torch.zeros((1, 2, 3, 4), dtype=torch.bool)
    unlabelled[0, 0] = True
    kl, w_t = consistency_loss(student, teacher, unlabelled, tau=0.7)
    kls, confident = [], 0
    for y in range(3):
        for x in range(4):
            pt = _softmax([float(teacher[0, k, 0, y, x]) for k in range(3)])
            ps = _softmax([float(student[0, k, 0, y, x]) for k in range(3)])
            kls.append(sum(a * (math.log(a) - math.log(b)) for a, b in zip(pt, ps)))
            confident += max(pt) >= 0.7
    assert float(kl) == pytest.approx(sum(kls) / 12, rel=1e-5)
    assert float(w_t) == pytest.approx(confident / 12)


def test_cross_view_loss_weights_hard_labels_by_teacher_confidence():
    student, teacher = _random_logits(3), 2 * _random_logits(4)
    valid = torch.ones((1, 2, 3, 4), dtype=torch.bool)
    valid[0, 1] = False
    terms = []
    for y in range(3):
        for x in range(4):
            pt = _softmax([float(teacher[0, k, 0, y, x]) for k in range(3)])
            ps = _softmax([float(student[0, k, 0, y, x]) for k in range(3)])
            label = max(range(3), key=lambda k: pt[k])
            terms.append(-max(pt) * math.log(ps[label]))
    assert float(cross_view_loss(student, teacher, valid)) == pytest.approx(
        sum(terms) / 12, rel=1e-5
    )


def test_cross_view_weight_is_zero_in_base_training_then_ramps():
    weights = [cross_view_weight(f / 10, 0.3, 0.2, 0.1) for f in range(11)]
    assert weights[:3] == [0.0] * 3 and weights[3] == 0.0
    assert weights[4] == pytest.approx(0.05) and weights[5:] == pytest.approx([0.1] * 6)


@pytest.fixture(scope="module")
def tiny_volume():
    rng = np.random.default_rng(0)
    volume = rng.normal(0.3, 0.05, (8, 32, 32)).astype(np.float32)
    volume[:, 8:20, 10:24] += 0.5  # a bright object through every slice
    points = [[z, 12, 15, 1] for z in (1, 5)] + [[z, 28, 3, 0] for z in (1, 5)]
    image = as_image(volume)
    image.voxel_size_zyx = (0.02, 0.005, 0.005)  # anisotropic: the 3D net pools y/x first
    return image, Annotations(default_classes(2), points=points)


@pytest.fixture(scope="module")
def trained(tiny_volume):
    image, annotations = tiny_volume
    method = Rewis3dMethod(**TINY)
    result = method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    return method, result


def test_fit_runs_its_steps_and_records_all_terms(trained):
    method, result = trained
    assert result.steps == 10 and result.stopped == "done"
    last = result.history[-1]
    for key in ("sup_2d", "sup_3d", "kl_2d", "kl_3d", "cross", "lambda"):
        assert key in last and np.isfinite(last[key])
    assert result.history[0]["lambda"] == 0.0  # base training: no cross-view term yet
    assert method.voxel_size_zyx == (0.02, 0.005, 0.005)


def test_save_load_predict_round_trip(trained, tiny_volume, tmp_path):
    method, _ = trained
    image = tiny_volume[0]
    block = np.asarray(image.data)
    before = method.predict_proba_block(block)
    assert before.shape == (2, 8, 32, 32)
    np.testing.assert_allclose(before.sum(axis=0), 1.0, atol=1e-5)
    reloaded = load_model(method.save(tmp_path / "model"))
    assert not list((tmp_path / "model").glob("*.pkl"))
    np.testing.assert_allclose(reloaded.predict_proba_block(block), before, atol=1e-6)
    assert reloaded.voxel_size_zyx == (0.02, 0.005, 0.005)


@pytest.mark.parametrize("inference", ["2d", "3d", "average"])
def test_block_wise_equals_whole_volume_for_every_inference(trained, tiny_volume, inference):
    method, _ = trained
    method.config = type(method.config)(**{**method.config.__dict__, "inference": inference})
    try:
        image = tiny_volume[0]
        assert (method.halo_z == 0) == (inference == "2d")
        whole = method.predict_proba_block(np.asarray(image.data))
        blockwise = np.empty_like(whole)
        for index in block_grid(image.shape, (3, 13, 11)):
            region = block_region(index, (3, 13, 11), image.shape)
            blockwise[(slice(None), *region)] = predict_proba_region(method, image, region)
        np.testing.assert_allclose(blockwise, whole, atol=1e-4)
    finally:
        method.config = type(method.config)(**{**method.config.__dict__, "inference": "2d"})


def test_2d_images_are_refused_in_one_line():
    image = as_image(np.zeros((32, 32), np.float32))
    annotations = Annotations(default_classes(2), points=[[0, 3, 3, 0], [0, 20, 20, 1]])
    with pytest.raises(WssegError) as info:
        Rewis3dMethod(**TINY).fit(image, annotations, FitOptions(device="cpu"))
    assert "needs a volume" in str(info.value) and "\n" not in str(info.value)


def test_bad_options_are_refused():
    with pytest.raises(WssegError, match="inference"):
        Rewis3dMethod(inference="both")
    with pytest.raises(WssegError, match="multiple of"):
        Rewis3dMethod(crop_yx=20)
