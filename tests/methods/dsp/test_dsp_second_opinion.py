"""dsp keeps its last student beside the EMA teacher it uses: the student is a second opinion
(suggestions rank by where the two disagree), saved and loaded with the model, dropped by a run
without a teacher, and checked like the main weights."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.errors import ModelError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.dsp.method import DSPMethod
from napari_wsseg.methods.rf import RandomForestMethod

TINY = {"depth": 2, "width": 8, "embed_dim": 16, "batch_size": 4, "cpu_bf16": False}


def _problem(size=32):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (2, size, size), dtype=np.uint8)
    ann = Annotations(default_classes(2), points=[[0, 3, 3, 0], [0, 20, 20, 1]])
    return as_image(image), ann


def _fit(**options) -> DSPMethod:
    image, ann = _problem()
    method = DSPMethod(**(TINY | {"max_steps": 12, "crop_size": 32, "lr": 1e-2} | options))
    method.fit(image, ann, FitOptions(device="cpu", seed=1))
    return method


@pytest.fixture(scope="module")
def with_teacher() -> DSPMethod:
    return _fit(ema_momentum=0.9)


def test_the_student_is_kept_beside_the_teacher_and_answers_differently(with_teacher):
    image, _ = _problem()
    assert with_teacher.has_second_opinion
    teacher = with_teacher.predict_proba_slice(image.slice(0))
    student = with_teacher.second_opinion_slice(image.slice(0))
    assert student.shape == teacher.shape and np.allclose(student.sum(0), 1.0, atol=1e-4)
    assert np.abs(student - teacher).max() > 1e-4  # the teacher lags the student


def test_the_student_round_trips_through_the_model_folder(with_teacher, tmp_path):
    image, _ = _problem()
    folder = with_teacher.save(tmp_path / "model")
    assert (folder / "student.safetensors").is_file()
    reloaded = load_model(folder)
    assert reloaded.has_second_opinion
    np.testing.assert_array_equal(
        reloaded.second_opinion_slice(image.slice(1)),
        with_teacher.second_opinion_slice(image.slice(1)),
    )


def test_a_model_folder_without_a_student_loads_with_one_opinion(with_teacher, tmp_path):
    """Models saved before students were kept have no student file."""
    image, _ = _problem()
    folder = with_teacher.save(tmp_path / "model")
    (folder / "student.safetensors").unlink()
    reloaded = load_model(folder)
    assert not reloaded.has_second_opinion
    np.testing.assert_array_equal(
        reloaded.predict_proba_slice(image.slice(0)),
        with_teacher.predict_proba_slice(image.slice(0)),
    )
    with pytest.raises(ModelError, match="single network"):
        reloaded.second_opinion_slice(image.slice(0))


def test_a_damaged_or_foreign_student_file_is_refused(with_teacher, tmp_path):
    folder = with_teacher.save(tmp_path / "model")
    (folder / "student.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="student.safetensors"):
        load_model(folder)
    other = _fit(ema_momentum=0.9, width=4)
    other.save(tmp_path / "other")
    (folder / "student.safetensors").write_bytes(
        (tmp_path / "other" / "student.safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match="student.safetensors.*does not match"):
        load_model(folder)


def test_without_a_teacher_there_is_no_second_opinion(tmp_path):
    plain = _fit(ema_momentum=0.0)
    assert not plain.has_second_opinion
    assert not (plain.save(tmp_path / "plain") / "student.safetensors").exists()
    refit = _fit(ema_momentum=0.9)
    refit.config = dataclasses.replace(refit.config, ema_momentum=0.0)
    refit.fit(*_problem(), FitOptions(device="cpu", seed=1))
    assert not refit.has_second_opinion  # the previous run's student is not kept


def test_a_warm_run_keeps_its_own_student(with_teacher):
    image, ann = _problem()
    warm = DSPMethod(**(TINY | {"max_steps": 12, "crop_size": 32, "lr": 1e-2, "ema_momentum": 0.9}))
    warm.fit(image, ann, FitOptions(device="cpu", seed=1), init=with_teacher)
    assert warm.training_summary["warm_start"] and warm.has_second_opinion
    ours, theirs = warm.student.state_dict(), with_teacher.student.state_dict()
    assert any(not torch.equal(ours[k], theirs[k]) for k in ours if ours[k].is_floating_point())


def test_the_kept_student_is_the_last_trained_network(monkeypatch):
    """The student is the network the optimiser trained last, not another copy of the teacher."""
    import napari_wsseg.methods.dsp.method as dsp_module
    from napari_wsseg.engine.ema import EMATeacher

    students = []

    class Recording(EMATeacher):
        def update(self, student, momentum=None):
            super().update(student, momentum)
            students.append({k: v.detach().clone() for k, v in student.state_dict().items()})

    monkeypatch.setattr(dsp_module, "EMATeacher", Recording)
    method = _fit(ema_momentum=0.9)
    kept = method.student.state_dict()
    for name, value in students[-1].items():
        torch.testing.assert_close(kept[name], value)


def test_rf_has_no_second_opinion():
    image, ann = _problem()
    model = RandomForestMethod(n_estimators=3)
    model.fit(image, ann, FitOptions(device="cpu"))
    assert not model.has_second_opinion
    with pytest.raises(ModelError, match="single network.*entropy or margin"):
        model.second_opinion_slice(image.slice(0))
