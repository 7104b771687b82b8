"""napari layers <-> :class:`~napari_wsseg.annotations.model.Annotations`, and class colours.

The annotation layers of napari-wsseg and what their data means:

* points: a Points layer, one row per clicked pixel, class in the ``class`` feature; the face
  colour is mapped from that feature (class ``k`` gets ``classes[k].color``).
* boxes: a Shapes layer of rectangles, class in the ``class`` feature, edge colour of the class.
* masks (scribbles): a Labels layer whose label ``k`` is class ``k - 1`` (0 unlabeled).
* predictions: Labels layers with the same convention (label ``k`` = class ``k - 1``, 0 = not
  predicted), so colours match everywhere.

Every layer created here carries ``metadata["wsseg"] = {"role": ..., "project": ...}`` so that
widgets find them again (also after reopening a project). Tags and sizes are not layers: the
annotate widget keeps them (see :mod:`._session`).
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import TYPE_CHECKING

import numpy as np

from ..annotations.model import ClassInfo, label_colors
from ..errors import AnnotationError
from ..io.image import Image, as_image
from ..training.run import entropy_map  # noqa: F401 (layers show it; kept importable here)

if TYPE_CHECKING:
    import napari

META_KEY = "wsseg"
ROLES = (
    "image",
    "points",
    "boxes",
    "masks",
    "prediction",
    "uncertainty",
    "grid",
    "region_tags",
)
#: Largest volume (voxels) for which in-memory masks and full-size prediction layers are created.
MAX_IN_MEMORY_VOXELS = 2**28


# ------------------------------------------------------------------------------------- metadata
def canvas_window(image_layer, image: Image) -> tuple[slice, slice]:
    """The ``(y, x)`` window of ``image`` the canvas shows, from napari's ``corner_pixels`` of the
    image layer (data coordinates), clipped to the slice."""
    corners = np.asarray(image_layer.corner_pixels)
    _, height, width = image.shape
    y0, x0 = np.clip(corners[0, -2:], 0, [height - 1, width - 1]).astype(int)
    y1, x1 = np.clip(corners[1, -2:], 0, [height - 1, width - 1]).astype(int)
    return slice(int(y0), int(y1) + 1), slice(int(x0), int(x1) + 1)


def layer_role(layer) -> str | None:
    """The napari-wsseg role of ``layer`` ('points', 'boxes', ...) or None."""
    meta = getattr(layer, "metadata", None) or {}
    return (meta.get(META_KEY) or {}).get("role")


def role_metadata(role: str, project=None, **extra) -> dict:
    """Layer metadata marking a layer's role (and its project folder, if any)."""
    return {META_KEY: {"role": role, "project": None if project is None else str(project), **extra}}


def find_layers(layers, role: str) -> list:
    """Layers of ``layers`` with the given role, in layer-list order."""
    return [layer for layer in layers if layer_role(layer) == role]


@contextmanager
def keep_selection(viewer: "napari.Viewer"):
    """Layers added inside do not take the selection: the layer being annotated stays selected."""
    selected, active = set(viewer.layers.selection), viewer.layers.selection.active
    try:
        yield
    finally:
        alive = {layer for layer in selected if layer in viewer.layers}
        if alive != set(viewer.layers.selection) or viewer.layers.selection.active is not active:
            viewer.layers.selection.clear()
            viewer.layers.selection.update(alive)
            if active is not None and active in viewer.layers:
                viewer.layers.selection.active = active


def add_above_image(viewer: "napari.Viewer", image_layer, add):
    """``add()`` a result layer, placed just above ``image_layer`` (below the annotation layers).

    The selected layer does not change (napari would select the new layer).
    """
    with keep_selection(viewer):
        layer = add()
        if image_layer in viewer.layers:
            viewer.layers.move(viewer.layers.index(layer), viewer.layers.index(image_layer) + 1)
    return layer


# --------------------------------------------------------------------------------------- colours
def class_color_map(classes: list[ClassInfo]) -> dict[int, str]:
    """``{class id: colour}``, e.g. for the Points ``face_color_cycle``."""
    return {k: c.color for k, c in enumerate(classes)}


def labels_colormap(classes: list[ClassInfo]):
    """A napari label colormap where label ``k`` is class ``k - 1`` (label 0 transparent)."""
    from napari.utils.colormaps import DirectLabelColormap

    return DirectLabelColormap(color_dict=label_colors(classes))


