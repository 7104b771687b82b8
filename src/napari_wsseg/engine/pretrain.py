"""Self-supervised pretraining of a ViT on the user's own image: ``wsseg pretrain``. Imports no Qt.

The DINO recipe (:mod:`.dino`; Caron et al. 2021) on multi-crop views of random windows of the
image (:mod:`.multicrop`): a student ViT plus projection head learns to predict, on every view, the
centred and sharpened output of an EMA teacher on the two global views. The learning rate follows
a linear warm-up and a cosine decay; the teacher momentum a cosine from ``teacher_momentum`` to 1.
The teacher's backbone is the result, written as a backbone folder (:mod:`.backbones`) that MEWS
reads with ``--backbone-weights FOLDER``.

The output folder also holds ``checkpoint/``: the weights of student, teacher and both heads, the
AdamW moments, the DINO centre and the view generator's state as safetensors, plus the scalars as
JSON (never pickle). It is written every ``checkpoint_every_s`` seconds and when the run stops, so a
killed run loses at most one interval; ``resume=True`` continues from it. With ``steps`` given the
run is deterministic for a seed on the CPU: an interrupted and resumed run ends with the same
weights as an uninterrupted one. With only a time budget, the number of steps is set from the
speed of the first steps (and recorded, so a resumed run keeps that schedule).

The output folder is created by this module and marked with ``.wsseg-backbone``; an existing
folder without that marker is refused and nothing in it is touched.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import ModelError, WssegError
from ..io.image import Image
from ..io.normalize import Normalization
from ..progress import Budget, ProgressCallback, ProgressEvent, report
from .backbones import (
    MARKER_FILE,
    BackboneInfo,
    build_model,
    is_backbone_folder,
    read_json_file,
    write_backbone_folder,
    write_json_atomically,
)
from .devices import resolve_device
from .dino import (
    DINOHead,
    DINOLoss,
    class_token_embedding,
    cosine_schedule,
    ema_update,
    parameter_groups,
)
from .multicrop import ViewSampler, ViewSpec, estimate_mean_std, training_planes
from .vit import _check_name

DEFAULT_ARCH = "vit_tiny_patch16_224"
#: Steps planned when neither ``steps`` nor a time budget is given.
DEFAULT_STEPS = 2000
#: Steps timed to plan a time-budgeted run.
_CALIBRATION_STEPS = 3
#: Slices whose bytes enter an image's content hash (evenly spaced), besides shape and dtype.
_HASHED_SLICES = 8
CHECKPOINT_DIR = "checkpoint"
#: Cheaper multi-crop views (same recipe, smaller views, 4 local crops instead of 6): about
#: 2-3x the windows per second of the defaults on a CPU (docs/pretrain.md). Their effect on the
#: learnt features has not been measured, so they are an option (``--fast-views``), not the default.
FAST_VIEWS = {"global_px": 64, "local_px": 32, "n_local": 4}
_STATE_JSON = "latest.json"
_log = logging.getLogger(__name__)

#: Inclusive (low, high) of the numeric options.
_BOUNDS = {
    "patch_size": (2, 64),
    "steps": (1, 10_000_000),
    "batch": (1, 4096),
    "global_px": (8, 1024),
    "local_px": (4, 1024),
    "n_local": (0, 32),
    "out_dim": (2, 262_144),
    "hidden_dim": (1, 16_384),
    "bottleneck_dim": (1, 4096),
    "lr": (0, 1),
    "min_lr": (0, 1),
    "warmup_fraction": (0, 1),
    "weight_decay": (0, 10),
    "teacher_momentum": (0, 1),
    "student_temp": (1e-4, 10),
    "teacher_temp": (1e-4, 10),
    "center_momentum": (0, 1),
    "clip_grad": (0, 1e6),
    "seed": (0, 2**63 - 1),
}


@dataclass(frozen=True)
class PretrainConfig:
    """Everything that determines the result of a pretraining run (checked again on resume).

    Attributes
    ----------
    arch : str, default "vit_tiny_patch16_224"
        timm ViT (ViT-T; ``vit_small_patch16_224`` is ViT-S). Built with ``patch_size`` patches and
        as many input channels as the image has.
    patch_size : int, default 8
        Pixels per patch side; MEWS classifies patches, and EM structures are a few pixels wide.
    steps : int or None, default None
        Optimisation steps, which sets the schedules. None: from the time budget (see the module
        docstring), or 2000 without one.
    batch : int, default 16
        Windows per step (each gives 2 global and ``n_local`` local views).
    global_px, local_px, n_local : int, default 96, 48, 6
        Multi-crop view sizes and count (:class:`~napari_wsseg.engine.multicrop.ViewSpec`).
        With patch 8 they are most of a CPU step's cost (:meth:`with_fast_views`).
    out_dim, hidden_dim, bottleneck_dim : int, default 1024, 1024, 256
        DINO projection head sizes.
    lr, min_lr : float, default 5e-4 and 1e-6
        AdamW learning rate after the warm-up and at the end of the cosine.
    warmup_fraction : float, default 0.1
        Fraction of the steps spent warming the learning rate up.
    weight_decay : float, default 0.04
    teacher_momentum : float, default 0.996
        EMA momentum at the start (cosine to 1 at the end).
    student_temp, teacher_temp, center_momentum : float, default 0.1, 0.04, 0.9
        DINO's temperatures and centring momentum.
    clip_grad : float, default 3.0
        Gradient norm clipping (0: none).
    voxel_size_zyx : (float, float, float) or None, default None
        Voxel size; a near-isotropic volume also trains on xz and yz planes. None: the image's
        own ``voxel_size_zyx`` (from file metadata), and xy only when that is unknown too.
    seed : int, default 0
        Seeds the initial weights and every random view.
    """

    arch: str = DEFAULT_ARCH
    patch_size: int = 8
    steps: int | None = None
    batch: int = 16
    global_px: int = 96
    local_px: int = 48
    n_local: int = 6
    out_dim: int = 1024
    hidden_dim: int = 1024
    bottleneck_dim: int = 256
    lr: float = 5e-4
    min_lr: float = 1e-6
    warmup_fraction: float = 0.1
    weight_decay: float = 0.04
    teacher_momentum: float = 0.996
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    clip_grad: float = 3.0
    voxel_size_zyx: tuple[float, float, float] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name, (low, high) in _BOUNDS.items():
            value = getattr(self, name)
            if value is None and name == "steps":
                continue
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not low <= value <= high
            ):
                raise WssegError(
                    f"pretrain option {name}={value!r:.40} must be a number in [{low}, {high}]"
                )
            if name in _INTS and value != int(value):
                raise WssegError(f"pretrain option {name}={value!r:.40} must be an integer")
        if not isinstance(self.arch, str) or not self.arch:
            raise WssegError(
                f"pretrain option arch={self.arch!r:.40} must be a timm ViT name, "
                f"e.g. {DEFAULT_ARCH}"
            )
        for name in ("global_px", "local_px"):
            if getattr(self, name) % self.patch_size:
                raise WssegError(
                    f"pretrain option {name}={getattr(self, name)} must be a multiple of "
                    f"patch_size={self.patch_size}"
                )
        if self.voxel_size_zyx is not None:
            training_planes((2, 2, 2), self.voxel_size_zyx)  # checks the three values

    @property
    def views(self) -> ViewSpec:
        return ViewSpec(self.global_px, self.local_px, self.n_local)

    def with_fast_views(self) -> "PretrainConfig":
        """This config with :data:`FAST_VIEWS`' view sizes and count.

        Raises
        ------
        WssegError
            The view sizes are not multiples of ``patch_size`` (e.g. patch 48).
        """
        return dataclasses.replace(self, **FAST_VIEWS)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["voxel_size_zyx"] = (
            None if self.voxel_size_zyx is None else list(self.voxel_size_zyx)
        )
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "PretrainConfig":
        """The config of :meth:`to_dict`; unknown keys raise an error listing the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise WssegError(
                f"unknown pretrain options {', '.join(unknown)}; valid: {', '.join(names)}"
            )
        values = dict(values)
        if values.get("voxel_size_zyx") is not None:
            values["voxel_size_zyx"] = tuple(float(v) for v in values["voxel_size_zyx"])
        return cls(**values)


