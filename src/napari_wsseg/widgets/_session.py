"""The annotation state of one napari viewer, shared by the annotate, train and predict widgets.

An :class:`AnnotationSession` holds the image layer being annotated, the class list, the
annotation layers (points, boxes, masks), the tags and sizes (which are not layers), the open
project and the last trained model. It turns all of that into an
:class:`~napari_wsseg.annotations.model.Annotations` snapshot. There is one session per viewer
(:func:`session_for`); it holds the viewer only weakly.
"""

from __future__ import annotations

import dataclasses
import threading
import warnings
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from psygnal import Signal

from ..annotations.marks import SliceMarks
from ..annotations.model import Annotations, ClassInfo, default_classes
from ..annotations.region_tags import toggle_region_tag
from ..annotations.sizes import estimate_sizes_from_mask
from ..annotations.validate import SIZE_SUM_TOLERANCE  # noqa: F401 (the widgets' one tolerance)
from ..errors import AnnotationError, ProjectError, WssegError
from . import _layers as L
from ._history import EditHistory

if TYPE_CHECKING:
    import napari

    from ..io.image import Image
    from ..project import Project

ANNOTATION_ROLES = ("points", "boxes", "masks")
#: Layers whose edits the session can undo (the masks layer has napari's own undo).
UNDO_ROLES = ("points", "boxes")

_SESSIONS: dict[int, "AnnotationSession"] = {}


def real_viewer(viewer: "napari.Viewer") -> "napari.Viewer":
    """The viewer itself, also when napari handed a plugin its public-only proxy of it.

    npe2 gives a widget docked with ``add_plugin_dock_widget`` a ``PublicOnlyProxy`` (a new
    wrapper object each time), so the proxy cannot be the key of the shared session.
    """
    return getattr(viewer, "__wrapped__", viewer)


def session_for(viewer: "napari.Viewer") -> "AnnotationSession":
    """The session of ``viewer`` (created on first use, dropped when the viewer is deleted).

    However a widget was made (the Plugins menu, ``add_plugin_dock_widget``, constructed in a
    script), every widget of one viewer gets the same session.
    """
    viewer = real_viewer(viewer)
    key = id(viewer)
    session = _SESSIONS.get(key)
    if session is None or session.viewer is not viewer:
        session = AnnotationSession(viewer)
        _SESSIONS[key] = session
        weakref.finalize(viewer, _SESSIONS.pop, key, None)
    return session


