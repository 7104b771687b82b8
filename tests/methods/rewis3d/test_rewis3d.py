"""rewis3d: losses against naive references, a tiny fit, save/load/predict, 2D refusal, seams,
and learning from boxes, tags, sizes and region tags without a single click."""

from __future__ import annotations

import dataclasses
import json
import math
import threading
import warnings

import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.engine.ema import EMATeacher, debiased_momentum
from napari_wsseg.engine.prototypes import PrototypeUNet
from napari_wsseg.engine.unet3d import UNet3D
from napari_wsseg.errors import WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.rewis3d.losses import (
    consistency_loss,
    cross_view_loss,
    cross_view_weight,
    supervised_loss,
)
from napari_wsseg.methods.rewis3d.method import Rewis3dMethod, _Steps, _warm_schedule
from napari_wsseg.methods.warm import WarmStartWarning
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


def test_fit_runs_its_steps_with_a_prototype_2d_student(trained):
    method, result = trained
    assert result.steps == 10 and result.stopped == "done"
    assert all(np.isfinite(step["loss"]) for step in result.history)
    assert isinstance(method.net_2d, PrototypeUNet) and method.scale_2d == 20.0
    assert method.voxel_size_zyx == (0.02, 0.005, 0.005)


def _step_terms(method, image, annotations, fractions):
    """The terms of one training step of ``method`` (fitted on ``image``) at each fraction."""
    students = {"s2d": method.net_2d.train(), "s3d": method.net_3d.train()}
    teachers = {key: EMATeacher(net) for key, net in students.items()}
    steps = _Steps(method, image, annotations, teachers, torch.device("cpu"), seed=0)
    return [{k: float(v) for k, v in steps(0, f).items()} for f in fractions]


@pytest.mark.parametrize(
    "options, early, late",
    [
        # dsp's terms on the 2D student's own crops, L_PLF from plf_start; the 3D branch's
        # supervised and KL terms; the cross-view terms after base training
        ({}, {"ce_2d", "dsp_2d", "sup_3d", "kl_3d"}, {"plf_2d", "cross"}),
        ({"crops_2d": 0}, {"ce_2d", "dsp_2d", "sup_3d", "kl_3d", "cross"}, {"plf_2d"}),
        ({"student_2d": "classifier"}, {"sup_2d", "kl_2d", "sup_3d", "kl_3d"}, {"cross"}),
        (
            {"student_2d": "classifier", "crops_2d": 0},
            {"sup_2d", "kl_2d", "sup_3d", "kl_3d", "cross"},
            set(),
        ),
    ],
)
def test_each_2d_student_has_its_terms_early_and_late(tiny_volume, options, early, late):
    image, annotations = tiny_volume
    method = Rewis3dMethod(**{**TINY, "max_steps": 1, **options})
    method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    before, after = _step_terms(method, image, annotations, (0.1, 0.9))
    assert early <= set(before) and not late & set(before), before
    assert early | late <= set(after), after
    assert before["lambda"] == 0.0 and after["lambda"] == pytest.approx(0.1)
    assert all(np.isfinite(v) for v in (*before.values(), *after.values()))


def test_the_prototype_student_learns_its_own_crops_annotations(tiny_volume):
    """Every one of its 8 crops is anchored on a click (no random share): L_CE sees clicks at
    every step, while boxes of 4 slices hold at most one annotated slice."""
    image, annotations = tiny_volume
    options = {**TINY, "max_steps": 1, "branches": "2d", "random_crop_fraction_2d": 0}
    method = Rewis3dMethod(**options)
    method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    terms = _step_terms(method, image, annotations, [0.2] * 4)
    assert all(t["ce_2d"] > 0 and t["dsp_2d"] > 0 for t in terms), terms
    assert not {"sup_3d", "cross"} & set(terms[0])


