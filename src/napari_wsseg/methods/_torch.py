"""What the methods that train one torch network on 2D slices share (dsp, size). No Qt.

:class:`TorchSliceMethod` holds the network, seeds and places it for training, runs it over
overlapping tiles of one slice or a batch of same-sized slices (:mod:`napari_wsseg.engine.tiling`)
and saves and loads its weights as safetensors. A subclass builds the network
(:meth:`~TorchSliceMethod._build_net`) and turns a batch of normalised tiles into class
probabilities (:meth:`~TorchSliceMethod._tile_probabilities`).

Warm start (``fit(..., init=previous)``): the network starts from the previous model's weights
and trains ``FitOptions.warm_steps`` steps (default :data:`~napari_wsseg.methods.warm.
TORCH_WARM_STEPS`) with a short warm-up, as the optimiser's moments are not saved with a model,
at 3 % of the learning rate (:data:`~napari_wsseg.methods.warm.WARM_LR_FACTOR`); with
``FitOptions.warm_keep`` > 0 the trained weights are then blended with the previous ones (default
:data:`~napari_wsseg.methods.warm.WARM_KEEP`, 0).
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

from ..engine.devices import resolve_device
from ..engine.ema import ema_update
from ..engine.results import FitResult
from ..engine.tiling import predict_tiled_batch
from ..engine.trainer import OptimConfig, run_training
from ..errors import ModelError
from .base import FitOptions, Method
from .warm import (
    LIVE_WARM_STEPS,
    TORCH_WARM_STEPS,
    WARM_KEEP,
    WARM_LR_FACTOR,
    WARM_WARMUP_FRACTION,
)

WEIGHTS_FILE = "model.safetensors"
#: The student's weights, beside the kept EMA teacher's, in a mean-teacher model's folder.
STUDENT_WEIGHTS_FILE = "student.safetensors"

#: Inclusive bounds of the schedule and crop options the U-Net methods (dsp, size) share.
UNET_TRAINING_BOUNDS = {
    "lr": (0, 1),
    "weight_decay": (0, 10),
    "warmup_fraction": (0, 1),
    "max_steps": (1, 1_000_000),
    "batch_size": (1, 1024),
    "crop_size": (1, 4096),
}
#: Inclusive bounds of the prediction tile options the U-Net methods (dsp, size) share.
UNET_TILE_BOUNDS = {"tile": (1, 4096), "tile_overlap": (0, 4096)}


class TorchSliceMethod(Method):
    """A :class:`~napari_wsseg.methods.base.Method` whose model is one torch network on slices.

    The config must have ``tile`` and ``tile_overlap`` (prediction tiles, pixels).
    """

    #: Keep the network and its inputs channels-last (faster convolutions on CPU).
    channels_last: ClassVar[bool] = False
    live_steps: ClassVar[int | None] = LIVE_WARM_STEPS

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        self.net: torch.nn.Module | None = None
        #: The last student of a mean-teacher run whose kept ``net`` is the EMA teacher (None:
        #: no teacher); its predictions are the model's second opinion.
        self.student: torch.nn.Module | None = None
        self.fit_info: dict = {}
        self._warm_steps = TORCH_WARM_STEPS
        self._warm_lr_factor = WARM_LR_FACTOR

    @abstractmethod
    def _build_net(self) -> torch.nn.Module:
        """A fresh network for ``self.classes`` and ``self.n_channels``."""

    @abstractmethod
    def _tile_probabilities(self, net: torch.nn.Module, tiles: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(N, K, h, w)`` of normalised tiles ``(N, C, h, w)``."""

    # ---------------------------------------------------------------- training
    def fit(self, image, annotations, options: FitOptions | None = None, *, init=None):
        """Train, from scratch or (with ``init``) warm: see :meth:`Method.fit`.

        A warm run trains with ``max_steps`` and ``warmup_fraction`` replaced for its duration;
        the model keeps (and saves) its own options. With ``options.warm_keep`` > 0 its trained
        weights are then blended with ``init``'s.
        """
        options = options or FitOptions()
        configured = self.config
        self._warm_steps = options.warm_steps or TORCH_WARM_STEPS
        self._warm_lr_factor = options.warm_lr_factor or WARM_LR_FACTOR
        try:
            outcome = super().fit(image, annotations, options, init=init)
        finally:
            self.config = configured
        keep = WARM_KEEP if options.warm_keep is None else options.warm_keep
        if self.training_summary.get("warm_start") and keep > 0:
            self._keep_previous(init, keep)
        return outcome

    def _keep_previous(self, previous: "TorchSliceMethod", keep: float) -> None:
        """Blend the trained network with ``previous``'s: ``keep * previous + (1 - keep) *
        trained`` for every weight and batch-norm statistic."""
        ema_update(self._require_net(), previous._require_net(), 1.0 - keep)
        self.fit_info["warm_keep"] = keep

    def _start_training(self, options: FitOptions):
        """Seed torch and numpy from ``options.seed`` and build the network on the device; on a
        warm start, load the previous model's weights and shorten the run (see :meth:`fit`).

        Returns ``(device, numpy Generator, torch Generator)``.
        """
        device = resolve_device(options.device)
        torch.manual_seed(options.seed)
        self.student = None
        net = self._build_net()
        if self.warm_init is not None:
            net.load_state_dict(self.warm_init._require_net().state_dict())
            self.config = dataclasses.replace(
                self.config,
                max_steps=self._warm_steps,
                warmup_fraction=WARM_WARMUP_FRACTION,
                lr=self.config.lr * self._warm_lr_factor,
            )
        self.net = self._place(net, device)
        return (
            device,
            np.random.default_rng(options.seed),
            torch.Generator().manual_seed(options.seed),
        )

    def _run_training(
        self, step, options: FitOptions, device, *, max_steps: int | None = None, **training
    ) -> FitResult:
        """Train ``self.net`` with ``step`` under the config's ``lr``, ``weight_decay``,
        ``warmup_fraction`` and ``max_steps`` (or the ``max_steps`` given), within the options'
        time budget, cancel flag and progress callback; ``training`` goes to
        :func:`~napari_wsseg.engine.trainer.run_training`."""
        cfg = self.config
        optim = OptimConfig(
            lr=cfg.lr,
            weight_decay=cfg.weight_decay,
            warmup_fraction=cfg.warmup_fraction,
            max_steps=cfg.max_steps if max_steps is None else max_steps,
        )
        return run_training(
            self.net,
            step,
            optim=optim,
            device=device,
            time_budget_s=options.time_budget_s,
            cancel=options.cancel,
            progress=options.progress,
            **training,
        )

    def _place(self, module_or_tensor, device):
        if self.channels_last:
            return module_or_tensor.to(device, memory_format=torch.channels_last)
        return module_or_tensor.to(device)

    def _require_net(self) -> torch.nn.Module:
        if self.net is None:
            raise ModelError(f"{self.name} model is not trained; call fit() or load a model folder")
        return self.net

    # -------------------------------------------------------------- prediction
    def predict_proba_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        return self.predict_proba_batch([slice_yxc])[0]

    def predict_proba_batch(self, slices: list[np.ndarray]) -> list[np.ndarray]:
        """Class probabilities ``(C, Y, X)`` float32 of each raw ``(Y, X, C)`` slice."""
        return self._network_proba(slices)

    @property
    def has_second_opinion(self) -> bool:  # type: ignore[override]
        return self.student is not None

    def second_opinion_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """The student's class probabilities of one slice (a mean-teacher model's second
        opinion; see :meth:`Method.second_opinion_slice`)."""
        if self.student is None:
            return super().second_opinion_slice(slice_yxc)
        return self._network_proba([slice_yxc], self.student)[0]

    def _network_proba(
        self, slices: list[np.ndarray], net: torch.nn.Module | None = None
    ) -> list[np.ndarray]:
        """The probabilities of each slice from ``net`` (default: the model's network), tiled
        and blended.

        Same-sized slices share forward passes on a GPU; on a CPU a bigger batch is no faster
        and only raises peak memory, so slices go one at a time.
        """
        net = net if net is not None else self._require_net()
        arrays = [self._check_slice(s) for s in slices]
        device = next(net.parameters()).device
        per_pass = len(arrays) if device.type == "cuda" else 1
        net.eval()

        def probabilities(tiles: np.ndarray) -> np.ndarray:
            with torch.no_grad():
                batch = self._place(torch.from_numpy(tiles), device)
                return self._tile_probabilities(net, batch).float().cpu().numpy()

        overlap = min(self.config.tile_overlap, self.config.tile - 1)
        align = getattr(net, "size_multiple", 1)
        results: list[np.ndarray] = []
        for group in _same_shape_groups(arrays, per_pass):
            normalized = np.stack([np.moveaxis(self.normalization.apply(a), -1, 0) for a in group])
            out = predict_tiled_batch(
                probabilities, normalized, tile=self.config.tile, overlap=overlap, align=align
            )
            results.extend(out)
        return results

    def _check_slice(self, slice_yxc) -> np.ndarray:
        array = np.asarray(slice_yxc)
        if array.ndim != 3 or array.shape[-1] != self.n_channels:
            raise ModelError(
                f"{self.name} model expects a (Y, X, {self.n_channels}) slice, got shape "
                f"{array.shape}; pass one slice of an image with the channels it was trained on"
            )
        return array

    # ------------------------------------------------------------- persistence
    def _save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        networks = {WEIGHTS_FILE: self._require_net(), STUDENT_WEIGHTS_FILE: self.student}
        for filename, net in networks.items():
            if net is not None:
                weights = net.state_dict()
                save_file(
                    {k: v.detach().cpu().contiguous() for k, v in weights.items()},
                    str(folder / filename),
                )

    def _load_weights(self, folder: Path) -> None:
        """Load the network, and the student where the folder has one (models saved before
        students were kept have none)."""
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise ModelError(
                f"model folder {folder}: {WEIGHTS_FILE} is missing; retrain the {self.name} model"
            )
        device = resolve_device("auto")
        self.net = self._place(self._read_net(path), device).eval()
        student = folder / STUDENT_WEIGHTS_FILE
        self.student = (
            self._place(self._read_net(student), device).eval() if student.is_file() else None
        )

    def _read_net(self, path: Path) -> torch.nn.Module:
        """A network with the weights of ``path``, after checking, without allocating, that
        their shapes are the ones config.json's architecture implies (a crafted config cannot
        make us build a huge network)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in self._build_net().state_dict().items()}
        mismatch = _shape_mismatch(_stored_shapes(path), expected)
        if mismatch:
            raise ModelError(
                f"model file {path} does not match the {self.name} architecture in config.json "
                f"({mismatch}); retrain the model"
            )
        net = self._build_net()
        try:
            tensors = load_file(str(path))
            net.load_state_dict(tensors)
        except (RuntimeError, SafetensorError) as exc:
            first = str(exc).strip().splitlines()[0]
            raise ModelError(
                f"model file {path} does not match the {self.name} architecture in config.json "
                f"({first}); retrain the model"
            ) from None
        if not all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()):
            raise ModelError(f"model file {path} holds NaN or infinite weights; retrain the model")
        return net


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor shapes in a safetensors file, read from its header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        reason = " ".join(str(exc).split())[:120]
        raise ModelError(
            f"model file {path} is not a valid safetensors file ({reason}); retrain the model"
        ) from None


def _shape_mismatch(stored: dict, expected: dict) -> str | None:
    """The first difference between stored and expected tensor shapes, in words; None if equal."""
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        example = (missing or unexpected)[0]
        return f"{len(missing)} missing and {len(unexpected)} unexpected tensors, e.g. {example!r}"
    wrong = next((k for k in sorted(expected) if stored[k] != expected[k]), None)
    if wrong is not None:
        return f"tensor {wrong!r} has shape {stored[wrong]}, config.json implies {expected[wrong]}"
    return None


def _same_shape_groups(arrays: list[np.ndarray], limit: int):
    """Consecutive runs of equally shaped arrays, at most ``limit`` long, in order."""
    group: list[np.ndarray] = []
    for array in arrays:
        if group and (array.shape != group[0].shape or len(group) >= limit):
            yield group
            group = []
        group.append(array)
    if group:
        yield group