def rgba(color: str) -> np.ndarray:
    """``#rrggbb`` -> RGBA floats."""
    from napari.utils.colormaps.standardize_color import transform_color

    return transform_color(color)[0]


# ------------------------------------------------------------------------------------- images
def image_from_layer(layer) -> Image:
    """The :class:`Image` of a napari image layer (numpy or lazy dask, level 0 if multiscale)."""
    data = layer.data[0] if layer.multiscale else layer.data
    return as_image(
        data, channel_axis=-1 if layer.rgb else None, source=f"image layer '{layer.name}'"
    )


def spatial_ndim(image: Image) -> int:
    """2 for a 2D image, 3 for a volume: the ``ndim`` of the annotation layers."""
    return 2 if image.was_2d else 3


# ----------------------------------------------------------------------------------------- points
def points_layer_kwargs(classes: list[ClassInfo], points: np.ndarray, ndim: int) -> dict:
    """``add_points`` keyword arguments showing ``(N, 4)`` ``(z, y, x, class)`` rows."""
    points = np.asarray(points, dtype=np.int64).reshape(-1, 4)
    coords = points[:, :3] if ndim == 3 else points[:, 1:3]
    return {
        "data": coords.astype(float),
        "ndim": ndim,
        "features": {"class": points[:, 3].astype(np.int64)},
        "feature_defaults": {"class": 0},
        "face_color": "class",
        "face_color_cycle": class_color_map(classes),
        "border_color": "white",
        "border_width": 0.1,
        "size": 5,
        "out_of_slice_display": False,
    }


def points_from_layer(layer) -> np.ndarray:
    """``(N, 4)`` int64 ``(z, y, x, class)`` rows of a points layer (z = 0 for 2D)."""
    data = np.asarray(layer.data, dtype=float)
    coords = np.rint(data).astype(np.int64).reshape(len(data), layer.ndim)
    if coords.shape[1] == 2:
        coords = np.column_stack([np.zeros(len(coords), dtype=np.int64), coords])
    classes = _class_feature(layer, len(coords))
    return np.column_stack([coords, classes]).astype(np.int64).reshape(-1, 4)


def set_points_classes(layer, classes: list[ClassInfo]) -> None:
    """Re-colour a points layer after the class list changed."""
    with quiet_categorical_guess():
        layer.face_color_cycle = class_color_map(classes)
        layer.face_color = "class"
        layer.refresh_colors()


@contextmanager
def quiet_categorical_guess():
    """Silence napari's note that the integer 'class' feature looks categorical (it is)."""
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Feature 'class' looks like categorical", category=RuntimeWarning
        )
        yield


def _class_feature(layer, n: int) -> np.ndarray:
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if "class" not in layer.features:
        raise AnnotationError(
            f"layer '{layer.name}' has no 'class' feature; create annotation layers with the "
            "Annotate widget"
        )
    return np.asarray(layer.features["class"], dtype=np.int64)


# ------------------------------------------------------------------------------------------ boxes
def boxes_layer_kwargs(classes: list[ClassInfo], boxes: np.ndarray, ndim: int) -> dict:
    """``add_shapes`` keyword arguments showing ``(N, 6)`` ``(z, y0, x0, y1, x1, class)`` rows."""
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 6)
    rectangles = [_rectangle(row, ndim) for row in boxes]
    return {
        "data": rectangles,
        "ndim": ndim,
        "shape_type": "rectangle",
        "features": {"class": boxes[:, 5].astype(np.int64)},
        "feature_defaults": {"class": 0},
        "edge_color": box_colors(classes, boxes[:, 5]) if len(boxes) else "white",
        "face_color": "transparent",
        "edge_width": 2,
    }


def _rectangle(row: np.ndarray, ndim: int) -> np.ndarray:
    z, y0, x0, y1, x1 = (float(v) for v in row[:5])
    corners = np.array([[y0, x0], [y0, x1], [y1, x1], [y1, x0]])
    if ndim == 3:
        corners = np.column_stack([np.full(4, z), corners])
    return corners


