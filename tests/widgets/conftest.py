"""Dock-widget test fixtures: phantoms in a real viewer, notifications, questions, a slow method."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from napari_wsseg.engine.results import FitResult
from napari_wsseg.methods.base import Method
from napari_wsseg.progress import Budget, ProgressEvent, report


@pytest.fixture(scope="session")
def small_2d():
    """(image, labels, classes) of a 2D phantom (64, 64) with 3 classes."""
    from napari_wsseg.sample import make_phantom

    return make_phantom((64, 64), seed=3, n_classes=3)


@pytest.fixture(scope="session")
def small_3d():
    """(image, labels, classes) of a 3D phantom (4, 48, 48) with 3 classes."""
    from napari_wsseg.sample import make_phantom

    return make_phantom((4, 48, 48), seed=4, n_classes=3)


@pytest.fixture
def notifications():
    """Messages of the napari notifications shown during the test, in order."""
    from napari.utils.notifications import notification_manager

    seen: list[str] = []

    def record(event):
        seen.append(str(event.value.message if hasattr(event, "value") else event.message))

    notification_manager.notification_ready.connect(record)
    yield seen
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture
def annotate(make_napari_viewer):
    """A factory: viewer + image layer + AnnotateWidget with the given classes."""
    from napari_wsseg.widgets._annotate import AnnotateWidget

    def make(image, classes=None, viewer=None):
        viewer = viewer or make_napari_viewer()
        layer = viewer.add_image(image, name="img")
        widget = AnnotateWidget(viewer)
        viewer.window.add_dock_widget(widget)
        if classes is not None:
            widget.session.set_classes(list(classes))
        return viewer, layer, widget

    return make


def click_points_from_truth(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """(N, ndim + 1) rows: coordinates of pixels away from class borders, plus their class."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    rows = []
    for k in np.unique(labels):
        inside = ndi.binary_erosion(labels == k, iterations=1)
        coords = np.argwhere(inside if inside.any() else labels == k)
        pick = coords[rng.choice(len(coords), min(per_class, len(coords)), replace=False)]
        rows.append(np.column_stack([pick, np.full(len(pick), k)]))
    return np.concatenate(rows)


def add_points(layer, rows: np.ndarray) -> None:
    """Add points through the layer API, one class at a time (as clicking with a class picked)."""
    for k in np.unique(rows[:, -1]):
        layer.feature_defaults["class"] = int(k)
        layer.add(rows[rows[:, -1] == k, :-1].astype(float))


@pytest.fixture
def clicks():
    """The helpers above: ``clicks.from_truth(labels, n)``, ``clicks.add(layer, rows)``."""

    class Clicks:
        from_truth = staticmethod(click_points_from_truth)
        add = staticmethod(add_points)

    return Clicks


# ---------------------------------------------------------------- a test-only slow method
@dataclass(frozen=True)
class SlowConfig:
    """Options of the slow test method.

    steps / step_s: how long it trains; fail_with: raise RuntimeError(fail_with) when set.
    """

    steps: int = 2000
    step_s: float = 0.01
    fail_with: str = ""


class SlowMethod(Method):
    """Nearest class-mean intensity classifier learnt in many short steps (usable from step 1)."""

    name = "slow"
    config_class = SlowConfig

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        self.means: np.ndarray | None = None

    def _fit(self, image, annotations, options):
        if self.config.fail_with:
            raise RuntimeError(self.config.fail_with)
        points = annotations.points
        values = np.array(
            [self.normalization.apply(image.slice(z))[y, x, 0] for z, y, x, _ in points]
        )
        target = np.array(
            [
                values[points[:, 3] == k].mean() if np.any(points[:, 3] == k) else 0.0
                for k in range(len(self.classes))
            ]
        )
        self.means = np.zeros_like(target)
        budget = Budget(options.time_budget_s, self.config.steps, options.cancel)
        step = 0
        while step < self.config.steps and not budget.should_stop():
            time.sleep(self.config.step_s)
            self.means = self.means + 0.05 * (target - self.means)
            step += 1
            loss = float(np.abs(target - self.means).sum())
            report(
                options.progress,
                ProgressEvent(
                    step, self.config.steps, "training", {"loss": loss}, budget.eta(step)
                ),
            )
        return FitResult(budget.stop_reason() or "done", step, budget.elapsed)

    def predict_proba_slice(self, slice_yxc):
        values = self.normalization.apply(np.asarray(slice_yxc))[..., 0]
        scores = -((values[None] - self.means[:, None, None]) ** 2) * 50.0
        scores = np.exp(scores - scores.max(axis=0))
        return (scores / scores.sum(axis=0)).astype(np.float32)

    def _state_dict(self) -> dict:
        return {"means": self.means.tolist()}

    def _load_state_dict(self, state: dict) -> None:
        self.means = np.asarray(state["means"])

    def _save_weights(self, folder: Path) -> None:
        pass

    def _load_weights(self, folder: Path) -> None:
        pass


@pytest.fixture
def slow_method(monkeypatch):
    """Register :class:`SlowMethod` as method 'slow' for the duration of a test."""
    from napari_wsseg import methods

    monkeypatch.setitem(methods._REGISTRY, "slow", f"{SlowMethod.__module__}:SlowMethod")
    return "slow"


# ------------------------------------------------------------------------- yes/no questions
class Questions:
    """The yes/no questions widgets asked, answered from ``replies`` (then yes) without a dialog."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.replies: list[bool] = []

    def answer(self, question: str) -> bool:
        self.asked.append(question)
        return self.replies.pop(0) if self.replies else True


@pytest.fixture(autouse=True)
def questions(monkeypatch):
    """Every widget question goes here instead of a modal dialog (which would block the test)."""
    recorder = Questions()
    monkeypatch.setattr(
        "napari_wsseg.widgets._annotate.AnnotateWidget.confirm",
        lambda self, question: recorder.answer(question),
    )
    return recorder
