"""MEWS: frozen ViT features + one projection head per class, trained from a few clicks. No Qt.

Apostolidis, Mygdalis, Tzimas & Pitas, "MEWS: Semantic image segmentation with multiclass extreme
weak supervision", Neurocomputing 680 (2026) 133290. See ``docs/methods/mews.md``.

Training (:meth:`MEWSMethod.fit`):

1. the frozen backbone (:mod:`napari_wsseg.engine.vit`) computes the patch features of every
   annotated slice once (cached in memory and optionally on disk, :mod:`.cache`);
2. each clicked point (and each patch under partial-mask pixels) gives a prototype: the backbone
   feature of the patch under it;
3. the slices' patch grids are cut into crops of ``crop_patches`` x ``crop_patches`` patches
   (20 x 20 = 400 patches, the paper's 320 px input at patch 16); the per-patch GMM thresholds of
   ``L_corr`` only depend on frozen features and are fitted once per crop, all patches batched;
4. C heads are trained with Adam on ``L_corr + L_proto + L_triplet`` over batches of crops.

Prediction: per patch, ``argmax_c cos(W_c x, z̄_pc)``; the cosines divided by ``temperature``
are upsampled bilinearly to pixels and turned into probabilities by a softmax over classes.

Warm start (``fit(..., init=previous)``): the new model shares the previous one's backbone,
feature cache and GMM thresholds and starts its heads from the previous heads, for
``FitOptions.warm_steps`` steps (default :data:`MEWS_WARM_STEPS`, at most ``max_steps``) with a
fresh Adam (its moments are not saved with a model).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...annotations.model import Annotations
from ...engine.devices import resolve_device
from ...engine.results import FitResult
from ...engine.vit import (
    DEFAULT_BACKBONE,
    RANDOM_WEIGHTS,
    FrozenViT,
    TileSpec,
    file_sha256,
    load_backbone,
)
from ...errors import AnnotationError, ModelError, WssegError
from ...io.image import Image
from ...progress import Budget, ProgressEvent, report
from ..base import FitOptions, Method, check_config, state_mapping
from .cache import FeatureCache, confined_cache_dir, slice_key
from .heads import ProjectionHeads
from .losses import (
    correlation_loss,
    gmm_thresholds,
    prototype_class_thresholds,
    prototype_loss,
    triplet_loss,
)

WEIGHTS_FILE = "model.safetensors"
#: Folders (separated like PATH) searched for a backbone weights file that moved with the model.
WEIGHTS_DIR_VARIABLE = "WSSEG_WEIGHTS_DIR"
#: Patches each clicked prototype's GMM (for β_pc) is fitted over, at most.
_MAX_PATCHES_FOR_PROTO_GMM = 8192
#: Crops whose per-patch GMMs are fitted in one batch (bounds memory to ~16 x 400 x 400 x 2 floats).
_GMM_CROPS_PER_BATCH = 16
_PROGRESS_INTERVAL_S = 0.25
#: Head training steps of a warm start (a third of the cold default); a choice, not yet measured.
MEWS_WARM_STEPS = 100


#: Inclusive (low, high) of each numeric MEWS option. The highs are far above any useful value
#: and keep a crafted config.json from asking for huge heads, crops (L_corr is quadratic in a
#: crop's patches) or backbone tiles (attention is quadratic in a tile's patches).
MEWS_BOUNDS = {
    "proj_dim": (1, 4096),
    "lr": (0, 1),
    "batch": (1, 1024),
    "max_steps": (0, 1_000_000),
    "crop_patches": (2, 64),
    "margin": (0, 4),
    "corr_clamp": (-1, 1),
    "corr_patches": (2, 4096),
    "gmm_init": (-1, 1),
    "gmm_max_iter": (1, 1000),
    "temperature": (0, 10),
    "tile_patches": (1, 128),
    "halo_patches": (0, 63),
    "feature_batch": (1, 256),
    "extra_slices": (0, 100_000),
    "max_mask_prototypes": (1, 4096),
    "cache_memory_mb": (0, 1_000_000),
}


@dataclass(frozen=True)
class MEWSConfig:
    """Options of MEWS. Defaults follow the paper where it gives a value.

    Attributes
    ----------
    backbone : str, default "vit_base_patch16_dinov3"
        timm ViT name (DINOv3 ViT-B/16); ``vit_small_patch16_dinov3`` and ``vit_*_patch14_dinov2*``
        also work.
    backbone_weights : str or None, default None
        None: timm's pretrained weights from the Hugging Face cache; a path: a safetensors or torch
        state-dict file; ``"random"``: seeded random weights (tests and timing only; recorded as a
        warning).
    proj_dim : int, default 70
        Output size of each class head (D' in the paper).
    lr : float, default 1e-4
        Adam learning rate.
    batch : int, default 24
        Crops per training step (the paper's 24 images).
    max_steps : int, default 300
        Training steps (0 keeps the randomly initialised heads: prototypes only).
    crop_patches : int, default 20
        Side of a training crop in patches (20 x 16 px = the paper's 320 px input).
    use_corr, use_proto, use_triplet : bool, default True
        Switch each loss term on or off (ablations); at least one must be on.
    margin : float, default 0.25
        Triplet margin m.
    corr_clamp : float, default -0.25
        Lower clamp r of the projected similarities in ``L_corr``.
    corr_patches : int or None, default None
        Patches per crop that enter ``L_corr`` each step (a random subset, as STEGO samples feature
        positions); None uses all of them. ``L_corr`` costs O(N²) per crop and dominates a CPU step,
        so e.g. 128 makes CPU training several times faster.
    gmm_init : (float, float), default (0.04, 0.30)
        Initial means of the per-patch 2-component GMMs.
    gmm_max_iter : int, default 50
        EM iterations at most.
    temperature : float, default 0.05
        Cosine similarities are divided by this before the softmax that gives probabilities.
    tile_patches, halo_patches : int, default 64 and 4
        Slices whose patch grid is larger than ``tile_patches`` per side are computed in tiles with
        ``halo_patches`` of overlapping context (1024 px tiles for patch 16).
    feature_batch : int, default 4
        Tiles per backbone forward pass.
    extra_slices : int, default 0
        Unannotated slices (evenly spaced) added to the crops for the unsupervised losses.
    max_mask_prototypes : int, default 64
        Patches under partial-mask pixels used as prototypes per class (random subset).
    cache_dir : str or None, default None
        Folder of an on-disk feature cache (zarr); None keeps features in memory only.
    cache_memory_mb : float, default 2048
        Size of the in-memory feature cache.
    """

    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    proj_dim: int = 70
    lr: float = 1e-4
    batch: int = 24
    max_steps: int = 300
    crop_patches: int = 20
    use_corr: bool = True
    use_proto: bool = True
    use_triplet: bool = True
    margin: float = 0.25
    corr_clamp: float = -0.25
    corr_patches: int | None = None
    gmm_init: tuple[float, float] = (0.04, 0.30)
    gmm_max_iter: int = 50
    temperature: float = 0.05
    tile_patches: int = 64
    halo_patches: int = 4
    feature_batch: int = 4
    extra_slices: int = 0
    max_mask_prototypes: int = 64
    cache_dir: str | None = None
    cache_memory_mb: float = 2048

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check each option's type and range (:data:`MEWS_BOUNDS`) and the rules between options.

        Called on construction, so a config read from a model's ``config.json`` is checked too
        (where ``cache_dir`` and ``backbone_weights`` are also confined, see
        ``docs/methods/mews.md``).
        """
        check_config(self, "mews", MEWS_BOUNDS)
        for name in ("lr", "temperature", "cache_memory_mb"):
            if not getattr(self, name) > 0:
                raise WssegError(f"mews option {name}={getattr(self, name)} must be > 0")
        if not (self.use_corr or self.use_proto or self.use_triplet):
            raise WssegError(
                "mews options switch off all three losses; keep at least one of use_corr, "
                "use_proto, use_triplet"
            )
        TileSpec(self.tile_patches, self.halo_patches)


class MEWSMethod(Method):
    """MEWS (multiclass extreme weak supervision) on frozen ViT features."""

    name = "mews"
    config_class = MEWSConfig
    main_options = ("backbone", "backbone_weights", "max_steps")

    @property
    def halo(self) -> int:  # type: ignore[override]
        """One feature tile (``tile_patches`` patches) of context in y and x.

        ViT attention mixes a whole tile, so a pixel's features depend on pixels up to a tile
        away. With this halo and :attr:`block_align`, the tiles whose features a block uses are
        the whole slice's tiles, pixel for pixel, so block-wise equals whole-slice prediction.
        With ``halo_patches=0`` one patch more: a tile then ends where the next core starts, and
        the patch after a block (which bilinear upsampling reads) may start a tile.
        """
        extra = 1 if self.config.halo_patches == 0 else 0
        return (self.config.tile_patches + extra) * self.backbone.patch_size

    @property
    def block_align(self) -> tuple[int, int, int]:  # type: ignore[override]
        """The feature tiles' stride (``tile_patches - 2 * halo_patches`` patches) in y and x.

        Context read from a multiple of it cuts the same tiles as the whole slice, except the
        first, which lies in the halo.
        """
        cfg = self.config
        stride = (cfg.tile_patches - 2 * cfg.halo_patches) * self.backbone.patch_size
        return 1, stride, stride

    @property
    def min_block_yx(self) -> int:  # type: ignore[override]
        """Two feature tiles (2048 px by default): blocks that wide recompute little context.

        Each block reads a tile of context on every side. Counted ViT tiles per slice, default
        tiling: 2048 x 2048 slice, 512 px blocks 121, two-tile blocks 9, whole slice 9;
        4096 x 4096 slice, 625, 64 and 25 (``docs/methods/mews.md``).
        """
        return 2 * self.config.tile_patches * self.backbone.patch_size

    def __init__(self, config=None, **options) -> None:
        super().__init__(config, **options)
        self._backbone: FrozenViT | None = None
        self._cache: FeatureCache | None = None
        self._device: torch.device | None = None
        self._heads: ProjectionHeads | None = None
        self._centroids: torch.Tensor | None = None
        self._backbone_state: dict = {}
        self._beta_memo: dict = {}  # per-slice crop thresholds, reused when retraining
        self._folder: Path | None = None  # the model folder this model was loaded from

    # ------------------------------------------------------------ public extras
    @property
    def feature_cache(self) -> FeatureCache | None:
        """The feature cache (None until the backbone is built); ``.stats`` counts hits."""
        return self._cache

    def share_feature_cache(self, other: "MEWSMethod") -> None:
        """Use ``other``'s backbone, feature cache and GMM
        thresholds, e.g. to retrain with changed options.

        Raises
        ------
        ModelError
            If the two models' backbones or tilings differ.
        """
        fields = ("backbone", "backbone_weights", "tile_patches", "halo_patches")
        if any(getattr(self.config, f) != getattr(other.config, f) for f in fields):
            raise ModelError(
                f"cannot share the feature cache of a '{other.config.backbone}' model with a "
                f"'{self.config.backbone}' model: backbone, weights or tiling differ"
            )
        self._backbone, self._cache = other._get_backbone(), other._get_cache()
        self._beta_memo = other._beta_memo  # GMM thresholds are a function of the features too

    @property
    def backbone(self) -> FrozenViT:
        """The frozen backbone, built on first use."""
        return self._get_backbone()

    def set_device(self, device: str = "auto") -> None:
        """Run prediction (and the next training) on
        ``device`` ('auto', 'cpu', 'cuda', 'cuda:N')."""
        self._device = resolve_device(device)
        if self._backbone is not None:
            self._backbone.to(self._device)
        if self._heads is not None:
            self._heads.to(self._device)
            self._centroids = self._centroids.to(self._device)

    # ---------------------------------------------------------------- training
    def _fit(self, image: Image, annotations: Annotations, options: FitOptions) -> FitResult:
        steps = self.config.max_steps
        if self.warm_init is not None:
            self.share_feature_cache(self.warm_init)
            steps = options.warm_steps or min(MEWS_WARM_STEPS, steps)
        budget = Budget(options.time_budget_s, steps, options.cancel)
        self._device = resolve_device(options.device)
        backbone = self._get_backbone()
        backbone.grid_shape(
            image.shape[1:]
        )  # a slice smaller than one patch fails here, before any work
        prototypes = _prototype_pixels(annotations, self.config.max_mask_prototypes, options.seed)
        _check_every_class_clicked(prototypes, annotations)
        _warn_unused_annotations(annotations)
        self.training_summary["warnings"] = [backbone.warning] if backbone.warning else []

        zs = _training_slices(prototypes[:, 0], image.n_slices, self.config.extra_slices)
        slices = [image.slice(z) for z in zs]
        feats = self._training_features(slices, options, budget)
        if feats is None:
            return FitResult(stopped="cancelled", seconds=budget.elapsed)
        p = backbone.patch_size
        index = {z: i for i, z in enumerate(zs)}
        where = [
            torch.as_tensor(v, device=self._device)
            for v in (
                [index[z] for z in prototypes[:, 0]],
                prototypes[:, 1] // p,
                prototypes[:, 2] // p,
            )
        ]
        proto_x = feats[where[0], where[1], where[2]]
        proto_labels = torch.as_tensor(prototypes[:, 3], device=self._device)
        keys = [slice_key(s, self.normalization) for s in slices]
        return self._train(feats, keys, proto_x, proto_labels, options, budget)

    def _train(
        self, feats, keys, proto_x, proto_labels, options: FitOptions, budget: Budget
    ) -> FitResult:
        cfg = self.config
        generator = torch.Generator().manual_seed(int(options.seed))
        origins = _crop_origins(feats.shape[1:3], cfg.crop_patches)
        crops = [(s, y, x) for s in range(len(feats)) for y, x in origins]
        size = (min(cfg.crop_patches, feats.shape[1]), min(cfg.crop_patches, feats.shape[2]))
        max_steps = budget.total_steps
        report(options.progress, ProgressEvent(0, max_steps, "fitting GMM thresholds"))
        betas = self._crop_thresholds(feats, keys, origins, size) if cfg.use_corr else None
        beta_proto = prototype_class_thresholds(
            proto_x,
            proto_labels,
            _sample_patches(feats, generator),
            self.n_classes,
            **self._gmm_options(),
        )
        heads = ProjectionHeads(self.n_classes, feats.shape[-1], cfg.proj_dim, generator).to(
            self._device
        )
        if self.warm_init is not None and self.warm_init._heads is not None:
            heads.load_state_dict(self.warm_init._heads.state_dict())
        optimizer = torch.optim.Adam(heads.parameters(), lr=cfg.lr)
        history: list[dict] = []
        order = torch.empty(0, dtype=torch.long)
        step, last_report, stopped = 0, 0.0, "done"
        while step < max_steps:
            if (reason := budget.stop_reason()) is not None:
                stopped = reason
                break
            if len(order) < min(cfg.batch, len(crops)):
                order = torch.cat([order, torch.randperm(len(crops), generator=generator)])
            batch, order = order[: min(cfg.batch, len(crops))], order[min(cfg.batch, len(crops)) :]
            x = torch.stack([_crop(feats, crops[i], size) for i in batch.tolist()])
            terms = self._loss_terms(
                heads,
                x,
                None if betas is None else betas[batch],
                proto_x,
                proto_labels,
                beta_proto,
                generator,
            )
            loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            history.append(
                {"step": step, "loss": loss.item(), **{k: v.item() for k, v in terms.items()}}
            )
            if time.monotonic() - last_report >= _PROGRESS_INTERVAL_S or step == max_steps:
                last_report = time.monotonic()
                report(
                    options.progress,
                    ProgressEvent(step, max_steps, "training", dict(history[-1]), budget.eta(step)),
                )
        with torch.no_grad():
            self._centroids = heads.centroids(proto_x, proto_labels).detach()
        self._heads = heads.eval().requires_grad_(False)
        self._backbone_state = self._describe_backbone()
        self.training_summary["beta_proto"] = [round(float(b), 4) for b in beta_proto]
        counts = torch.bincount(proto_labels, minlength=self.n_classes)
        self.training_summary["prototypes_per_class"] = counts.tolist()
        return FitResult(stopped=stopped, steps=step, seconds=budget.elapsed, history=history)

    def _loss_terms(self, heads, x, betas, proto_x, proto_labels, beta_proto, generator) -> dict:
        cfg = self.config
        z = heads(x)  # (C, B, N, P)
        terms = {}
        if cfg.use_corr:
            pick = slice(None)
            if cfg.corr_patches is not None and cfg.corr_patches < x.shape[1]:
                pick = torch.randperm(x.shape[1], generator=generator)[: cfg.corr_patches].to(
                    x.device
                )
            terms["l_corr"] = correlation_loss(
                x[:, pick], z[:, :, pick], betas[:, pick], clamp=cfg.corr_clamp
            )
        if cfg.use_proto:
            centroids = heads.centroids(proto_x, proto_labels)
            terms["l_proto"] = prototype_loss(x, z, proto_x, proto_labels, centroids, beta_proto)
        if cfg.use_triplet:
            terms["l_triplet"] = triplet_loss(heads(proto_x), proto_labels, margin=cfg.margin)
        return terms

    def _crop_thresholds(self, feats, keys, origins, size) -> torch.Tensor:
        """Per-patch GMM thresholds β_i of every crop, ``(S * n_origins, N)``, batched over crops.

        They depend only on frozen features, so they are kept per slice for the next training.
        """
        per_slice = []
        for s, key in enumerate(keys):
            memo_key = (
                key,
                tuple(origins),
                size,
                self._gmm_options()["init_means"],
                self.config.gmm_max_iter,
            )
            if memo_key not in self._beta_memo:
                self._beta_memo[memo_key] = self._slice_crop_thresholds(feats[s], origins, size)
            per_slice.append(self._beta_memo[memo_key].to(feats.device))
        return torch.cat(per_slice)

    def _slice_crop_thresholds(self, grid, origins, size) -> torch.Tensor:
        betas = []
        for start in range(0, len(origins), _GMM_CROPS_PER_BATCH):
            chunk = origins[start : start + _GMM_CROPS_PER_BATCH]
            x = torch.stack([_crop(grid[None], (0, y, x), size) for y, x in chunk])
            sims = x @ x.transpose(1, 2)  # (b, N, N)
            rows = gmm_thresholds(sims.reshape(-1, sims.shape[-1]), **self._gmm_options())
            betas.append(rows.reshape(len(x), -1))
        return torch.cat(betas)

    def _gmm_options(self) -> dict:
        return {"init_means": tuple(self.config.gmm_init), "max_iter": self.config.gmm_max_iter}

    def _training_features(self, slices: list[np.ndarray], options: FitOptions, budget: Budget):
        """L2-normalised features ``(S, Hp, Wp, D)`` float32 of raw slices; None when cancelled."""
        total = len(slices)

        def on_chunk(done: int) -> bool:
            report(
                options.progress,
                ProgressEvent(0, self.config.max_steps, f"features {done}/{total} slices"),
            )
            return budget.stop_reason() == "cancelled"

        try:
            arrays = self._features(slices, persist=True, on_chunk=on_chunk)
        except _Cancelled:
            if self._heads is None:
                self.classes = []  # nothing trained: stay untrained instead of half-set-up
            return None
        return _normalized(arrays, self._device)

    # -------------------------------------------------------------- prediction
    def predict_proba_slice(self, slice_yxc: np.ndarray) -> np.ndarray:
        """Class probabilities ``(C, Y, X)`` float32 of one raw ``(Y, X, C)`` slice."""
        if self._heads is None:
            raise ModelError("mews model is not trained; call fit() or load a model folder")
        slice_yxc = np.asarray(slice_yxc)
        if slice_yxc.ndim == 2:
            slice_yxc = slice_yxc[..., None]
        x = _normalized(self._features([slice_yxc], persist=False), self._get_device())[0]
        with torch.no_grad():
            logits = (
                self._heads.similarities(x, self._centroids) / self.config.temperature
            )  # (C, Hp, Wp)
            p = self.backbone.patch_size
            up = F.interpolate(logits[None], scale_factor=p, mode="bilinear", align_corners=False)[
                0
            ]
            probs = torch.softmax(up[:, : slice_yxc.shape[0], : slice_yxc.shape[1]], dim=0)
        return probs.float().cpu().numpy()

    # ---------------------------------------------------------------- features
    def _features(
        self, slices: list[np.ndarray], *, persist: bool, on_chunk=None
    ) -> list[np.ndarray]:
        """Cached backbone features ``(Hp, Wp, D)`` float16 of raw ``(Y, X, C)`` slices."""
        backbone = self._get_backbone()
        cache = self._get_cache()
        keys = [slice_key(s, self.normalization) for s in slices]

        def compute(missing: list[int]) -> list[np.ndarray]:
            out = []
            step = self.config.feature_batch
            for start in range(0, len(missing), step):
                group = np.stack(
                    [self.normalization.apply(slices[i]) for i in missing[start : start + step]]
                )
                out.extend(backbone.features(group))
                if on_chunk is not None and on_chunk(start + len(group)):
                    raise _Cancelled
            return out

        return cache.get_many(keys, compute, persist=persist)

    def _get_device(self) -> torch.device:
        if self._device is None:
            self._device = resolve_device("auto")
        return self._device

    def _get_backbone(self) -> FrozenViT:
        if self._backbone is None:
            self._backbone = load_backbone(
                self.config.backbone,
                self._weights_spec(),
                device=self._get_device(),
                tiles=TileSpec(self.config.tile_patches, self.config.halo_patches),
                batch_size=self.config.feature_batch,
                expected_file_sha256=self._backbone_state.get("weights_file_sha256"),
            )
        elif self._backbone.device != self._get_device():
            self._backbone.to(self._get_device())
        return self._backbone

    def _weights_spec(self) -> str | None:
        """Weights to build the backbone from: the trained model's recorded source, else the config.

        A loaded model (untrusted input) only uses its recorded source, never the config's
        ``backbone_weights`` path.
        """
        source = self._backbone_state.get("weights_source")
        if source is None and self._folder is None:
            return self.config.backbone_weights
        if source == RANDOM_WEIGHTS:
            return RANDOM_WEIGHTS
        if isinstance(source, str) and source.startswith("timm:"):
            return None
        if isinstance(source, str) and source.startswith("file:"):
            return str(self._find_weights_file(Path(source[len("file:") :])))
        if isinstance(source, str) and source.startswith("backbone:"):  # a `wsseg pretrain` folder
            from ...engine.backbones import locate_backbone_folder

            search = [self._folder] if self._folder is not None else []
            listed = os.environ.get(WEIGHTS_DIR_VARIABLE, "").split(os.pathsep)
            search += [Path(f).expanduser() for f in listed if f]
            expected = self._backbone_state.get("weights_file_sha256")
            return str(locate_backbone_folder(Path(source[len("backbone:") :]), search, expected))
        raise ModelError(
            f"mews model folder {self._folder}: backbone weights source {source!r:.80} is not one "
            "napari-wsseg records (timm:..., file:... or random); retrain the model"
        )

    def _find_weights_file(self, recorded: Path) -> Path:
        """The backbone weights file the model was trained with, where it is now.

        The recorded path first; if the model folder moved to another machine, a file of the same
        name in the model folder or in a folder of ``$WSSEG_WEIGHTS_DIR`` (separated like
        ``PATH``). A model records the sha256 of the file's bytes, and only a file with those bytes
        is read, so a crafted model cannot make us parse an arbitrary file. Models without that
        record (older releases) may only name ``.safetensors`` files, whose parser runs no code;
        their weights hash is checked after loading.
        """
        expected = self._backbone_state.get("weights_file_sha256")
        folders = [self._folder] if self._folder is not None else []
        folders += [
            Path(f).expanduser()
            for f in os.environ.get(WEIGHTS_DIR_VARIABLE, "").split(os.pathsep)
            if f
        ]
        candidates = [recorded] + [folder / recorded.name for folder in folders]
        found = [c for c in candidates if c.is_file()]
        if expected is None:
            found = [c for c in found if c.suffix == ".safetensors"]
        for candidate in found:
            if expected is None or file_sha256(candidate) == expected:
                return candidate
        if found:
            raise ModelError(
                f"backbone weights file {found[0]} has another file weights hash than the "
                f"{str(expected)[:12]} the mews model was trained with; copy that file into the "
                f"model folder or {WEIGHTS_DIR_VARIABLE}, or retrain"
            )
        raise ModelError(
            f"backbone weights file {recorded} (recorded in the mews model) does not exist; copy "
            f"{recorded.name} into the model folder or set {WEIGHTS_DIR_VARIABLE} to the folder "
            "that holds it"
        )

    def _get_cache(self) -> FeatureCache:
        if self._cache is None:
            directory = self.config.cache_dir
            if directory is not None and self._folder is not None:
                directory = confined_cache_dir(directory, self._folder)
            self._cache = FeatureCache(
                self._get_backbone().signature(),
                directory,
                max_memory_mb=self.config.cache_memory_mb,
            )
        return self._cache

    def _describe_backbone(self) -> dict:
        b = self._get_backbone()
        return {
            "name": b.name,
            "weights_source": b.weights_source,
            "weights_hash": b.weights_hash,
            "weights_file_sha256": b.weights_file_sha256,
            "patch_size": b.patch_size,
            "embed_dim": b.embed_dim,
        }

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    # ------------------------------------------------------------- persistence
    def _state_dict(self) -> dict:
        return {"backbone": dict(self._backbone_state)}

    def _load_state_dict(self, state: dict) -> None:
        backbone = state_mapping(state, "backbone")
        for key in ("name", "weights_source", "weights_hash", "weights_file_sha256"):
            if (
                not isinstance(backbone.get(key, ""), (str, type(None)))
                or len(backbone.get(key) or "") > 4096
            ):
                raise ModelError(f"state backbone {key} {backbone[key]!r:.60} is not a text")
        self._backbone_state = backbone

    def _save_weights(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {"heads": self._heads.weight.detach(), "centroids": self._centroids}
        save_file(
            {k: v.float().cpu().contiguous() for k, v in tensors.items()},
            str(folder / WEIGHTS_FILE),
            metadata={"method": self.name},
        )

    def _load_weights(self, folder: Path) -> None:
        self._folder = Path(folder)
        path = folder / WEIGHTS_FILE
        if not path.is_file():
            raise ModelError(f"model folder {folder}: no {WEIGHTS_FILE}; retrain the mews model")
        heads, centroids = self._read_heads(path)
        backbone = self._check_backbone(folder)
        if heads.shape[1] != backbone.embed_dim:
            raise ModelError(
                f"model file {path}: heads take {heads.shape[1]} features but backbone "
                f"'{backbone.name}' gives {backbone.embed_dim}; retrain the mews model"
            )
        module = ProjectionHeads(*heads.shape)
        module.weight.data.copy_(heads)
        device = self._get_device()
        self._heads = module.to(device).eval().requires_grad_(False)
        self._centroids = centroids.to(device)

    def _read_heads(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        """The heads ``(C, D, P)`` and centroids ``(C, P)`` of a weights file, shapes checked
        against config.json (from the header, before any tensor is read)."""
        from safetensors import SafetensorError, safe_open

        n_classes, proj_dim = len(self.classes), self.config.proj_dim
        try:
            with safe_open(str(path), framework="pt") as f:
                shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
                ok = (
                    set(shapes) == {"heads", "centroids"}
                    and len(shapes["heads"]) == 3
                    and shapes["heads"][0::2] == (n_classes, proj_dim)
                    and shapes["centroids"] == (n_classes, proj_dim)
                )
                tensors = {key: f.get_tensor(key).float() for key in shapes} if ok else {}
        except (SafetensorError, OSError) as exc:
            reason = " ".join(str(exc).split())[:120]
            raise ModelError(
                f"model file {path} is not a valid safetensors file ({reason}); retrain"
            ) from None
        if not ok:
            raise ModelError(
                f"model file {path} holds {_short_shapes(shapes)} but "
                f"config.json implies heads ({n_classes}, D, {proj_dim}) and "
                f"centroids ({n_classes}, {proj_dim}); retrain the mews model"
            )
        if not all(torch.isfinite(t).all() for t in tensors.values()):
            raise ModelError(
                f"model file {path} holds NaN or infinite weights; retrain the mews model"
            )
        return tensors["heads"], tensors["centroids"]

    def _check_backbone(self, folder: Path) -> FrozenViT:
        expected = self._backbone_state.get("weights_hash")
        backbone = self._get_backbone()
        if expected and backbone.weights_hash != expected:
            raise ModelError(
                f"model folder {folder}: backbone '{backbone.name}' from "
                f"{backbone.weights_source} has weights hash {backbone.weights_hash[:12]} "
                f"but the model was trained with {expected[:12]}; provide the same backbone "
                "weights (Hugging Face cache or --backbone-weights file) or retrain"
            )
        return backbone


class _Cancelled(Exception):
    """Raised inside feature computation when the user
    cancels; caught in :meth:`MEWSMethod._fit`."""


# ------------------------------------------------------------------- helpers
def _prototype_pixels(annotations: Annotations, max_mask_per_class: int, seed: int) -> np.ndarray:
    """Rows ``(z, y, x, class)``: every point, plus up
    to ``max_mask_per_class`` mask pixels per class."""
    rows = [annotations.points]
    if annotations.masks is not None and np.any(annotations.masks):
        rng = np.random.default_rng(seed)
        z, y, x = np.nonzero(annotations.masks)
        cls = annotations.masks[z, y, x].astype(np.int64) - 1
        for c in np.unique(cls):
            pick = np.flatnonzero(cls == c)
            pick = rng.choice(pick, min(len(pick), max_mask_per_class), replace=False)
            rows.append(np.stack([z[pick], y[pick], x[pick], cls[pick]], axis=1))
    return np.concatenate(rows).astype(np.int64)


def _check_every_class_clicked(prototypes: np.ndarray, annotations: Annotations) -> None:
    counts = np.bincount(prototypes[:, 3], minlength=annotations.n_classes)
    missing = [k for k in range(annotations.n_classes) if counts[k] == 0]
    if missing:
        names = ", ".join(f"{k} '{annotations.classes[k].name}'" for k in missing)
        raise AnnotationError(
            f"class {names} has no clicks: MEWS builds each class's prototype from its "
            "points (or mask pixels); add at least one point per class or remove the class"
        )


def _warn_unused_annotations(annotations: Annotations) -> None:
    kinds = ("boxes", "tags", "sizes", "region_tags")
    unused = {kind: len(getattr(annotations, kind)) for kind in kinds}
    unused = {k: n for k, n in unused.items() if n}
    if unused:
        warnings.warn(
            "mews trains from points and mask pixels only; ignoring "
            + ", ".join(f"{n} {k}" for k, n in unused.items()),
            stacklevel=4,
        )


def _training_slices(annotated_z: np.ndarray, n_slices: int, extra: int) -> list[int]:
    """Annotated slices plus ``extra`` evenly spaced unannotated ones, sorted."""
    annotated = sorted(set(int(z) for z in annotated_z))
    others = np.setdiff1d(np.arange(n_slices), annotated)
    if extra and len(others):
        picks = others[
            np.unique(np.linspace(0, len(others) - 1, min(extra, len(others))).round().astype(int))
        ]
        annotated = sorted(set(annotated) | set(int(z) for z in picks))
    return annotated


def _normalized(arrays: list[np.ndarray], device) -> torch.Tensor:
    """Stack float16 feature grids into an L2-normalised
    float32 tensor ``(S, Hp, Wp, D)`` on ``device``."""
    stacked = torch.from_numpy(np.stack(arrays)).to(device=device, dtype=torch.float32)
    return F.normalize(stacked, dim=-1)


def _crop_origins(grid: tuple[int, int], crop: int) -> list[tuple[int, int]]:
    """Top-left patch of each crop: tiles of ``crop``
    patches, the last ones flush with the far edges."""

    def starts(n: int) -> list[int]:
        size = min(crop, n)
        return sorted(set(list(range(0, n - size + 1, size)) + [n - size]))

    return [(y, x) for y in starts(grid[0]) for x in starts(grid[1])]


def _crop(feats: torch.Tensor, crop: tuple[int, int, int], size: tuple[int, int]) -> torch.Tensor:
    s, y, x = crop
    return feats[s, y : y + size[0], x : x + size[1]].reshape(-1, feats.shape[-1])


def _sample_patches(feats: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Up to ``_MAX_PATCHES_FOR_PROTO_GMM`` random
    patch features ``(M, D)`` of the training slices."""
    flat = feats.reshape(-1, feats.shape[-1])
    if len(flat) <= _MAX_PATCHES_FOR_PROTO_GMM:
        return flat
    pick = torch.randperm(len(flat), generator=generator)[:_MAX_PATCHES_FOR_PROTO_GMM]
    return flat[pick.to(flat.device)]


def _short_shapes(shapes: dict) -> str:
    """Up to four ``name: shape`` entries of a weights file, for an error message."""
    text = ", ".join(f"{k[:40]}: {v}" for k, v in list(shapes.items())[:4])
    return "{" + text + (", ..." if len(shapes) > 4 else "") + "}"
