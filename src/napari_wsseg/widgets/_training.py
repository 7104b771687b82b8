"""What the train widget runs in its worker thread: fit, live previews, final prediction, save.

This module imports no Qt: :func:`run_training` is a plain function that takes callbacks, so it
is tested and benchmarked without a viewer, and the widget wraps it in a napari thread worker.

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
import queue as queue_module
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..annotations.model import Annotations
from ..progress import ProgressEvent
from ..errors import ModelError, WssegError
from ..io.image import Image
from ..methods.base import FitOptions, FitResult, Method
from ._layers import entropy_map

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


@dataclass
class TrainingJob:
    """Everything one training run needs; built on the main thread, used in the worker.

    ``preview_z`` may be changed by the main thread while the job runs (the viewer's slice).
    ``save_model(method, folder)`` is called once a model is trained and returns its name in the
    project (or None): with the trained method (in-process training), or with None and the folder
    the separate training process already saved the model in. ``model_dir`` is that folder
    (default: a temporary one).
    """

    method: Method
    image: Image
    annotations: Annotations
    options: FitOptions = field(default_factory=FitOptions)
    preview_z: int = 0
    preview_every_s: float = 5.0
    save_model: Callable[[Method | None, Path | None], str | None] | None = None
    model_dir: Path | None = None


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
        outcome.model_name = job.save_model(job.method, None)
    outcome.seconds = time.monotonic() - start
    return outcome


def throttle(callback: Callable[[ProgressEvent], None], every_s: float = PROGRESS_EVERY_S):
    """Forward progress events at most every ``every_s`` seconds, plus every final one."""
    last = [0.0]

    def forward(event: ProgressEvent) -> None:
        now = time.monotonic()
        if now - last[0] >= every_s or event.done >= event.total:
            last[0] = now
            callback(event)

    return forward


# ------------------------------------------------------------------------ in a separate process
@dataclass
class _ChildSpec:
    """What the training process needs (picklable: no callbacks, no thread events)."""

    method_name: str
    config: dict
    image: Image
    annotations: Annotations
    options: FitOptions
    preview_every_s: float
    model_dir: str


def run_training_in_subprocess(
    job: TrainingJob,
    *,
    progress: Callable[[ProgressEvent], None] | None = None,
    preview: Callable[[SlicePrediction], None] | None = None,
    poll_s: float = 0.05,
) -> TrainingOutcome:
    """:func:`run_training` in a fresh Python process; same callbacks, same result.

    The process gets the method's name and config, the image (numpy data is copied, a lazy zarr
    image is re-opened there) and the annotation snapshot; it sends progress events, previews and
    the outcome back through a queue and saves the model into ``job.model_dir``; the outcome's
    ``model_dir`` points there (the method object here stays untrained). ``job.options.cancel``
    and ``job.preview_z`` are forwarded while it runs. The calling thread mostly waits on the
    queue, so it hardly holds the GIL: the napari event loop stays free.
    """
    import multiprocessing

    from ..methods.base import config_to_dict

    context = multiprocessing.get_context("spawn")
    messages, cancel, preview_z = context.Queue(), context.Event(), context.Value("i", int(job.preview_z))
    model_dir = Path(job.model_dir or Path(tempfile.mkdtemp(prefix="wsseg-model-")) / job.method.name)
    options = dataclasses.replace(job.options, progress=None, cancel=None)
    spec = _ChildSpec(job.method.name, config_to_dict(job.method.config), job.image, job.annotations, options,
                      job.preview_every_s if preview is not None else 0.0, str(model_dir))
    process = context.Process(target=_child_main, args=(spec, messages, cancel, preview_z), daemon=True,
                              name="wsseg-training")
    process.start()
    try:
        result = _relay(job, process, messages, cancel, preview_z, progress, preview, poll_s)
        process.join()
    finally:
        if process.is_alive():
            process.kill()
    outcome = dataclasses.replace(result, method=job.method, model_dir=model_dir if result.trained else None)
    if outcome.trained and job.save_model is not None:
        outcome.model_name = job.save_model(None, model_dir)
    return outcome


def _relay(job, process, messages, cancel, preview_z, progress, preview, poll_s) -> TrainingOutcome:
    """Forward cancel and the slice to the process and its messages to the callbacks, until done."""
    while True:
        if job.options.cancel is not None and job.options.cancel.is_set():
            cancel.set()
        preview_z.value = int(job.preview_z)
        try:
            kind, payload = messages.get(timeout=poll_s)
        except queue_module.Empty:
            if not process.is_alive() and messages.empty():
                raise RuntimeError(f"the training process ended unexpectedly (exit code {process.exitcode})")
            continue
        if kind == "progress" and progress is not None:
            progress(payload)
        elif kind == "preview" and preview is not None:
            preview(payload)
        elif kind == "error":
            raise _rebuild_error(*payload)
        elif kind == "done":
            return payload


def _child_main(spec: _ChildSpec, messages, cancel, preview_z) -> None:
    """Entry point of the training process."""
    from ..methods import get_method
    from ..methods.base import config_from_dict

    try:
        method_class = get_method(spec.method_name)
        method = method_class(config=config_from_dict(method_class.config_class, spec.config))
        job = TrainingJob(method, spec.image, spec.annotations, dataclasses.replace(spec.options, cancel=cancel),
                          preview_z=preview_z.value, preview_every_s=spec.preview_every_s)

        def on_progress(event: ProgressEvent) -> None:
            job.preview_z = preview_z.value
            messages.put(("progress", event))

        outcome = run_training(job, progress=throttle(on_progress),
                               preview=lambda result: messages.put(("preview", result)))
        if outcome.trained:
            method.save(spec.model_dir)
        messages.put(("done", dataclasses.replace(outcome, method=None)))
    except BaseException as exc:  # sent to the parent, which shows it; the traceback goes to its log
        import traceback

        messages.put(("error", (type(exc).__name__, str(exc), isinstance(exc, WssegError),
                                traceback.format_exc())))


def _rebuild_error(name: str, message: str, user_error: bool, details: str) -> Exception:
    if user_error:
        return WssegError(message)
    logger.error("training process failed:\n%s", details)
    if name == "MemoryError":
        return MemoryError(message)
    if name == "OutOfMemoryError":
        return RuntimeError(f"CUDA out of memory: {message}")
    return RuntimeError(message if name == "RuntimeError" else f"{name}: {message}")


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
