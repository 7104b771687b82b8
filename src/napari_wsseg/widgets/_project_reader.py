"""napari reader contribution for project folders: one drop restores every layer.

A folder holding ``project.json`` opens as the project's image, its points, boxes and masks
layers (with the project's classes and colours) and the whole-volume predictions recorded in
it. The layers carry ``metadata["wsseg"]`` naming the project, so the Annotate widget (opened
before or after) attaches to them and keeps autosaving into the project; tags and sizes, which
are not layers, are restored from the project by the widget.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def napari_get_project_reader(path):
    """:func:`read_project` if ``path`` is a project folder or its ``project.json``, else None."""
    from ..project import is_project

    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    return read_project if is_project(_project_folder(path)) else None


def read_project(path) -> list[tuple]:
    """Layer data tuples of the project in ``path`` (the folder or its ``project.json``)."""
    from ..project import Project

    if isinstance(path, (list, tuple)):
        path = path[0]
    project = Project.open(_project_folder(path))
    return project_layers(project)


def _project_folder(path) -> Path:
    from ..project import PROJECT_FILE

    path = Path(str(path).rstrip("/"))
    return path.parent if path.name == PROJECT_FILE else path


def project_layers(project) -> list[tuple]:
    """(data, kwargs, type) for the image, annotation layers and predictions of ``project``."""
    from . import _layers as L
    from ._reader import image_layer_data

    image = project.load_image()
    data, kwargs, _ = image_layer_data(image)
    name = kwargs["name"] = project.image_name or kwargs["name"]
    kwargs["metadata"] = L.role_metadata("image", project.folder)
    ann, ndim, classes = project.annotations, L.spatial_ndim(image), project.classes

    def meta(role: str, **extra) -> dict:
        return L.role_metadata(role, project.folder, image=name, **extra)

    points = L.points_layer_kwargs(classes, ann.points, ndim)
    boxes = L.boxes_layer_kwargs(classes, ann.boxes, ndim)
    layers = [
        (data, kwargs, "image"),
        (
            points.pop("data"),
            {**points, "name": f"{name} points", "metadata": meta("points")},
            "points",
        ),
        (
            boxes.pop("data"),
            {**boxes, "name": f"{name} boxes", "metadata": meta("boxes")},
            "shapes",
        ),
    ]
    if (
        int(np.prod(image.shape)) <= L.MAX_IN_MEMORY_VOXELS
    ):  # as the Annotate widget: no masks layer beyond
        masks = L.new_masks(image)
        if ann.masks is not None:
            masks[...] = ann.masks[0] if image.was_2d else ann.masks
        labels_kwargs = {"colormap": _label_color_dict(classes), "opacity": 0.6}
        layers.append(
            (masks, {**labels_kwargs, "name": f"{name} masks", "metadata": meta("masks")}, "labels")
        )
    # predictions lie between the image and the annotation layers, as the widgets add them
    return layers[:1] + prediction_layers(project, name, classes) + layers[1:]


def prediction_layers(project, image_name: str, classes) -> list[tuple]:
    """(data, kwargs, 'labels') of the whole-volume predictions recorded in ``project`` (lazy)."""
    from ..io import read_labels
    from . import _layers as L

    def meta(role: str, **extra) -> dict:
        return L.role_metadata(role, project.folder, image=image_name, **extra)

    layers = []
    for pred_name, record in sorted(project.predictions.items()):
        path = Path(project.folder) / record["path"]
        if path.exists():
            labels = read_labels(path) + 1  # lazy: label k = class k - 1, as in every wsseg layer
            kwargs = {
                "name": f"{image_name} prediction {pred_name}",
                "colormap": _label_color_dict(classes),
                "opacity": 0.5,
                "visible": False,
                "metadata": meta("prediction", path=str(path), volume=True),
            }
            layers.append((labels, kwargs, "labels"))
    return layers


def _label_color_dict(classes) -> dict:
    from ..annotations.model import label_colors

    return label_colors(classes)