class _StopAfter(threading.Event):
    """A cancel flag that reads as set from its ``n + 1``-th check on (one check per step)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.checks = n, 0

    def is_set(self) -> bool:
        self.checks += 1
        return self.checks > self.n


def test_kept_teachers_are_the_bias_corrected_average_of_the_students(tiny_volume):
    """Without a term that feeds the teacher back (3D branch alone, beta 0) the student runs the
    same with and without keep_teachers. Two steps of a 20-step schedule (step 0 has learning
    rate 0: warm-up); the kept teacher is the debiased EMA of the initial and the last student,
    with momentum 0.5 (0.6 lowered to span a tenth of 20 steps)."""
    image, annotations = tiny_volume
    options = {**TINY, "max_steps": 20, "branches": "3d", "inference": "3d", "beta": 0.0}
    fitted = {}
    for keep in (False, True):
        method = Rewis3dMethod(**options, keep_teachers=keep, ema_momentum=0.6)
        cancel = _StopAfter(2)
        result = method.fit(image, annotations, FitOptions(device="cpu", seed=0, cancel=cancel))
        assert result.steps == 2
        fitted[keep] = dict(method.net_3d.named_parameters())
    torch.manual_seed(0)
    method._new_net_2d()
    initial = dict(UNet3D(method._config_3d()).named_parameters())
    b = debiased_momentum(0.5, 2)
    for name, kept in fitted[True].items():
        expected = b * initial[name] + (1 - b) * fitted[False][name]
        torch.testing.assert_close(kept, expected, atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(fitted[True][k], fitted[False][k]) for k in initial)


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
    with pytest.raises(WssegError, match="student_2d='unet' must be one of"):
        Rewis3dMethod(student_2d="unet")


def test_a_model_folder_from_before_the_prototype_student_loads_as_it_was_trained(
    tiny_volume, tmp_path
):
    """Older folders lack student_2d and keep_teachers: they hold a classifier 2D student."""
    image, annotations = tiny_volume
    method = Rewis3dMethod(**{**TINY, "max_steps": 2, "student_2d": "classifier"})
    method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    folder = method.save(tmp_path / "older")
    meta = json.loads((folder / "config.json").read_text())
    added = ("student_2d", "keep_teachers", "crops_2d", "embed_dim", "plf_start")
    meta["config"] = {k: v for k, v in meta["config"].items() if k not in added}
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = load_model(folder)
    assert loaded.config.student_2d == "classifier" and not loaded.config.keep_teachers
    block = np.asarray(image.data)
    np.testing.assert_allclose(
        loaded.predict_proba_block(block), method.predict_proba_block(block), atol=1e-6
    )


# ------------------------------------------------------- boxes, tags, sizes and region tags
WEAK = {**TINY, "max_steps": 60, "crop_yx": 32, "lr": 0.01}


@pytest.fixture(scope="module")
def weak_volume():
    """(image, truth): a bright object of 12 x 14 pixels in slices 0-4 of 8, none in 5-7."""
    rng = np.random.default_rng(0)
    volume = rng.normal(0.3, 0.05, (8, 32, 32)).astype(np.float32)
    truth = np.zeros(volume.shape, bool)
    truth[:5, 8:20, 10:24] = True
    volume[truth] += 0.5
    return as_image(volume), truth


def _boxes_and_tags(box_class: int) -> Annotations:
    """Exhaustive boxes of ``box_class`` around the object in slices 1 and 3; slices 6 and 7
    tagged with class 0 alone (classes 1 and 2 absent). No point, no mask."""
    return Annotations(
        default_classes(3),
        boxes=[[z, 8, 10, 19, 23, box_class] for z in (1, 3)],
        exhaustive_boxes=[[1, box_class], [3, box_class]],
        tags=[[6, 0], [7, 0]],
    )


@pytest.fixture(scope="module")
def boxed_probabilities(weak_volume):
    """Probabilities ``(3, 8, 32, 32)`` of models trained with the boxes labelled 1 or 2; the 2D
    student a classifier trained as the 3D one (the prototype student: see below)."""
    return _boxed_probabilities(weak_volume, {**WEAK, "student_2d": "classifier", "crops_2d": 0})


def _boxed_probabilities(weak_volume, options):
    image, _ = weak_volume
    out = {}
    for box_class in (1, 2):
        method = Rewis3dMethod(**options)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            method.fit(image, _boxes_and_tags(box_class), FitOptions(device="cpu", seed=0))
        assert not [w for w in caught if "not used" in str(w.message)]
        out[box_class] = method.predict_proba_block(np.asarray(image.data))
    return out


def test_boxes_alone_teach_their_class_on_an_unannotated_slice(boxed_probabilities, weak_volume):
    _, truth = weak_volume
    inside = {k: p[:, 2][:, truth[2]].mean(axis=1) for k, p in boxed_probabilities.items()}
    # the same boxes, labelled 1 in one run and 2 in the other: each run's box class wins inside
    # the object of slice 2 (no annotation there) by a wide margin over the other run
    assert inside[1][1] > inside[2][1] + 0.25, inside
    assert inside[2][2] > inside[1][2] + 0.25, inside
    for k, probs in boxed_probabilities.items():
        assert probs[k, 2][truth[2]].mean() > probs[k, 2][~truth[2]].mean() + 0.2


def test_the_prototype_student_learns_boxes_alone_slowly(weak_volume):
    """dsp's losses weigh a box's positives by lambda_dsp (0.1): after 200 steps each run's box
    class leads the other run's inside the object, by a few hundredths only."""
    _, truth = weak_volume
    probabilities = _boxed_probabilities(weak_volume, {**WEAK, "max_steps": 200})
    inside = {k: p[:, 2][:, truth[2]].mean(axis=1) for k, p in probabilities.items()}
    assert inside[1][1] > inside[2][1] + 0.01, inside
    assert inside[2][2] > inside[1][2] + 0.01, inside


