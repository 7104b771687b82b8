"""Method ``size``: a U-Net trained from approximate class sizes per slice (Approximate Size
Targets Are Sufficient for Accurate Semantic Segmentation), optionally with points, masks and
tags. Imports no Qt.

The network is the project's plain U-Net with a classifier head; the method is the loss

    L = size_weight * KL(v || y_bar) + tag_weight * L_tag + crf_weight * L_CRF + pce_weight * L_pCE

where ``v`` is a slice's target size distribution, ``y_bar`` the mean softmax prediction over the
whole slice (see :mod:`.slice_means` for how crops see whole-slice means), ``L_tag`` the size
constraint of slices with tags but no sizes, ``L_CRF`` the bilinear Potts relaxation over a local
window and ``L_pCE`` the cross-entropy on clicked points and mask pixels (:mod:`.losses`).

Each step draws ``batch_size`` crops aligned to the size cache's cells: a share
``anchor_crop_fraction`` around labelled pixels (every class equally often), the rest uniformly
over the slices with sizes or tags. Crops get one random flip/rotation and a brightness/contrast
jitter. See ``docs/methods/size.md`` for the defaults and the benchmark that chose them.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional as F

from ...annotations.model import Annotations
from ...annotations.targets import point_targets, sizes_for_slice, tag_matrix
from ...engine.augment import Geometry, apply_geometries, jitter, random_geometries
from ...engine.crops import (
    Crop,
    CropSampler,
    SliceStore,
    annotation_anchors,
    fitted_crop_size,
)
from ...engine.results import FitResult
from ...engine.unet import UNet, UNetConfig
from ...errors import WssegError
from ...io.image import Image
from ...progress import ProgressEvent, is_cancelled, report
from .._torch import UNET_TILE_BOUNDS, UNET_TRAINING_BOUNDS, TorchSliceMethod
from ..base import FitOptions, check_config, state_mapping, state_numbers
from .calibration import fit_class_bias
from .losses import crf_loss, partial_ce, size_kl, tag_size_loss
from .slice_means import SliceMeanCache, align_crops, uniform_aligned_crops

#: Inclusive (low, high) of each numeric size option. The highs are far above any useful value
#: and keep a crafted config.json from asking for huge networks, crops or tiles.
SIZE_BOUNDS = {
    "depth": (0, 6),
    "width": (1, 256),
    "size_weight": (0, 1000),
    "tag_weight": (0, 1000),
    "tag_min_fraction": (0, 1),
    "crf_weight": (0, 1000),
    "crf_radius": (1, 16),
    "crf_sigma_intensity": (0, 1000),
    "crf_sigma_xy": (0, 1000),
    "pce_weight": (0, 1000),
    "kl_epsilon": (0, 0.1),
    **UNET_TRAINING_BOUNDS,
    "size_cell": (1, 1024),
    "anchor_crop_fraction": (0, 1),
    "jitter": (0, 1),
    "calibration_pixels": (1, 10_000_000),
    **UNET_TILE_BOUNDS,
}


@dataclass(frozen=True)
class SizeConfig:
    """Options of the size-target method (architecture, losses, training, prediction).

    Attributes
    ----------
    depth, width : int, default 3 and 16
        U-Net down-sampling steps and channels at full resolution.
    size_weight : float, default 1.0
        Weight of the size loss ``KL(v || y_bar)``.
    tag_weight : float, default 1.0
        Weight of the tag size loss (slices with tags but no sizes).
    tag_min_fraction : float, default 0.002
        A tagged class is pushed up only while its predicted share of the slice is below this.
    crf_weight : float, default 0.1
        Weight of the CRF (Potts) loss; 0 switches it off.
    crf_radius : int, default 2
        The CRF window is ``(2 * crf_radius + 1)`` pixels square.
    crf_sigma_intensity, crf_sigma_xy : float, default 0.15 and 1.5
        Intensity (normalised units, 0 to 1 spans the 1st-99.5th percentile) and spatial (pixels)
        bandwidths of the CRF affinities.
    pce_weight : float, default 1.0
        Weight of the partial cross-entropy on points and mask pixels.
    kl_epsilon : float, default 1e-6
        Guard of the mean prediction inside the size losses' logarithms.
    lr, weight_decay, warmup_fraction : float, default 1e-3, 0.01, 0.05
        AdamW with linear warm-up then cosine decay.
    max_steps : int, default 2000
        Training steps when no time budget stops the run first.
    batch_size, crop_size : int, default 4 and 128
        Crops per step and their side (a multiple of ``size_cell`` and of ``2 ** depth``); a
        smaller slice is trained whole.
    size_cell : int, default 16
        Side of the cells in which whole-slice mean predictions are cached; crops are aligned to
        them.
    anchor_crop_fraction : float, default 0.5
        Share of crops placed around labelled pixels (points, masks) when there are any.
    jitter : float, default 0.2
        Brightness/contrast jitter strength.
    cpu_bf16 : bool, default False
        bf16 autocast for training on CPUs with native support (prediction stays float32).
    calibrate : bool, default True
        After training, fit one log-probability offset per class so that the predicted labels
        of the sized slices cover the target fractions (:mod:`.calibration`; not in the paper).
    calibration_pixels : int, default 20000
        Pixels sampled per sized slice for the calibration.
    tile, tile_overlap : int, default 1024 and 128
        Tiled prediction.
    """

    depth: int = 3
    width: int = 16
    size_weight: float = 1.0
    tag_weight: float = 1.0
    tag_min_fraction: float = 0.002
    crf_weight: float = 0.1
    crf_radius: int = 2
    crf_sigma_intensity: float = 0.15
    crf_sigma_xy: float = 1.5
    pce_weight: float = 1.0
    kl_epsilon: float = 1e-6
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    max_steps: int = 2000
    batch_size: int = 4
    crop_size: int = 128
    size_cell: int = 16
    anchor_crop_fraction: float = 0.5
    jitter: float = 0.2
    cpu_bf16: bool = False
    calibrate: bool = True
    calibration_pixels: int = 20000
    tile: int = 1024
    tile_overlap: int = 128

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check each option's type and range (:data:`SIZE_BOUNDS`) and the rules between options.

        Called on construction, so a config read from a model's ``config.json`` is checked too.
        """
        check_config(self, "size", SIZE_BOUNDS)
        for name in ("lr", "crf_sigma_intensity", "crf_sigma_xy"):
            if not getattr(self, name) > 0:
                raise WssegError(f"size option {name}={getattr(self, name)} must be positive")
        multiple = self.crop_multiple
        if self.crop_size % multiple:
            raise WssegError(
                f"size crop_size {self.crop_size} is not a multiple of size_cell "
                f"({self.size_cell}) and 2**depth ({2**self.depth}); use e.g. "
                f"{-(-self.crop_size // multiple) * multiple}"
            )

    @property
    def crop_multiple(self) -> int:
        """Crop sides are multiples of this (cache cells and U-Net down-sampling)."""
        return math.lcm(self.size_cell, 2**self.depth)


