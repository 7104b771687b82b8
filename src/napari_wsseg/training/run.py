"""One training run in the calling thread: fit, live previews, final prediction, save. No Qt.

:func:`run_training` is a plain function that takes callbacks, so it is tested and benchmarked
without a viewer; the Train widget wraps it in a napari thread worker, and the separate training
process (:mod:`.process`) runs it too.

Live preview. A method only reports :class:`~napari_wsseg.progress.ProgressEvent`\\ s while
it trains; nothing outside can ask it for a prediction in between. So the progress callback,
which the method calls *in the training thread between two steps*, runs
``method.predict_proba_slice(current slice)`` itself, at most every ``preview_every_s`` seconds
(and never more than a third of the time), and hands the result to ``preview``. The model being
trained is only touched by that one thread, so this is safe; torch modules the preview switches
to eval mode are switched back to train mode afterwards. Methods that have no usable model before
the end of ``fit`` (rf) raise :class:`~napari_wsseg.errors.ModelError`, which just skips the
preview.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..annotations.model import Annotations
from ..engine.results import FitResult
from ..errors import ModelError
from ..io.image import Image
from ..methods.base import FitOptions, Method
from ..progress import ProgressEvent

logger = logging.getLogger(__name__)

#: Dense slices scored at the end of a run (each costs one slice prediction).
MAX_DICE_SLICES = 3
#: Progress events are forwarded at most this often (the last one of a run always is).
PROGRESS_EVERY_S = 0.1


@dataclass
class SlicePrediction:
    """Predicted class ids and normalised entropy of one slice."""

    z: int
    labels: np.ndarray
    uncertainty: np.ndarray
    step: int = 0
    #: The (y, x) window of the slice the arrays cover; None: the whole slice.
    region: tuple[slice, slice] | None = None
    #: True for the run's final prediction of the slice (sent as a preview before the model is
    #: saved, so the viewer shows it at once; the outcome carries the same).
    final: bool = False


@dataclass
class TrainingJob:
    """Everything one training run needs; built on the main thread, used in the worker.

    ``preview_z`` may be changed by the main thread while the job runs (the viewer's slice).
    ``save_model(method, folder)`` is called once a model is trained and returns its name in the
    project (or None): with the trained method (in-process training), or with None and the folder
    the separate training process already saved the model in. ``model_dir`` is that folder
    (default: a temporary one). A run whose ``options.cancel`` is set is never saved: a cancelled
    model is only kept if the user asks for it (the outcome's ``method`` / ``model_dir``).
    """

    method: Method
    image: Image
    annotations: Annotations
    options: FitOptions = field(default_factory=FitOptions)
    preview_z: int = 0
    preview_every_s: float = 5.0
    save_model: Callable[[Method | None, Path | None], str | None] | None = None
    model_dir: Path | None = None
    #: The name the model gets in the project.
    model_name: str | None = None
    #: The previous model to continue from (warm start): a trained method or its model folder;
    #: None trains from scratch. See :meth:`~napari_wsseg.methods.base.Method.fit`.
    init: Method | Path | None = None
    #: The (y, x) window of the slice the viewer shows when the view is zoomed in: at the end of
    #: the run it is predicted and previewed before the whole slice. None: the whole slice only.
    preview_region: tuple[slice, slice] | None = None
    #: Preview a draft of the whole slice from a cheaper version of the model first, where the
    #: method has one (:meth:`~napari_wsseg.methods.base.Method.draft`; live mode).
    draft_first: bool = False


@dataclass
class TrainingOutcome:
    """What a run did and produced."""

    method: Method
    fit: FitResult | None
    seconds: float
    final: SlicePrediction | None = None
    dice: dict[int, float] = field(default_factory=dict)
    model_name: str | None = None
    #: Where a separate training process saved the model (``method`` is then not trained here).
    model_dir: Path | None = None
    #: Warnings of the fit meant for the user, e.g. why a warm start fell back to a cold one.
    warnings: list[str] = field(default_factory=list)
    #: Whether the fit continued from ``TrainingJob.init`` (False: trained from scratch).
    warm: bool = False
    #: Slices whose filter features this run ``computed`` and reused (``hits``), for methods
    #: with a feature memo run in a :class:`~.process.TrainingProcess`; empty otherwise.
    feature_cache: dict[str, int] = field(default_factory=dict)

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

    The final prediction goes to ``preview`` (marked ``final``) as soon as it exists, before the
    Dice scores and the save; with ``job.preview_region`` that window of the slice goes first.

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
    fit, messages = _fit(job, options)
    warm = bool((job.method.training_summary or {}).get("warm_start"))
    try:
        final = _predict_final(job, fit.steps, preview)
    except ModelError:
        if fit.stopped == "cancelled":
            return TrainingOutcome(
                job.method, fit, time.monotonic() - start, warnings=messages, warm=warm
            )
        raise
    outcome = TrainingOutcome(
        job.method, fit, 0.0, final, dense_slice_dice(job.method, job.image, job.annotations, final)
    )
    outcome.warnings, outcome.warm = messages, warm
    if job.save_model is not None and not was_cancelled(job):
        outcome.model_name = job.save_model(job.method, None)
    outcome.seconds = time.monotonic() - start
    return outcome


def _predict_final(job: TrainingJob, steps: int, preview) -> SlicePrediction:
    """The final prediction of the current slice, each part handed to ``preview`` at once: with
    ``job.draft_first`` a draft of the whole slice where the method has one, else the window the
    viewer shows (if it is at most :data:`WINDOW_FIRST_MAX_SHARE` of the slice); then the whole
    slice.

    The draft wins over the window: rf's draft of a whole slice reuses the slice's kept features
    and 16 trees (0.2 s for 1024²), while a window's prediction filters the window afresh and
    runs every tree (about 1 s for most of a 1024² slice; benchmarks/live_latency.py).
    """
    z = job.preview_z
    drafted = False
    if preview is not None and job.draft_first:
        with job.method.draft() as cheaper:
            if cheaper:
                preview(predict_slice(job.method, job.image, z, step=steps))
                drafted = True
    if preview is not None and not drafted and _is_part_of_slice(job.preview_region, job.image):
        preview(predict_slice(job.method, job.image, z, step=steps, region=job.preview_region))
    final = predict_slice(job.method, job.image, z, step=steps)
    final.final = True
    if preview is not None:
        preview(final)
    return final


#: Largest share of the slice a visible window may cover and still be predicted before the whole
#: slice: a bigger window costs most of the whole slice's time and then delays it (dsp, live
#: runs, a canvas showing 60 % of a 1024² slice: window 2.4 s, then the slice 3 s; session 9).
WINDOW_FIRST_MAX_SHARE = 0.5


def _is_part_of_slice(region: tuple[slice, slice] | None, image: Image) -> bool:
    """Whether ``region`` is a window small enough to be predicted before the whole slice."""
    if region is None:
        return False
    _, height, width = image.shape
    ys, xs = region
    return (ys.stop - ys.start) * (xs.stop - xs.start) <= WINDOW_FIRST_MAX_SHARE * height * width


def _fit(job: TrainingJob, options: FitOptions) -> tuple[FitResult, list[str]]:
    """``job.method.fit`` from ``job.init``; also returns the warm-start warnings it gave.

    The warnings are recorded, not printed, so the caller can show them to the user (the widget
    as a notification). ``warnings.catch_warnings`` is process-wide: a warning another thread
    gives during the fit may land in this list too, which only adds a message.
    """
    from ..methods.warm import WarmStartWarning

    init = job.init
    if init is not None and not isinstance(init, Method):
        from ..methods.base import load_model

        init = load_model(init)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", WarmStartWarning)
        fit = job.method.fit(job.image, job.annotations, options, init=init)
    messages = [str(w.message) for w in caught if issubclass(w.category, WarmStartWarning)]
    for w in caught:
        if not issubclass(w.category, WarmStartWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return fit, messages


def was_cancelled(job: TrainingJob) -> bool:
    """True once the user pressed Cancel for ``job`` (also after the fit itself had finished)."""
    return job.options.cancel is not None and job.options.cancel.is_set()


def throttle(callback: Callable[[ProgressEvent], None], every_s: float = PROGRESS_EVERY_S):
    """Forward progress events at most every ``every_s`` seconds, plus every final one."""
    last = [0.0]

    def forward(event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or event.done >= event.total:
            last[0] = now
            callback(event)

    return forward


def entropy_map(proba: np.ndarray) -> np.ndarray:
    """Normalised entropy ``(Y, X)`` in [0, 1] of ``(C, Y, X)`` class probabilities.

    Examples
    --------
    >>> entropy_map(np.full((2, 1, 1), 0.5)).round(3).tolist()
    [[1.0]]
    """
    proba = np.clip(np.asarray(proba, dtype=np.float32), 1e-7, 1.0)
    entropy = -(proba * np.log(proba)).sum(axis=0)
    return (entropy / np.log(max(len(proba), 2))).astype(np.float32)


def predict_slice(
    method: Method,
    image: Image,
    z: int,
    *,
    step: int = 0,
    region: tuple[slice, slice] | None = None,
) -> SlicePrediction:
    """Class ids and uncertainty of slice ``z``, or of its ``(y, x)`` window ``region``."""
    from ..predict.slices import predict_slice_proba  # z neighbours for methods with halo_z > 0

    proba = predict_slice_proba(method, image, z, region)
    labels = np.argmax(proba, axis=0).astype(np.uint8)
    return SlicePrediction(int(z), labels, entropy_map(proba), step, region)


def dense_slices(annotations: Annotations) -> list[int]:
    """Slices whose mask labels every pixel (dense ground truth the user painted)."""
    if annotations.masks is None:
        return []
    masks = np.asarray(annotations.masks)
    labelled = np.all(masks.reshape(len(masks), -1) > 0, axis=1)
    return np.flatnonzero(labelled).tolist()


def dense_slice_dice(
    method: Method, image: Image, annotations: Annotations, known: SlicePrediction | None = None
) -> dict[int, float]:
    """Mean Dice of the prediction on up to :data:`MAX_DICE_SLICES` densely labelled slices."""
    from ..eval.metrics import evaluate

    scores = {}
    for z in dense_slices(annotations)[:MAX_DICE_SLICES]:
        labels = (
            known.labels
            if known is not None and known.z == z
            else method.predict_slice(image.slice(z))
        )
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
            result = predict_slice(
                self.job.method, self.job.image, self.job.preview_z, step=event.done
            )
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
    """(module, training flag) of every torch module of the method, restored after a preview."""
    if "torch" not in sys.modules:
        return []
    import torch

    modules = [v for v in vars(method).values() if isinstance(v, torch.nn.Module)]
    return [(sub, sub.training) for module in modules for sub in module.modules()]


def _restore_training_modes(modes) -> None:
    for module, training in modes:
        module.training = training
