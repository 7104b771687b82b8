"""Method ``cpews``: CPEWS (Shao et al.) from region tags, slice tags, boxes, points and masks.

Training "images" are the tagged regions (``Annotations.region_tags``), the slices with slice
tags and the box rectangles; the tag set (a box: its class, the other classes unknown) is the
image-level label. A region is shown in a ``region_size`` window with its surroundings (shrunk to
fit, without them, when larger), and only its own pixels and tokens count. On them the ViT is
trained with the paper's Eq. 13:
``L_cls^m + L_cls^h + lambda1 L_ISM + lambda2 L_PDL + lambda3 L_SSL`` (:mod:`.losses`; Eq. 12's
superclasses optional). The per-pixel output is a segmentation head on the final features,
trained on the same images with (a) the tags' exclusion (every pixel of a region belongs to one
of its possible classes), (b) the final CAM's confident token labels and (c) a box's
multiple-instance positives, and on crops around points, mask pixels and exhaustive boxes with
cross-entropy and the exclusions of :class:`~napari_wsseg.engine.weak_targets.AnnotationIndex`.
Prediction runs the head over tiles of each slice (volumes slice by slice), optionally averaged
over scales. Imports no Qt.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ...annotations.model import Annotations
from ...annotations.region_tags import tag_regions
from ...annotations.targets import tag_matrix
from ...engine.crops import Crop, CropSampler, SliceStore, annotation_anchors
from ...engine.results import FitResult
from ...engine.vit import RANDOM_WEIGHTS, load_backbone
from ...engine.weak_targets import AnnotationIndex
from ...errors import ModelError, WssegError
from ...io.image import Image
from .._torch import TorchSliceMethod
from ..base import FitOptions, check_config, state_mapping
from .losses import (
    PrototypePools,
    anchor_features,
    box_mil_loss,
    class_activation_maps,
    classification_loss,
    exclusion_loss,
    ism_loss,
    ism_pseudo_labels,
    pdl_loss,
    ssl_loss,
)
from .model import CPEWSNet, create_vit, multiscale_probabilities

CPEWS_BOUNDS = {
    "intermediate_block": (-64, 63),
    "region_size": (16, 1024),
    "batch_size": (1, 256),
    "max_steps": (1, 1_000_000),
    "lr": (1e-8, 1.0),
    "weight_decay": (0.0, 1.0),
    "warmup_fraction": (0.0, 0.5),
    "alpha": (0.0, 1.0),
    "beta": (0.0, 1.0),
    "prototypes": (1, 256),
    "temperature": (1e-3, 1e4),
    "lambda_ism": (0.0, 1e3),
    "lambda_pdl": (0.0, 1e3),
    "lambda_ssl": (0.0, 1e3),
    "pool_size": (1, 100_000),
    "kmeans_iters": (0, 100),
    "seg_weight": (0.0, 1e3),
    "tile": (32, 4096),
    "tile_overlap": (0, 1024),
    "test_scales": (0.25, 4.0),
    "superclasses": (0, 255),
}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_MODEL_KWARGS = ("patch_size", "in_chans", "img_size")


@dataclass(frozen=True)
class CPEWSConfig:
    """Options of the cpews method (paper values where the paper gives one).

    Attributes
    ----------
    backbone : str, default "vit_small_patch16_224"
        timm ViT architecture (the paper uses ViT-B/16). Ignored with a backbone folder, which
        names its own.
    backbone_weights : str or None, default None
        A backbone folder from ``wsseg pretrain`` (in-domain), or a ``.safetensors``/state-dict
        weights file of ``backbone``. None starts from random weights (the training summary says
        so). No weights are downloaded.
    intermediate_block : int, default -3
        The block whose tokens are ``F_m`` (ISM's intermediate features); negative counts from
        the end.
    region_size : int, default 64
        Side in pixels of a training window: a tagged region is shown in it with its
        surroundings (only the region's pixels count), a larger region is shrunk to fit; also the
        side of the crops around points.
    batch_size : int, default 8
        Training images (and as many point crops, when there are points or masks) per step.
    max_steps : int, default 1000
        Training steps (the paper: 20000 at batch 4 on PASCAL VOC; not yet chosen for EM).
    lr, weight_decay, warmup_fraction : float, default 1e-4, 0.01, 0.1
        AdamW with warm-up then decay (the paper: PolyWarmupAdamW, weight decay 0.01).
    alpha, beta : float, default 0.25, 0.7
        ISM thresholds on the normalised intermediate CAM (paper, VOC).
    prototypes : int, default 10
        K, positive and negative prototypes per class.
    temperature : float, default 13.0
        T of Eq. 8-9.
    lambda_ism, lambda_pdl, lambda_ssl : float, default 0.12, 1.5e-4, 0.2
        lambda1-3 of Eq. 13.
    pool_size : int, default 256
        Anchor features kept per class in each of the positive and negative pools.
    kmeans_iters : int, default 10
        Lloyd iterations of the positive prototypes' k-means at each step.
    seg_weight : float, default 1.0
        Weight of the segmentation head's losses.
    tile, tile_overlap : int, default 256, 32
        Prediction tiles and their overlap, in pixels.
    test_scales : tuple of float, default (1.0,)
        Multi-scale testing: each tile is classified resized by every scale and the class
        probabilities are averaged. The paper tests at several scales; e.g. (1.0, 0.5, 1.5) costs
        about 3.5 times the pixels (more in ViT attention), so the CPU default is one scale.
    superclasses : tuple of int, default ()
        One superclass id per class, for the paper's equation 12; empty: none. A negative
        prototype of class ``c`` taken from an image that holds another class of ``c``'s
        superclass is left out of L_SSL (the paper groups VOC classes, e.g. vehicles; EM classes
        have no standard grouping).
    """

    backbone: str = "vit_small_patch16_224"
    backbone_weights: str | None = None
    intermediate_block: int = -3
    region_size: int = 64
    batch_size: int = 8
    max_steps: int = 1000
    lr: float = 1e-4
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    alpha: float = 0.25
    beta: float = 0.7
    prototypes: int = 10
    temperature: float = 13.0
    lambda_ism: float = 0.12
    lambda_pdl: float = 1.5e-4
    lambda_ssl: float = 0.2
    pool_size: int = 256
    kmeans_iters: int = 10
    seg_weight: float = 1.0
    tile: int = 256
    tile_overlap: int = 32
    test_scales: tuple[float, ...] = (1.0,)
    superclasses: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        check_config(self, "cpews", CPEWS_BOUNDS)
        if not self.alpha < self.beta:
            raise WssegError(
                f"cpews alpha ({self.alpha}) must be below beta ({self.beta}); "
                "use e.g. the paper's 0.25 and 0.7"
            )
        if not 1 <= len(self.test_scales) <= 16:
            raise WssegError(
                f"cpews test_scales has {len(self.test_scales)} scales; give 1 to 16, "
                "e.g. 1.0 (the default) or 1.0,0.5,1.5"
            )
        if self.tile_overlap >= self.tile:
            raise WssegError(
                f"cpews tile_overlap ({self.tile_overlap}) must be below tile "
                f"({self.tile}); use e.g. {self.tile // 8}"
            )


class CPEWSMethod(TorchSliceMethod):
    """CPEWS: a ViT trained from image-level (region) tags with ISM, CPM, L_PDL and L_SSL."""

    name = "cpews"
    config_class = CPEWSConfig
    main_options = ("backbone", "backbone_weights", "max_steps", "region_size")

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        #: The backbone's architecture and origin: arch, model_kwargs, mean, std, source.
        self.backbone_info: dict = {}

    @property
    def halo(self) -> int:  # type: ignore[override]
        """A whole tile: ViT attention is global within a tile, so a block predicted with less
        context would see other features (block-wise equals whole-slice prediction exactly when a
        slice fits in one tile)."""
        return self.config.tile

    def _build_net(self) -> CPEWSNet:
        info = self.backbone_info
        vit = create_vit(info.get("arch", self.config.backbone), info.get("model_kwargs"))
        return CPEWSNet(
            vit,
            self.n_channels,
            len(self.classes),
            self.config.intermediate_block,
            info.get("mean", IMAGENET_MEAN),
            info.get("std", IMAGENET_STD),
        )

    # ---------------------------------------------------------------- training
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        _check_usable(annotations, len(self.classes))
        _check_superclasses(self.config.superclasses, self.classes)
        backbone_state = None
        if self.warm_init is not None:
            self.backbone_info = dict(self.warm_init.backbone_info)
        else:
            backbone_state = self._resolve_backbone()
        device, rng, _ = self._start_training(options)
        if backbone_state is not None:
            self.net.vit.load_state_dict(backbone_state)
        step = _CPEWSTrainStep(self, image, annotations, rng, device)
        outcome = self._run_training(step, options, device)
        self.fit_info = {
            **outcome.summary(),
            "training_images": step.n_images,
        }
        self.training_summary["backbone"] = self.backbone_info["source"]
        return outcome

    def _resolve_backbone(self) -> dict:
        """Set :attr:`backbone_info` from the config; returns the backbone's weights."""
        weights = self.config.backbone_weights
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the random-weights warning goes into the summary
            vit = load_backbone(self.config.backbone, weights or RANDOM_WEIGHTS)
        source = vit.weights_source
        kwargs = {}
        if source.startswith("backbone:"):
            from ...engine.backbones import read_backbone_info

            kwargs = read_backbone_info(source[len("backbone:") :]).model_kwargs()
            described = f"in-domain backbone folder {source[len('backbone:') :]} (wsseg pretrain)"
        elif source.startswith("file:"):
            described = f"weights file {source[len('file:') :]}"
        else:
            described = "random initialisation (no pretrained weights given)"
            self.training_summary.setdefault("warnings", []).append(
                f"cpews backbone '{vit.name}' starts from random weights; give --backbone-weights "
                "a wsseg pretrain folder or a weights file for pretrained features"
            )
        self.backbone_info = {
            "arch": vit.name,
            "model_kwargs": kwargs,
            "mean": list(vit.mean),
            "std": list(vit.std),
            "source": described,
        }
        return vit.model.state_dict()

    # -------------------------------------------------------------- prediction
    def _tile_probabilities(self, net: CPEWSNet, tiles: torch.Tensor) -> torch.Tensor:
        return multiscale_probabilities(net, tiles, tuple(self.config.test_scales))

    # ------------------------------------------------------------- persistence
    def _state_dict(self) -> dict:
        return {"fit": self.fit_info, "backbone": self.backbone_info}

    def _load_state_dict(self, state: dict) -> None:
        self.fit_info = state_mapping(state, "fit")
        self.backbone_info = _checked_backbone_info(state_mapping(state, "backbone"))


def _check_usable(annotations: Annotations, n_classes: int) -> None:
    if n_classes < 2:
        raise WssegError(f"cpews needs at least 2 classes, got {n_classes}; add a class")
    has_masks = annotations.masks is not None and bool(np.any(annotations.masks))
    if not (
        len(annotations.region_tags)
        or len(annotations.tags)
        or len(annotations.boxes)
        or len(annotations.points)
        or has_masks
    ):
        raise WssegError(
            "cpews learns from region tags, slice tags, boxes, points or masks; sizes alone "
            "are not used: add region tags (tags.csv with y0,x0,y1,x1), boxes or points"
        )


def _check_superclasses(superclasses: tuple[int, ...], classes) -> None:
    if superclasses and len(superclasses) != len(classes):
        raise WssegError(
            f"cpews superclasses gives {len(superclasses)} id(s) for {len(classes)} classes "
            f"({', '.join(c.name for c in classes)[:200]}); give one superclass id per class, "
            f"e.g. {','.join(['0'] * len(classes))}, or none"
        )


def _sibling_matrix(superclasses: tuple[int, ...]) -> torch.Tensor | None:
    """``(C, C)`` bool: distinct classes of one superclass; None without superclasses."""
    if not superclasses:
        return None
    ids = torch.tensor(superclasses)
    return (ids[:, None] == ids[None, :]) & ~torch.eye(len(ids), dtype=torch.bool)


def _checked_backbone_info(info: dict) -> dict:
    """The recorded backbone description, checked (a model folder is untrusted input)."""
    arch, kwargs = info.get("arch"), info.get("model_kwargs", {})
    mean, std = info.get("mean"), info.get("std")
    ok = (
        isinstance(arch, str)
        and 0 < len(arch) <= 100
        and isinstance(kwargs, dict)
        and all(
            k in _MODEL_KWARGS and isinstance(v, int) and 0 < v <= 4096 for k, v in kwargs.items()
        )
        and all(
            isinstance(v, list)
            and 0 < len(v) <= 4
            and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v)
            for v in (mean, std)
        )
        and all(x > 0 for x in std)
    )
    if not ok:
        raise ModelError(
            "cpews model: the recorded backbone (arch, model_kwargs, mean, std) is not "
            "what training writes; retrain the model"
        )
    return {
        "arch": arch,
        "model_kwargs": kwargs,
        "mean": mean,
        "std": std,
        "source": str(info.get("source", ""))[:300],
    }


class _CPEWSTrainStep:
    """One step: tagged images through Eq. 13 and the head, point crops through the head."""

    def __init__(
        self,
        method: CPEWSMethod,
        image: Image,
        annotations: Annotations,
        rng: np.random.Generator,
        device: torch.device,
    ) -> None:
        cfg = method.config
        self.cfg, self.net, self.device, self.rng = cfg, method.net, device, rng
        self.n_classes = len(method.classes)
        self.store = SliceStore(image, method.normalization)
        self.images = _training_images(annotations, image.shape)
        self.n_images = len(self.images.boxes)
        self.size = cfg.region_size
        self.pools = PrototypePools(
            self.n_classes,
            int(self.net.vit.embed_dim),
            cfg.pool_size,
            cfg.prototypes,
            cfg.kmeans_iters,
        )
        self.siblings = _sibling_matrix(tuple(cfg.superclasses))
        self.index = AnnotationIndex(annotations, image.shape)
        labelled = Annotations(
            annotations.classes,
            points=annotations.points,
            masks=annotations.masks,
            boxes=_exhaustively_boxed(annotations),
            tags=annotations.exhaustive_boxes,  # a class exhaustively boxed nowhere in its slice
        )
        anchors = (
            annotation_anchors(labelled, image.shape, rng) if not labelled.is_empty() else None
        )
        self.sampler = (
            None
            if anchors is None or not len(anchors)
            else CropSampler(image.shape, anchors, self.size, rng)
        )

    def __call__(self, step: int, fraction: float) -> dict:
        losses: dict = {}
        total = torch.zeros((), device=self.device)
        if self.n_images:
            losses |= self._image_losses()
            seg = losses["seg_tags"] + losses["seg_boxes"]
            total = total + losses["cpews"] + self.cfg.seg_weight * seg
        if self.sampler is not None:
            losses |= self._crop_losses()
            seg = losses["seg_points"] + losses["seg_excluded"]
            total = total + self.cfg.seg_weight * seg
        losses["loss"] = total
        return losses

    # ---------------------------------------------------------------- tagged images
    def _image_losses(self) -> dict:
        cfg, net = self.cfg, self.net
        x, valid_px, (y, possible, boxed) = self._image_batch()
        known = (y > 0.5) | ~possible
        f_m, f_h = net.features(x)
        valid = _token_validity(valid_px, net.patch, f_h.shape[2:])
        cls_m, _ = classification_loss(f_m, valid, net.classifier_m, y, known)
        cls_h, logits_h = classification_loss(f_h, valid, net.classifier_h, y, known)
        cam_m = class_activation_maps(f_m, net.classifier_m)
        cam_h = class_activation_maps(f_h, net.classifier_h)
        competing = possible.float()  # unknown classes (a box's others) compete as well
        ism = ism_loss(
            f_h, ism_pseudo_labels(cam_m.detach(), valid, competing, cfg.alpha, cfg.beta)
        )
        anchors = anchor_features(f_h, cam_h, valid)
        prototypes = [p.to(self.device) for p in self.pools.prototypes()]
        pdl = pdl_loss(anchors, y, *prototypes, cfg.temperature)
        if self.siblings is not None:  # Eq. 12: L_SSL without negatives of a sibling's images
            negatives = self.pools.negative_prototypes(without_siblings=True)
            prototypes[2:] = [p.to(self.device) for p in negatives]
        ssl = ssl_loss(f_h, cam_h, valid, y, *prototypes)
        self.pools.update(
            anchors, y, torch.sigmoid(logits_h), absent=~possible, siblings=self.siblings
        )
        cpews = cls_m + cls_h + cfg.lambda_ism * ism + cfg.lambda_pdl * pdl + cfg.lambda_ssl * ssl
        seg = net.segment(x, f_h)
        seg_tags = exclusion_loss(seg, possible[:, :, None, None], valid_px) + _pseudo_label_loss(
            seg,
            ism_pseudo_labels(cam_h.detach(), valid, competing, cfg.alpha, cfg.beta),
            valid_px,
            net.patch,
        )
        return {
            "cls_m": cls_m,
            "cls_h": cls_h,
            "ism": ism,
            "pdl": pdl,
            "ssl": ssl,
            "cpews": cpews,
            "seg_tags": seg_tags,
            "seg_boxes": box_mil_loss(seg, valid_px, boxed),
        }

    def _image_batch(self):
        """Pixels ``(B, C, S, S)``, region pixels ``(B, S, S)`` and the labels ``(y, possible,
        boxed)`` (each ``(B, K)``) of ``batch_size`` random training images."""
        images = self.images
        picks = self.rng.integers(0, self.n_images, self.cfg.batch_size)
        pixels, valid = zip(*(self._read_image(images.boxes[i]) for i in picks))
        labels = (
            torch.from_numpy(images.present[picks].astype(np.float32)).to(self.device),
            torch.from_numpy(images.possible[picks]).to(self.device),
            torch.from_numpy(images.boxed[picks]).to(self.device),
        )
        return torch.stack(pixels).to(self.device), torch.stack(valid).to(self.device), labels

    def _read_image(self, box: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """A ``size``-square window holding the region, and the region's pixels in it.

        The window shows the region's surroundings too (the ViT attends to them, as it does when
        predicting whole tiles) but only the region's pixels count in the losses. The region
        starts on the patch grid at a random place in the window. A region larger than the
        window is shrunk to fit it, without surroundings. Random flips.
        """
        z, y0, x0, y1, x1 = (int(v) for v in box)
        height, width = y1 - y0 + 1, x1 - x0 + 1
        if max(height, width) > self.size:
            pixels, valid = self._shrunk(z, y0, x0, y1, x1)
        else:
            _, slice_height, slice_width = self.store.image.shape
            origin_y = _clamp(y0 - self._offset(height), slice_height - self.size)
            origin_x = _clamp(x0 - self._offset(width), slice_width - self.size)
            top, left = y0 - origin_y, x0 - origin_x
            pixels, _ = self.store.crop(Crop(z, origin_y, origin_x, self.size))
            pixels = torch.from_numpy(pixels)
            valid = torch.zeros(self.size, self.size, dtype=torch.bool)
            valid[top : top + height, left : left + width] = True
        for axis in (-1, -2):
            if self.rng.random() < 0.5:
                pixels, valid = pixels.flip(axis), valid.flip(axis)
        return pixels, valid

    def _offset(self, length: int) -> int:
        """Where a region of ``length`` pixels starts in the window: a random patch boundary."""
        patch = self.net.patch
        return patch * int(self.rng.integers(0, (self.size - length) // patch + 1))

    def _shrunk(self, z: int, y0: int, x0: int, y1: int, x1: int):
        region = torch.from_numpy(
            np.ascontiguousarray(self.store.slice(z)[:, y0 : y1 + 1, x0 : x1 + 1])
        )
        scale = self.size / max(region.shape[1:])
        shape = [max(1, int(s * scale)) for s in region.shape[1:]]
        region = F.interpolate(region[None], size=shape, mode="area")[0]
        pixels = torch.zeros(region.shape[0], self.size, self.size)
        valid = torch.zeros(self.size, self.size, dtype=torch.bool)
        pixels[:, : region.shape[1], : region.shape[2]] = region
        valid[: region.shape[1], : region.shape[2]] = True
        return pixels, valid

    # ---------------------------------------------------------------- point crops
    def _crop_losses(self) -> dict:
        """Cross-entropy at points and mask pixels (``seg_points``) and the exclusion of the
        classes that slice tags, region tags, sizes of 0 and exhaustive boxes rule out at each
        pixel (``seg_excluded``; :class:`~napari_wsseg.engine.weak_targets.AnnotationIndex`)."""
        crops = self.sampler.sample(self.cfg.batch_size)
        pixels, inside = zip(*(self.store.crop(c) for c in crops))
        targets = [self.index.crop_targets(c) for c in crops]
        labels = torch.from_numpy(np.stack([t.labels for t in targets])).to(self.device)
        allowed = np.stack([t.allowed for t in targets])
        counted = np.stack(inside).astype(bool) & ~allowed.all(axis=1)
        logits = self.net(torch.from_numpy(np.stack(pixels)).to(self.device))
        seg_points = (
            F.cross_entropy(logits, labels, ignore_index=-1)
            if (labels >= 0).any()
            else logits.sum() * 0.0
        )
        excluded = exclusion_loss(
            logits,
            torch.from_numpy(allowed).to(self.device),
            torch.from_numpy(counted).to(self.device),
        )
        return {"seg_points": seg_points, "seg_excluded": excluded}


def _clamp(origin: int, last: int) -> int:
    """A window origin kept inside the slice (at 0 when the slice is smaller than the window)."""
    return max(0, min(origin, last))


@dataclass(frozen=True)
class _TrainingImages:
    """The training "images": rectangles of slices and what is known of their classes.

    Attributes
    ----------
    boxes : (N, 5) int64 array
        Rows ``(z, y0, x0, y1, x1)``, corners inclusive.
    present : (N, K) bool array
        Classes known to occur in the image.
    possible : (N, K) bool array
        Classes that may occur: the present ones and those nothing rules out (a box says only
        that its class is there). A tagged image's possible classes are its present ones.
    boxed : (N, K) bool array
        Classes whose box is the image (each of its rows and columns touches the object).
    """

    boxes: np.ndarray
    present: np.ndarray
    possible: np.ndarray
    boxed: np.ndarray


def _training_images(annotations: Annotations, shape) -> _TrainingImages:
    """The tagged regions, the slices with slice tags (the whole slice) and the boxes."""
    regions = tag_regions(annotations)
    tagged, allowed = tag_matrix(annotations, int(shape[0]))
    zs = np.flatnonzero(tagged)
    whole = np.stack([zs, 0 * zs, 0 * zs, 0 * zs + shape[1] - 1, 0 * zs + shape[2] - 1], axis=1)
    tag_boxes = np.concatenate([regions.boxes, whole.reshape(-1, 5)]).astype(np.int64)
    tag_present = np.concatenate([regions.present, allowed[zs]]).astype(bool)
    box_boxes, box_present, box_possible = _box_images(annotations, allowed)
    return _TrainingImages(
        boxes=np.concatenate([tag_boxes, box_boxes]),
        present=np.concatenate([tag_present, box_present]),
        possible=np.concatenate([tag_present, box_possible]),
        boxed=np.concatenate([np.zeros_like(tag_present), box_present]),
    )


def _box_images(annotations: Annotations, allowed: np.ndarray):
    """``(boxes (R, 5), present (R, K), possible (R, K))`` of the distinct box rectangles.

    A class is ruled out of a box by its slice's tags, or when it is exhaustively boxed in the
    slice and none of its boxes overlaps this one.
    """
    rows = annotations.boxes
    n_classes = annotations.n_classes
    boxes, which = np.unique(rows[:, :5], axis=0, return_inverse=True)
    boxes = boxes.reshape(-1, 5).astype(np.int64)
    present = np.zeros((len(boxes), n_classes), bool)
    present[np.asarray(which).ravel(), rows[:, 5]] = True
    overlap = (
        (boxes[:, None, 0] == rows[None, :, 0])
        & (boxes[:, None, 1] <= rows[None, :, 3])
        & (rows[None, :, 1] <= boxes[:, None, 3])
        & (boxes[:, None, 2] <= rows[None, :, 4])
        & (rows[None, :, 2] <= boxes[:, None, 4])
    )  # (R, NB)
    overlapped = (overlap.astype(np.int64) @ np.eye(n_classes, dtype=np.int64)[rows[:, 5]]) > 0
    exhaustive = np.zeros((len(boxes), n_classes), bool)
    for z, k in annotations.exhaustive_boxes:
        exhaustive[boxes[:, 0] == z, k] = True
    possible = allowed[boxes[:, 0]] & ~(exhaustive & ~overlapped)
    return boxes, present, possible | present


def _exhaustively_boxed(annotations: Annotations) -> np.ndarray:
    """The boxes ``(N, 6)`` of the (slice, class) pairs that are exhaustively boxed."""
    rows, pairs = annotations.boxes, annotations.exhaustive_boxes
    keep = (rows[:, None, 0] == pairs[None, :, 0]) & (rows[:, None, 5] == pairs[None, :, 1])
    return rows[keep.any(axis=1)]


def _token_validity(valid_px: torch.Tensor, patch: int, grid) -> torch.Tensor:
    """``(B, h, w)`` bool: tokens whose patch lies at least half inside the image; for an image
    smaller than that (a small box), the tokens it touches."""
    padded = F.pad(
        valid_px.float()[:, None],
        (0, grid[1] * patch - valid_px.shape[2], 0, grid[0] * patch - valid_px.shape[1]),
    )
    share = F.avg_pool2d(padded, patch)[:, 0]
    valid = share >= 0.5
    tiny = ~valid.flatten(1).any(dim=1)
    valid[tiny] = share[tiny] > 0
    return valid


def _pseudo_label_loss(logits, token_labels, valid_px, patch: int) -> torch.Tensor:
    """Cross-entropy against the final CAM's confident token labels, spread to their pixels."""
    pixels = token_labels.repeat_interleave(patch, 1).repeat_interleave(patch, 2)
    pixels = pixels[:, : logits.shape[2], : logits.shape[3]].masked_fill(~valid_px, -1)
    if not (pixels >= 0).any():
        return logits.sum() * 0.0
    return F.cross_entropy(logits, pixels, ignore_index=-1)