class SizeMethod(TorchSliceMethod):
    """A U-Net trained with the size-target KL loss (+ CRF, + partial CE on points and masks)."""

    name = "size"
    config_class = SizeConfig
    main_options = ("max_steps", "size_weight", "crf_weight")
    halo = 64

    @property
    def block_align(self) -> tuple[int, int, int]:  # type: ignore[override]
        """Blocks start on the U-Net's pooling grid (cells of ``2 ** depth`` pixels)."""
        return 1, 2**self.config.depth, 2**self.config.depth

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        self.class_bias: np.ndarray | None = None

    def _build_net(self) -> UNet:
        cfg = self.config
        return UNet(
            UNetConfig(
                in_channels=self.n_channels,
                out_channels=len(self.classes),
                depth=cfg.depth,
                width=cfg.width,
                head="classifier",
            )
        )

    # ---------------------------------------------------------------- training
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        _check_trainable(annotations)
        if len(annotations.region_tags):
            message = (
                f"the size method ignores the {len(annotations.region_tags)} region tag row(s): "
                "a region tag gives no size of its slice (a region covering a whole slice is a "
                "slice tag: write it in tags.csv without y0,x0,y1,x1); use dsp or cpews for them"
            )
            warnings.warn(message, stacklevel=3)
            self.training_summary.setdefault("warnings", []).append(message)
        device, rng, generator = self._start_training(options)
        step = _SizeTrainStep(self, image, annotations, rng, generator, device)
        cfg = self.config
        outcome = self._run_training(step, options, device, autocast_cpu=cfg.cpu_bf16)
        self.class_bias = None
        if cfg.calibrate and step.sizes and outcome.stopped != "cancelled":
            self.class_bias = self._fit_class_bias(image, step.sizes, rng, options)
        self.fit_info = {
            **outcome.summary(),
            "crop_size": step.crop_size,
            "size_slices": sorted(step.sizes),
            "tag_slices": sorted(step.present),
        }
        return outcome

    def _fit_class_bias(
        self,
        image: Image,
        sizes: dict[int, np.ndarray],
        rng: np.random.Generator,
        options: FitOptions,
    ) -> np.ndarray | None:
        """Offsets making the labels of the sized slices cover their target sizes (pooled);
        None when cancelled."""
        samples = []
        for done, z in enumerate(sorted(sizes)):
            if is_cancelled(options.cancel):
                return None
            event = ProgressEvent(done, len(sizes), f"size calibration, slice {z}")
            report(options.progress, event)
            proba = self._network_proba([image.slice(z)])[0].reshape(len(self.classes), -1)
            count = min(self.config.calibration_pixels, proba.shape[1])
            picked = rng.choice(proba.shape[1], size=count, replace=False)
            samples.append(np.log(proba[:, picked].T + 1e-12))
        target = np.mean([sizes[z] for z in sorted(sizes)], axis=0)
        return fit_class_bias(np.concatenate(samples), target)

    # -------------------------------------------------------------- prediction
    def predict_proba_batch(self, slices: list[np.ndarray]) -> list[np.ndarray]:
        """The network's probabilities, re-weighted by the size calibration when there is one."""
        probabilities = self._network_proba(slices)
        if self.class_bias is None:
            return probabilities
        weights = np.exp(self.class_bias - self.class_bias.max()).astype(np.float32)[:, None, None]
        return [p * weights / (p * weights).sum(axis=0, keepdims=True) for p in probabilities]

    def _tile_probabilities(self, net: UNet, tiles: torch.Tensor) -> torch.Tensor:
        return F.softmax(net(tiles).float(), dim=1)

    # ------------------------------------------------------------- persistence
    def _state_dict(self) -> dict:
        bias = None if self.class_bias is None else [float(b) for b in self.class_bias]
        return {"fit": self.fit_info, "class_bias": bias}

    def _load_state_dict(self, state: dict) -> None:
        self.fit_info = state_mapping(state, "fit")
        bias = state_numbers(state, "class_bias", len(self.classes))
        self.class_bias = None if bias is None else np.asarray(bias, dtype=np.float64)


