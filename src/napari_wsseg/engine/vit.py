"""Frozen Vision Transformer patch features (DINOv3, DINOv2 or any timm ViT). Imports no Qt.

A shared piece for prototype methods (MEWS), not a method itself. :func:`load_backbone` builds a
timm ViT by name with its weights from one of three sources and returns a :class:`FrozenViT`,
which turns normalised slices into a ``(Hp, Wp, D)`` grid of patch features:

* ``weights=None``: timm's pretrained weights through the Hugging Face cache (works offline once
  cached);
* ``weights="path/to/file"``: a local ``.safetensors`` file or a plain torch state dict read with
  ``torch.load(weights_only=True)``;
* ``weights="random"``: the architecture's initialisation with a fixed seed, for tests and timing
  only. It is reproducible (so a model folder can re-create and verify it) and carries a warning;
* ``weights="path/to/backbone_folder"``: a folder written by ``wsseg pretrain``
  (:mod:`napari_wsseg.engine.backbones`); its architecture, patch size, input channels and
  normalisation come from the folder, and every file is checked before use.

Slices are padded (reflect) at the bottom/right to a multiple of the patch size, so the patch grid
is ``ceil(Y / p) x ceil(X / p)`` at the image's own resolution; nothing is resized, because EM
structures are a few pixels wide. Grids larger than ``tile_patches`` per side are covered by
patch-aligned tiles that overlap by ``halo_patches`` patches of context on each inner side; each
tile keeps only its core, so the stitched grid has exactly one feature per patch.

torch and timm are imported inside the functions that need them.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, WssegError

DEFAULT_BACKBONE = "vit_base_patch16_dinov3"
RANDOM_WEIGHTS = "random"
#: Seed of the "random" weights, so that a model folder can re-create exactly the same backbone.
RANDOM_WEIGHTS_SEED = 0
#: Classifier parameters a weights file may carry; unless the model has them, they are ignored.
_IGNORED_PREFIXES = ("head.", "fc_norm.", "head_drop.")

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileSpec:
    """How a patch grid is split into backbone passes: tiles of ``tile_patches`` patches per side
    with ``halo_patches`` patches of context on each inner side."""

    tile_patches: int = 64
    halo_patches: int = 4

    def __post_init__(self) -> None:
        if (
            self.tile_patches < 1
            or self.halo_patches < 0
            or 2 * self.halo_patches >= self.tile_patches
        ):
            raise WssegError(
                f"tile of {self.tile_patches} patches with a halo of {self.halo_patches} patches "
                "leaves no core; use tile_patches > 2 * halo_patches (defaults 64 and 4)"
            )


class FrozenViT:
    """A frozen timm ViT in eval mode that computes patch-feature grids of normalised slices.

    Build it with :func:`load_backbone`. Attributes ``name``, ``weights_source`` (how the weights
    were obtained), ``weights_hash`` (sha256 of the state dict), ``weights_file_sha256`` (sha256 of
    the weights file's bytes, None unless read from a file) and ``warning`` (set for random
    weights) identify the backbone in model folders and feature caches.
    """

    def __init__(
        self,
        model,
        *,
        name: str,
        weights_source: str,
        weights_hash: str,
        warning: str | None = None,
        tiles: TileSpec = TileSpec(),
        batch_size: int = 4,
        device: str | Any = "cpu",
        weights_file_sha256: str | None = None,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        import torch

        self.model = model.eval().requires_grad_(False)
        self.name = name
        self.weights_source = weights_source
        self.weights_hash = weights_hash
        self.weights_file_sha256 = weights_file_sha256
        self.warning = warning
        self.tiles = tiles
        self.batch_size = max(1, int(batch_size))
        cfg = getattr(model, "pretrained_cfg", None) or {}
        self.mean = tuple(float(v) for v in (mean or cfg.get("mean", (0.485, 0.456, 0.406))))
        self.std = tuple(float(v) for v in (std or cfg.get("std", (0.229, 0.224, 0.225))))
        self.device = torch.device("cpu")
        self.to(device)

    @property
    def patch_size(self) -> int:
        return int(self.model.patch_embed.patch_size[0])

    @property
    def in_chans(self) -> int:
        """Input channels of the patch embedding (3 for ImageNet models, 1 for grey backbones)."""
        return int(getattr(self.model.patch_embed.proj, "in_channels", 3))

    @property
    def embed_dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def num_prefix_tokens(self) -> int:
        """Class and register tokens in front of the patch tokens (dropped from the features)."""
        return int(getattr(self.model, "num_prefix_tokens", 1))

    def to(self, device) -> "FrozenViT":
        """Move the backbone to ``device`` (a ``torch.device`` or its name)."""
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def signature(self) -> dict:
        """What the features depend on, for provenance checks of feature caches."""
        return {
            "backbone": self.name,
            "weights_hash": self.weights_hash,
            "patch_size": self.patch_size,
            "tile_patches": self.tiles.tile_patches,
            "halo_patches": self.tiles.halo_patches,
            "mean": list(self.mean),
            "std": list(self.std),
        }

    def grid_shape(self, shape_yx: tuple[int, int]) -> tuple[int, int]:
        """Patch grid ``(Hp, Wp)`` of a slice of shape
        ``(Y, X)``; raises if smaller than a patch."""
        y, x = (int(s) for s in shape_yx)
        p = self.patch_size
        if y < p or x < p:
            raise WssegError(
                f"slice of shape ({y}, {x}) is smaller than one {p}x{p} "
                f"patch of backbone '{self.name}'; use images of at "
                f"least {p}x{p} pixels or a backbone with smaller patches"
            )
        return -(-y // p), -(-x // p)

    def features(self, slices: np.ndarray) -> np.ndarray:
        """Patch features of equally-shaped normalised slices.

        Parameters
        ----------
        slices : (B, Y, X, C) float array
            Slices normalised to about [0, 1] (values are clipped to it). As many channels as the
            backbone takes (:attr:`in_chans`: 3 for ImageNet models, 1 for ``wsseg pretrain``
            backbones) are used as they are, one channel is repeated to that count, any other
            count is averaged to grey first (with a warning).

        Returns
        -------
        (B, Hp, Wp, D) float16 ndarray
            One feature per ``patch_size`` patch, prefix/register tokens dropped.
        """
        import torch

        slices = np.asarray(slices)
        if slices.ndim != 4:
            raise WssegError(f"expected (B, Y, X, C) slices, got shape {slices.shape}")
        hp, wp = self.grid_shape(slices.shape[1:3])
        pixels = self._to_backbone_input(slices)  # (B, 3, Hp*p, Wp*p) on CPU
        rows, cols = _tile_boxes(hp, self.tiles), _tile_boxes(wp, self.tiles)
        jobs = [(b, ty, tx) for b in range(len(slices)) for ty in rows for tx in cols]
        out = np.empty((len(slices), hp, wp, self.embed_dim), dtype=np.float16)
        for start in range(0, len(jobs), self.batch_size):
            chunk = jobs[start : start + self.batch_size]
            batch = torch.stack([self._crop_pixels(pixels, b, ty, tx) for b, ty, tx in chunk])
            grids = self._forward(batch)
            for grid, (b, ty, tx) in zip(grids, chunk):
                (y0, y1, cy0), (x0, x1, cx0) = ty[2:], tx[2:]
                core = grid[cy0 : cy0 + y1 - y0, cx0 : cx0 + x1 - x0]
                out[b, y0:y1, x0:x1] = core
        return out

    # ------------------------------------------------------------------ internals
    def _to_backbone_input(self, slices: np.ndarray):
        import torch
        import torch.nn.functional as F

        channels, wanted = slices.shape[-1], self.in_chans
        values = np.clip(slices.astype(np.float32, copy=False), 0.0, 1.0)
        if channels == 1 and wanted != 1:
            values = np.repeat(values, wanted, axis=-1)
        elif channels != wanted:
            warnings.warn(
                f"backbone '{self.name}' takes {'grey' if wanted == 1 else f'{wanted}-channel'} "
                "input; "
                f"averaging {channels} channels to grey",
                stacklevel=3,
            )
            values = np.repeat(values.mean(axis=-1, keepdims=True), wanted, axis=-1)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        tensor = torch.from_numpy(
            np.ascontiguousarray(((values - mean) / std).transpose(0, 3, 1, 2))
        )
        p = self.patch_size
        pad_y, pad_x = (-tensor.shape[2]) % p, (-tensor.shape[3]) % p
        if pad_y or pad_x:
            tensor = F.pad(tensor, (0, pad_x, 0, pad_y), mode="reflect")
        return tensor

    def _crop_pixels(self, pixels, b: int, ty: tuple, tx: tuple):
        p = self.patch_size
        return pixels[b, :, ty[0] * p : ty[1] * p, tx[0] * p : tx[1] * p]

    def _forward(self, batch):
        """(B, 3, h, w) pixels -> (B, h/p, w/p, D) float16 numpy, bf16 autocast on CUDA."""
        import torch

        p = self.patch_size
        rows, cols = batch.shape[2] // p, batch.shape[3] // p
        batch = batch.to(self.device, non_blocking=True)
        with (
            torch.inference_mode(),
            torch.autocast(
                self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"
            ),
        ):
            tokens = self.model.forward_features(batch)
        patches = tokens[:, self.num_prefix_tokens :, :]
        if patches.shape[1] != rows * cols:
            raise ModelError(
                f"backbone '{self.name}' returned {patches.shape[1]} "
                f"patch tokens for a {rows}x{cols} patch grid; it is not "
                "a plain ViT with patch tokens, choose a vit_* backbone"
            )
        grid = patches.reshape(len(batch), rows, cols, -1)
        return grid.float().cpu().numpy().astype(np.float16)


def _tile_boxes(n_patches: int, tiles: TileSpec) -> list[tuple[int, int, int, int, int]]:
    """Tiles along one axis as ``(tile_start, tile_end, core_start, core_end, core_offset)``.

    All tiles have the same length (so they batch), cores partition ``[0, n_patches)``.
    """
    size = min(tiles.tile_patches, n_patches)
    if size == n_patches:
        return [(0, n_patches, 0, n_patches, 0)]
    core = tiles.tile_patches - 2 * tiles.halo_patches
    boxes = []
    for core_start in range(0, n_patches, core):
        core_end = min(core_start + core, n_patches)
        start = min(max(core_start - tiles.halo_patches, 0), n_patches - size)
        boxes.append((start, start + size, core_start, core_end, core_start - start))
    return boxes


# ---------------------------------------------------------------------------- building
def load_backbone(
    name: str = DEFAULT_BACKBONE,
    weights: str | os.PathLike | None = None,
    *,
    device="cpu",
    tiles: TileSpec = TileSpec(),
    batch_size: int = 4,
    expected_file_sha256: str | None = None,
) -> FrozenViT:
    """Build a frozen timm ViT and load its weights.

    Parameters
    ----------
    name : str, default "vit_base_patch16_dinov3"
        A timm ViT model name (``vit_small_patch16_dinov3``, ``vit_base_patch14_reg4_dinov2``, ...).
    weights : None, path or "random", default None
        None: timm's pretrained weights (Hugging Face cache, offline once cached). A path: a
        ``.safetensors`` file or a torch state dict (loaded with ``weights_only=True``), or a
        backbone folder written by ``wsseg pretrain`` (then ``name`` must be the folder's
        architecture or the default). ``"random"``: seeded random initialisation, for tests only
        (sets ``warning``).
    device : str or torch.device, default "cpu"
    tiles : TileSpec
        Tiling of large slices (default tiles of 64 patches, halo 4 patches).
    batch_size : int, default 4
        Tiles per backbone forward pass.
    expected_file_sha256 : str or None, default None
        sha256 of the weights file's bytes; when given, a file with other bytes is refused before
        it is parsed (a model folder names its weights file and is untrusted input).

    Raises
    ------
    ModelError
        Unknown or non-ViT name, weights that cannot be downloaded/read, a weights file whose
        bytes differ from ``expected_file_sha256``, or a weights file of another architecture.
    """
    is_folder = weights is not None and str(weights) != RANDOM_WEIGHTS
    if is_folder and Path(weights).expanduser().is_dir():
        folder = Path(weights).expanduser().resolve()
        return _load_backbone_folder(
            name,
            folder,
            device=device,
            tiles=tiles,
            batch_size=batch_size,
            expected_file_sha256=expected_file_sha256,
        )
    _check_name(name)
    warning, file_sha256 = None, None
    if weights is None:
        model, source = _create_pretrained(name)
    elif str(weights) == RANDOM_WEIGHTS:
        model, source = _create_random(name), RANDOM_WEIGHTS
        warning = (
            f"backbone '{name}' uses RANDOM weights (--backbone-weights random): features are not "
            "pretrained, use this only for tests and timing"
        )
        warnings.warn(warning, stacklevel=2)
    else:
        path = Path(weights).expanduser().resolve()
        file_sha256 = _checked_file_sha256(path, expected_file_sha256)
        model = _create(name, pretrained=False)
        _load_weights_file(model, path, name)
        source = f"file:{path}"
    return FrozenViT(
        model,
        name=name,
        weights_source=source,
        weights_hash=hash_weights(model),
        warning=warning,
        tiles=tiles,
        batch_size=batch_size,
        device=device,
        weights_file_sha256=file_sha256,
    )


def _load_backbone_folder(
    name: str, folder: Path, *, expected_file_sha256: str | None, **options
) -> FrozenViT:
    """A :class:`FrozenViT` of a ``wsseg pretrain`` folder (checked by :mod:`.backbones`)."""
    from .backbones import load_backbone_folder

    model, info, sha = load_backbone_folder(folder, expected_file_sha256=expected_file_sha256)
    if name not in (DEFAULT_BACKBONE, info.arch):
        raise ModelError(
            f"backbone folder {folder} holds a '{info.arch}' but backbone '{name}' was asked for; "
            f"leave out --backbone or pass --backbone {info.arch}"
        )
    return FrozenViT(
        model,
        name=info.arch,
        weights_source=f"backbone:{folder}",
        weights_hash=info.weights_hash,
        weights_file_sha256=sha,
        mean=info.mean,
        std=info.std,
        **options,
    )


def file_sha256(path: Path) -> str:
    """sha256 of a regular file's bytes, read in 8 MiB blocks.

    Raises
    ------
    ModelError
        When ``path`` is not a regular file (a device or FIFO could block or never end).
    """
    if not path.is_file():
        raise ModelError(
            f"backbone weights file {path} does not exist or is not a regular file; give a "
            ".safetensors or torch state-dict file"
        )
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 * 2**20):
            digest.update(block)
    return digest.hexdigest()


def _checked_file_sha256(path: Path, expected: str | None) -> str:
    """The file's sha256, which must equal ``expected`` when that is given."""
    actual = file_sha256(path)
    if expected is not None and actual != expected:
        raise ModelError(
            f"backbone weights file {path} has file weights hash {actual[:12]} but the model was "
            f"trained with {str(expected)[:12]}; copy the file it was trained with or retrain"
        )
    return actual


