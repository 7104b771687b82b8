"""napari sample-data contribution: the procedural FIB-SEM-like phantom with its ground truth."""

from __future__ import annotations


def _layers(image, labels, classes, name):
    from ..annotations.model import label_colors

    return [
        (image, {"name": name}, "image"),
        (
            labels.astype("uint8") + 1,
            {
                "name": f"{name} ground truth",
                "colormap": label_colors(classes),
                "opacity": 0.4,
                "visible": False,
            },
            "labels",
        ),
    ]


def phantom_2d():
    """A 2D phantom slice with dense ground truth (label k = class k-1)."""
    from ..sample import sample_2d

    return _layers(*sample_2d(), name="phantom 2D")


def phantom_3d():
    """A small 3D phantom volume with dense ground truth (label k = class k-1)."""
    from ..sample import sample_3d

    return _layers(*sample_3d(), name="phantom 3D")