def _check_trainable(annotations: Annotations) -> None:
    """The method learns from sizes, tags, points and masks; boxes alone give it nothing."""
    if len(annotations.classes) < 2:
        raise WssegError(
            f"size needs at least 2 classes, got {len(annotations.classes)} "
            f"({', '.join(annotations.class_names)}); add a background class"
        )
    has_masks = annotations.masks is not None and bool(np.any(annotations.masks))
    usable = len(annotations.sizes) or len(annotations.tags) or len(annotations.points) or has_masks
    if not usable:
        raise WssegError(
            "the size method learns from sizes, tags, points or masks; boxes alone are not used "
            "by it (give sizes.csv, or use --method dsp for boxes)"
        )
    if len(annotations.boxes):
        warnings.warn(
            f"the size method ignores the {len(annotations.boxes)} box(es); use dsp to "
            "learn from boxes",
            stacklevel=3,
        )


class _SizeTrainStep:
    """One training step: sample aligned crops, augment, predict, compute the losses, refresh the
    whole-slice mean cache."""

    def __init__(
        self,
        method: SizeMethod,
        image: Image,
        annotations: Annotations,
        rng: np.random.Generator,
        generator: torch.Generator,
        device: torch.device,
    ) -> None:
        cfg = method.config
        self.cfg, self.net, self.device = cfg, method.net, device
        self.rng, self.generator = rng, generator
        self.shape_yx = image.shape[1:]
        self.crop_size = fitted_crop_size(cfg.crop_size, self.shape_yx, cfg.crop_multiple)
        self.sizes, self.present = _slice_constraints(annotations, image.shape[0])
        initial = dict(self.sizes) | {z: p / p.sum() for z, p in self.present.items()}
        self.cache = SliceMeanCache(self.shape_yx, cfg.size_cell, initial)
        self.labels = _pixel_labels(annotations, self.shape_yx)
        self.store = SliceStore(image, method.normalization)
        for z in sorted(set(initial) | set(self.labels)):
            self.store.slice(int(z))  # annotated slices stay cached
        self.sampler = self._anchor_sampler(annotations, image.shape)
        constrained = sorted(initial) or sorted(self.labels)
        self.uniform_slices = np.asarray(constrained, dtype=np.int64)

    def _anchor_sampler(self, annotations: Annotations, shape) -> CropSampler | None:
        pixel_labels = Annotations(
            annotations.classes, points=annotations.points, masks=annotations.masks
        )
        anchors = annotation_anchors(pixel_labels, shape, self.rng)
        if not len(anchors):
            return None
        cell = self.cfg.size_cell
        side = self.crop_size - cell if self.crop_size > cell else self.crop_size
        return CropSampler(shape, anchors, side, self.rng)

    def _sample(self) -> list[Crop]:
        n, cell = self.cfg.batch_size, self.cfg.size_cell
        n_anchored = 0
        if self.sampler is not None:
            n_anchored = self.rng.binomial(n, self.cfg.anchor_crop_fraction)
        if not len(self.uniform_slices):
            n_anchored = n
        anchored = []
        if n_anchored:
            anchored = align_crops(self.sampler.sample(n_anchored), cell, self.crop_size)
        uniform = uniform_aligned_crops(
            self.uniform_slices, self.shape_yx, self.crop_size, cell, n - n_anchored, self.rng
        )
        return anchored + uniform

    def __call__(self, step: int, fraction: float) -> dict:
        cfg = self.cfg
        crops = self._sample()
        pixels, valid = zip(*(self.store.crop(c) for c in crops))
        labels = np.stack([self._label_window(c) for c in crops])
        geometries = random_geometries(len(crops), self.generator)
        images = apply_geometries(torch.from_numpy(np.stack(pixels)), geometries)
        valid_t = apply_geometries(torch.from_numpy(np.stack(valid)), geometries).to(self.device)
        labels_t = apply_geometries(torch.from_numpy(labels), geometries).to(self.device)
        logits = self.net(jitter(images, cfg.jitter, self.generator).to(self.device)).float()
        probabilities = F.softmax(logits, dim=1)
        masked = probabilities * valid_t[:, None]
        losses = {"pce": partial_ce(logits, labels_t)}
        losses |= self._size_losses(crops, masked, valid_t)
        if cfg.crf_weight > 0:
            losses["crf"] = crf_loss(
                probabilities,
                images.to(self.device),
                valid_t,
                radius=cfg.crf_radius,
                sigma_intensity=cfg.crf_sigma_intensity,
                sigma_xy=cfg.crf_sigma_xy,
            )
        self._refresh_cache(crops, masked.detach(), geometries)
        weights = {
            "pce": cfg.pce_weight,
            "size": cfg.size_weight,
            "tag": cfg.tag_weight,
            "crf": cfg.crf_weight,
        }
        losses["loss"] = sum(w * losses[key] for key, w in weights.items() if key in losses)
        return losses

    def _size_losses(self, crops: list[Crop], masked: torch.Tensor, valid: torch.Tensor) -> dict:
        """Size KL of crops on sized slices and tag loss of crops on tag-only slices."""
        out = {}
        crop_sums = masked.sum(dim=(2, 3))
        # Scale the gradient by N / n so each crop pixel gets the gradient of a whole-slice step:
        # the crop's share of the full-slice gradient, averaged over crop positions, is unbiased.
        scale = self.cache.n_pixels / valid.sum(dim=(1, 2)).clamp(min=1)
        for key, table in (("size", self.sizes), ("tag", self.present)):
            index = [i for i, c in enumerate(crops) if c.z in table]
            if not index:
                continue
            mean = self.cache.mean_with([crops[i] for i in index], crop_sums[index])
            target = np.stack([table[crops[i].z] for i in index])
            target = torch.as_tensor(target, device=mean.device)
            if key == "size":
                value = size_kl(target, mean, self.cfg.kl_epsilon)
            else:
                value = tag_size_loss(target, mean, self.cfg.tag_min_fraction, self.cfg.kl_epsilon)
            scaled = value.detach() + scale[index] * (value - value.detach())
            out[key] = scaled.mean()
        return out

    def _refresh_cache(
        self, crops: list[Crop], masked: torch.Tensor, geometries: list[Geometry]
    ) -> None:
        cell = self.cfg.size_cell
        cell_sums = F.avg_pool2d(masked, cell) * cell**2
        undone = torch.stack([_undo_geometry(g, s) for g, s in zip(geometries, cell_sums)])
        self.cache.update(crops, undone.cpu().numpy().astype(np.float64))

    def _label_window(self, crop: Crop) -> np.ndarray:
        window = np.full((crop.size, crop.size), -1, np.int64)
        labels = self.labels.get(crop.z)
        if labels is not None:
            part = labels[crop.y : crop.y + crop.size, crop.x : crop.x + crop.size]
            window[: part.shape[0], : part.shape[1]] = part
        return window


