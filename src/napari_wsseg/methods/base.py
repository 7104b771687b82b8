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

import contextlib
import dataclasses
import inspect
import json
import math
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
from ..engine.devices import check_device_name
from ..engine.results import FitResult
from ..errors import ModelError, WssegError
from ..io.image import Image
from ..io.normalize import Normalization
from ..progress import ProgressCallback

MODEL_FORMAT_VERSION = 1
CONFIG_FILE = "config.json"


@dataclass
class FitOptions:
    """How to run a training: device, seed, time budget, progress and cancel.

    ``time_budget_s`` None means the method's own stopping rule; ``cancel`` is checked at step
    boundaries and makes :meth:`Method.fit` return early with the best model so far.
    ``warm_steps`` is the length of a warm-started training (``fit(..., init=...)``) of the
    methods that train steps; None means the method's default (``methods/warm.py``).
    ``focus`` is an ``(N, 3)`` array of ``(z, y, x)`` places a warm run should look at most
    (live mode: where the user annotated since the last run, see
    :meth:`~napari_wsseg.annotations.model.Annotations.added_since`); a method that trains on
    crops centres a share of them there (dsp), the others ignore it. ``warm_lr_factor`` is the
    share of the configured learning rate a warm run of a torch method trains at; None means
    :data:`~napari_wsseg.methods.warm.WARM_LR_FACTOR` (live runs take
    :data:`~napari_wsseg.methods.warm.LIVE_LR_FACTOR`). ``warm_keep`` is the share of the
    previous model's weights a warm torch model keeps: its weights end as ``warm_keep *
    previous + (1 - warm_keep) * trained``; None means :data:`~napari_wsseg.methods.warm.WARM_KEEP`.
    """

    device: str = "auto"
    seed: int = 0
    time_budget_s: float | None = None
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
    warm_steps: int | None = None
    focus: np.ndarray | None = None
    warm_lr_factor: float | None = None
    warm_keep: float | None = None

    def __post_init__(self) -> None:
        from .warm import check_warm_steps

        self.device = check_device_name(self.device)
        self.warm_steps = check_warm_steps(self.warm_steps)
        if self.focus is not None:
            focus = np.asarray(self.focus)
            if focus.ndim != 2 or focus.shape[1] != 3 or not np.issubdtype(focus.dtype, np.integer):
                raise WssegError(
                    f"focus of shape {focus.shape} is not (N, 3) integer (z, y, x) rows; give "
                    "pixel positions or no focus"
                )
            self.focus = focus.astype(np.int64)
        factor = self.warm_lr_factor
        if factor is not None and not (
            isinstance(factor, (int, float)) and not isinstance(factor, bool) and 0 < factor <= 1
        ):
            raise WssegError(
                f"warm_lr_factor {factor!r} is not a share of the learning rate; give a number "
                "in (0, 1] or None for the default"
            )
        keep = self.warm_keep
        if keep is not None and not (
            isinstance(keep, (int, float)) and not isinstance(keep, bool) and 0 <= keep < 1
        ):
            raise WssegError(
                f"warm_keep {keep!r} is not a share of the previous model's weights; give a "
                "number in [0, 1) or None for the default"
            )
        budget = self.time_budget_s
        if budget is not None and not (math.isfinite(budget) and budget > 0):
            raise WssegError(
                f"time budget {budget} s is not positive and finite; give a number of seconds > 0 "
                "(--time-budget) or no budget"
            )


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(config_class, values: dict):
    """Build a config dataclass, rejecting unknown keys with the list of valid ones.

    The config's own ``__post_init__`` then checks every value (:func:`check_config`), so a
    config read from an untrusted ``config.json`` passes the same checks as one built in code.
    """
    if not isinstance(values, dict):
        raise WssegError(
            f"options of {config_class.__name__} must be a mapping of option names to values, "
            f"got {type(values).__name__}; write them as a JSON object"
        )
    names = {f.name for f in dataclasses.fields(config_class)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise WssegError(
            f"unknown option(s) {_short(unknown)} for {config_class.__name__}; remove them "
            f"(valid options: {sorted(names)})"
        )
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    converted = {}
    for key, value in values.items():
        default = fields[key].default
        if isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        converted[key] = value
    return config_class(**converted)


#: Longest string option accepted (names and paths; a model file is untrusted input).
MAX_OPTION_CHARS = 4096


def check_config(config, method: str, bounds: dict[str, tuple[float, float]]) -> None:
    """Check every option of a method config against its annotated type and inclusive bounds.

    An ``int`` option takes an int (not a bool), a ``float`` option a finite int or float, a
    ``bool`` option a bool, a ``str`` option a string of at most :data:`MAX_OPTION_CHARS`
    characters, a ``tuple[float, ...]`` option a sequence of that length; ``T | None`` also takes
    None. ``bounds`` gives ``(low, high)`` of every numeric option (for a tuple, of each item).

    Raises
    ------
    WssegError
        Naming the option, the value seen and the range, e.g.
        ``dsp option prototypes_per_class=100000000 must be an integer between 1 and 100``.
    """
    import types
    import typing

    hints = typing.get_type_hints(type(config))
    for field_ in dataclasses.fields(config):
        value, hint = getattr(config, field_.name), hints[field_.name]
        optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
        kind = next(k for k in typing.get_args(hint) if k is not type(None)) if optional else hint
        if value is None and optional:
            continue
        problem = _option_problem(value, kind, bounds.get(field_.name))
        if problem:
            raise WssegError(
                f"{method} option {field_.name}={_short(value)} must be {problem}; "
                f"use such a value (default {_short(field_.default)})"
            )


def _option_problem(value, kind, bound: tuple[float, float] | None) -> str | None:
    """What ``value`` lacks to be a valid option of
    type ``kind`` within ``bound``; None if valid."""
    import typing

    if typing.get_origin(kind) is tuple:
        items = typing.get_args(kind)
        if len(items) == 2 and items[1] is Ellipsis:  # tuple[T, ...]: up to 256 items
            if not isinstance(value, (tuple, list)) or len(value) > 256:
                return "a list of at most 256 numbers"
            items = (items[0],) * len(value)
        if not isinstance(value, (tuple, list)) or len(value) != len(items):
            return f"a list of {len(items)} numbers"
        problems = [_option_problem(v, k, bound) for v, k in zip(value, items)]
        return next((f"a list of {len(items)} numbers, each {p}" for p in problems if p), None)
    if kind is bool:
        return None if isinstance(value, bool) else "true or false"
    if typing.get_origin(kind) is typing.Literal:
        choices = typing.get_args(kind)
        return None if value in choices else "one of " + ", ".join(map(repr, choices))
    if kind is str:
        ok = isinstance(value, str) and len(value) <= MAX_OPTION_CHARS
        return None if ok else f"a text of at most {MAX_OPTION_CHARS} characters"
    integer = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    number = integer or (isinstance(value, (float, np.floating)) and np.isfinite(value))
    low, high = bound if bound is not None else (-np.inf, np.inf)
    if kind is int and not (integer and low <= value <= high):
        return f"an integer between {low} and {high}"
    if kind is float and not (number and low <= value <= high):
        return f"a number between {low} and {high}"
    return None


def _short(value, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a crafted value cannot flood a message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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
    {'lr': 'AdamW settings.', 'weight_decay': 'AdamW settings.',
     'depth': 'U-Net down-sampling steps (levels minus one).'}
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

    Optional hooks, each with a working default (see ``docs/methods/adding-a-method.md``):
    :attr:`halo`, :attr:`halo_z`, :attr:`block_align`, :attr:`min_block_yx`,
    :attr:`main_options`, :meth:`predict_proba_batch` and :meth:`predict_proba_block`.
    Prediction code calls these and never probes for other attributes.
    """

    name: ClassVar[str]
    config_class: ClassVar[type]
    #: Pixels of context the prediction of a pixel needs on each side in y and x. Block-wise
    #: prediction reads this much around each block, so it equals whole-slice prediction when the
    #: halo covers what the method looks at. A class attribute, or a property when it depends on
    #: the config (rf: its largest filter).
    halo: ClassVar[int] = 0
    #: Slices of context :meth:`predict_proba_block` needs above and below a block; 0 for methods
    #: that predict each slice on its own (every method so far).
    halo_z: ClassVar[int] = 0
    #: ``(z, y, x)`` multiples the start of a block's context is rounded down to, so a network
    #: that pools (a U-Net pools in cells of ``2 ** depth``) sees the same pooling grid in every
    #: block as over the whole volume; ``(1, 1, 1)``: no rounding.
    block_align: ClassVar[tuple[int, int, int]] = (1, 1, 1)
    #: Smallest block side in y and x that block-wise prediction chooses by default, for methods
    #: whose halo is large next to the default 512 px block (each block then recomputes much
    #: context: mews reads a whole ViT tile around every block). None: no preference. A ``--block``
    #: the user gives is used as it is, with a warning naming the extra work when it is smaller.
    min_block_yx: ClassVar[int | None] = None
    #: Options the GUI's form shows first, the others behind "more options"; empty: all shown.
    main_options: ClassVar[tuple[str, ...]] = ()
    #: Training steps of a live run (the Train widget's live mode) when the user leaves "live run
    #: steps" to the method; None: as long as a warm start (``FitOptions.warm_steps`` None).
    live_steps: ClassVar[int | None] = None
    #: Whether a warm fit learns the new annotations as fully as a cold one (rf: it refits its
    #: forest on all of them); False: a warm fit is a short continuation of the previous model.
    warm_fit_is_complete: ClassVar[bool] = False

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
        #: The previous model a running :meth:`fit` continues from (None: cold, or not fitting).
        self.warm_init: Method | None = None

    # ---------------------------------------------------------------- training
    def fit(
        self,
        image: Image,
        annotations: Annotations,
        options: FitOptions | None = None,
        *,
        init: Method | None = None,
    ) -> FitResult:
        """Train on ``image`` from ``annotations``.

        Parameters
        ----------
        init : Method or None, default None
            A previous model of this method to continue from (warm start). By default, or when
            its classes, channels or learned-shape options differ (then with a
            :class:`~napari_wsseg.methods.warm.WarmStartWarning`), training starts from scratch.
            A warm start keeps ``init``'s normalisation.

        Raises
        ------
        WssegError
            When the annotations are empty or do not fit the image, or ``init`` is not a
            trained model of this method.
        """
        from ..annotations.validate import validate_annotations
        from .warm import warm_start_source

        options = options or FitOptions()
        if annotations.is_empty():
            raise WssegError(
                f"no annotations for image {image.name}; add "
                "points, boxes, tags, sizes or a mask first"
            )
        self.classes = list(annotations.classes)
        self.n_channels = image.n_channels
        self.normalization = Normalization.from_image(image)
        warnings = validate_annotations(annotations, image.shape, source="annotations")
        self.training_summary = {**annotations.summary(), "warnings": warnings}
        self.warm_init = warm_start_source(self, init, annotations, image.n_channels)
        self.training_summary["warm_start"] = self.warm_init is not None
        if self.warm_init is not None:
            self.normalization = self.warm_init.normalization
        try:
            return self._fit(image, annotations, options)
        finally:
            self.warm_init = None  # do not keep the previous model alive

    @abstractmethod
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        """Method-specific training; ``self.classes``/``normalization``/``n_channels`` are set."""

    def warm_up(self, image: Image, annotations: Annotations) -> None:
        """Compute ahead what a warm start from this trained model on ``annotations`` of ``image``
        begins with, and keep it for that fit (rf: the filter features of the annotated slices).
        By default there is nothing to compute. The kept training process of live mode calls it
        while the user is still annotating."""

    # -------------------------------------------------------------- prediction
    @abstractmethod
    def predict_proba_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C, Y, X)`` float32 of
        one raw (un-normalised) ``(Y, X, C)`` slice."""

    def draft(self) -> contextlib.AbstractContextManager[bool]:
        """``with method.draft() as cheaper:`` predictions inside may come from a cheaper version
        of the model, which live mode shows before the full prediction; ``cheaper`` says whether
        this method has one. By default it has not and predictions are unchanged."""
        return contextlib.nullcontext(False)

    def predict_proba_batch(self, slices: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities ``(C, Y, X)`` float32 of each raw ``(Y, X, C)`` slice in ``slices``.

        Block-wise prediction hands over the slices of a block (up to
        ``predict.blocks.BATCH_SLICES`` at once). By default each goes to
        :meth:`predict_proba_slice`; override this to batch work on a GPU.
        """
        return [self.predict_proba_slice(s) for s in slices]

    def predict_proba_block(self, block_zyxc: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C, Z, Y, X)`` float32 of a raw ``(Z, Y, X, C)`` block.

        This is what block-wise prediction calls. The block carries :attr:`halo_z` slices of
        context above and below and :attr:`halo` pixels around in y and x where the volume has
        them; the caller crops the context away, so return probabilities for every slice given.
        By default the slices go to :meth:`predict_proba_batch`; a 3D method overrides this and
        sets :attr:`halo_z`.
        """
        slices = self.predict_proba_batch(list(block_zyxc))
        return np.stack([np.asarray(p, dtype=np.float32) for p in slices], axis=1)

    @property
    def has_second_opinion(self) -> bool:
        """Whether :meth:`second_opinion_slice` answers: the model keeps a second network of
        its own, such as the student of a mean-teacher pair. By default it keeps one."""
        return False

    def second_opinion_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C, Y, X)`` float32 of one raw ``(Y, X, C)`` slice from the
        model's second network (see :attr:`has_second_opinion`). Where the two networks disagree
        the model has not settled, so a label there is expected to help
        (:mod:`napari_wsseg.predict.suggest`'s ``disagreement`` measure)."""
        raise ModelError(
            f"the {self.name} model keeps a single network, so it has no second opinion; "
            "rank suggestions by entropy or margin instead"
        )

    def predict_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Labels ``(Y, X)`` uint8 of one raw ``(Y, X, C)`` slice."""
        return np.argmax(self.predict_proba_slice(slice_yxc), axis=0).astype(np.uint8)

    def check_image(self, image: Image) -> None:
        """Raise a clear error if ``image`` does not fit this trained model."""
        if not self.classes:
            raise ModelError(f"{self.name} model is not trained; call fit() or load a model folder")
        if image.n_channels != self.n_channels:
            raise ModelError(
                f"image {image.name} has {image.n_channels} channel(s) but the {self.name} model "
                f"was trained on {self.n_channels}; use an image with the same channels or retrain"
            )

    # ------------------------------------------------------------- persistence
    def save(self, folder: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model folder atomically (temporary sibling, then rename) and return its path.

        Parameters
        ----------
        folder : str or Path
            The model folder: missing or empty, or (with ``overwrite``) a model folder.
        overwrite : bool, default False
            Replace an existing model folder. A non-empty folder that is not a model folder is
            refused even then, so a user's files are never deleted.

        Raises
        ------
        ModelError
            When the model is untrained or ``folder`` may not be written (see
            :func:`check_model_destination`).
        """
        if not self.classes:
            raise ModelError(f"cannot save an untrained {self.name} model; train it first")
        folder = Path(folder)
        check_model_destination(folder, overwrite=overwrite)
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


#: Largest config.json read (a model folder is untrusted input; real ones are a few kB).
MAX_CONFIG_BYTES = 16 * 2**20
#: Most classes and channels a model may declare (labels are written as uint8).
MAX_CLASSES, MAX_CHANNELS = 256, 1024
_REQUIRED_KEYS = ("method", "config", "classes", "normalization", "n_channels")


def read_model_config(folder: str | os.PathLike) -> dict:
    """Read and check a model folder's ``config.json`` (size, JSON object, format version).

    Raises
    ------
    ModelError
        Naming the folder when the file is missing, too large, not a JSON object or from an
        unsupported format version.
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(
            f"model folder {folder}: no {CONFIG_FILE}; give a folder written by `wsseg train`"
        )
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelError(
            f"model folder {folder}: {CONFIG_FILE} is {path.stat().st_size} bytes, more "
            f"than a model config ever holds ({MAX_CONFIG_BYTES}); retrain the model"
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        reason = " ".join(str(exc).split())[:120] or type(exc).__name__
        raise ModelError(
            f"model folder {folder}: {CONFIG_FILE} is not valid JSON ({reason}); retrain the model"
        ) from None
    except OSError as exc:
        raise ModelError(
            f"model folder {folder}: cannot read {CONFIG_FILE} ({exc.strerror}); check the folder"
        ) from None
    if not isinstance(meta, dict):
        raise ModelError(
            f"model folder {folder}: {CONFIG_FILE} holds a {type(meta).__name__}, "
            "not the JSON object `wsseg train` writes; retrain the model"
        )
    version = meta.get("format_version")
    if version != MODEL_FORMAT_VERSION or isinstance(version, bool):
        raise ModelError(
            f"model folder {folder}: format version {_short(version)} is not supported by "
            f"napari-wsseg {__version__} (supports {MODEL_FORMAT_VERSION}); install the release "
            f"that wrote it (package_version {_short(meta.get('package_version'))}) or retrain"
        )
    return meta


def load_model(folder: str | os.PathLike) -> Method:
    """Load any method's model folder (the method comes from ``config.json``).

    Everything in the folder is checked before it is used: option types and ranges, class and
    channel counts, normalisation, the method's state, and the weights' shapes and indices.

    Raises
    ------
    ModelError
        One line naming the folder or file, what is wrong and the fix.
    """
    folder = Path(folder)
    meta = read_model_config(folder)
    try:
        model = _model_from_meta(meta)
    except WssegError as exc:
        reason = str(exc).rsplit("; ", 1)[0]  # the inner fix is replaced by the folder's
        raise ModelError(
            f"model folder {folder}: {CONFIG_FILE} is not valid ({reason}); retrain the model"
        ) from None
    model._load_weights(folder)
    return model


def _model_from_meta(meta: dict) -> Method:
    """The untrained-but-configured method ``meta`` describes, with its state; raises WssegError."""
    from . import get_method

    missing = [key for key in _REQUIRED_KEYS if key not in meta]
    if missing:
        raise ModelError(f"keys {missing} are missing")
    if not isinstance(meta["method"], str) or len(meta["method"]) > 64:
        raise ModelError(f"method {_short(meta['method'])} is not a method name")
    method_class = get_method(meta["method"])
    retired = getattr(method_class.config_class, "retired_options", frozenset())
    values = meta["config"]
    if isinstance(
        values, dict
    ):  # options older releases wrote that no longer change a trained model
        values = {key: value for key, value in values.items() if key not in retired}
        # Options added since: a folder without one was trained as its older value said.
        implied = getattr(method_class.config_class, "implied_by_older_models", {})
        values = {**implied, **values}
    model = method_class(config_from_dict(method_class.config_class, values))
    model.classes = _classes_from_meta(meta["classes"])
    n_channels = meta["n_channels"]
    if (
        isinstance(n_channels, bool)
        or not isinstance(n_channels, int)
        or not 1 <= n_channels <= MAX_CHANNELS
    ):
        raise ModelError(
            f"n_channels {_short(n_channels)} is not a channel count from 1 to {MAX_CHANNELS}"
        )
    model.n_channels = n_channels
    model.normalization = Normalization.from_dict(meta["normalization"])
    if len(model.normalization.low) != n_channels:
        raise ModelError(
            f"normalization has {len(model.normalization.low)} channels, n_channels {n_channels}"
        )
    for key in ("training_summary", "state"):
        if not isinstance(meta.get(key, {}), dict):
            raise ModelError(f"{key} {_short(meta[key])} is not a JSON object")
    model.training_summary = _checked_summary(meta.get("training_summary", {}))
    try:
        model._load_state_dict(meta.get("state", {}))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        if isinstance(exc, WssegError):
            raise
        raise ModelError(f"state holds a value of the wrong kind ({_short(str(exc))})") from None
    return model


def _checked_summary(summary: dict) -> dict:
    """The training summary, with the entries other code reads checked for their JSON types."""

    def numbers(v):
        return isinstance(v, list) and all(
            isinstance(x, (int, float))
            and not isinstance(x, bool)
            and (isinstance(x, int) or math.isfinite(x))  # np.isfinite fails on ints past int64
            and x >= 0
            for x in v
        )

    rules = {
        "counts": lambda v: isinstance(v, dict) and all(numbers(x) for x in v.values()),
        "warnings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "classes": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
        "annotated_slices": numbers,
        "warm_start": lambda v: isinstance(v, bool),
    }
    for key, ok in rules.items():
        if key in summary and not ok(summary[key]):
            raise ModelError(
                f"training_summary {key} {_short(summary[key])} is not what training writes"
            )
    return summary


def _classes_from_meta(entries) -> list[ClassInfo]:
    ok = (
        isinstance(entries, list)
        and 1 <= len(entries) <= MAX_CLASSES
        and all(
            isinstance(e, dict)
            and set(e) == {"name", "color"}
            and all(isinstance(v, str) and len(v) <= MAX_OPTION_CHARS for v in e.values())
            for e in entries
        )
    )
    if not ok:
        raise ModelError(
            f"classes {_short(entries)} is not a list of 1 to {MAX_CLASSES} "
            '{"name", "color"} objects'
        )
    return [ClassInfo(e["name"], e["color"]) for e in entries]


def state_numbers(state: dict, key: str, count: int) -> list[float] | None:
    """``state[key]``: None, or a list of ``count`` finite numbers (checked, as a model file is
    untrusted input).

    Raises
    ------
    ModelError
        When the value is anything else.
    """
    values = state.get(key)
    if values is None:
        return None
    ok = (
        isinstance(values, list)
        and len(values) == count
        and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
            for v in values
        )
    )
    if not ok:
        raise ModelError(
            f"state {key} {_short(values)} is not a list of {count} finite numbers (one per class)"
        )
    return [float(v) for v in values]


def state_mapping(state: dict, key: str) -> dict:
    """``state[key]`` as a dict (empty when absent); raises ModelError when it is not a JSON
    object."""
    value = state.get(key, {})
    if not isinstance(value, dict):
        raise ModelError(f"state {key} {_short(value)} is not a JSON object")
    return dict(value)


def is_model_folder(folder: str | os.PathLike) -> bool:
    """True when ``folder`` holds a ``config.json`` with the keys :meth:`Method.save` writes.

    Examples
    --------
    >>> import tempfile
    >>> is_model_folder(tempfile.mkdtemp())
    False
    """
    path = Path(folder) / CONFIG_FILE
    if Path(folder).is_symlink() or not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "format_version" in meta and "method" in meta


def check_model_destination(folder: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Refuse a model destination whose contents saving would destroy.

    A missing or empty folder is fine; an existing model folder only with ``overwrite``; anything
    else (a file, a link, a folder holding other files) never.

    Raises
    ------
    ModelError
        With the folder and the fix.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> check_model_destination(folder / "new-model")   # missing: fine
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> check_model_destination(folder, overwrite=True)
    Traceback (most recent call last):
    ...
    napari_wsseg.errors.ModelError: model folder ... holds files that are not a napari-wsseg ...
    """
    folder = Path(folder)
    if folder.is_symlink():
        raise ModelError(f"model folder {folder} is a symbolic link; give a real folder for --out")
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ModelError(
            f"model folder {folder} is an existing file; choose a folder name for --out"
        )
    if not any(folder.iterdir()):
        return
    if not is_model_folder(folder):
        raise ModelError(
            f"model folder {folder} holds files that are not a napari-wsseg model; choose a new "
            "or empty folder for --out (nothing was deleted)"
        )
    if not overwrite:
        raise ModelError(
            f"model folder {folder} already holds a model; pass --overwrite (overwrite=True) to "
            "replace it, or choose another folder"
        )


def _replace_dir(tmp: Path, target: Path) -> None:
    """Move ``tmp`` to ``target``, replacing an empty folder or (checked by the caller) a model
    folder with as small a window as possible."""
    if target.is_dir() and not any(target.iterdir()):
        target.rmdir()  # fails rather than deletes if a file appeared meanwhile
    if target.exists():
        if not is_model_folder(target):
            raise ModelError(f"model folder {target} changed while saving; save again")
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)
