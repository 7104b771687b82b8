"""The interface every segmentation method implements, and the model-folder format. No Qt.

A method is trained from an :class:`~napari_wsseg.io.image.Image` and
:class:`~napari_wsseg.annotations.model.Annotations` with :meth:`Method.fit`, predicts class
probabilities one 2D slice at a time with :meth:`Method.predict_proba_slice`, and saves itself to
a *model folder*:

``config.json``
    format version, package version, method name, method config, classes, normalisation,
    channel count, the annotation summary it was trained on, and method-specific ``state``.
weights
    ``model.safetensors`` (network weights, or the random forest's tree tables). Never pickle.

Folders are written to a temporary sibling and renamed into place, so a crash never leaves a
half-written model.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import shutil
import tempfile
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import __version__
from ..annotations.model import Annotations, ClassInfo
from ..engine.results import FitResult
from ..progress import ProgressCallback
from ..errors import ModelError, WssegError
from ..io.image import Image
from ..io.normalize import Normalization

MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


@dataclass
class FitOptions:
    """How to run a training: device, seed, time budget, progress and cancel.

    ``time_budget_s`` None means the method's own stopping rule; ``cancel`` is checked at step
    boundaries and makes :meth:`Method.fit` return early with the best model so far.
    """

    device: str = "auto"
    seed: int = 0
    time_budget_s: float | None = None
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None

    def __post_init__(self) -> None:
        if self.time_budget_s is not None and self.time_budget_s <= 0:
            raise WssegError(
                f"time budget {self.time_budget_s} s is not positive; give a number of seconds > 0 "
                "or no budget"
            )


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(config_class, values: dict):
    """Build a config dataclass, rejecting unknown keys with the list of valid ones."""
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise WssegError(
            f"unknown option(s) {unknown} for {config_class.__name__}; valid options: {sorted(names)}"
        )
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    converted = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        converted[key] = value
    return config_class(**converted)


def option_summaries(docstring: str) -> dict[str, str]:
    """First sentence of each entry of a numpydoc ``Attributes`` section, by option name.

    Examples
    --------
    >>> doc = '''Options.
    ...
    ...     Attributes
    ...     ----------
    ...     lr, weight_decay : float, default 1e-3, 0.01
    ...         AdamW settings. The paper used 6e-5.
    ...     depth : int
    ...         U-Net down-sampling steps
    ...         (levels minus one).
    ...     '''
    >>> option_summaries(doc)
    {'lr': 'AdamW settings.', 'weight_decay': 'AdamW settings.', 'depth': 'U-Net down-sampling steps (levels minus one).'}
    """
    lines = inspect.cleandoc(docstring).splitlines()
    if "Attributes" not in lines:
        return {}
    entries: list[tuple[list[str], list[str]]] = []
    for line in lines[lines.index("Attributes") + 2 :]:
        if line and not line.startswith(" "):
            if " : " not in line:
                break  # the next section
            names = [n.strip() for n in line.split(" : ")[0].split(",")]
            entries.append((names, []))
        elif line.strip() and entries:
            entries[-1][1].append(line.strip())
    summaries = {}
    for names, text in entries:
        sentence = " ".join(text).replace("``", "").split(". ")[0].rstrip(".") + "." if text else ""
        summaries.update({name: sentence for name in names})
    return summaries


class Method(ABC):
    """Base class of segmentation methods.

    Subclasses set ``name`` (the registry key) and ``config_class`` (a frozen dataclass whose
    fields are the method's options, with defaults), and implement :meth:`_fit`,
    :meth:`predict_proba_slice`, :meth:`_save_weights` and :meth:`_load_weights`.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: Pixels of context a prediction needs on each side of a tile (used by block-wise prediction).
    halo: ClassVar[int] = 0

    def __init__(self, config=None, **options: Any) -> None:
        if config is None:
            config = config_from_dict(self.config_class, options)
        elif options:
            config = dataclasses.replace(config, **options)
        self.config = config
        self.classes: list[ClassInfo] = []
        self.normalization: Normalization | None = None
        self.n_channels: int | None = None
        self.training_summary: dict = {}

    # ---------------------------------------------------------------- training
    def fit(self, image: Image, annotations: Annotations, options: FitOptions | None = None) -> FitResult:
        """Train on ``image`` from ``annotations``.

        Raises
        ------
        WssegError
            When the annotations are empty or do not fit the image.
        """
        from ..annotations.validate import validate_annotations

        options = options or FitOptions()
        if annotations.is_empty():
            raise WssegError(
                f"no annotations for image {image.name}; add points, boxes, tags, sizes or a mask first"
            )
        self.classes = list(annotations.classes)
        self.n_channels = image.n_channels
        self.normalization = Normalization.from_image(image)
        warnings = validate_annotations(annotations, image.shape, source="annotations")
        self.training_summary = {**annotations.summary(), "warnings": warnings}
        return self._fit(image, annotations, options)

    @abstractmethod
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        """Method-specific training; ``self.classes``/``normalization``/``n_channels`` are set."""

    # -------------------------------------------------------------- prediction
    @abstractmethod
    def predict_proba_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C, Y, X)`` float32 of one raw (un-normalised) ``(Y, X, C)`` slice."""

    def predict_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Labels ``(Y, X)`` uint8 of one raw ``(Y, X, C)`` slice."""
        return np.argmax(self.predict_proba_slice(slice_yxc), axis=0).astype(np.uint8)

    def check_image(self, image: Image) -> None:
        """Raise a clear error if ``image`` does not fit this trained model."""
        if not self.classes:
            raise ModelError(f"{self.name} model is not trained; call fit() or load a model folder")
        if image.n_channels != self.n_channels:
            raise ModelError(
                f"image {image.name} has {image.n_channels} channel(s) but the {self.name} model was "
                f"trained on {self.n_channels}; use an image with the same channels or retrain"
            )

    # ------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike) -> Path:
        """Write the model folder atomically (temporary sibling, then rename) and return its path."""
        if not self.classes:
            raise ModelError(f"cannot save an untrained {self.name} model; train it first")
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            self._save_weights(tmp)
            meta = {
                "format_version": MODEL_FORMAT_VERSION,
                "package_version": __version__,
                "method": self.name,
                "config": config_to_dict(self.config),
                "classes": [dataclasses.asdict(c) for c in self.classes],
                "normalization": self.normalization.to_dict(),
                "n_channels": self.n_channels,
                "training_summary": self.training_summary,
                "state": self._state_dict(),
            }
            (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
            _replace_dir(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder

    def _state_dict(self) -> dict:
        """Extra JSON-able state a subclass needs at load time."""
        return {}

    def _load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`_state_dict` returned."""

    @abstractmethod
    def _save_weights(self, folder: Path) -> None:
        """Write the learnt parameters into ``folder`` (safetensors, never pickle)."""

    @abstractmethod
    def _load_weights(self, folder: Path) -> None:
        """Read what :meth:`_save_weights` wrote."""


def read_model_config(folder: str | os.PathLike) -> dict:
    """Read and check a model folder's ``config.json``."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"model folder {folder}: no {CONFIG_FILE}; give a folder written by `wsseg train`")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"model folder {folder}: {CONFIG_FILE} is not valid JSON ({exc}); retrain the model") from None
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION:
        raise ModelError(
            f"model folder {folder}: format version {version} is not supported by napari-wsseg "
            f"{__version__} (supports {MODEL_FORMAT_VERSION}); install the release that wrote it "
            f"(package_version {meta.get('package_version')}) or retrain"
        )
    return meta


def load_model(folder: str | os.PathLike) -> Method:
    """Load any method's model folder (the method comes from ``config.json``)."""
    from . import get_method

    folder = Path(folder)
    meta = read_model_config(folder)
    method_class = get_method(meta["method"])
    model = method_class(config_from_dict(method_class.config_class, meta["config"]))
    model.classes = [ClassInfo(**c) for c in meta["classes"]]
    model.normalization = Normalization.from_dict(meta["normalization"])
    model.n_channels = int(meta["n_channels"])
    model.training_summary = meta.get("training_summary", {})
    model._load_state_dict(meta.get("state", {}))
    model._load_weights(folder)
    return model


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``, replacing an existing folder with as small a window as possible."""
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
