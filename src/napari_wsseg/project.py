"""The on-disk project store: one folder per project. Imports no Qt.

Layout::

    myproject/
      project.json              schema version, image reference, classes, current snapshot, models
      annotations/v000007/      zarr group: points, boxes, tags, sizes, masks (current snapshot)
      models/<name>/            model folders (see methods/base.py)
      predictions/<name>.zarr   predicted labels

Every save is atomic: annotations go to a new snapshot folder first, then ``project.json`` is
replaced (write to a temporary name, then rename) to point at it, and only then are older
snapshots removed. A crash or kill at any moment leaves the last completed save intact.

Paths. Everything inside the project folder (its own ``image.zarr`` copy, the snapshot, models,
predictions) is stored relative to the folder, so a copied or moved project keeps working; an
external image stays an absolute path. ``project.json`` is untrusted input: a path that should be
inside the folder but leads out of it (``..``, an absolute path elsewhere) is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from . import __version__
from .annotations.model import Annotations, ClassInfo
from .errors import ProjectError

SCHEMA_VERSION = 1
PROJECT_FILE = "project.json"
#: The copy of an image that has no file of its own (made in napari), inside the project.
OWN_IMAGE = "image.zarr"
_KINDS = {
    "points": (4, np.int64),
    "boxes": (6, np.int64),
    "tags": (2, np.int64),
    "sizes": (3, np.float64),
    "exhaustive_boxes": (2, np.int64),
    "region_tags": (6, np.int64),
}
_KEEP_SNAPSHOTS = 2


def is_project(folder: str | os.PathLike) -> bool:
    """True if ``folder`` holds a ``project.json`` written by napari-wsseg (with a schema version).

    Another tool's ``project.json`` does not count, so ``create(overwrite=True)`` never deletes it.
    """
    path = Path(folder) / PROJECT_FILE
    if not path.is_file():
        return False
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(meta, dict) and "schema_version" in meta


class Project:
    """A segmentation project: image reference, classes, annotations, models and predictions.

    Create one with :meth:`create` and reopen it with :meth:`open`; change annotations with the
    ``add_*``/``set_*`` methods and persist them with :meth:`save`.

    Examples
    --------
    >>> import tempfile
    >>> from napari_wsseg.annotations.model import default_classes
    >>> folder = tempfile.mkdtemp() + "/proj"
    >>> p = Project.create(folder, image_shape=(1, 8, 8), classes=default_classes(2))
    >>> p.add_points([[0, 2, 3, 1]]); p.save()
    >>> Project.open(folder).annotations.points.tolist()
    [[0, 2, 3, 1]]
    """

    def __init__(self, folder: Path, meta: dict, annotations: Annotations) -> None:
        self.folder = folder
        self._meta = meta
        self.annotations = annotations

    # ------------------------------------------------------------ create/open
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike,
        *,
        classes: list[ClassInfo],
        image: str | os.PathLike | None = None,
        image_shape: tuple[int, int, int] | None = None,
        n_channels: int = 1,
        overwrite: bool = False,
        voxel_size_zyx=None,
    ) -> "Project":
        """Create a new project folder.

        Parameters
        ----------
        folder : path
            The project folder; must not exist yet unless ``overwrite``.
        classes : list of ClassInfo
            The classes (at least one).
        image : path, optional
            The image file the project annotates (stored as an absolute path). Its shape is read
            from the file when ``image_shape`` is not given.
        image_shape : (Z, Y, X), optional
            Spatial shape of the image (required without ``image``).
        voxel_size_zyx : (Z, Y, X) micrometres, optional
            Physical voxel size; by default the image file's metadata (None when it has none).
        """
        folder = Path(folder)
        if is_project(folder) and not overwrite:
            raise ProjectError(
                f"project {folder} already exists; open it, or pass overwrite=True to replace it"
            )
        if folder.exists() and not is_project(folder) and any(folder.iterdir()):
            raise ProjectError(
                f"{folder} exists and is not an empty folder; choose a new folder for the project"
            )
        if not classes:
            raise ProjectError(f"project {folder}: give at least one class")
        was_2d = False
        if image is not None:
            from .io import read_image

            img = read_image(image)
            image_shape, n_channels, was_2d = img.shape, img.n_channels, img.was_2d
            voxel_size_zyx = voxel_size_zyx or img.voxel_size_zyx
            image = str(Path(image).resolve())
        if image_shape is None:
            raise ProjectError(f"project {folder}: give an image path or image_shape=(Z, Y, X)")
        if overwrite and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {
            "schema_version": SCHEMA_VERSION,
            "package_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "image": {
                "path": image,
                "shape": [int(s) for s in image_shape],
                "n_channels": int(n_channels),
                "was_2d": was_2d,
                "voxel_size_zyx": _checked_voxel_size(voxel_size_zyx),
            },
            "classes": [dataclasses.asdict(c) for c in classes],
            "annotations": None,
            "models": {},
            "predictions": {},
        }
        project = cls(folder, meta, Annotations(classes=list(classes)))
        project.save()
        return project

    @classmethod
    def open(cls, folder: str | os.PathLike) -> "Project":
        """Open an existing project folder."""
        folder = Path(folder)
        meta = _read_meta(folder)
        classes = [ClassInfo(**c) for c in meta["classes"]]
        snapshot = meta.get("annotations")
        annotations = Annotations(classes=classes)
        if snapshot:
            annotations = _read_snapshot(_inner_path(folder, snapshot, "annotations"), classes)
        return cls(folder, meta, annotations)

    # ------------------------------------------------------------- properties
    @property
    def classes(self) -> list[ClassInfo]:
        return list(self.annotations.classes)

    @property
    def image_path(self) -> str | None:
        """The absolute path of the image (a path stored relative to the folder is resolved)."""
        stored = self._meta["image"]["path"]
        if not stored:
            return None
        path = Path(stored)
        if not path.is_absolute():
            return str(_inner_path(self.folder, stored))
        if not path.exists() and path.name == OWN_IMAGE and (self.folder / OWN_IMAGE).exists():
            return str(self.folder / OWN_IMAGE)  # an old project.json: the copy in a moved project
        return str(path)

    @property
    def image_name(self) -> str | None:
        """The name of the image layer the project was made from (None: not recorded)."""
        return self._meta["image"].get("name")

    def set_image_name(self, name: str) -> None:
        """Record the name the image layer had, so that a reopened project shows it again."""
        self._meta["image"]["name"] = str(name)
        self._write_meta()

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self._meta["image"]["shape"])

    @property
    def voxel_size_zyx(self) -> tuple[float, float, float] | None:
        """Physical voxel size ``(Z, Y, X)`` in micrometres; None when unknown."""
        stored = self._meta["image"].get("voxel_size_zyx")
        return None if stored is None else tuple(_checked_voxel_size(stored))

    def set_voxel_size(self, voxel_size_zyx) -> None:
        """Store the voxel size (``(Z, Y, X)`` micrometres, or None for unknown); checked."""
        self._meta["image"]["voxel_size_zyx"] = _checked_voxel_size(voxel_size_zyx)
        self._write_meta()

    @property
    def schema_version(self) -> int:
        return self._meta["schema_version"]

    def set_image_path(self, path: str | os.PathLike) -> None:
        """Point the project at another copy of its image (same shape and channels)."""
        from .io import read_image

        image = read_image(path)
        if image.shape != self.image_shape:
            raise ProjectError(
                f"image {path} has shape {image.shape}, but project {self.folder} annotates an "
                f"image of shape "
                f"{self.image_shape}; pick the image the project was made for"
            )
        self._meta["image"].update(
            path=str(Path(path).resolve()), n_channels=image.n_channels, was_2d=image.was_2d
        )
        self._write_meta()

    @property
    def predictions(self) -> dict:
        """Recorded predictions: ``{name: {"model": ..., "path": "predictions/<name>.zarr"}}``."""
        return dict(self._meta["predictions"])

    def load_image(self):
        """Read the project's image (lazily for zarr)."""
        from .io import read_image

        if not self.image_path:
            raise ProjectError(
                f"project {self.folder} has no image path; create it with image=PATH"
            )
        if not Path(self.image_path).exists():
            raise ProjectError(
                f"project {self.folder}: image {self.image_path} is missing; move it back or "
                "recreate the project"
            )
        image = read_image(self.image_path)
        if self.voxel_size_zyx is not None:  # the project's (user-given) size wins
            image.voxel_size_zyx = self.voxel_size_zyx
        return image

    # ------------------------------------------------------------ annotations
    def set_classes(self, classes: list[ClassInfo]) -> None:
        """Replace the class list (names/colours); annotations keep their class ids."""
        self.annotations.classes = list(classes)
        self._meta["classes"] = [dataclasses.asdict(c) for c in classes]

    def set_annotations(self, annotations: Annotations) -> None:
        """Replace all annotations (e.g. a snapshot of the widget layers)."""
        self._check(annotations)
        self.annotations = annotations
        self._meta["classes"] = [dataclasses.asdict(c) for c in annotations.classes]

    def add_points(self, rows) -> None:
        """Append ``(z, y, x, class)`` rows."""
        self._append("points", rows)

    def add_boxes(self, rows) -> None:
        """Append ``(z, y0, x0, y1, x1, class)`` rows."""
        self._append("boxes", rows)

    def add_tags(self, rows) -> None:
        """Append ``(z, class)`` rows."""
        self._append("tags", rows)

    def add_sizes(self, rows) -> None:
        """Append ``(z, class, fraction)`` rows."""
        self._append("sizes", rows)

    def set_masks(self, masks) -> None:
        """Set the partial label image (0 unlabeled, k means class k-1)."""
        candidate = dataclasses.replace(self.annotations, masks=np.asarray(masks))
        self._check(candidate)
        self.annotations = candidate

    def _append(self, kind: str, rows) -> None:
        columns, dtype = _KINDS[kind]
        new = np.asarray(rows, dtype=dtype).reshape(-1, columns)
        merged = np.concatenate([getattr(self.annotations, kind), new])
        candidate = dataclasses.replace(self.annotations, **{kind: merged})
        self._check(candidate)
        self.annotations = candidate

    def _check(self, annotations: Annotations) -> None:
        from .annotations.validate import validate_annotations

        if not annotations.is_empty():
            validate_annotations(
                annotations, self.image_shape, source=f"project {self.folder.name}", warn=False
            )

    # ------------------------------------------------------------------- save
    def save(self) -> None:
        """Persist annotations and metadata atomically."""
        ann_dir = self.folder / "annotations"
        ann_dir.mkdir(exist_ok=True)
        number = 1 + max((_snapshot_number(p) for p in ann_dir.glob("v*")), default=0)
        name = f"v{number:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=ann_dir))
        try:
            _write_snapshot(tmp, self.annotations)
            os.replace(tmp, ann_dir / name)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._meta["annotations"] = f"annotations/{name}"
        self._meta["classes"] = [dataclasses.asdict(c) for c in self.annotations.classes]
        self._write_meta()
        self._remove_old_snapshots(ann_dir, keep=name)

    def _write_meta(self) -> None:
        self._meta["image"]["path"] = self._stored_image_path()
        write_json_atomic(self.folder / PROJECT_FILE, self._meta)

    def _stored_image_path(self) -> str | None:
        """The image path as written: relative inside the project folder, else absolute."""
        path = self.image_path
        if not path:
            return None
        try:
            return Path(path).resolve().relative_to(self.folder.resolve()).as_posix()
        except ValueError:
            return str(Path(path).resolve())

    @staticmethod
    def _remove_old_snapshots(ann_dir: Path, keep: str) -> None:
        snapshots = sorted((p for p in ann_dir.glob("v*") if p.name != keep), key=_snapshot_number)
        for old in snapshots[: max(len(snapshots) - (_KEEP_SNAPSHOTS - 1), 0)]:
            shutil.rmtree(old, ignore_errors=True)
        for tmp in ann_dir.glob(".tmp-*"):  # left by a crash during an earlier save
            shutil.rmtree(tmp, ignore_errors=True)

    # ----------------------------------------------------------------- models
    def model_dir(self, name: str) -> Path:
        _check_name(name, "model")
        return self.folder / "models" / name

    def save_model(self, model, name: str) -> Path:
        """Save a trained method into ``models/<name>`` and record it in ``project.json``."""
        path = model.save(self.model_dir(name), overwrite=True)  # a retrain replaces its model
        self.record_model(name, model.name)
        return path

    def record_model(self, name: str, method_name: str) -> None:
        """Record a model folder already in ``model_dir(name)`` (written by another process)."""
        from .methods.base import read_model_config

        read_model_config(self.model_dir(name))  # refuses a missing or damaged folder
        self._meta["models"][name] = {
            "method": method_name,
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        self._write_meta()

    def load_model(self, name: str):
        from .methods.base import load_model

        if name not in self._meta["models"]:
            raise ProjectError(
                f"project {self.folder} has no model '{name}'; available: "
                f"{sorted(self._meta['models']) or 'none'}"
            )
        return load_model(self.model_dir(name))

    def list_models(self) -> list[str]:
        return sorted(self._meta["models"])

    def prediction_path(self, name: str) -> Path:
        _check_name(name, "prediction")
        return self.folder / "predictions" / f"{name}.zarr"

    def record_prediction(self, name: str, model_name: str) -> None:
        self._meta["predictions"][name] = {"model": model_name, "path": f"predictions/{name}.zarr"}
        self._write_meta()

    def backbone_dir(self) -> Path:
        """Where the widgets' "Learn features from this image" writes its backbone folder."""
        return self.folder / "backbones" / "learned"

    @property
    def mews_backbone(self) -> Path | None:
        """The backbone folder MEWS uses by default in this project (None: MEWS's own default).

        Raises
        ------
        ProjectError
            When ``project.json`` names a relative folder that leads outside the project.
        """
        defaults = self._meta.get("defaults")
        stored = defaults.get("mews_backbone_weights") if isinstance(defaults, dict) else None
        if not isinstance(stored, str) or not stored:
            return None
        return Path(stored) if Path(stored).is_absolute() else _inner_path(self.folder, stored)

    def set_mews_backbone(self, folder: str | os.PathLike | None) -> None:
        """Make ``folder`` (a ``wsseg pretrain`` backbone folder) MEWS's default in this project.

        A folder inside the project is stored relative to it, so a moved project keeps it.
        None removes the default.
        """
        if not isinstance(self._meta.get("defaults"), dict):
            self._meta["defaults"] = {}
        defaults = self._meta["defaults"]
        if folder is None:
            defaults.pop("mews_backbone_weights", None)
        else:
            path = Path(folder).resolve()
            inside = path.is_relative_to(self.folder.resolve())
            defaults["mews_backbone_weights"] = str(
                path.relative_to(self.folder.resolve()) if inside else path
            )
        self._write_meta()


def _checked_voxel_size(values):
    """``values`` as a list of three positive micrometre sizes, or None; raises WssegError."""
    from .io.voxel_size import check_voxel_size

    return (
        None if values is None else list(check_voxel_size(values, 3, source="project voxel size"))
    )


def write_json_atomic(path: Path, data: dict) -> None:
    """Write JSON to a temporary file in the same folder, fsync it, then rename over ``path``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_meta(folder: Path) -> dict:
    path = folder / PROJECT_FILE
    if not path.is_file():
        raise ProjectError(
            f"{folder} is not a napari-wsseg project (no {PROJECT_FILE}); create one first"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ProjectError(
            f"project {folder}: {PROJECT_FILE} is damaged ({exc}); restore it from a backup"
        ) from None
    if not isinstance(meta, dict):
        raise ProjectError(
            f"project {folder}: {PROJECT_FILE} is not a JSON object; restore it from a backup"
        )
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ProjectError(
            f"project {folder} has schema version {version}, but napari-wsseg {__version__} "
            f"reads version "
            f"{SCHEMA_VERSION}; open it with the release that wrote it (package_version "
            f"{meta.get('package_version')})"
        )
    _check_inner_paths(folder, meta)
    return meta


def _inner_path(folder: Path, stored: str, subfolder: str = "") -> Path:
    """``folder / stored`` if that stays inside ``folder / subfolder``, else a one-line error.

    ``stored`` comes from ``project.json`` (untrusted): an absolute path, ``..`` or a link that
    leads out of the project is refused.
    """
    inner = Path(folder) / subfolder
    candidate = Path(folder) / str(stored)
    if Path(str(stored)).is_absolute() or not candidate.resolve().is_relative_to(inner.resolve()):
        raise ProjectError(
            f"project {folder}: {PROJECT_FILE} names '{stored}', which leads outside the project's "
            f"{subfolder or 'folder'}/; a project keeps it inside, so fix that entry in "
            f"{PROJECT_FILE}"
        )
    return candidate


def _check_inner_paths(folder: Path, meta: dict) -> None:
    """Refuse paths in ``meta`` that should stay inside ``folder`` but lead out of it."""
    if meta.get("annotations"):
        _inner_path(folder, meta["annotations"], "annotations")
    image = (meta.get("image") or {}).get("path")
    if image and not Path(image).is_absolute():
        _inner_path(folder, image)
    try:
        for name in meta.get("models") or {}:
            _check_name(name, "model")
        for name in meta.get("predictions") or {}:
            _check_name(name, "prediction")
    except ProjectError as exc:
        raise ProjectError(
            f"project {folder}: {PROJECT_FILE} lists a {exc}; fix that entry"
        ) from None
    for record in (meta.get("predictions") or {}).values():
        _inner_path(folder, str((record or {}).get("path", "")), "predictions")


def _write_snapshot(folder: Path, annotations: Annotations) -> None:
    import zarr

    group = zarr.open_group(str(folder), mode="w")
    for kind, (columns, dtype) in _KINDS.items():
        values = getattr(annotations, kind)
        array = group.create_array(
            kind, shape=values.shape, dtype=dtype, chunks=(max(len(values), 1), columns)
        )
        if len(values):
            array[:] = values
    if annotations.masks is not None:
        masks = np.asarray(annotations.masks)
        chunks = (1,) + tuple(min(s, 512) for s in masks.shape[1:])
        array = group.create_array("masks", shape=masks.shape, dtype=masks.dtype, chunks=chunks)
        array[:] = masks
    group.attrs["classes"] = [dataclasses.asdict(c) for c in annotations.classes]


def _read_snapshot(folder: Path, classes: list[ClassInfo]) -> Annotations:
    import zarr

    try:
        group = zarr.open_group(str(folder), mode="r")
        values = {
            kind: np.asarray(group[kind][:]) for kind in _KINDS if kind in group
        }  # older snapshots lack some
        masks = np.asarray(group["masks"][:]) if "masks" in group else None
    except Exception as exc:  # a snapshot removed or damaged outside napari-wsseg
        raise ProjectError(
            f"project annotations {folder} cannot be read ({exc}); restore the folder"
        ) from None
    return Annotations(classes=classes, masks=masks, **values)


def _snapshot_number(path: Path) -> int:
    try:
        return int(path.name[1:])
    except ValueError:
        return 0


def _check_name(name: str, what: str) -> None:
    if not name or "/" in name or "\\" in name or name.startswith(".") or name != name.strip():
        raise ProjectError(
            f"{what} name '{name}' is not a plain folder name; use letters, digits, '-' and '_'"
        )
