"""Method ``dsp``: training on the phantom beats chance, checkpoints round-trip, runs repeat with a
seed, budgets/cancel/progress work, lazy volumes work, and bad input gives clear errors."""

from __future__ import annotations

import json
import threading

import dask.array as da
import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.errors import AnnotationError, ModelError, WssegError
from napari_wsseg.eval.metrics import evaluate
from napari_wsseg.eval.simulate import simulate_annotations
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.dsp.method import (
    DENSE_STEPS,
    SPARSE_STEPS,
    DSPConfig,
    DSPMethod,
    auto_max_steps,
)

#: A network small enough to train in seconds on a CPU.
TINY = {
    "depth": 2,
    "width": 8,
    "embed_dim": 16,
    "crop_size": 64,
    "batch_size": 4,
    "cpu_bf16": False,
}


@pytest.fixture(scope="module")
def trained(phantom_3d):
    """A dsp model trained briefly on clicks in slices 0, 2, 4 of the phantom."""
    image, labels, classes = phantom_3d
    ann = simulate_annotations(
        labels, slices=[0, 2, 4], points=20, boxes=1, tags=True, seed=0, classes=classes
    )
    options = {
        "max_steps": 80,
        "lr": 3e-3,
        "plf_weight": 1.0,
        "plf_start": 0.3,
        "plf_threshold": 0.0,
        # the student's own pseudo-labels: a teacher averaging an 80-step run at lr 3e-3 lags it
        # (phantom, one seed: 0.26-0.32 against 0.39 mean foreground Dice); the teacher path
        # has its own tests below
        "ema_momentum": 0.0,
    }  # exercise L_PLF too
    method = DSPMethod(**(TINY | options))
    result = method.fit(as_image(image), ann, FitOptions(device="cpu", seed=0))
    return method, result


def test_short_training_clearly_beats_chance(trained, phantom_3d):
    image, labels, classes = phantom_3d
    method, result = trained
    assert result.stopped == "done" and result.steps == 80
    held_out = [6, 7]  # never annotated, not next to an annotated slice
    pred = np.stack([method.predict_slice(image[z][..., None]) for z in held_out])
    scores = evaluate(pred, labels[held_out], n_classes=len(classes))
    # predicting the majority class everywhere scores 0; uniform guessing about 0.1
    assert scores["mean_fg_dice"] > 0.3, scores["dice"]


def test_history_reports_every_loss_term(trained):
    _, result = trained
    last = result.history[-1]
    for key in ("loss", "ce", "dsp", "dsp_point", "dsp_box", "dsp_tag", "plf", "lr"):
        assert key in last and np.isfinite(last[key])


def test_checkpoint_round_trip_gives_identical_predictions(trained, phantom_3d, tmp_path):
    image = phantom_3d[0]
    method, _ = trained
    folder = method.save(tmp_path / "model")
    assert (folder / "model.safetensors").is_file()
    meta = json.loads((folder / "config.json").read_text())
    assert (
        meta["method"] == "dsp"
        and meta["config"]["width"] == 8
        and meta["state"]["fit"]["steps"] == 80
    )
    reloaded = load_model(folder)
    assert isinstance(reloaded, DSPMethod) and reloaded.config == method.config
    np.testing.assert_array_equal(
        reloaded.predict_proba_slice(image[7][..., None]),
        method.predict_proba_slice(image[7][..., None]),
    )