def test_tags_alone_make_the_untagged_classes_absent(boxed_probabilities):
    for box_class, probs in boxed_probabilities.items():
        other = 3 - box_class  # annotated by nothing but the tags of slices 6 and 7
        slice6 = probs[:, 6].mean(axis=(1, 2))
        assert slice6[0] > 0.5 and slice6[0] > slice6[other] + 0.3, slice6


def test_sizes_and_region_tags_enter_both_branches_losses(weak_volume):
    image, _ = weak_volume
    annotations = Annotations(
        default_classes(3),
        region_tags=[[2, 1, 8, 10, 19, 23]],  # only class 1 in the object's rectangle
        sizes=[[6, 0, 1.0], [6, 1, 0.0], [6, 2, 0.0]],  # slice 6: all class 0
    )
    method = Rewis3dMethod(**{**TINY, "max_steps": 4, "crop_yx": 32, "random_crop_fraction": 0})
    with pytest.warns(UserWarning, match="fractions themselves are not used"):
        result = method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    assert result.steps == 4
    for step in result.history:  # every box and every crop holds slice 2 or 6 whole
        assert step["partial_3d"] > 0 and step["tag_3d"] > 0, step
        assert step["ce_3d"] == 0 and step["box_3d"] == 0
        assert step["dsp_2d"] > 0 and step["ce_2d"] == 0  # the region tag's positive in L_DSP


# ------------------------------------------------------------------ prior correction, batches
def test_class_prior_correction_is_estimated_stored_and_applied(trained, tiny_volume, tmp_path):
    method, _ = trained
    image_prior, seen = (np.array(method.fit_info[k]) for k in ("image_prior", "labelled_voxels"))
    assert image_prior.sum() == pytest.approx(1.0, abs=1e-3) and seen.sum() > 0
    smoothed_train_prior = (seen + 1) / (seen.sum() + len(seen))
    np.testing.assert_allclose(
        method.log_prior_shift, np.log(image_prior / smoothed_train_prior), atol=2e-3
    )
    block = np.asarray(tiny_volume[0].data)
    corrected = method.predict_proba_block(block)
    shift, method.log_prior_shift = method.log_prior_shift, None
    try:
        plain = method.predict_proba_block(block)
    finally:
        method.log_prior_shift = shift
    reweighted = plain * np.exp(np.array(shift))[:, None, None, None]
    np.testing.assert_allclose(corrected, reweighted / reweighted.sum(axis=0), atol=1e-5)
    assert not np.allclose(corrected, plain, atol=1e-3)  # the shift is not a no-op here
    reloaded = load_model(method.save(tmp_path / "model"))
    assert reloaded.log_prior_shift == pytest.approx(shift)


def test_no_prior_correction_without_labelled_voxels_or_when_off(weak_volume, tiny_volume):
    image, _ = weak_volume
    method = Rewis3dMethod(**{**TINY, "max_steps": 2, "crop_yx": 32})
    method.fit(image, _boxes_and_tags(1), FitOptions(device="cpu", seed=0))
    assert method.log_prior_shift is None  # boxes and tags label no voxel
    image, annotations = tiny_volume
    method = Rewis3dMethod(**{**TINY, "max_steps": 2, "prior_correction": False})
    method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    assert method.log_prior_shift is None and "image_prior" not in method.fit_info