def hash_weights(model) -> str:
    """sha256 over the state dict (names, dtypes, shapes and bytes, in name order).

    Identifies a backbone's weights in model folders and caches without copying them; ViT-B takes
    a fraction of a second.
    """
    import torch

    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _check_name(name: str) -> None:
    import timm

    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models("*vit*"), n=4, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "see timm.list_models('vit_*')"
    raise ModelError(
        f"unknown backbone '{name}': timm has no such model; {hint} (default {DEFAULT_BACKBONE})"
    )


def _create(name: str, *, pretrained: bool, model_kwargs: dict | None = None):
    import timm

    try:
        model = timm.create_model(
            name,
            pretrained=pretrained,
            num_classes=0,
            dynamic_img_size=True,
            **(model_kwargs or {}),
        )
    except TypeError as exc:
        if "dynamic_img_size" not in str(exc):
            raise
        raise ModelError(
            f"backbone '{name}' is not a Vision Transformer with patch tokens; choose "
            f"a vit_* model such as {DEFAULT_BACKBONE} or vit_small_patch14_dinov2"
        ) from None
    if not hasattr(model, "patch_embed") or not hasattr(model, "forward_features"):
        raise ModelError(
            f"backbone '{name}' is not a Vision Transformer with patch tokens; choose a vit_* model"
        )
    return model