class AnnotationSession:
    """Image, classes, annotation layers, tags, sizes and project of one viewer."""

    #: Annotations changed (a layer was edited, a tag or size set): autosave and status listen.
    changed = Signal()
    #: The class list changed (added, renamed, recoloured, removed).
    classes_changed = Signal()
    #: The class new annotations get changed.
    current_class_changed = Signal(int)
    #: An image layer or a project was attached.
    attached = Signal()
    #: The open project is about to be closed or replaced: write its pending changes now.
    project_closing = Signal()

    def __init__(self, viewer: "napari.Viewer") -> None:
        self._viewer = weakref.ref(real_viewer(viewer))
        self.image_layer = None
        self.image: Image | None = None
        self.classes: list[ClassInfo] = default_classes(2, ["background", "foreground"])
        self.current_class = 0
        #: Tags, sizes and "all boxed" marks (not layers; Qt-free, in the core).
        self.marks = SliceMarks()
        #: Region tags ``(z, class, y0, x0, y1, x1)`` of grid cells, with their own undo history.
        self.region_tags = _no_region_tags()
        self._region_history = EditHistory()
        self._region_history.reset(self.region_tags)
        self.project: Project | None = None
        #: Voxel size (Z, Y, X) in µm from the Annotate widget or the project (None: unknown).
        self.voxel_size_zyx: tuple[float, float, float] | None = None
        #: Serialises writes to the project folder (autosave thread, training thread, main thread).
        self.project_lock = threading.RLock()
        #: The last model trained in this viewer (a trained method, or the folder a separate
        #: training process saved it in) and its name in the project (None: not saved).
        self.last_model = None
        self.last_model_name: str | None = None
        self._layers: dict[str, object] = {}
        self._history = {role: EditHistory() for role in UNDO_ROLES}
        self._restoring = False
        #: The annotations (and current class) before the last class removal, for its undo.
        self._before_removal: tuple[Annotations, int] | None = None

    @property
    def viewer(self):
        return self._viewer()

    @property
    def tags(self) -> set[tuple[int, int]]:
        return self.marks.tags

    @property
    def sizes(self) -> dict[tuple[int, int], float]:
        return self.marks.sizes

    @property
    def exhaustive(self) -> set[tuple[int, int]]:
        return self.marks.exhaustive

    # ------------------------------------------------------------------------------ layers
    def layer(self, role: str):
        """The annotation layer with ``role`` if it is still in the viewer, else None."""
        layer = self._layers.get(role)
        if layer is None or self.viewer is None or layer not in self.viewer.layers:
            return None
        return layer

    def scribbles_possible(self) -> bool:
        """False for volumes too big for an in-memory scribble (masks) layer."""
        z, y, x = self.image.shape
        return z * y * x <= L.MAX_IN_MEMORY_VOXELS

    def require_image(self) -> "Image":
        """The image being annotated, or a one-line error saying how to pick one."""
        if (
            self.image_layer is None
            or self.viewer is None
            or self.image_layer not in self.viewer.layers
        ):
            raise AnnotationError(
                "no image is being annotated; pick an image layer in the Annotate widget first"
            )
        return self.image

    def attach_image(self, layer, annotations: Annotations | None = None) -> None:
        """Annotate ``layer``: reuse its annotation layers if the viewer has them, else create them.

        With ``annotations`` (e.g. from a project), the annotation layers are replaced by them.

        Raises
        ------
        ProjectError
            A project is open for another image: its annotations must not be overwritten by
            this image's (close the project first, :meth:`close_project`).
        """
        if (
            self.project is not None
            and self.image_layer is not None
            and layer is not self.image_layer
            and self.image_layer in self.viewer.layers
        ):
            raise ProjectError(
                f"project {self.project.folder} annotates image '{self.image_layer.name}'; "
                "close it "
                f"before annotating '{layer.name}' (its annotations stay saved in the project)"
            )
        image = L.image_from_layer(layer)
        if self.image is not None and self.image_layer is not layer:
            self._detach_layers()
            self.voxel_size_zyx = None  # the previous image's
        self.image_layer, self.image = layer, image
        if annotations is not None:
            self.classes = list(annotations.classes)
            self._set_slice_marks(annotations)
        for role in ANNOTATION_ROLES:
            if role == "masks" and not self.scribbles_possible():
                continue  # a full-size in-memory label image of this volume would not fit
            self._attach_layer(role, annotations)
        self.set_current_class(min(self.current_class, len(self.classes) - 1))
        self.attached.emit()
        self.changed.emit()

    def _attach_layer(self, role: str, annotations: Annotations | None) -> None:
        viewer = self.viewer
        existing = [
            lay
            for lay in L.find_layers(viewer.layers, role)
            if lay.metadata[L.META_KEY].get("image") == self.image_layer.name
        ]
        layer = existing[0] if existing else None
        if layer is not None and annotations is not None:
            viewer.layers.remove(layer)
            layer = None
        if layer is None:
            layer = self._add_layer(role, annotations)
        self._layers[role] = layer
        self._connect(role, layer)
        self._recolor(role, layer)
        if role in UNDO_ROLES:
            self._history[role].reset(self._rows(role))

    def _add_layer(self, role: str, annotations: Annotations | None):
        viewer, image = self.viewer, self.image
        ndim = L.spatial_ndim(image)
        common = {
            "name": f"{self.image_layer.name} {role}",
            "scale": self.image_layer.scale,
            "translate": self.image_layer.translate,
            "metadata": L.role_metadata(role, self.project_folder, image=self.image_layer.name),
        }
        ann = annotations or Annotations(classes=self.classes)
        if role == "points":
            with L.quiet_categorical_guess():
                return viewer.add_points(
                    **L.points_layer_kwargs(self.classes, ann.points, ndim), **common
                )
        if role == "boxes":
            return viewer.add_shapes(
                **L.boxes_layer_kwargs(self.classes, ann.boxes, ndim), **common
            )
        masks = L.new_masks(image)
        if ann.masks is not None:
            masks[...] = ann.masks[0] if image.was_2d else ann.masks
        return viewer.add_labels(**L.masks_layer_kwargs(self.classes, masks), **common)

    def _connect(self, role: str, layer) -> None:
        if getattr(layer, "_wsseg_connected", False):
            return
        emitters = {
            "points": ("data", "features"),
            "boxes": ("data", "features"),
            "masks": ("paint", "data", "labels_update"),
        }[role]
        for name in emitters:
            getattr(layer.events, name).connect(self._on_layer_changed)
        if role == "boxes":
            layer.events.data.connect(self._on_boxes_changed)
        layer._wsseg_connected = True

    def _detach_layers(self) -> None:
        for layer in self._layers.values():
            for name in ("data", "features", "paint", "labels_update"):
                emitter = getattr(layer.events, name, None)
                if emitter is not None:
                    emitter.disconnect(self._on_layer_changed)
            if hasattr(layer.events, "data"):
                layer.events.data.disconnect(self._on_boxes_changed)
            layer._wsseg_connected = False
        self._layers.clear()

    def _on_layer_changed(self, event=None) -> None:
        action = getattr(event, "action", None)
        if action in ("adding", "removing", "changing"):  # the change has not happened yet
            return
        if not self._restoring:
            self._before_removal = None  # a later edit would be lost by undoing the removal
            source = getattr(event, "source", None)
            self._record_edits(
                [r for r in UNDO_ROLES if source is None or self._layers.get(r) is source]
            )
        self.changed.emit()

    # ------------------------------------------------------------------------- undo / redo
    def undo(self, role: str) -> bool:
        """Undo the last edit of the points or boxes layer; False when there is none."""
        return self._restore(role, self._history[role].undo())

    def redo(self, role: str) -> bool:
        """Redo the last undone edit of the points or boxes layer; False when there is none."""
        return self._restore(role, self._history[role].redo())

    def _rows(self, role: str) -> np.ndarray:
        layer = self.layer(role)
        if layer is None:
            return np.zeros((0, 4 if role == "points" else 6), np.int64)
        return L.points_from_layer(layer) if role == "points" else L.boxes_from_layer(layer)

    def _record_edits(self, roles=UNDO_ROLES) -> None:
        for role in roles:
            try:
                self._history[role].record(self._rows(role))
            except AnnotationError:
                pass  # e.g. a non-rectangle shape: validation reports it, it is not a box state

    def _restore(self, role: str, rows: np.ndarray | None) -> bool:
        layer = self.layer(role)
        if rows is None or layer is None:
            return False
        ndim = L.spatial_ndim(self.image)
        with self._quiet_history():
            if role == "points":
                _replace_points(layer, L.points_layer_kwargs(self.classes, rows, ndim))
            else:
                _replace_boxes(layer, L.boxes_layer_kwargs(self.classes, rows, ndim))
            self._recolor(role, layer)
        self.set_current_class(self.current_class)  # replacing features resets their defaults
        self.changed.emit()
        return True

    @contextmanager
    def _quiet_history(self):
        """Layer changes inside are not recorded as edits (restores, bulk replacements)."""
        restoring, self._restoring = self._restoring, True
        try:
            yield
        finally:
            self._restoring = restoring

    def _on_boxes_changed(self, event=None) -> None:
        if getattr(event, "action", None) in ("added", "changed", None):
            layer = self.layer("boxes")
            if layer is not None:
                L.set_boxes_classes(layer, self.classes)

    def _recolor(self, role: str, layer) -> None:
        if role == "points":
            L.set_points_classes(layer, self.classes)
        elif role == "boxes":
            L.set_boxes_classes(layer, self.classes)
        else:
            layer.colormap = L.labels_colormap(self.classes)
        L.recolor_predictions(self.viewer.layers, self.classes)

    # ----------------------------------------------------------------------------- classes
    def set_classes(self, classes: list[ClassInfo]) -> None:
        """Rename / recolour / add classes (class ids keep their meaning)."""
        if not classes:
            raise AnnotationError("keep at least one class")
        names = [c.name.strip() for c in classes]
        if any(not n for n in names) or len(set(names)) != len(names):
            raise AnnotationError(
                f"class names {names} must be non-empty and unique; rename the class"
            )
        self.classes = [ClassInfo(n, c.color) for n, c in zip(names, classes)]
        for role in ANNOTATION_ROLES:
            layer = self.layer(role)
            if layer is not None:
                self._recolor(role, layer)
        if self.project is not None:
            self.project.set_classes(self.classes)
        self.set_current_class(min(self.current_class, len(self.classes) - 1))
        self.classes_changed.emit()
        self.changed.emit()

    def add_class(self, name: str, color: str | None = None) -> int:
        """Append a class (default colour from the palette) and return its id."""
        color = color or default_classes(len(self.classes) + 1)[-1].color
        self.set_classes(self.classes + [ClassInfo(name, color)])
        return len(self.classes) - 1

    def class_usage(self, k: int) -> int:
        """How many annotations (points, boxes, tags, sizes, scribbled pixels) class ``k`` has."""
        counts = self.snapshot(copy=False).counts() if self.image is not None else {}
        return int(sum(int(values[k]) for values in counts.values() if k < len(values)))

    def remove_class(self, k: int) -> None:
        """Delete class ``k`` and its annotations; classes after it move down by one.

        :meth:`undo_remove_class` brings the class and its annotations back. Prediction layers
        keep the colours of the classes they were predicted with.
        """
        if len(self.classes) <= 1:
            raise AnnotationError("cannot remove the last class; add another class first")
        if not 0 <= k < len(self.classes):
            raise AnnotationError(
                f"class {k + 1} does not exist; there are {len(self.classes)} classes"
            )
        backup = (self.snapshot(), self.current_class) if self.image is not None else None
        L.freeze_prediction_colors(self.viewer.layers, self.classes)
        with self._quiet_history():
            self._remove_class_annotations(k)
        self.marks.remove_class(k)
        self.region_tags = _without_class(self.region_tags, k)
        self._region_history.reset(self.region_tags)
        self.set_classes(self.classes[:k] + self.classes[k + 1 :])
        for role in UNDO_ROLES:  # older states hold the removed class
            self._history[role].reset(self._rows(role))
        self._before_removal = backup

    def _remove_class_annotations(self, k: int) -> None:
        for layer in (self.layer("points"), self.layer("boxes")):
            if layer is not None and len(layer.data):
                drop = np.flatnonzero(np.asarray(layer.features["class"]) == k)
                if len(drop):
                    layer.selected_data = set(drop.tolist())
                    layer.remove_selected()
                _shift_class_feature(layer, k)
        masks = self.layer("masks")
        if masks is not None:
            data = masks.data
            data[data == k + 1] = 0
            data[data > k + 1] -= 1
            masks.refresh()

    @property
    def can_undo_remove_class(self) -> bool:
        return self._before_removal is not None

    def undo_remove_class(self) -> bool:
        """Bring back the class removed last, with its annotations; False when there is none."""
        if self._before_removal is None:
            return False
        annotations, current = self._before_removal
        self._before_removal = None
        self.replace_annotations(
            annotations, ("points", "boxes", "tags", "sizes", "exhaustive_boxes", "masks")
        )
        if annotations.masks is None and self.layer("masks") is not None:
            self.layer("masks").data[...] = 0
            self.layer("masks").refresh()
        self.set_current_class(min(current, len(self.classes) - 1))
        return True

    def set_current_class(self, k: int) -> None:
        """The class new points, boxes and scribbles get."""
        if not 0 <= k < len(self.classes):
            raise AnnotationError(
                f"class {k + 1} does not exist; there are {len(self.classes)} classes"
            )
        self.current_class = int(k)
        points, boxes, masks = self.layer("points"), self.layer("boxes"), self.layer("masks")
        if points is not None:
            points.feature_defaults["class"] = k
        if boxes is not None:
            boxes.feature_defaults["class"] = k
        if masks is not None:
            masks.selected_label = k + 1
        self.current_class_changed.emit(k)

    # ------------------------------------------------------------------------ tags / sizes
    def set_tag(self, z: int, k: int, present: bool) -> None:
        """Tag class ``k`` as present (or not) in slice ``z``."""
        self.marks.set_tag(z, k, present)
        self._marks_changed()

    def set_exhaustive(self, z: int, k: int, all_boxed: bool) -> None:
        """Mark (or unmark) every object of class ``k`` in slice ``z`` as boxed."""
        self.marks.set_exhaustive(z, k, all_boxed)
        self._marks_changed()

    def toggle_region_tag(self, z: int, k: int, box: tuple[int, int, int, int]) -> None:
        """Add class ``k`` to grid cell ``box`` (y0, x0, y1, x1) of slice ``z``, or remove it."""
        self._set_region_tags(toggle_region_tag(self.region_tags, z, k, box))

    def tag_region_only(self, z: int, k: int, box: tuple[int, int, int, int]) -> None:
        """Mark cell ``box`` of slice ``z`` "checked, nothing else here": class ``k`` alone.

        Every other class's tag of that cell is removed, and ``k`` is tagged (kept if it was).
        """
        rows = self.region_tags
        cell = np.all(rows[:, [0, 2, 3, 4, 5]] == np.array([z, *box]), axis=1)
        kept = rows[~cell]
        self._set_region_tags(toggle_region_tag(kept, z, k, box))

    def undo_region_tags(self) -> bool:
        """Undo the last region-tag edit; False when there is none."""
        return self._restore_region_tags(self._region_history.undo())

    def redo_region_tags(self) -> bool:
        """Redo the last undone region-tag edit; False when there is none."""
        return self._restore_region_tags(self._region_history.redo())

    def _set_region_tags(self, rows: np.ndarray) -> None:
        self.region_tags = np.asarray(rows, np.int64).reshape(-1, 6)
        self._region_history.record(self.region_tags)
        self._marks_changed()

    def _restore_region_tags(self, rows: np.ndarray | None) -> bool:
        if rows is None:
            return False
        self.region_tags = rows
        self._marks_changed()
        return True

    def _set_slice_marks(self, annotations: Annotations) -> None:
        """Tags, sizes and "all boxed" marks (not layers) from ``annotations``."""
        self.marks = SliceMarks.from_annotations(annotations)
        self.region_tags = np.array(annotations.region_tags, np.int64).reshape(-1, 6)
        self._region_history.reset(self.region_tags)

    def set_size(self, z: int, k: int, fraction: float | None) -> None:
        """Set (or, with None, clear) the fraction of slice ``z`` covered by class ``k``."""
        self.marks.set_size(z, k, fraction)
        self._marks_changed()

    def _marks_changed(self) -> None:
        self._before_removal = None  # undoing a class removal would lose this edit
        self.changed.emit()

    def sizes_from_scribble(self, z: int) -> np.ndarray:
        """Set slice ``z``'s sizes to the class fractions of its painted scribble pixels."""
        masks = self.layer("masks")
        if masks is None:
            raise AnnotationError(
                "no scribble layer to estimate sizes from; paint in the scribble layer "
                "(Shift+S) first"
            )
        painted = np.asarray(masks.data if masks.data.ndim == 2 else masks.data[z])
        if not painted.any():
            raise AnnotationError(
                f"layer '{masks.name}': nothing painted in slice {z}; paint a rough copy of the "
                "slice (or parts of it) with the class labels, then estimate again"
            )
        fractions = estimate_sizes_from_mask(painted, len(self.classes))
        for k, fraction in enumerate(fractions):
            self.marks.set_size(z, k, float(min(max(fraction, 0.0), 1.0)))
        self._marks_changed()
        return fractions

    def clear_sizes(self, z: int) -> None:
        self.marks.clear_sizes(z)
        self._marks_changed()

    def size_sum(self, z: int) -> float | None:
        """The running sum of slice ``z``'s sizes, or None when it has none."""
        return self.marks.size_sum(z)

    def incomplete_size_slices(self) -> list[int]:
        """Slices whose sizes do not sum to about 1 yet (left out of the snapshot)."""
        return self.marks.incomplete_size_slices()

    # ---------------------------------------------------------------------------- snapshot
    def current_z(self) -> int:
        """The slice the viewer shows (0 for 2D images)."""
        if self.image is None or self.image.was_2d:
            return 0
        point = self.image_layer.world_to_data(self.viewer.dims.point)
        return int(np.clip(np.rint(point[-3]), 0, self.image.n_slices - 1))

    def snapshot(self, *, copy: bool = True, closing: bool = False) -> Annotations:
        """All annotations; with ``copy`` (default) safe to hand to another thread.

        ``closing``: the viewer is closing and may have removed the layers already; read the
        layers the session holds (their data is intact) to write the last changes.
        """
        if closing:
            if self.image_layer is None or self.image is None:
                raise AnnotationError("no image is being annotated; nothing to save")
            image = self.image
            points, boxes, masks = (self._layers.get(role) for role in ANNOTATION_ROLES)
        else:
            image = self.require_image()
            points, boxes, masks = self.layer("points"), self.layer("boxes"), self.layer("masks")
        mask_data = None if masks is None else L.masks_from_layer(masks, image.shape)
        return Annotations(
            classes=list(self.classes),
            points=L.points_from_layer(points) if points is not None else np.zeros((0, 4)),
            boxes=L.boxes_from_layer(boxes) if boxes is not None else np.zeros((0, 6)),
            **self.marks.rows(),
            masks=_copy(mask_data) if copy else mask_data,
            region_tags=self.region_tags.copy(),
        )

    def sources(self) -> dict[str, str]:
        """How validation messages name each kind: its layer, or the image for all of them."""
        names = {
            kind: f"{_layer_kind(kind)} layer '{layer.name}'"
            for kind, layer in self._layers.items()
        }
        names["all"] = f"annotations of '{self.image_layer.name}'"
        return names

    def validated_snapshot(self) -> tuple[Annotations, list[str]]:
        """A snapshot checked against the image; errors name the layer, warnings are returned.

        Raises
        ------
        AnnotationError
            The first problem, e.g. a point outside the image or of an unknown class.
        """
        ann = self.snapshot()
        return ann, validate_for_layers(ann, self.image.shape, self.sources())

    def replace_annotations(self, ann: Annotations, kinds: tuple[str, ...]) -> None:
        """Replace the given kinds ('points', 'boxes', 'tags', 'sizes', ...) by those of ``ann``."""
        self.require_image()
        if list(ann.classes) != list(self.classes):
            self.set_classes(list(ann.classes))
        ndim = L.spatial_ndim(self.image)
        with self._quiet_history():  # one undoable step, not remove-all then add
            if "points" in kinds:
                _replace_points(
                    self.layer("points"), L.points_layer_kwargs(self.classes, ann.points, ndim)
                )
            if "boxes" in kinds:
                _replace_boxes(
                    self.layer("boxes"), L.boxes_layer_kwargs(self.classes, ann.boxes, ndim)
                )
        self._record_edits()
        if "masks" in kinds and ann.masks is not None and self.layer("masks") is not None:
            layer = self.layer("masks")
            layer.data[...] = ann.masks[0] if self.image.was_2d else ann.masks
            layer.refresh()
        given = SliceMarks.from_annotations(ann)
        if "tags" in kinds:
            self.marks.tags = given.tags
            self.region_tags = np.array(ann.region_tags, np.int64).reshape(-1, 6)
            self._region_history.record(self.region_tags)
        if "sizes" in kinds:
            self.marks.sizes = given.sizes
        if "exhaustive_boxes" in kinds:
            self.marks.exhaustive = given.exhaustive
        for role in ANNOTATION_ROLES:
            if self.layer(role) is not None:
                self._recolor(role, self.layer(role))
        self.set_current_class(self.current_class)
        self.changed.emit()

    # ----------------------------------------------------------------------------- project
    @property
    def project_folder(self) -> Path | None:
        return None if self.project is None else Path(self.project.folder)

    def create_project(self, folder) -> "Project":
        """Create a project for the current image and classes, and save the annotations into it."""
        from ..project import Project

        image = self.require_image()
        source = _layer_source_path(self.image_layer)
        project = None
        if source:
            try:
                project = Project.create(folder, classes=self.classes, image=source)
            except WssegError as exc:
                if isinstance(exc, ProjectError):
                    raise
        if project is None:  # an image made in napari (or unreadable): keep a copy in the project
            project = Project.create(
                folder, classes=self.classes, image_shape=image.shape, n_channels=image.n_channels
            )
            project.set_image_path(_copy_image(image, project.folder / "image.zarr"))
        project.set_image_name(self.image_layer.name)
        if self.voxel_size_zyx is not None or project.voxel_size_zyx is None:
            known = self.known_voxel_size()  # the user's value wins over the file's metadata
            if known is not None:
                project.set_voxel_size(known)
        self.project = project
        self._mark_layers_with_project()
        self.save(self.snapshot())
        self.attached.emit()
        return project

    def close_project(self) -> None:
        """Stop saving into the open project (its pending changes are written first).

        The layers stay in the viewer; annotations made from now on are not saved until a new
        project is created.
        """
        if self.project is None:
            return
        self.project_closing.emit()
        self.project = None
        for layer in [self.image_layer, *self._layers.values()]:
            if layer is not None:
                meta = dict(layer.metadata.get(L.META_KEY) or {"role": "image"})
                meta["project"] = None
                layer.metadata[L.META_KEY] = meta
        self.attached.emit()

    def open_project(self, folder) -> "Project":
        """Open a project: its image (unless the current one has its shape), classes, annotations.

        A project open before is closed first (its pending changes written).
        """
        from ..project import Project

        project = Project.open(folder)
        self.close_project()
        layer = self._image_layer_for(project)
        self.image_layer = None  # layers of the previous image stay, unattached
        self.attach_image(layer, annotations=project.annotations)
        self.project = project
        self.voxel_size_zyx = project.voxel_size_zyx
        self._mark_layers_with_project()
        self._add_prediction_layers(project)
        self.attached.emit()
        return project

    def _add_prediction_layers(self, project: "Project") -> None:
        """The project's whole-volume predictions, hidden, as dropping the folder shows them."""
        from ._project_reader import prediction_layers

        viewer = self.viewer
        for data, kwargs, _ in prediction_layers(project, self.image_layer.name, project.classes):
            if kwargs["name"] not in viewer.layers:
                L.add_above_image(
                    viewer,
                    self.image_layer,
                    lambda: viewer.add_labels(
                        data,
                        scale=self.image_layer.scale,
                        translate=self.image_layer.translate,
                        **kwargs,
                    ),
                )

    def adopt_project_layers(self) -> bool:
        """Attach to layers a project reader added (image with a project in its metadata)."""
        from ..project import Project, is_project

        for layer in L.find_layers(self.viewer.layers, "image"):
            folder = layer.metadata[L.META_KEY].get("project")
            if (
                folder
                and is_project(folder)
                and (self.project is None or Path(folder) != self.project_folder)
            ):
                project = Project.open(folder)
                self.close_project()
                self.classes = list(project.classes)
                self._set_slice_marks(project.annotations)
                self.image_layer = None
                self.attach_image(layer)
                self.project = project
                self.voxel_size_zyx = project.voxel_size_zyx
                self._mark_layers_with_project()
                self.attached.emit()
                return True
        return False

    def _image_layer_for(self, project: "Project"):
        from ._reader import image_layer_data

        if (
            self.image is not None
            and self.image_layer in self.viewer.layers
            and tuple(self.image.shape) == tuple(project.image_shape)
        ):
            return self.image_layer
        data, kwargs, _ = image_layer_data(project.load_image())
        kwargs["name"] = project.image_name or kwargs["name"]
        kwargs["metadata"] = L.role_metadata("image", project.folder)
        return self.viewer.add_image(data, **kwargs)

    def _mark_layers_with_project(self) -> None:
        for layer in [self.image_layer, *self._layers.values()]:
            meta = dict(layer.metadata.get(L.META_KEY) or {"role": "image"})
            meta["project"] = str(self.project.folder)
            layer.metadata[L.META_KEY] = meta

    def known_voxel_size(self) -> tuple[float, float, float] | None:
        """The voxel size in µm: the user's or project's, else the image file's, else None."""
        if self.voxel_size_zyx is not None:
            return self.voxel_size_zyx
        if self.image is not None and self.image.voxel_size_zyx is not None:
            return tuple(self.image.voxel_size_zyx)
        source = _layer_source_path(self.image_layer) if self.image_layer is not None else None
        if source:
            from ..io.voxel_size import voxel_size_from_metadata

            return voxel_size_from_metadata(source, 3)
        return None

    def set_voxel_size(self, voxel_size_zyx) -> None:
        """Keep the voxel size ((Z, Y, X) µm, checked; None: unknown); store it in the project."""
        from ..io.voxel_size import check_voxel_size

        sizes = None if voxel_size_zyx is None else check_voxel_size(voxel_size_zyx, 3)
        self.voxel_size_zyx = sizes
        if self.project is not None:
            with self.project_lock:
                self.project.set_voxel_size(sizes)

    def save(self, annotations: Annotations) -> None:
        """Write ``annotations`` to the project (atomic; callable from any thread)."""
        if self.project is None:
            return
        with self.project_lock:
            self.project.set_annotations(annotations)
            self.project.save()


