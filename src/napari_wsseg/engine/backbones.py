"""Backbone folders: a ViT written by ``wsseg pretrain``, read by MEWS. Imports no Qt.

A backbone folder holds

* ``backbone.safetensors``: the timm ViT's state dict (no classifier head);
* ``backbone.json``: format and version, the timm architecture and the arguments that change its
  tensors (patch size, input channels, image size), the input normalisation (the image's
  percentile mapping to [0, 1] and the mean/std applied after it), what it was trained on (image
  name, shape, dtype, a content hash) and for how long (steps, seconds, seed), the sha256 of the
  weights file's bytes and :func:`~napari_wsseg.engine.vit.hash_weights` of the loaded weights
  (the *content hash* that keys MEWS feature caches);
* ``.wsseg-backbone``: a marker proving that napari-wsseg created the folder (see
  :mod:`napari_wsseg.engine.pretrain`).

A folder is untrusted input. :func:`load_backbone_folder` checks, in this order and before any
weights are used: the JSON (format, version, known timm ViT architecture, option ranges), the
sha256 of the weights file against the JSON, every tensor name and shape from the safetensors
header against the architecture (built on torch's meta device), and finally the content hash of
the loaded weights. Each failure is one :class:`~napari_wsseg.errors.ModelError` line.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import __version__
from ..errors import ModelError
from .vit import _check_name, _create, file_sha256, hash_weights

FORMAT = "napari-wsseg-backbone"
FORMAT_VERSION = 1
CONFIG_FILE = "backbone.json"
WEIGHTS_FILE = "backbone.safetensors"
MARKER_FILE = ".wsseg-backbone"
#: Inclusive ranges of the architecture arguments a backbone.json may ask for.
_BOUNDS = {"patch_size": (2, 64), "in_chans": (1, 16), "img_size": (8, 1024)}
_MAX_JSON_BYTES = 1 << 20


@dataclass(frozen=True)
class BackboneInfo:
    """What ``backbone.json`` records about a backbone folder.

    Attributes
    ----------
    arch : str
        timm model name, e.g. ``"vit_tiny_patch16_224"``.
    patch_size, in_chans, img_size : int
        Arguments given to ``timm.create_model`` (they set the tensors' shapes).
    mean, std : tuple of float
        Per input channel, applied to intensities already mapped to [0, 1] and clipped.
    normalization : dict
        ``{"low": [...], "high": [...]}``: the percentile mapping of the training image.
    trained_on : dict
        ``image``, ``shape``, ``dtype``, ``content_hash`` and ``planes`` of the training image.
    training : dict
        ``objective``, ``steps``, ``planned_steps``, ``seconds``, ``seed``, ``finished``.
    weights_sha256 : str
        sha256 of ``backbone.safetensors``'s bytes.
    weights_hash : str
        :func:`~napari_wsseg.engine.vit.hash_weights` of the weights (the content hash).
    """

    arch: str
    patch_size: int
    in_chans: int
    img_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    normalization: dict = field(default_factory=dict)
    trained_on: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    weights_sha256: str = ""
    weights_hash: str = ""

    def model_kwargs(self) -> dict:
        """Keyword arguments of ``timm.create_model`` besides the name."""
        return {"patch_size": self.patch_size, "in_chans": self.in_chans, "img_size": self.img_size}

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "package_version": __version__,
            **asdict(self),
            "mean": list(self.mean),
            "std": list(self.std),
        }


def is_backbone_folder(path) -> bool:
    """True when ``path`` is a folder holding a ``backbone.json``."""
    return Path(path).is_dir() and (Path(path) / CONFIG_FILE).is_file()


def build_model(info: BackboneInfo):
    """The timm ViT of ``info``'s architecture (random weights, no classifier head)."""
    return _create(info.arch, pretrained=False, model_kwargs=info.model_kwargs())


def write_backbone_folder(folder, model, info: BackboneInfo) -> BackboneInfo:
    """Write ``model``'s weights and ``info`` (hashes filled in) to ``folder``, atomically per file.

    The JSON is replaced last, so a crash in between leaves a folder whose weights file does not
    match its JSON: it is refused when loaded, and the next write repairs it.

    Returns
    -------
    BackboneInfo
        ``info`` with ``weights_sha256`` and ``weights_hash`` set.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp = folder / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"format": FORMAT, "arch": info.arch})
    _fsync_replace(tmp, folder / WEIGHTS_FILE)
    info = _replace(
        info, weights_sha256=file_sha256(folder / WEIGHTS_FILE), weights_hash=hash_weights(model)
    )
    write_json_atomically(folder / CONFIG_FILE, info.to_dict())
    return info


def read_backbone_info(folder) -> BackboneInfo:
    """Read and check ``backbone.json`` of ``folder``.

    Raises
    ------
    ModelError
        Missing or unreadable JSON, another format, a newer format version, an unknown or non-ViT
        architecture, or options out of range.
    """
    folder = Path(folder)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise ModelError(
            f"backbone folder {folder} has no {CONFIG_FILE}; give a folder written by "
            "`wsseg pretrain`"
        )
    if path.stat().st_size > _MAX_JSON_BYTES:
        raise ModelError(
            f"backbone config {path} is larger than 1 MiB; it is not a backbone.json, "
            "re-run wsseg pretrain"
        )
    raw = read_json_file(path, "backbone config", "re-run wsseg pretrain")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise ModelError(
            f"backbone config {path} is not a napari-wsseg backbone (format {FORMAT!r} missing); "
            "give a folder written by `wsseg pretrain`"
        )
    version = raw.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(
            f"backbone folder {folder} has format version {version!r:.20}, this release reads "
            "up to "
            f"{FORMAT_VERSION}; install the napari-wsseg release that wrote it "
            f"({str(raw.get('package_version'))[:20]}) or newer"
        )
    info = _info_from_dict(raw, path)
    _check_name(info.arch)
    return info


def load_backbone_folder(folder, *, expected_file_sha256: str | None = None):
    """The checked timm ViT of a backbone folder, its :class:`BackboneInfo` and the file's sha256.

    Parameters
    ----------
    folder : path
        A folder written by ``wsseg pretrain``.
    expected_file_sha256 : str or None, default None
        When given (a trained MEWS model recorded it), the weights file must have these bytes.

    Returns
    -------
    model, BackboneInfo, str

    Raises
    ------
    ModelError
        Any failed check (see the module docstring), each in one line naming the folder.
    """
    folder = Path(folder)
    info = read_backbone_info(folder)
    path = folder / WEIGHTS_FILE
    actual = file_sha256(path)
    if actual != info.weights_sha256 or (
        expected_file_sha256 is not None and actual != expected_file_sha256
    ):
        expected = expected_file_sha256 if actual == info.weights_sha256 else info.weights_sha256
        raise ModelError(
            f"backbone folder {folder}: {WEIGHTS_FILE} has file hash {actual[:12]} but "
            f"{expected[:12]} was recorded; the weights were changed or damaged, re-run wsseg "
            "pretrain (or copy the original folder)"
        )
    model = build_model(info)
    _check_header_shapes(path, model, folder, info)
    _load_state(path, model)
    content = hash_weights(model)
    if content != info.weights_hash:
        raise ModelError(
            f"backbone folder {folder}: weights have content hash {content[:12]} but {CONFIG_FILE} "
            f"records {info.weights_hash[:12]}; re-run wsseg pretrain"
        )
    return model, info, actual


def locate_backbone_folder(
    recorded: Path, search: list[Path], expected_file_sha256: str | None
) -> Path:
    """The backbone folder a trained model recorded, where it is now.

    The recorded path first, then a folder of the same name in each of ``search`` (the model
    folder, ``$WSSEG_WEIGHTS_DIR``). When ``expected_file_sha256`` is given only a folder whose
    weights file has those bytes is returned.

    Raises
    ------
    ModelError
        No such folder, or only folders with other weights.
    """
    candidates = [Path(recorded)] + [Path(folder) / Path(recorded).name for folder in search]
    found = [c for c in candidates if is_backbone_folder(c)]
    for candidate in found:
        weights = candidate / WEIGHTS_FILE
        if expected_file_sha256 is None or (
            weights.is_file() and file_sha256(weights) == expected_file_sha256
        ):
            return candidate
    if found:
        raise ModelError(
            f"backbone folder {found[0]} holds other weights than the "
            f"{str(expected_file_sha256)[:12]} "
            "the model was trained with; copy the original folder or retrain"
        )
    raise ModelError(
        f"backbone folder {recorded} (recorded in the model) does not exist; copy it into the "
        "model "
        "folder or into a folder listed in WSSEG_WEIGHTS_DIR"
    )


def read_json_file(path: Path, what: str, fix: str):
    """The JSON value in ``path``.

    Raises
    ------
    ModelError
        ``"{what} {path} is not readable JSON (...); {fix}"`` when the file cannot be read or
        parsed.
    """
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{what} {path} is not readable JSON ({exc}); {fix}") from None


def write_json_atomically(path: Path, value: dict) -> None:
    """Write ``value`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1), encoding="utf-8")
    _fsync_replace(tmp, path)


# ------------------------------------------------------------------ helpers
def _fsync_replace(tmp: Path, target: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _replace(info: BackboneInfo, **changes) -> BackboneInfo:
    from dataclasses import replace

    return replace(info, **changes)


def _info_from_dict(raw: dict, path: Path) -> BackboneInfo:
    """Typed and range-checked :class:`BackboneInfo` from the JSON object."""
    names = {f for f in BackboneInfo.__dataclass_fields__}
    missing = sorted(
        n
        for n in (
            "arch",
            "patch_size",
            "in_chans",
            "img_size",
            "mean",
            "std",
            "weights_sha256",
            "weights_hash",
        )
        if n not in raw
    )
    if missing:
        raise ModelError(
            f"backbone config {path} lacks {', '.join(missing)}; re-run wsseg pretrain"
        )
    values = {k: raw[k] for k in names if k in raw}
    if not isinstance(values["arch"], str) or len(values["arch"]) > 200:
        raise ModelError(
            f"backbone config {path}: arch {values['arch']!r:.60} is not a timm model name"
        )
    for name, (low, high) in _BOUNDS.items():
        value = values[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ModelError(
                f"backbone config {path}: {name} {value!r:.30} is not an integer in "
                f"[{low}, {high}]; re-run wsseg pretrain"
            )
    for name in ("mean", "std"):
        seq = values[name]
        ok = (
            isinstance(seq, list)
            and len(seq) == values["in_chans"]
            and all(
                isinstance(v, (int, float)) and not isinstance(v, bool) and abs(v) < 1e6
                for v in seq
            )
        )
        if not ok or (name == "std" and min(seq) <= 0):
            raise ModelError(
                f"backbone config {path}: {name} must be {values['in_chans']} finite numbers "
                f"({'positive' if name == 'std' else 'any sign'}); re-run wsseg pretrain"
            )
        values[name] = tuple(float(v) for v in seq)
    for name in ("weights_sha256", "weights_hash"):
        text = values[name]
        if (
            not isinstance(text, str)
            or len(text) != 64
            or any(c not in "0123456789abcdef" for c in text)
        ):
            raise ModelError(
                f"backbone config {path}: {name} is not a sha256 hex digest; re-run wsseg pretrain"
            )
    for name in ("normalization", "trained_on", "training"):
        if not isinstance(values.get(name, {}), dict):
            raise ModelError(
                f"backbone config {path}: {name} is not a JSON object; re-run wsseg pretrain"
            )
    return BackboneInfo(**values)


def _check_header_shapes(path: Path, model, folder: Path, info: BackboneInfo) -> None:
    """Every tensor of the file has the name and shape the architecture expects (header only)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ModelError(
            f"backbone folder {folder}: {WEIGHTS_FILE} is not a readable safetensors file "
            f"({' '.join(str(exc).split())[:100]}); re-run wsseg pretrain"
        ) from None
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(shapes)), sorted(set(shapes) - set(expected))
    wrong = sorted(k for k in set(shapes) & set(expected) if shapes[k] != expected[k])
    if missing or unexpected or wrong:
        example = wrong[0] if wrong else (missing or unexpected)[0]
        detail = f"'{example}' is {shapes.get(example)}, expected {expected.get(example)}"
        raise ModelError(
            f"backbone folder {folder}: {WEIGHTS_FILE} does not fit {info.arch} "
            f"(patch {info.patch_size}, {info.in_chans} channels): {len(missing)} missing, "
            f"{len(unexpected)} unexpected, {len(wrong)} wrongly shaped tensors ({detail}); "
            "re-run wsseg pretrain"
        )


def _load_state(path: Path, model) -> None:
    from safetensors.torch import load_file

    model.load_state_dict(load_file(str(path)), strict=True)