def test_a_damaged_weights_file_is_refused(trained, tmp_path):
    method, _ = trained
    folder = method.save(tmp_path / "model")
    (folder / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="model.safetensors"):
        load_model(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        load_model(folder)


def test_weights_of_another_architecture_are_refused(trained, tmp_path):
    method, _ = trained
    folder = method.save(tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["width"] = 4
    (folder / "config.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="does not match the dsp architecture"):
        load_model(folder)


def test_class_prior_correction_is_estimated_stored_and_applied(trained, phantom_3d):
    image = phantom_3d[0]
    method, _ = trained
    info = method.fit_info
    assert sum(info["image_prior"]) == pytest.approx(1.0, abs=1e-3)
    assert sum(info["train_prior"]) == pytest.approx(1.0, abs=1e-3)
    expected = np.log(np.maximum(info["image_prior"], 1e-6) / np.array(info["train_prior"]))
    np.testing.assert_allclose(method.log_prior_shift, expected, atol=1e-3)
    corrected = method.predict_proba_slice(image[7][..., None])
    shift, method.log_prior_shift = method.log_prior_shift, None
    try:
        plain = method.predict_proba_slice(image[7][..., None])
    finally:
        method.log_prior_shift = shift
    # re-weighting by the prior ratio is exactly what the shift does to the probabilities
    reweighted = plain * np.exp(np.array(shift))[:, None, None]
    np.testing.assert_allclose(corrected, reweighted / reweighted.sum(axis=0), atol=1e-4)


def test_no_prior_correction_without_labelled_pixels_or_when_off():
    image, _ = _small_problem()
    boxes_only = Annotations(
        default_classes(2), boxes=[[0, 0, 0, 10, 10, 0], [0, 12, 12, 30, 30, 1]]
    )
    method = DSPMethod(**(TINY | {"max_steps": 2, "crop_size": 32}))
    method.fit(as_image(image), boxes_only, FitOptions(device="cpu"))
    assert method.log_prior_shift is None
    image, ann = _small_problem()
    method = DSPMethod(**(TINY | {"max_steps": 2, "crop_size": 32, "prior_correction": False}))
    method.fit(as_image(image), ann, FitOptions(device="cpu"))
    assert method.log_prior_shift is None


def test_a_warm_run_keeps_the_previous_prior_correction_and_a_cold_one_estimates_its_own():
    image, ann = _small_problem()
    more = Annotations(ann.classes, points=np.vstack([ann.points, [[1, 8, 8, 1]]]))
    cold = DSPMethod(**(TINY | {"max_steps": 3, "crop_size": 32}))
    cold.fit(as_image(image), ann, FitOptions(device="cpu"))
    cold.log_prior_shift = [0.5, -0.5]  # not what any estimate on this image gives
    warm = DSPMethod(**(TINY | {"max_steps": 3, "crop_size": 32}))
    warm.fit(as_image(image), more, FitOptions(device="cpu", warm_steps=2), init=cold)
    assert warm.log_prior_shift == [0.5, -0.5]
    assert warm.fit_info["prior_shift"] == "kept from the previous model"
    assert not any(torch.equal(a, b) for a, b in zip(_weights(warm), _weights(cold)))
    # a previous model without a correction (it saw no labelled pixel) leaves it to the estimate
    cold.log_prior_shift = None
    warm.fit(as_image(image), more, FitOptions(device="cpu", warm_steps=2), init=cold)
    assert warm.log_prior_shift is not None and "image_prior" in warm.fit_info


def _weights(method):
    return [p.detach() for p in method.net.parameters()]


def _small_problem(n_slices=2, size=32):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (n_slices, size, size), dtype=np.uint8)
    ann = Annotations(default_classes(2), points=[[0, 3, 3, 0], [0, 20, 20, 1]])
    return image, ann


def test_same_seed_repeats_a_cpu_run_exactly():
    image, ann = _small_problem()
    states = []
    for _ in range(2):
        method = DSPMethod(**(TINY | {"max_steps": 3, "crop_size": 32}))
        method.fit(as_image(image), ann, FitOptions(device="cpu", seed=5))
        states.append(method.net.state_dict())
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_time_budget_stops_training_and_leaves_a_usable_model():
    image, ann = _small_problem()
    method = DSPMethod(**(TINY | {"max_steps": 10**6, "crop_size": 32}))
    result = method.fit(as_image(image), ann, FitOptions(device="cpu", time_budget_s=1.0))
    assert result.stopped == "time_budget" and 0 < result.steps < 10**6
    assert method.predict_proba_slice(image[1][..., None]).shape == (2, 32, 32)


def test_cancel_stops_at_a_step_boundary_and_reports_progress():
    image, ann = _small_problem()
    cancel = threading.Event()
    events = []

    def progress(event):
        events.append(event)
        if event.done >= 2:
            cancel.set()

    method = DSPMethod(**(TINY | {"max_steps": 1000, "crop_size": 32}))
    result = method.fit(
        as_image(image), ann, FitOptions(device="cpu", progress=progress, cancel=cancel)
    )
    assert result.stopped == "cancelled" and result.steps < 1000
    training = [e for e in events if e.message == "training"]
    assert training and "loss" in training[0].metrics and training[-1].eta_s is not None


def test_trains_and_predicts_on_a_lazy_multichannel_volume():
    rng = np.random.default_rng(1)
    volume = da.from_array(
        rng.integers(0, 255, (3, 40, 48, 2), dtype=np.uint8), chunks=(1, 20, 24, 2)
    )
    image = as_image(volume, channel_axis=-1)
    ann = Annotations(default_classes(2), points=[[1, 5, 5, 0], [1, 30, 30, 1]], tags=[[0, 0]])
    method = DSPMethod(**(TINY | {"max_steps": 2, "crop_size": 32, "tile": 32, "tile_overlap": 8}))
    method.fit(image, ann, FitOptions(device="cpu"))
    proba = method.predict_proba_slice(image.slice(2))
    assert proba.shape == (2, 40, 48) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)


def test_is_registered_as_dsp():
    assert get_method("dsp") is DSPMethod
    assert DSPMethod().halo >= 64


# ------------------------------------------------------------------------------ bad input
def test_annotations_for_a_class_the_model_lacks_are_refused():
    image, _ = _small_problem()
    ann = Annotations(default_classes(2), points=[[0, 3, 3, 0], [0, 5, 5, 2]])
    with pytest.raises(AnnotationError, match="unknown class"):
        DSPMethod(**TINY).fit(as_image(image), ann, FitOptions(device="cpu"))


def test_empty_annotations_are_refused():
    image, _ = _small_problem()
    with pytest.raises(WssegError, match="no annotations"):
        DSPMethod(**TINY).fit(
            as_image(image), Annotations(default_classes(2)), FitOptions(device="cpu")
        )


def test_a_zero_time_budget_is_refused():
    with pytest.raises(WssegError, match="time budget 0 s is not positive"):
        FitOptions(device="cpu", time_budget_s=0)


def test_a_single_class_is_refused():
    image, _ = _small_problem()
    ann = Annotations(default_classes(1), points=[[0, 3, 3, 0]])
    with pytest.raises(WssegError, match="at least 2 classes"):
        DSPMethod(**TINY).fit(as_image(image), ann, FitOptions(device="cpu"))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"crop_size": 100}, "not a multiple of 2\\*\\*depth"),
        ({"tau": 0}, "must be positive"),
        ({"plf_start": 1.5}, "between 0 and 1"),
        ({"nonsense": 1}, "unknown option"),
        ({"tag_pooling": "median"}, "tag_pooling='median' must be one of 'mean', 'max'"),
        ({"exclusions": "none"}, "exclusions='none' must be one of 'contrastive'"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(WssegError, match=message):
        DSPMethod(**options)


def test_untrained_model_cannot_predict_and_wrong_channels_are_refused(trained):
    with pytest.raises(ModelError, match="not trained"):
        DSPMethod().predict_proba_slice(np.zeros((8, 8, 1), np.uint8))
    method, _ = trained
    with pytest.raises(ModelError, match="expects a \\(Y, X, 1\\) slice"):
        method.predict_proba_slice(np.zeros((8, 8, 3), np.uint8))


def test_config_round_trips_through_json():
    config = DSPConfig(width=8, lr=2e-3)
    assert DSPConfig(**json.loads(json.dumps(config.__dict__))) == config


def test_step_count_grows_with_the_share_of_painted_pixels():
    shape = (8, 100, 100)
    clicks = [[z, 50, 50, 0] for z in range(8)]
    masks = np.zeros(shape, np.uint8)
    sparse = Annotations(default_classes(2), points=clicks)
    assert auto_max_steps(sparse, shape) == SPARSE_STEPS
    masks[0] = 1  # 1 of 8 annotated slices painted: half of the dense share
    assert (
        auto_max_steps(Annotations(default_classes(2), points=clicks, masks=masks), shape)
        == (SPARSE_STEPS + DENSE_STEPS) // 2
    )
    masks[:] = 2
    assert auto_max_steps(Annotations(default_classes(2), masks=masks), shape) == DENSE_STEPS


def test_unset_max_steps_trains_the_automatic_count(monkeypatch):
    import napari_wsseg.methods.dsp.method as dsp_module

    monkeypatch.setattr(dsp_module, "SPARSE_STEPS", 3)  # the real 1200 steps take minutes
    image, ann = _small_problem()
    method = DSPMethod(**(TINY | {"crop_size": 32}))
    assert method.config.max_steps is None
    method.fit(as_image(image), ann, FitOptions(device="cpu", seed=0))
    assert method.fit_info["steps"] == 3


def test_same_seed_with_a_time_budget_gives_identical_predictions(phantom_3d):
    """A budget that does not stop the run must not change it: the learning-rate schedule may
    follow the clock only when the budget is what ends training, else a seed would not fix the
    result (the protocol in benchmarks/protocol.py relies on this)."""
    image, labels, classes = phantom_3d
    ann = simulate_annotations(
        labels, slices=[0, 3], points=3, boxes=1, tags=True, seed=1, classes=classes
    )
    predictions = []
    for _ in range(2):
        method = DSPMethod(**(TINY | {"max_steps": 6, "crop_size": 32}))
        result = method.fit(
            as_image(image), ann, FitOptions(device="cpu", seed=3, time_budget_s=3600)
        )
        assert result.stopped == "done"
        predictions.append(method.predict_proba_slice(image[5][..., None]))
    assert np.array_equal(predictions[0], predictions[1])


def test_a_model_saved_with_the_retired_boxes_exhaustive_option_still_loads(tmp_path):
    image, ann = _small_problem()
    method = DSPMethod(**(TINY | {"max_steps": 2, "crop_size": 32}))
    method.fit(as_image(image), ann, FitOptions(device="cpu", seed=0))
    folder = method.save(tmp_path / "model")
    meta = json.loads((folder / "config.json").read_text())
    meta["config"]["boxes_exhaustive"] = True  # what every dsp model saved before issue 13 holds
    (folder / "config.json").write_text(json.dumps(meta))
    loaded = load_model(folder)
    assert np.array_equal(
        loaded.predict_proba_slice(image[1][..., None]),
        method.predict_proba_slice(image[1][..., None]),
    )
    with pytest.raises(WssegError, match=r"unknown option\(s\) \['boxes_exhaustive'\]"):
        DSPMethod(
            boxes_exhaustive=False
        )  # as an option it is gone: exhaustiveness is annotation data


def test_ema_keeps_the_bias_corrected_mean_teacher(monkeypatch):
    """With ema_momentum the model kept is the teacher, not the student's last weights; its first
    update copies the student (bias correction) and its momentum never exceeds what spans a tenth
    of the run (0.75 for 40 steps)."""
    import napari_wsseg.methods.dsp.method as dsp_module
    from napari_wsseg.engine.ema import EMATeacher

    teachers = []

    class Recording(EMATeacher):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.momenta, self.student = [], None
            teachers.append(self)

        def update(self, student, momentum=None):
            super().update(student, momentum)
            self.momenta.append(momentum)
            self.student = {k: v.detach().clone() for k, v in student.state_dict().items()}

    monkeypatch.setattr(dsp_module, "EMATeacher", Recording)
    image, ann = _small_problem()
    method = DSPMethod(**(TINY | {"max_steps": 40, "crop_size": 32, "ema_momentum": 0.99}))
    method.fit(as_image(image), ann, FitOptions(device="cpu", seed=3))
    (teacher,) = teachers
    assert len(teacher.momenta) == 40 and teacher.momenta[0] == 0.0
    assert max(teacher.momenta) <= 0.75 and teacher.momenta[-1] > 0.7
    kept = method.net.state_dict()
    name = next(k for k, v in kept.items() if v.is_floating_point() and v.ndim == 4)
    torch.testing.assert_close(kept[name], teacher.module.state_dict()[name])
    assert not torch.allclose(kept[name], teacher.student[name])


def test_with_ema_the_teacher_makes_the_pseudo_labels(monkeypatch):
    import napari_wsseg.methods.dsp.method as dsp_module

    seen = []
    original = dsp_module.filtered_pseudo_labels

    def recording(logits, *args):
        seen.append(logits.requires_grad)
        return original(logits, *args)

    monkeypatch.setattr(dsp_module, "filtered_pseudo_labels", recording)
    image, ann = _small_problem()
    options = TINY | {"max_steps": 2, "crop_size": 32, "plf_weight": 1.0, "plf_start": 0.0}
    DSPMethod(**(options | {"ema_momentum": 0.0})).fit(
        as_image(image), ann, FitOptions(device="cpu", seed=3)
    )
    DSPMethod(**(options | {"ema_momentum": 0.9})).fit(
        as_image(image), ann, FitOptions(device="cpu", seed=3)
    )
    assert seen == [True, True, False, False]  # the student's logits, then the teacher's


def test_region_crops_hold_whole_regions_larger_than_the_crop_and_take_their_positives(
    phantom_3d,
):
    """region_crops: grid cells of 64 px never fit in 32 px click crops, so their tag positives
    are only taken in the extra crops, which hold a whole cell each."""
    from napari_wsseg.io.normalize import Normalization
    from napari_wsseg.methods.dsp.method import _DSPTrainStep

    image, labels, classes = phantom_3d
    ann = simulate_annotations(
        labels, slices=[0, 2], points=2, region_tags=64, seed=0, classes=classes
    )
    method = DSPMethod(**(TINY | {"crop_size": 32, "region_crops": 2}))
    method.classes, method.n_channels = list(classes), 1
    method.normalization = Normalization.from_image(as_image(image))
    method.net = method._build_net()
    step = _DSPTrainStep(
        method,
        as_image(image),
        ann,
        np.random.default_rng(0),
        torch.Generator().manual_seed(0),
        torch.device("cpu"),
    )
    assert step.regions.size == 64 and len(step.regions) > 0
    for crop in step.regions.sample(20):
        assert len(step.index.crop_targets(crop).region_classes) > 0  # a whole region inside
    for crop in step.sampler.sample(20):
        assert len(step.index.crop_targets(crop).region_classes) == 0  # too small for one
    losses = step(0, 0.0)
    assert float(losses["regions"]) > 0 and torch.isfinite(losses["loss"])