_INTS = {
    "patch_size",
    "steps",
    "batch",
    "global_px",
    "local_px",
    "n_local",
    "out_dim",
    "hidden_dim",
    "bottleneck_dim",
    "seed",
}


@dataclass
class PretrainResult:
    """What a pretraining run did.

    Attributes
    ----------
    out : Path
        The backbone folder.
    stopped : str
        ``'done'``, ``'time_budget'`` or ``'cancelled'``.
    steps : int
        Steps done in total (over all resumed sessions).
    planned_steps : int or None
        Steps planned (None when a time-budgeted run stopped before its speed was measured).
    seconds : float
        Training time over all sessions.
    images_per_s : float
        Windows per second in this session (each gives ``2 + n_local`` views).
    history : list of dict
        ``{"step", "loss"}`` per step, over all sessions.
    info : BackboneInfo
        What ``backbone.json`` records.
    """

    out: Path
    stopped: str
    steps: int
    planned_steps: int | None
    seconds: float
    images_per_s: float
    history: list[dict] = field(default_factory=list)
    info: BackboneInfo | None = None


def pretrain(
    image: Image,
    out,
    config: PretrainConfig | None = None,
    *,
    time_budget_s: float | None = None,
    device: str = "auto",
    resume: bool = False,
    checkpoint_every_s: float = 120.0,
    report_every_s: float = 0.25,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> PretrainResult:
    """Pretrain a ViT on ``image`` with DINO and write a backbone folder to ``out``.

    Parameters
    ----------
    image : Image
        The image or volume (lazy zarr data is read window by window).
    out : path
        Backbone folder: new, empty, or (with ``resume``) one this function wrote.
    config : PretrainConfig or None, default None
        None: the defaults, or on resume the stored config. On resume a given config must equal
        the stored one.
    time_budget_s : float or None, default None
        Stop (with a checkpoint, resumable) after this many seconds of this session.
    device : str, default "auto"
        'auto', 'cpu', 'cuda' or 'cuda:N'. Only CPU runs are bit-for-bit deterministic.
    resume : bool, default False
        Continue the run whose checkpoint is in ``out``.
    checkpoint_every_s : float, default 120
        Seconds between checkpoints (a kill loses at most this much training).
    report_every_s : float, default 0.25
        Seconds between progress reports (the first and last step are always reported).
    progress : callable or None
        Receives :class:`~napari_wsseg.progress.ProgressEvent` (``metrics['loss']``).
    cancel : threading.Event or None
        Checked before each step and between the ViT's blocks (forward and backward); when set,
        the step under way is dropped (nothing of it applied) and the run checkpoints, writes the
        backbone and returns with ``stopped='cancelled'``: it stops within a block's time.

    Returns
    -------
    PretrainResult

    Raises
    ------
    WssegError
        ``out`` exists and was not written by ``wsseg pretrain``, holds a run while ``resume`` is
        False, has nothing to resume, or holds a run of another config or image; an unknown
        architecture; an image smaller than one patch.
    """
    out = Path(out)
    _check_out(out, resume)
    stored = _read_checkpoint_meta(out) if resume else None
    if stored is not None:
        config = _resumed_config(stored, config, out)
    config = config or PretrainConfig()
    _check_name(config.arch)
    _check_image(image, config)
    device = resolve_device(device)
    out = _claim_out(out)
    run = _Run(image, config, device)
    record = run.record()
    if stored is not None:
        _check_same_run(stored, record, out)
        run.load_checkpoint(out, stored)
    if run.planned is None and time_budget_s is None:
        run.planned = DEFAULT_STEPS
    budget = Budget(time_budget_s, run.planned or DEFAULT_STEPS, cancel)
    stopped = run.train(out, budget, checkpoint_every_s, report_every_s, progress)
    info = run.save(out)
    per_s = run.session_steps * config.batch / max(run.session_seconds, 1e-9)
    return PretrainResult(
        out=out,
        stopped=stopped,
        steps=run.step,
        planned_steps=run.planned,
        seconds=run.seconds,
        images_per_s=per_s,
        history=list(run.history),
        info=info,
    )


# ------------------------------------------------------------------ the run
class _Run:
    """Models, optimiser, view sampler and counters of one pretraining run."""

    def __init__(self, image: Image, config: PretrainConfig, device: torch.device) -> None:
        self.image, self.config, self.device = image, config, device
        self.normalization = Normalization.from_image(image)
        voxel = config.voxel_size_zyx if config.voxel_size_zyx is not None else image.voxel_size_zyx
        self.planes = training_planes(image.shape, voxel, min_side=config.local_px)
        stats_generator = torch.Generator().manual_seed(config.seed + 1)
        self.mean, self.std = estimate_mean_std(
            image, self.normalization, self.planes, config.views, stats_generator
        )
        self.sampler = ViewSampler(
            image, self.normalization, self.planes, config.views, self.mean, self.std
        )
        self.info = BackboneInfo(
            arch=config.arch,
            patch_size=config.patch_size,
            in_chans=image.n_channels,
            img_size=config.global_px,
            mean=self.mean,
            std=self.std,
            normalization=self.normalization.to_dict(),
            trained_on={
                "image": image.name,
                "shape": list(image.shape),
                "dtype": str(image.dtype),
                "content_hash": image_content_hash(image),
                "planes": list(self.planes),
                "voxel_size_zyx": None if voxel is None else list(voxel),
            },
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            backbone = build_model(self.info)
            head = DINOHead(
                backbone.embed_dim, config.out_dim, config.hidden_dim, config.bottleneck_dim
            )
        self.student = torch.nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(self.student), lr=config.lr, weight_decay=config.weight_decay
        )
        self.loss = DINOLoss(
            config.out_dim, config.student_temp, config.teacher_temp, config.center_momentum
        )
        self.generator = torch.Generator().manual_seed(config.seed)
        self.step, self.planned, self.seconds = 0, config.steps, 0.0
        self.session_steps, self.session_seconds = 0, 0.0
        self.history: list[dict] = []

    def record(self) -> dict:
        """What a checkpoint must match to be resumed with this run."""
        return {
            "config": self.config.to_dict(),
            "image": {k: self.info.trained_on[k] for k in ("shape", "dtype", "content_hash")},
            "normalization": self.normalization.to_dict(),
        }

    # ------------------------------------------------------------ training
    def train(
        self, out: Path, budget: Budget, checkpoint_every_s: float, report_every_s: float, progress
    ) -> str:
        handles = _add_cancel_checks(self.student, self.teacher, budget.cancel)
        try:
            return self._train(out, budget, checkpoint_every_s, report_every_s, progress)
        finally:
            for handle in handles:
                handle.remove()

    def _train(
        self, out: Path, budget: Budget, checkpoint_every_s: float, report_every_s: float, progress
    ) -> str:
        stopped, last_checkpoint, last_report = "done", time.monotonic(), 0.0
        while self.planned is None or self.step < self.planned:
            if (reason := budget.stop_reason()) is not None:
                stopped = reason
                if self.planned is None and self.session_steps and budget.seconds is not None:
                    # the budget ran out before the calibration steps did (a slow or loaded
                    # machine): plan from the steps made, so a resume keeps one schedule
                    self.planned = self._planned_from_budget(budget)
                break
            tick = time.monotonic()
            views_state = self.generator.get_state()
            try:
                loss = self.train_step()
            except _Cancelled:
                # Nothing of the dropped step was applied; its views are drawn again on resume.
                self.generator.set_state(views_state)
                stopped = "cancelled"
                break
            spent = time.monotonic() - tick
            self.seconds += spent
            self.session_seconds += spent
            self.session_steps += 1
            self.history.append(
                {"step": self.step, "loss": loss, "kl": loss - self.loss.last_teacher_entropy}
            )
            if self.planned is None and self.session_steps == _CALIBRATION_STEPS:
                self.planned = self._planned_from_budget(budget)
            if time.monotonic() - last_checkpoint >= checkpoint_every_s:
                self.save(out)
                last_checkpoint = time.monotonic()
            total = self.planned or budget.total_steps
            if time.monotonic() - last_report >= report_every_s or self.step in (1, total):
                last_report = time.monotonic()
                report(
                    progress,
                    ProgressEvent(
                        self.step, total, "pretraining", {"loss": loss}, self._eta(total, budget)
                    ),
                )
        return stopped

    def train_step(self) -> float:
        cfg, n_views = self.config, self.config.n_local + 2
        total = self.planned or DEFAULT_STEPS
        lr = cosine_schedule(
            cfg.lr, cfg.min_lr, self.step, total, round(cfg.warmup_fraction * total)
        )
        momentum = cosine_schedule(cfg.teacher_momentum, 1.0, self.step, total)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        globals_, locals_ = self.sampler.batch(cfg.batch, self.generator)
        globals_ = globals_.to(self.device, non_blocking=True)
        with torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
        ):
            student_out = [_forward(self.student, globals_)]
            if cfg.n_local:
                student_out.append(
                    _forward(self.student, locals_.to(self.device, non_blocking=True))
                )
            with torch.no_grad():
                teacher_out = _forward(self.teacher, globals_).float()
            loss = self.loss(torch.cat(student_out).float(), teacher_out, n_views)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_grad:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.clip_grad)
        self.optimizer.step()
        ema_update(self.teacher, self.student, momentum)
        self.loss.update_center(teacher_out)
        self.step += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise WssegError(
                f"pretraining loss became {value} at step {self.step}; lower --lr or check the "
                "image for constant or NaN regions"
            )
        return value

    def _eta(self, total: int, budget: Budget) -> float:
        """Seconds left: this session's pace times the steps left, at most the budget left."""
        eta = self.session_seconds / self.session_steps * max(total - self.step, 0)
        if budget.seconds is not None:
            eta = min(eta, max(budget.seconds - budget.elapsed, 0.0))
        return eta

    def _planned_from_budget(self, budget: Budget) -> int:
        if budget.seconds is None:
            return DEFAULT_STEPS
        per_step = self.session_seconds / self.session_steps
        return max(self.step + 1, int(budget.seconds / per_step))

    # ------------------------------------------------------------ saving
    def save(self, out: Path) -> BackboneInfo:
        """Write the checkpoint, then the teacher backbone as the backbone folder."""
        self._write_checkpoint(out)
        training = {
            "objective": "dino",
            "steps": self.step,
            "planned_steps": self.planned,
            "seconds": round(self.seconds, 3),
            "seed": self.config.seed,
            "finished": self.planned is not None and self.step >= self.planned,
            "config": self.config.to_dict(),
        }
        backbone = copy.deepcopy(self.teacher["backbone"]).cpu()
        return write_backbone_folder(
            out, backbone, dataclasses.replace(self.info, training=training)
        )

    def _write_checkpoint(self, out: Path) -> None:
        from safetensors.torch import save_file

        folder = out / CHECKPOINT_DIR
        folder.mkdir(exist_ok=True)
        tensors = {f"student.{k}": v for k, v in self.student.state_dict().items()}
        tensors |= {f"teacher.{k}": v for k, v in self.teacher.state_dict().items()}
        tensors["center"] = self.loss.center
        tensors["generator"] = self.generator.get_state()
        optim = self.optimizer.state_dict()
        for index, state in optim["state"].items():
            tensors |= {f"optim.{index}.{name}": value for name, value in state.items()}
        name = f"state-{self.step:09d}.safetensors"
        tmp = folder / (name + ".tmp")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))
        tmp.replace(folder / name)
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optim["param_groups"]]
        meta = {
            "format_version": 1,
            "package_version": __version__,
            "state_file": name,
            "state_sha256": _sha256(folder / name),
            "step": self.step,
            "planned_steps": self.planned,
            "seconds": self.seconds,
            "history": self.history,
            "param_groups": groups,
            **self.record(),
        }
        write_json_atomically(folder / _STATE_JSON, meta)
        for old in folder.glob("state-*.safetensors"):  # earlier checkpoints this run wrote
            if old.name != name:
                old.unlink()

    def load_checkpoint(self, out: Path, meta: dict) -> None:
        from safetensors.torch import load_file

        folder = out / CHECKPOINT_DIR
        path = folder / str(meta.get("state_file", ""))
        if not path.is_file() or _sha256(path) != meta.get("state_sha256"):
            raise ModelError(
                f"checkpoint {path} is missing or damaged (its sha256 differs from {_STATE_JSON}); "
                "start a new run with another --out"
            )
        tensors = load_file(str(path))
        try:
            self.student.load_state_dict(_prefixed(tensors, "student."), strict=True)
            self.teacher.load_state_dict(_prefixed(tensors, "teacher."), strict=True)
            self.loss.center = tensors["center"]
            self.generator.set_state(tensors["generator"])
            state = self.optimizer.state_dict()
            per_param: dict[int, dict] = {}
            for key, value in _prefixed(tensors, "optim.").items():
                index, name = key.split(".", 1)
                per_param.setdefault(int(index), {})[name] = value
            state["state"] = per_param
            for group, stored in zip(state["param_groups"], meta["param_groups"]):
                group.update({k: tuple(v) if isinstance(v, list) else v for k, v in stored.items()})
            self.optimizer.load_state_dict(state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ModelError(
                f"checkpoint {path} does not fit this run ({' '.join(str(exc).split())[:120]}); "
                "start a new run with another --out"
            ) from None
        self.step, self.planned = int(meta["step"]), meta["planned_steps"]
        self.seconds = float(meta["seconds"])
        self.history = [
            {k: float(v) if k != "step" else int(v) for k, v in h.items()} for h in meta["history"]
        ]


# ------------------------------------------------------------------ helpers
class _Cancelled(Exception):
    """Cancel was set during a step: the step is dropped before the optimiser applies it."""


def _add_cancel_checks(student, teacher, cancel: threading.Event | None) -> list:
    """Hooks that raise :class:`_Cancelled` between transformer blocks, forward and backward.

    A default CPU step takes seconds (far more under load); checking only between steps would
    make Cancel wait that long. Returns the hook handles (remove them after the run).
    """
    if cancel is None:
        return []

    def check(*_):
        if cancel.is_set():
            raise _Cancelled

    def after_block(module, inputs, output):
        check()
        if isinstance(output, torch.Tensor) and output.requires_grad:
            output.register_hook(check)  # runs during backward; returns None: grad unchanged

    handles = []
    for model in (student, teacher):
        backbone = model["backbone"]
        blocks = list(getattr(backbone, "blocks", [backbone]))
        if hasattr(blocks[-1], "mlp"):  # class_token_embedding calls the last block's parts
            blocks[-1] = blocks[-1].mlp
        for block in blocks:
            handles.append(block.register_forward_hook(after_block))
    return handles


def _forward(model: torch.nn.ModuleDict, views: torch.Tensor) -> torch.Tensor:
    return model["head"](class_token_embedding(model["backbone"], views))


def can_resume(out) -> bool:
    """True when ``out`` holds a checkpoint that ``pretrain(..., resume=True)`` continues.

    Examples
    --------
    >>> can_resume("/nonexistent/backbone")
    False
    """
    out = Path(out)
    return (out / MARKER_FILE).is_file() and (out / CHECKPOINT_DIR / _STATE_JSON).is_file()


def image_content_hash(image: Image) -> str:
    """sha256 of the image's shape, dtype and the bytes of up to 8 evenly spaced slices.

    A sample, so that a volume larger than memory is not read whole; it tells images apart, it
    does not prove two volumes identical.
    """
    digest = hashlib.sha256(f"{image.shape}|{image.n_channels}|{image.dtype}|".encode())
    for z in np.unique(
        np.linspace(0, image.n_slices - 1, min(image.n_slices, _HASHED_SLICES)).astype(int)
    ):
        digest.update(np.ascontiguousarray(image.slice(int(z))).tobytes())
    return digest.hexdigest()


def _check_out(out: Path, resume: bool) -> None:
    """Refuse an output folder this module did not create, or one that does not fit ``resume``."""
    marked = (out / MARKER_FILE).is_file()
    if out.exists() and not out.is_dir():
        raise WssegError(f"--out {out} is a file; give a new or empty folder for the backbone")
    if out.is_dir() and any(out.iterdir()) and not marked:
        raise WssegError(
            f"--out {out} is a non-empty folder not written by wsseg pretrain; give a new or "
            "empty folder (nothing in it was changed)"
        )
    has_run = (out / CHECKPOINT_DIR / _STATE_JSON).is_file()
    if resume and not has_run:
        raise WssegError(
            f"--out {out} holds no pretraining checkpoint to resume; leave out --resume to start"
        )
    if not resume and has_run:
        raise WssegError(
            f"--out {out} already holds a pretraining run; pass --resume to continue it or give "
            "a new folder"
        )


def _claim_out(out: Path) -> Path:
    """Create the output folder (if needed) and mark it as written by this module."""
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER_FILE).write_text("written by wsseg pretrain\n", encoding="utf-8")
    return out.resolve()


