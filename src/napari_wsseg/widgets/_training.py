"""What the train widget runs in its worker thread: fit, live previews, final prediction, save.

This module imports no Qt: :func:`run_training` is a plain function that takes callbacks, so it
is tested and benchmarked without a viewer, and the widget wraps it in a napari thread worker.

Live preview. A method only reports :class:`~napari_wsseg.engine.progress.ProgressEvent`\\ s while
it trains; nothing outside can ask it for a prediction in between. So the progress callback,
which the method calls *in the training thread between two steps*, runs
``method.predict_proba_slice(current slice)`` itself, at most every ``preview_every_s`` seconds
(and never more than a third of the time), and hands the result to ``preview``. The model being
trained is only touched by that one thread, so this is safe; torch modules the preview switches
to eval mode are switched back to train mode afterwards. Methods that have no usable model before
the end of ``fit`` (rf) raise :class:`~napari_wsseg.errors.ModelError`, which just skips the preview.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..annotations.model import Annotations
from ..engine.progress import ProgressEvent
from ..errors import ModelError
from ..io.image import Image
from ..methods.base import FitOptions, FitResult, Method
from ._layers import entropy_map

logger = logging.getLogger(__name__)

#: Dense slices scored at the end of a run (each costs one slice prediction).
MAX_DICE_SLICES = 3


@dataclass
class SlicePrediction:
    """Predicted class ids and normalised entropy of one slice."""

    z: int
    labels: np.ndarray
    uncertainty: np.ndarray
    step: int = 0


@dataclass
class TrainingJob:
    """Everything one training run needs; built on the main thread, used in the worker.

    ``preview_z`` may be changed by the main thread while the job runs (the viewer's slice).
    ``save_model`` is called with the trained method and returns the saved model's name.
    """

    method: Method
    image: Image
    annotations: Annotations
    options: FitOptions = field(default_factory=FitOptions)
    preview_z: int = 0
    preview_every_s: float = 5.0
    save_model: Callable[[Method], str | None] | None = None


@dataclass
class TrainingOutcome:
    """What a run did and produced."""

    method: Method
    fit: FitResult | None
    seconds: float
    final: SlicePrediction | None = None
    dice: dict[int, float] = field(default_factory=dict)
    model_name: str | None = None

    @property
    def trained(self) -> bool:
        return self.final is not None


def run_training(
    job: TrainingJob,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    preview: Callable[[SlicePrediction], None] | None = None,
) -> TrainingOutcome:
    """Fit ``job.method``, previewing on the way, then predict the current slice and save.

    Returns
    -------
    TrainingOutcome
        ``final`` is None when the run was cancelled before any model existed (nothing saved).
    """
    start = time.monotonic()
    hook = _PreviewHook(job, preview)

    def on_progress(event: ProgressEvent) -> None:
        if progress is not None:
            progress(event)
        hook.maybe_preview(event)

    options = dataclasses.replace(job.options, progress=on_progress)
    fit = job.method.fit(job.image, job.annotations, options)
    try:
        final = predict_slice(job.method, job.image, job.preview_z, step=fit.steps)
    except ModelError:
        if fit.stopped == "cancelled":
            return TrainingOutcome(job.method, fit, time.monotonic() - start)
        raise
    outcome = TrainingOutcome(job.method, fit, 0.0, final, dense_slice_dice(job.method, job.image,
                                                                            job.annotations, final))
    if job.save_model is not None:
        outcome.model_name = job.save_model(job.method)
    outcome.seconds = time.monotonic() - start
    return outcome


def predict_slice(method: Method, image: Image, z: int, *, step: int = 0) -> SlicePrediction:
    """Class ids and uncertainty of slice ``z``."""
    proba = method.predict_proba_slice(image.slice(z))
    labels = np.argmax(proba, axis=0).astype(np.uint8)
    return SlicePrediction(int(z), labels, entropy_map(proba), step)


def dense_slices(annotations: Annotations) -> list[int]:
    """Slices whose mask labels every pixel (dense ground truth the user painted)."""
    if annotations.masks is None:
        return []
    masks = np.asarray(annotations.masks)
    labelled = np.all(masks.reshape(len(masks), -1) > 0, axis=1)
    return np.flatnonzero(labelled).tolist()


def dense_slice_dice(method: Method, image: Image, annotations: Annotations,
                     known: SlicePrediction | None = None) -> dict[int, float]:
    """Mean Dice of the prediction on up to :data:`MAX_DICE_SLICES` densely labelled slices."""
    from ..eval.metrics import evaluate

    scores = {}
    for z in dense_slices(annotations)[:MAX_DICE_SLICES]:
        labels = known.labels if known is not None and known.z == z else method.predict_slice(image.slice(z))
        truth = np.asarray(annotations.masks[z]).astype(np.int64) - 1
        result = evaluate(labels, truth, n_classes=annotations.n_classes, background=None)
        scores[z] = result["mean_dice"]
    return scores


class _PreviewHook:
    """Runs a preview prediction from inside the progress callback, now and then."""

    def __init__(self, job: TrainingJob, preview) -> None:
        self.job = job
        self.preview = preview
        self.enabled = preview is not None and job.preview_every_s > 0
        self.last = time.monotonic()
        self.last_cost = 0.0

    def maybe_preview(self, event: ProgressEvent) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self.last < max(self.job.preview_every_s, 2 * self.last_cost):
            return
        modes = _training_modes(self.job.method)
        try:
            result = predict_slice(self.job.method, self.job.image, self.job.preview_z, step=event.done)
        except ModelError:  # no usable model before the end of fit (e.g. rf)
            result = None
        except Exception:  # a preview must never kill the training run
            logger.exception("live preview failed; previews are off for this run")
            self.enabled = False
            result = None
        finally:
            _restore_training_modes(modes)
        self.last = time.monotonic()
        self.last_cost = self.last - now
        if result is not None:
            self.preview(result)


def avoid_triton_llvm_crash() -> bool:
    """Keep torch from importing triton in a process whose OpenGL driver loaded libLLVM.

    Importing triton (torch imports it when the first optimizer is built) after Mesa's
    OpenGL driver has loaded the system libLLVM crashes the process (two LLVMs, one symbol
    table): napari under Xvfb, llvmpipe or AMD GPUs. None of napari-wsseg's methods needs
    triton (no ``torch.compile``), so in such a process ``import triton`` is made to fail
    cleanly instead. Returns True when it did so.
    """
    if "triton" in sys.modules or not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            llvm_loaded = any("libLLVM" in line for line in maps)
    except OSError:
        return False
    if llvm_loaded:
        sys.modules["triton"] = None  # type: ignore[assignment]
        logger.info("libLLVM is loaded by the OpenGL driver: triton is disabled in this process")
    return llvm_loaded


def _training_modes(method: Method) -> list[tuple[object, bool]]:
    """(module, training flag) of every torch module the method holds, to restore after a preview."""
    import sys

    if "torch" not in sys.modules:
        return []
    import torch

    modules = [v for v in vars(method).values() if isinstance(v, torch.nn.Module)]
    return [(sub, sub.training) for module in modules for sub in module.modules()]


def _restore_training_modes(modes) -> None:
    for module, training in modes:
        module.training = training
