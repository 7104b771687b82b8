"""Method ``dsp``: Decoupled Semantic Prototypes trained from any mix of points, boxes, tags and
masks (Reiß et al., CVPR 2023). Imports no Qt.

Training draws square crops around annotations (every annotated class equally often) plus a share
of random crops from any slice (unannotated slices included), applies one random flip/rotation
to each crop and its targets, and minimises

    L = L_CE + L_DSP + L_PLF                                                     (Eq. 10)

with L_CE and L_DSP on a weakly augmented view (jitter 0.2) and L_PLF on a strongly augmented view
(jitter 0.4 + CutOut) against filtered pseudo-labels of the weak view, made by a mean teacher (an
exponential moving average of the weights, ``ema_momentum``), which is also the model kept (the
last student is kept too, as the model's second opinion for suggestions). As the
paper starts its methods from a U-Net trained with L_CE, L_PLF starts after ``plf_start`` of the
schedule. After training, the class prior the class-balanced sampling implied is corrected
(``prior_correction``).
See ``docs/methods/dsp.md`` for the defaults and how they were chosen.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
from torch.nn import functional as F

from ...annotations.model import Annotations
from ...engine.augment import apply_geometries, cutout, jitter, random_geometries
from ...engine.crops import (
    CropSampler,
    RegionCropSampler,
    SliceStore,
    annotation_anchors,
    fitted_crop_size,
)
from ...engine.ema import EMATeacher, debiased_momentum, run_momentum
from ...engine.prior import log_prior_shift, training_prior
from ...engine.prototype_losses import (
    KINDS,
    ce_loss,
    dsp_loss,
    filtered_pseudo_labels,
    plf_loss,
)
from ...engine.prototypes import PrototypeUNet
from ...engine.results import FitResult
from ...engine.unet import UNetConfig
from ...engine.weak_targets import AnnotationIndex, collate, transform_targets
from ...errors import WssegError
from ...io.image import Image
from .._torch import UNET_TILE_BOUNDS, UNET_TRAINING_BOUNDS, TorchSliceMethod
from ..base import FitOptions, check_config, state_mapping, state_numbers
from ..warm import FOCUS_SHARE

#: Inclusive (low, high) of each numeric DSP option. The highs are far above any useful value
#: and keep a crafted config.json from asking for e.g. 10^8 prototypes or a 10^6-pixel tile.
DSP_BOUNDS = {
    "depth": (0, 6),
    "width": (1, 256),
    "embed_dim": (1, 1024),
    "prototypes_per_class": (1, 100),
    "tau": (0, 10),
    "lambda_mask": (0, 1000),
    "lambda_box": (0, 1000),
    "lambda_point": (0, 1000),
    "lambda_tag": (0, 1000),
    "ce_weight": (0, 1000),
    "plf_weight": (0, 1000),
    "plf_start": (0, 1),
    "plf_threshold": (0, 1),
    "ema_momentum": (0, 0.99999),
    **UNET_TRAINING_BOUNDS,
    "random_crop_fraction": (0, 1),
    "weak_jitter": (0, 1),
    "strong_jitter": (0, 1),
    "cutout_holes": (0, 1000),
    "region_crops": (0, 64),
    "region_crop_max": (8, 4096),
    **UNET_TILE_BOUNDS,
}


@dataclass(frozen=True)
class DSPConfig:
    """Options of the DSP method (architecture, losses, training, prediction).

    Attributes
    ----------
    depth, width : int, default 3 and 16
        U-Net down-sampling steps and channels at full resolution.
    embed_dim : int, default 64
        Embedding dimension D of the head (paper: 64).
    prototypes_per_class : int, default 5
        ``|P_c|`` (paper: 5).
    tau : float, default 0.05
        Softmax temperature (paper: 0.05).
    lambda_mask, lambda_box, lambda_point, lambda_tag : float, default 0.1
        Weights of the L_DSP terms by annotation type (paper: 0.1 each).
    tag_pooling : str, default "mean"
        How a tag's positive pools its area (the slice, or a region tag's rectangle): "mean"
        (the paper's average pooling, scored against ``Z_c``) or "max" (multiple-instance:
        the cross-entropy of the tagged class at the pixel where it scores highest, as boxes).
    exclusions : str, default "pseudo_labels"
        Where the classes an unlabelled pixel is known not to be (slice and region tags, sizes
        of 0, exhaustive boxes) act besides L_PLF's pseudo-label filter: "contrastive" (the
        paper: the pixel is a negative of each excluded class in ``Z_c``, Eq. 8), "partial_ce"
        (a partial cross-entropy ``-log sum_{c in A(j)} p_c(j)`` on those pixels, weighted by
        ``ce_weight``) or "pseudo_labels" (nowhere else). Labelled pixels (points, masks) are
        negatives of the other classes in every case, so without such annotations the three
        train the same model. "pseudo_labels" was chosen on the validation slices of both real
        datasets with region tags (docs/benchmarks.md, session 8): as contrastive negatives
        the exclusions made dsp call a class that is absent from many cells rarer everywhere.
    ce_weight : float, default 1.0
        Weight of L_CE (paper: 1).
    plf_weight : float, default 1.0
        Weight of L_PLF (paper: 1); 0 turns it off (about 1.6x faster steps). With the mean
        teacher (``ema_momentum``) making the pseudo-labels it raised validation Dice on both real
        datasets over 3 seeds (docs/benchmarks.md, session 5); with the student's own
        pseudo-labels it had not paid off (session 3).
    plf_start : float, default 0.5
        Share of the schedule trained without L_PLF (the paper starts from a U-Net trained with
        L_CE; pseudo-labels of an untrained network are noise).
    plf_threshold : float, default 0.9
        Pixels whose filtered pseudo-label probability is below this are left out of L_PLF
        (FixMatch's confidence mask; 0 keeps every pixel, as the paper does, and measured worse).
    ema_momentum : float, default 0.99
        Above 0: an exponential moving average of the weights (a mean teacher, updated after
        every step with this momentum) makes the pseudo-labels of L_PLF and is the model kept.
        The average is bias-corrected (it ignores the initial weights) and spans at most a tenth
        of the run (:func:`~napari_wsseg.engine.ema.run_momentum`: 0.9 for a 100-step warm run).
        0: the student makes them, and the model kept is the student's weights with the lowest
        smoothed supervised loss in the second half of training. Not in the paper; chosen on the
        validation protocol (docs/benchmarks.md, session 5).
    prior_correction : bool, default True
        Crops are drawn class-balanced, so the network learns as if every class were equally
        common. After training, the image's class prior is estimated as the mean predicted
        probability over random crops (one EM step of Saerens et al. 2002) and predictions are
        re-weighted by it over the prior of the labelled pixels seen in training. A warm run keeps
        the previous model's correction: its few steps (20 in a live run, around one new click)
        see too few labelled pixels to estimate the training prior, and re-estimating it cost
        1.6 of the 2.1 Dice points the first live run lost (drosophila_vnc, session 10). Not in
        the paper.
    lr, weight_decay, warmup_fraction : float, default 2e-3, 0.01, 0.05
        AdamW (β 0.9/0.999) with linear warm-up then cosine decay (paper: lr 6e-5, 100 epochs).
    max_steps : int or None, default None
        Training steps, None to pick them from the annotations; a time budget may stop the run
        earlier. None (:func:`auto_max_steps`) gives 1200 steps (about 3.5 minutes on 2 CPU cores)
        for clicks, boxes and tags, growing to 3000 as mask pixels cover up to a quarter of the
        annotated slices. 1200 beat 3000 with clicks (longer runs over-fit them); 3000 beat 1200
        with full or mixed masks (docs/benchmarks.md).
    batch_size, crop_size : int, default 8 and 128
        Crops per step and their side (a multiple of ``2 ** depth``).
    random_crop_fraction : float, default 0.25
        Share of crops drawn at random places of any slice (also unannotated ones).
    weak_jitter, strong_jitter : float, default 0.2 and 0.4
        Brightness/contrast jitter of the weak and strong views (paper: 0.2, 0.4).
    cutout_holes : int, default 9
        Maximum CutOut holes in the strong view (paper: 9).
    region_crops : int, default 0
        Extra crops per step that each hold a whole tagged region (of size up to
        ``region_crop_max`` pixels, rounded up to the network's multiple), in a second forward
        pass: the tag positives of a region larger than ``crop_size`` are otherwise never taken.
        They get L_CE and L_DSP as the other crops, not L_PLF. 0: none.
    region_crop_max : int, default 512
        Regions with a longer side are not drawn for region crops.
    cpu_bf16 : bool, default True
        bf16 autocast for training on CPUs that support it natively (about 2x faster there);
        prediction stays float32.
    tile, tile_overlap : int, default 512 and 128
        Tiled prediction.
    """

    depth: int = 3
    width: int = 16
    embed_dim: int = 64
    prototypes_per_class: int = 5
    tau: float = 0.05
    lambda_mask: float = 0.1
    lambda_box: float = 0.1
    lambda_point: float = 0.1
    lambda_tag: float = 0.1
    tag_pooling: Literal["mean", "max"] = "mean"
    exclusions: Literal["contrastive", "partial_ce", "pseudo_labels"] = "pseudo_labels"
    ce_weight: float = 1.0
    plf_weight: float = 1.0
    plf_start: float = 0.5
    plf_threshold: float = 0.9
    ema_momentum: float = 0.99
    prior_correction: bool = True
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_fraction: float = 0.05
    max_steps: int | None = None
    batch_size: int = 8
    crop_size: int = 128
    random_crop_fraction: float = 0.25
    weak_jitter: float = 0.2
    strong_jitter: float = 0.4
    cutout_holes: int = 9
    region_crops: int = 0
    region_crop_max: int = 512
    cpu_bf16: bool = True
    tile: int = 512
    tile_overlap: int = 128

    #: Options older model folders hold that no longer exist; loading drops them. boxes_exhaustive
    #: only shaped the training targets (exhaustiveness now comes from the annotations).
    retired_options: ClassVar[frozenset[str]] = frozenset({"boxes_exhaustive"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check each option's type and range (:data:`DSP_BOUNDS`) and the rules between options.

        Called on construction, so a config read from a model's ``config.json`` is checked too.
        """
        check_config(self, "dsp", DSP_BOUNDS)
        if self.crop_size % 2**self.depth:
            raise WssegError(
                f"dsp crop_size {self.crop_size} is not a multiple of 2**depth = {2**self.depth}; "
                f"use e.g. {-(-self.crop_size // 2**self.depth) * 2**self.depth}"
            )
        if self.tau <= 0 or self.lr <= 0:
            raise WssegError(f"dsp tau ({self.tau}) and lr ({self.lr}) must be positive")

    @property
    def lambdas(self) -> dict[str, float]:
        return {kind: getattr(self, f"lambda_{kind}") for kind in KINDS}


SPARSE_STEPS, DENSE_STEPS = 1200, 3000
#: Share of the annotated slices' pixels under mask labels from which DENSE_STEPS are used.
DENSE_MASK_SHARE = 0.25


def auto_max_steps(annotations: Annotations, shape: tuple[int, int, int]) -> int:
    """Training steps for ``annotations`` on an image of spatial ``shape`` (Z, Y, X).

    Clicks, boxes and tags label few pixels and a long run over-fits them; dense masks keep
    improving for longer. The step count grows linearly from SPARSE_STEPS (no mask pixels) to
    DENSE_STEPS (mask pixels covering DENSE_MASK_SHARE of the annotated slices).

    Examples
    --------
    >>> import numpy as np
    >>> from napari_wsseg.annotations.model import default_classes
    >>> clicks = [(z, 5, 5, 0) for z in (1, 2, 3)]               # one click in slices 1-3
    >>> masks = np.zeros((4, 10, 10), np.uint8); masks[0] = 1   # and slice 0 fully painted
    >>> auto_max_steps(Annotations(default_classes(2), points=clicks, masks=masks), (4, 10, 10))
    3000
    >>> masks[0, 5:] = 0                                          # half of slice 0 painted
    >>> auto_max_steps(Annotations(default_classes(2), points=clicks, masks=masks), (4, 10, 10))
    2100
    >>> auto_max_steps(Annotations(default_classes(2), points=clicks), (4, 10, 10))
    1200
    """
    mask_pixels = int(annotations.counts()["mask_pixels"].sum())
    annotated_pixels = max(len(annotations.annotated_slices()), 1) * shape[1] * shape[2]
    share = min(mask_pixels / annotated_pixels / DENSE_MASK_SHARE, 1.0)
    return int(round(SPARSE_STEPS + share * (DENSE_STEPS - SPARSE_STEPS)))


class DSPMethod(TorchSliceMethod):
    """Decoupled Semantic Prototypes: a prototype U-Net trained from mixed weak annotations."""

    name = "dsp"
    config_class = DSPConfig
    main_options = ("max_steps", "prototypes_per_class", "crop_size")
    channels_last = True

    @property
    def halo(self) -> int:  # type: ignore[override]
        return UNetConfig(depth=self.config.depth).receptive_radius()

    @property
    def block_align(self) -> tuple[int, int, int]:  # type: ignore[override]
        """Blocks start on the U-Net's pooling grid (cells of ``2 ** depth`` pixels)."""
        return 1, 2**self.config.depth, 2**self.config.depth

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        #: log(image prior / training prior) per class, added to the logits; None: no correction.
        self.log_prior_shift: list[float] | None = None

    def _build_net(self) -> PrototypeUNet:
        cfg = self.config
        return PrototypeUNet(
            self.n_channels,
            len(self.classes),
            cfg.depth,
            cfg.width,
            cfg.embed_dim,
            cfg.prototypes_per_class,
        )

    # ---------------------------------------------------------------- training
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        if len(self.classes) < 2:
            raise WssegError(
                f"dsp needs at least 2 classes, got {len(self.classes)} "
                f"({', '.join(annotations.class_names)}); add a background class"
            )
        device, rng, generator = self._start_training(options)
        focus = options.focus if self.warm_init is not None else None
        trainer = _DSPTrainStep(self, image, annotations, rng, generator, device, focus)
        cfg = self.config
        steps = cfg.max_steps or auto_max_steps(annotations, image.shape)
        teacher, momentum = trainer.teacher, run_momentum(cfg.ema_momentum, steps)
        # A cold teacher starts from random weights, which its first updates must not keep (bias
        # correction); a warm one starts from the previous model, which is worth keeping.
        warm = self.warm_init is not None

        def update_teacher(step: int, fraction: float) -> None:
            teacher.update(self.net, momentum if warm else debiased_momentum(momentum, step + 1))

        outcome = self._run_training(
            trainer,
            options,
            device,
            max_steps=steps,
            monitor="supervised" if teacher is None else None,
            keep_best_after=max(cfg.plf_start, 0.5),
            autocast_cpu=cfg.cpu_bf16,
            after_step=None if teacher is None else update_teacher,
        )
        if teacher is not None:
            self.student = copy.deepcopy(self.net).eval()  # the second opinion of suggestions
            self.net.load_state_dict(teacher.state_dict())
            self.net.eval()
        self.fit_info = outcome.summary()
        self.log_prior_shift = self._prior_shift_after(trainer, options.seed)
        return outcome

    def _prior_shift_after(self, trainer: "_DSPTrainStep", seed: int) -> list[float] | None:
        """The prior correction of the model just trained: a warm run keeps the previous
        model's (see ``prior_correction``), a cold one estimates it."""
        if not self.config.prior_correction:
            return None
        previous = None if self.warm_init is None else self.warm_init.log_prior_shift
        if previous is not None:
            self.fit_info["prior_shift"] = "kept from the previous model"
            return list(previous)
        return self._estimate_prior_shift(trainer, seed)

    def _estimate_prior_shift(
        self, trainer: "_DSPTrainStep", seed: int, n_crops: int = 32
    ) -> list[float] | None:
        """log(image prior / training prior): the image prior is the mean predicted probability
        over random crops, the training prior the class frequency of the labelled pixels that
        L_CE saw. None when training saw no labelled pixel (e.g. boxes only)."""
        counts = trainer.label_counts
        if counts.sum() == 0:
            return None
        net, tau = self._require_net(), self.config.tau
        net.eval()
        # The same crops for a seed however long the run was: from one draw of 32 crops to
        # another the Dice moved by up to 1.6 points (5 draws; 128 crops: 1.1 over 3;
        # drosophila_vnc, session 9), so runs of different lengths compare on the same crops.
        crops = trainer.sampler.sample_random(n_crops, np.random.default_rng([seed, 2]))
        sums = torch.zeros(len(self.classes), dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, n_crops, self.config.batch_size):
                chunk = crops[start : start + self.config.batch_size]
                pixels, valid = zip(*(trainer.store.crop(c) for c in chunk))
                batch = self._place(torch.from_numpy(np.stack(pixels)), trainer.device)
                proba = F.softmax(net(batch) / tau, dim=1).cpu()
                sums += (
                    (proba * torch.from_numpy(np.stack(valid))[:, None]).sum(dim=(0, 2, 3)).double()
                )
        image_prior = (sums / sums.sum()).numpy()
        self.fit_info |= {
            "image_prior": np.round(image_prior, 4).tolist(),
            "train_prior": np.round(training_prior(counts), 4).tolist(),
        }
        return log_prior_shift(image_prior, counts).tolist()

    # -------------------------------------------------------------- prediction
    def _tile_probabilities(self, net: PrototypeUNet, tiles: torch.Tensor) -> torch.Tensor:
        shift = torch.tensor(self.log_prior_shift or [0.0] * len(self.classes), device=tiles.device)
        return F.softmax(net(tiles) / self.config.tau + shift[None, :, None, None], dim=1)

    # ------------------------------------------------------------- persistence
    def _state_dict(self) -> dict:
        return {"fit": self.fit_info, "log_prior_shift": self.log_prior_shift}

    def _load_state_dict(self, state: dict) -> None:
        self.fit_info = state_mapping(state, "fit")
        self.log_prior_shift = state_numbers(state, "log_prior_shift", len(self.classes))


class _DSPTrainStep:
    """One DSP training step: sample crops, build targets, augment, compute the losses."""

    def __init__(
        self,
        method: DSPMethod,
        image: Image,
        annotations: Annotations,
        rng: np.random.Generator,
        generator: torch.Generator,
        device: torch.device,
        focus: np.ndarray | None = None,
    ) -> None:
        cfg = method.config
        self.cfg, self.net, self.device, self.generator = cfg, method.net, device, generator
        self.index = AnnotationIndex(annotations, image.shape)
        self.store = SliceStore(image, method.normalization)
        for z in annotations.annotated_slices():
            self.store.slice(int(z))  # annotated slices stay cached
        crop = fitted_crop_size(cfg.crop_size, image.shape[1:], 2**cfg.depth)
        anchors = annotation_anchors(annotations, image.shape, rng)
        self.sampler = CropSampler(
            image.shape,
            anchors,
            crop,
            rng,
            random_fraction=cfg.random_crop_fraction,
            focus=focus,
            focus_share=FOCUS_SHARE,
        )
        self.label_counts = np.zeros(
            len(method.classes), np.int64
        )  # labelled pixels L_CE saw, by class
        #: The mean teacher (``ema_momentum`` > 0): the model kept, and the pseudo-labeller.
        self.teacher = EMATeacher(self.net, cfg.ema_momentum) if cfg.ema_momentum > 0 else None
        self.regions = RegionCropSampler(
            self.index.regions.boxes, image.shape, 2**cfg.depth, cfg.region_crop_max, rng
        )

    def __call__(self, step: int, fraction: float) -> dict:
        cfg, generator = self.cfg, self.generator
        crops = self.sampler.sample(cfg.batch_size)
        pixels, valid = zip(*(self.store.crop(c) for c in crops))
        targets = collate([self.index.crop_targets(c) for c in crops], list(valid))
        geometries = random_geometries(len(crops), generator)
        images = apply_geometries(torch.from_numpy(np.stack(pixels)), geometries)
        targets = transform_targets(targets, geometries).to(self.device)
        views = [jitter(images, cfg.weak_jitter, generator)]
        use_plf = cfg.plf_weight > 0 and fraction >= cfg.plf_start
        if use_plf:
            strong, _ = cutout(
                jitter(images, cfg.strong_jitter, generator), generator, cfg.cutout_holes
            )
            views.append(strong)
        inputs = torch.cat(views).to(self.device, memory_format=torch.channels_last)
        logits = self.net(inputs) / cfg.tau
        weak = logits[: len(crops)]
        known = targets.labels[targets.labels >= 0]
        self.label_counts += torch.bincount(known, minlength=len(self.label_counts)).cpu().numpy()
        losses = {"ce": ce_loss(weak, targets.labels)} | dsp_loss(
            weak, targets, cfg.lambdas, cfg.tag_pooling, cfg.exclusions
        )
        ce_terms = losses["ce"] + losses.get("exclusion", 0.0)
        losses["supervised"] = cfg.ce_weight * ce_terms + losses["dsp"]
        total = losses["supervised"]
        if cfg.region_crops and len(self.regions):
            losses["regions"] = self._region_loss()
            total = total + losses["regions"]
        if use_plf:
            labeller = (
                weak if self.teacher is None else self.teacher(inputs[: len(crops)]) / cfg.tau
            )
            pseudo = filtered_pseudo_labels(
                labeller, targets.allowed, targets.valid, cfg.plf_threshold
            )
            losses["plf"] = plf_loss(logits[len(crops) :], pseudo)
            total = total + cfg.plf_weight * losses["plf"]
        losses["loss"] = total
        return losses

    def _region_loss(self) -> torch.Tensor:
        """L_CE + L_DSP on crops that each hold a whole tagged region (weak view only)."""
        cfg = self.cfg
        crops = self.regions.sample(cfg.region_crops)
        pixels, valid = zip(*(self.store.crop(c) for c in crops))
        targets = collate([self.index.crop_targets(c) for c in crops], list(valid))
        geometries = random_geometries(len(crops), self.generator)
        images = apply_geometries(torch.from_numpy(np.stack(pixels)), geometries)
        targets = transform_targets(targets, geometries).to(self.device)
        inputs = jitter(images, cfg.weak_jitter, self.generator).to(
            self.device, memory_format=torch.channels_last
        )
        logits = self.net(inputs) / cfg.tau
        terms = dsp_loss(logits, targets, cfg.lambdas, cfg.tag_pooling, cfg.exclusions)
        ce_terms = ce_loss(logits, targets.labels) + terms.get("exclusion", 0.0)
        return cfg.ce_weight * ce_terms + terms["dsp"]