def _read_checkpoint_meta(out: Path) -> dict:
    path = out / CHECKPOINT_DIR / _STATE_JSON
    meta = read_json_file(path, "checkpoint", "start a new run with another --out")
    needed = (
        "state_file",
        "state_sha256",
        "step",
        "planned_steps",
        "seconds",
        "history",
        "param_groups",
        "config",
        "image",
        "normalization",
    )
    if not isinstance(meta, dict) or any(k not in meta for k in needed):
        raise ModelError(
            f"checkpoint {path} lacks some of {', '.join(needed)}; start a new run with "
            "another --out"
        )
    return meta


def _resumed_config(stored: dict, given: PretrainConfig | None, out: Path) -> PretrainConfig:
    try:
        config = PretrainConfig.from_dict(stored["config"])
    except (WssegError, TypeError) as exc:
        raise ModelError(
            f"checkpoint in {out} holds an invalid config ({exc}); start a new run"
        ) from None
    if given is not None and given != config:
        diff = [
            f"{k}: run {a!r} vs now {b!r}"
            for k, a, b in (
                (f.name, getattr(config, f.name), getattr(given, f.name))
                for f in dataclasses.fields(config)
            )
            if a != b
        ]
        raise WssegError(
            f"--out {out} holds a run with other options ({'; '.join(diff)}); resume without "
            "options or with the same ones, or give a new --out"
        )
    return config


def _check_same_run(stored: dict, record: dict, out: Path) -> None:
    for key in ("image", "normalization"):
        if stored[key] != json.loads(json.dumps(record[key])):
            raise WssegError(
                f"--out {out} holds a run on another image ({key} differs: "
                f"{str(stored[key])[:80]} vs {str(record[key])[:80]}); give the same image or "
                "a new --out"
            )


def _check_image(image: Image, config: PretrainConfig) -> None:
    _, y, x = image.shape
    if min(y, x) < config.patch_size:
        raise WssegError(
            f"image {image.name} of shape {image.shape} has slices smaller than one "
            f"{config.patch_size}x{config.patch_size} patch; use a larger image or --patch-size"
        )


def _prefixed(tensors: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


__all__ = [
    "DEFAULT_ARCH",
    "FAST_VIEWS",
    "can_resume",
    "PretrainConfig",
    "PretrainResult",
    "image_content_hash",
    "is_backbone_folder",
    "pretrain",
]