def _create_random(name: str):
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_WEIGHTS_SEED)
        return _create(name, pretrained=False)


def _create_pretrained(name: str):
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    hub_id = (
        getattr(cfg, "hf_hub_id", None) or getattr(cfg, "url", None) or getattr(cfg, "file", None)
    )
    if not hub_id:
        raise ModelError(
            f"backbone '{name}' has no pretrained weights in timm; pass --backbone-weights FILE "
            "(safetensors or torch state dict) or pick a model with weights, e.g. "
            + DEFAULT_BACKBONE
        )
    try:
        model = _create(name, pretrained=True)
    except OSError as exc:  # huggingface_hub's LocalEntryNotFoundError, connection errors
        reason = (
            "not in the local Hugging Face cache and the Hub cannot be reached"
            if "local cache" in str(exc)
            else " ".join(str(exc).split())[:160]
        )
        raise ModelError(
            f"could not get pretrained weights for backbone '{name}' ({hub_id}): {reason}. On an "
            "offline machine either copy the folder "
            f"hub/models--{str(hub_id).replace('/', '--')} of the Hugging Face cache "
            '(~/.cache/huggingface, or $HF_HOME) from a machine where `python -c "import timm; '
            f"timm.create_model('{name}', pretrained=True)\"` ran and set HF_HUB_OFFLINE=1, or "
            "download its model.safetensors and pass --backbone-weights FILE"
        ) from None
    return model, f"timm:{hub_id}"