def box_colors(classes: list[ClassInfo], class_ids) -> np.ndarray:
    """RGBA edge colours of boxes of the given class ids."""
    table = np.array([rgba(c.color) for c in classes])
    ids = np.clip(np.asarray(class_ids, dtype=np.int64), 0, len(classes) - 1)
    return table[ids]


def boxes_from_layer(layer) -> np.ndarray:
    """``(N, 6)`` int64 ``(z, y0, x0, y1, x1, class)`` rows of a shapes layer of rectangles.

    Corners are inclusive pixel indices: the rounded extremes of each rectangle's vertices.
    """
    if len(layer.data) == 0:
        return np.zeros((0, 6), dtype=np.int64)
    for i, kind in enumerate(layer.shape_type):
        if kind != "rectangle":
            raise AnnotationError(
                f"shapes layer '{layer.name}': shape {i + 1} is a {kind}; boxes must be rectangles "
                "(delete it and draw a rectangle, key R)"
            )
    vertices = np.stack([np.asarray(v, dtype=float) for v in layer.data])  # (N, 4, ndim)
    if vertices.shape[2] == 2:
        vertices = np.concatenate([np.zeros(vertices.shape[:2] + (1,)), vertices], axis=2)
    z = np.rint(vertices[:, :, 0])
    tilted = np.flatnonzero(np.ptp(z, axis=1) > 0)
    if len(tilted):
        raise AnnotationError(
            f"shapes layer '{layer.name}': box {tilted[0] + 1} spans several z slices; "
            "draw boxes in one slice (2D view)"
        )
    low = np.rint(vertices[:, :, 1:].min(axis=1))
    high = np.rint(vertices[:, :, 1:].max(axis=1))
    classes = _class_feature(layer, len(vertices))
    rows = np.column_stack([z[:, 0], low[:, 0], low[:, 1], high[:, 0], high[:, 1], classes])
    return rows.astype(np.int64)


def set_boxes_classes(layer, classes: list[ClassInfo]) -> None:
    """Re-colour a shapes layer from its ``class`` feature."""
    if len(layer.data):
        layer.edge_color = box_colors(classes, _class_feature(layer, len(layer.data)))


# ------------------------------------------------------------------------------------------ masks
def masks_layer_kwargs(classes: list[ClassInfo], masks: np.ndarray) -> dict:
    """``add_labels`` keyword arguments for a partial label image (label k = class k - 1)."""
    return {"data": masks, "colormap": labels_colormap(classes), "opacity": 0.6}


def masks_from_layer(layer, shape_zyx: tuple[int, int, int]) -> np.ndarray | None:
    """The masks layer as ``(Z, Y, X)`` labels, or None when nothing is painted."""
    data = np.asarray(layer.data)
    if data.ndim == 2:
        data = data[np.newaxis]
    if tuple(data.shape) != tuple(shape_zyx):
        raise AnnotationError(
            f"labels layer '{layer.name}' has shape {data.shape} but the image is "
            f"{tuple(shape_zyx)}; "
            "paint in a labels layer created by the Annotate widget"
        )
    return data if data.any() else None


def new_masks(image: Image) -> np.ndarray:
    """An empty uint8 mask array for ``image``, shaped like its napari layer."""
    shape = image.shape[1:] if image.was_2d else image.shape
    return np.zeros(shape, dtype=np.uint8)


# ------------------------------------------------------------------------------------ predictions
def recolor_predictions(layers, classes: list[ClassInfo]) -> None:
    """Give prediction layers the colours of ``classes`` (renamed / recoloured / added classes).

    Layers frozen by :func:`freeze_prediction_colors` keep their colours: their class ids no
    longer match the class list.
    """
    for layer in find_layers(layers, "prediction"):
        if not layer.metadata[META_KEY].get("frozen_colors"):
            layer.colormap = labels_colormap(classes)


def layer_class_colors(layer) -> list[str]:
    """The ``#rrggbb`` colour of each class (label 1, 2, ...) of a labels layer's colormap."""
    colors = []
    for label in range(1, 256):
        if label not in layer.colormap.color_dict:
            break
        rgba_ = np.asarray(layer.colormap.color_dict[label], dtype=float)
        colors.append("#" + "".join(f"{int(round(255 * v)):02x}" for v in rgba_[:3]))
    return colors