# --------------------------------------------------------------------------------------- helpers
def _copy(array):
    return None if array is None else np.array(array, copy=True)


def _no_region_tags() -> np.ndarray:
    return np.zeros((0, 6), np.int64)


def _without_class(rows: np.ndarray, k: int) -> np.ndarray:
    """Region-tag rows without class ``k``; the classes after it move down by one."""
    rows = rows[rows[:, 1] != k].copy()
    rows[:, 1] -= rows[:, 1] > k
    return rows


def validate_for_layers(ann: Annotations, shape, sources: dict[str, str]) -> list[str]:
    """Validate each layer's kind alone (errors name the layer), then all together; the warnings.

    Thread-safe: works on a snapshot and the names from :meth:`AnnotationSession.sources`.
    """
    from ..annotations.validate import validate_annotations

    for kind in ANNOTATION_ROLES:
        part = _only(ann, kind)
        if kind in sources and not part.is_empty():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                validate_annotations(part, shape, source=sources[kind])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        validate_annotations(ann, shape, source=sources["all"])
    return [str(w.message) for w in caught]


def _only(ann: Annotations, kind: str) -> Annotations:
    empty = Annotations(classes=ann.classes)
    return dataclasses.replace(empty, **{kind: getattr(ann, kind)})


def _layer_kind(role: str) -> str:
    return {"points": "points", "boxes": "shapes", "masks": "labels"}[role]