def _load_weights_file(model, path: Path, name: str) -> None:
    state = _read_state_dict(path)
    state = _adapt_to_timm(state, model)
    expected = model.state_dict()
    used = {k: v for k, v in state.items() if k in expected or not k.startswith(_IGNORED_PREFIXES)}
    missing = sorted(set(expected) - set(used))
    unexpected = sorted(set(used) - set(expected))
    wrong_shape = sorted(
        k for k in set(used) & set(expected) if tuple(used[k].shape) != tuple(expected[k].shape)
    )
    if missing or unexpected or wrong_shape:
        example = (missing or unexpected or wrong_shape)[0]
        raise ModelError(
            f"backbone weights file {path} does not fit backbone '{name}': "
            f"{len(missing)} missing keys, {len(unexpected)} unexpected keys, "
            f"{len(wrong_shape)} with the wrong shape (e.g. '{example}'); give "
            "the weights of this architecture or the matching --backbone NAME"
        )
    model.load_state_dict(used, strict=True)


def _read_state_dict(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise ModelError(
            f"backbone weights file {path} does not exist; give a .safetensors or torch "
            "state-dict file, or leave --backbone-weights out to use the Hugging Face cache"
        )
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"backbone weights file {path} is not a readable safetensors file ({exc})"
            ) from None
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... by format
        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise ModelError(
            f"backbone weights file {path} is neither safetensors nor a plain torch state dict "
            f"({reason}); save the weights with safetensors or torch.save(model.state_dict())"
        ) from None
    for key in ("model", "state_dict", "teacher"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(
            f"backbone weights file {path} does not hold a "
            "state dict of tensors; save model.state_dict()"
        )
    return state


def _adapt_to_timm(state: dict, model) -> dict:
    """Convert an original-repo checkpoint (DINOv2/DINOv3
    layouts) with timm's own filter, if that fits better."""
    import sys

    expected = set(model.state_dict())
    if set(state) == expected:
        return state
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is None:
        return state
    try:
        converted = filter_fn(dict(state), model)
    except (
        Exception
    ) as exc:  # a foreign checkpoint the filter does not understand: report key counts
        _log.debug("timm checkpoint filter failed: %s", exc)
        return state
    mismatch = lambda keys: len(set(keys) ^ expected)  # noqa: E731
    return converted if mismatch(converted) < mismatch(state) else state