def _undo_geometry(geometry: Geometry, x: torch.Tensor) -> torch.Tensor:
    """Invert :meth:`Geometry.apply` on the last two axes."""
    if geometry.rot90:
        x = torch.rot90(x, -geometry.rot90, dims=(-2, -1))
    return torch.flip(x, dims=(-1,)) if geometry.flip_x else x


def _slice_constraints(annotations: Annotations, n_slices: int) -> tuple[dict, dict]:
    """Per slice: target sizes ``{z: (C,) float32}``, and tagged classes of slices with tags but
    no sizes ``{z: (C,) bool}``."""
    sizes = {}
    for z in np.unique(annotations.sizes[:, 0].astype(np.int64)):
        fractions = sizes_for_slice(annotations, int(z))
        if fractions is not None:
            sizes[int(z)] = fractions.astype(np.float32)
    tagged, allowed = tag_matrix(annotations, n_slices)
    present = {int(z): allowed[z] for z in np.flatnonzero(tagged) if int(z) not in sizes}
    return sizes, present


def _pixel_labels(annotations: Annotations, shape_yx: tuple[int, int]) -> dict[int, np.ndarray]:
    """``{z: (Y, X) int16}`` class of each labelled pixel (points, masks), -1 elsewhere."""
    slices = set(annotations.points[:, 0].tolist())
    if annotations.masks is not None:
        flat = np.asarray(annotations.masks).reshape(len(annotations.masks), -1)
        slices.update(np.flatnonzero(flat.max(axis=1) > 0).tolist())
    return {
        int(z): point_targets(annotations, int(z), shape_yx).astype(np.int16)
        for z in sorted(slices)
    }