def _shift_class_feature(layer, k: int) -> None:
    """Class ids above the removed class ``k`` move down by one."""
    if len(layer.data) == 0:
        return
    features = layer.features.copy()
    classes = np.asarray(features["class"], dtype=np.int64)
    features["class"] = classes - (classes > k)
    layer.features = features


def _replace_points(layer, kwargs: dict) -> None:
    layer.data = kwargs["data"]
    layer.features = kwargs["features"]


def _replace_boxes(layer, kwargs: dict) -> None:
    if len(layer.data):
        layer.selected_data = set(range(len(layer.data)))
        layer.remove_selected()
    if kwargs["data"]:
        layer.add_rectangles(kwargs["data"])
        layer.features = kwargs["features"]


def _copy_image(image: "Image", path: Path) -> Path:
    """Write ``image`` as a plain zarr array ((Y, X), (Z, Y, X) or (Z, Y, X, C)), slice by slice."""
    import zarr

    data = image.data if image.n_channels > 1 else image.data[..., 0]
    chunks = (1, *(min(s, 512) for s in data.shape[1:3]), *data.shape[3:])
    if image.was_2d:
        data, chunks = data[0], chunks[1:]
    array = zarr.create_array(str(path), shape=data.shape, dtype=data.dtype, chunks=chunks)
    if image.was_2d:
        array[...] = np.asarray(data)
    else:
        for z in range(image.n_slices):
            array[z] = np.asarray(data[z])
    return path


def _layer_source_path(layer) -> str | None:
    path = getattr(getattr(layer, "source", None), "path", None)
    return str(path) if path else None