def test_every_box_of_a_batch_is_trained_on_with_its_own_targets(tiny_volume):
    """Two boxes per step, each flipped or turned on its own: every box holds the click it is
    anchored on, so L_S sees at least one labelled voxel per box and at most the 4 clicks."""
    image, annotations = tiny_volume
    options = {"max_steps": 3, "batch_size": 2, "crop_yx": 32, "random_crop_fraction": 0}
    # crops_2d 0: the 2D student learns on the boxes too, so every labelled voxel seen is a box's
    method = Rewis3dMethod(**{**TINY, **options, "crops_2d": 0})
    result = method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    assert result.steps == 3 and all(np.isfinite(step["loss"]) for step in result.history)
    seen = method.fit_info["labelled_voxels"]
    assert len(seen) == 2 and 3 * 2 <= sum(seen) <= 3 * 2 * 4, seen


@pytest.mark.parametrize("branch", ["2d", "3d"])
def test_one_branch_alone_trains_that_student_with_its_teacher_only(tiny_volume, branch):
    """The ablations' baselines: the other student keeps its initial weights, no cross term."""
    image, annotations = tiny_volume
    options = {**TINY, "max_steps": 3, "branches": branch, "inference": branch}
    method = Rewis3dMethod(**options)
    result = method.fit(image, annotations, FitOptions(device="cpu", seed=0))
    untrained = Rewis3dMethod(**{**options, "max_steps": 1})
    untrained.classes, untrained.n_channels = method.classes, method.n_channels
    untrained.voxel_size_zyx = method.voxel_size_zyx
    torch.manual_seed(0)
    initial = {"2d": untrained._new_net_2d(), "3d": UNet3D(untrained._config_3d())}
    other = "3d" if branch == "2d" else "2d"
    nets = {"2d": method.net_2d, "3d": method.net_3d}
    for name, tensor in nets[other].state_dict().items():
        torch.testing.assert_close(tensor, initial[other].state_dict()[name])
    assert any(
        not torch.equal(tensor, initial[branch].state_dict()[name])
        for name, tensor in nets[branch].state_dict().items()
    )
    last = result.history[-1]
    own_term = {"2d": "ce_2d", "3d": "sup_3d"}
    assert own_term[branch] in last and own_term[other] not in last and "cross" not in last


def test_predicting_with_a_student_that_does_not_train_is_refused():
    with pytest.raises(WssegError, match="branches='2d' does not train") as info:
        Rewis3dMethod(branches="2d", inference="average")
    assert "\n" not in str(info.value)
    with pytest.raises(WssegError, match="branches"):
        Rewis3dMethod(branches="4d")


def test_a_warm_run_has_every_term_from_its_first_step(trained, tiny_volume):
    """Both branches and their teachers are trained already: no base phase, L_PLF at once."""
    image, annotations = tiny_volume
    method, _ = trained
    cold = method.config
    method.config = _warm_schedule(cold, FitOptions(warm_steps=7, warm_lr_factor=0.1))
    try:
        (first,) = _step_terms(method, image, annotations, [0.0])
    finally:
        method.config = cold
    assert {"plf_2d", "cross"} <= set(first) and first["lambda"] == pytest.approx(0.1)
    warm = _warm_schedule(cold, FitOptions(warm_steps=7, warm_lr_factor=0.1))
    assert (warm.max_steps, warm.lr) == (7, pytest.approx(cold.lr * 0.1))


def test_a_previous_model_of_another_voxel_size_gives_a_cold_start(trained, tiny_volume):
    image, annotations = tiny_volume
    previous, _ = trained
    isotropic = dataclasses.replace(image, voxel_size_zyx=None)  # unknown: (1, 1, 1)
    method = Rewis3dMethod(**TINY)
    with pytest.warns(WarmStartWarning, match="voxel size .* differs from the previous model"):
        result = method.fit(isotropic, annotations, FitOptions(device="cpu"), init=previous)
    assert result.steps == TINY["max_steps"] and method.training_summary["warm_start"] is False
    assert method.voxel_size_zyx == (1.0, 1.0, 1.0)