def freeze_prediction_colors(layers, classes: list[ClassInfo]) -> None:
    """Keep the current colours of every prediction layer (before a class is removed)."""
    for layer in find_layers(layers, "prediction"):
        if not layer.metadata[META_KEY].get("frozen_colors"):
            layer.colormap = labels_colormap(classes)
            layer.metadata[META_KEY] = {**layer.metadata[META_KEY], "frozen_colors": True}


def prediction_canvas(image: Image) -> tuple[np.ndarray, bool]:
    """An empty array to show slice predictions of ``image`` in, and whether it has every slice.

    Volumes up to :data:`MAX_IN_MEMORY_VOXELS` get a full ``(Z, Y, X)`` array (slices predicted
    so far stay visible); bigger ones a single ``(1, Y, X)`` slice moved to the predicted z with
    the layer's ``translate``.
    """
    if image.was_2d:
        return np.zeros(image.shape[1:], dtype=np.uint8), True
    z, y, x = image.shape
    if z * y * x <= MAX_IN_MEMORY_VOXELS:
        return np.zeros((z, y, x), dtype=np.uint8), True
    return np.zeros((1, y, x), dtype=np.uint8), False


def show_slice_result(
    viewer: "napari.Viewer",
    image_layer,
    classes: list[ClassInfo],
    z: int,
    labels: np.ndarray,
    uncertainty: np.ndarray | None = None,
    *,
    region: tuple[slice, slice] | None = None,
    opacity: float | None = None,
    project=None,
):
    """Write one slice's predicted class ids (and uncertainty) into the prediction layers.

    Creates the 'prediction' Labels layer (label k = class k - 1) and the 'uncertainty' image
    layer on first use. ``region`` limits the write to a (y, x) window of the slice. Returns the
    prediction layer.
    """
    image = image_from_layer(image_layer)
    values = np.asarray(labels, dtype=np.uint8) + 1
    pred_layer = _result_layer(viewer, image_layer, image, "prediction", classes, project)
    if [c.color for c in classes] != layer_class_colors(pred_layer):  # the classes predicted with
        pred_layer.colormap = labels_colormap(classes)
    if opacity is not None:
        pred_layer.opacity = opacity
    _write_slice(pred_layer, image, z, values, region)
    if uncertainty is not None:
        unc_layer = _result_layer(viewer, image_layer, image, "uncertainty", classes, project)
        _write_slice(unc_layer, image, z, np.asarray(uncertainty, dtype=np.float32), region)
    return pred_layer


def _result_layer(viewer, image_layer, image: Image, role: str, classes, project):
    existing = [
        layer for layer in find_layers(viewer.layers, role) if _same_image(layer, image_layer)
    ]
    if existing:
        return existing[0]
    canvas, _ = prediction_canvas(image)
    common = {
        "name": f"{image_layer.name} {role}",
        "scale": image_layer.scale,
        "translate": image_layer.translate,
        "metadata": role_metadata(role, project, image=image_layer.name),
    }
    if role == "prediction":
        return add_above_image(
            viewer,
            image_layer,
            lambda: viewer.add_labels(
                canvas, colormap=labels_colormap(classes), opacity=0.5, **common
            ),
        )
    return add_above_image(
        viewer,
        image_layer,
        lambda: viewer.add_image(
            canvas.astype(np.float32),
            colormap="magma",
            contrast_limits=(0.0, 1.0),
            opacity=0.5,
            blending="additive",
            visible=False,
            **common,
        ),
    )


def _same_image(layer, image_layer) -> bool:
    return layer.metadata.get(META_KEY, {}).get("image") == image_layer.name


def _write_slice(layer, image: Image, z: int, values: np.ndarray, region) -> None:
    window = region or (slice(None), slice(None))
    if image.was_2d:
        layer.data[window] = values
    elif layer.data.shape[0] == image.n_slices:
        layer.data[(int(z),) + tuple(window)] = values
    else:  # single-slice canvas of a big volume: move it to slice z
        meta = layer.metadata[META_KEY]
        shown = int(meta.get("z", 0))
        if shown != int(z):
            layer.data[:] = 0
            translate = np.array(layer.translate, dtype=float)
            translate[0] += (int(z) - shown) * layer.scale[0]
            layer.translate = translate
            meta["z"] = int(z)
        layer.data[(0,) + tuple(window)] = values
    layer.refresh()
