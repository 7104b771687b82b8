"""Take the screenshots of docs/widgets.md: each dock widget and the viewer with a prediction.

Runs the first-segmentation tutorial on the 3D phantom (annotate -> train rf -> predict) in a
real napari window and saves small 8-bit PNGs into docs/images/. Needs a display; headless::

    xvfb-run -a -s "-screen 0 1600x1400x24" python scripts/screenshots.py
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"
MAX_WIDTH = 900


def save_small(qimage, path: Path, max_width: int = MAX_WIDTH) -> None:
    """Scale down to ``max_width`` and save as an indexed-colour PNG (a few tens of kB)."""
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QImage

    if qimage.width() > max_width:
        qimage = qimage.scaledToWidth(max_width, Qt.TransformationMode.SmoothTransformation)
    qimage = qimage.convertToFormat(QImage.Format.Format_Indexed8)
    qimage.save(str(path), "PNG")
    print(f"{path} ({path.stat().st_size // 1024} kB)")


def grab(widget):
    """The widget drawn at (at least) the height its layout asks for."""
    from qtpy.QtCore import QRect

    height = widget.sizeHint().height()
    widget.resize(widget.width(), max(widget.height(), height))
    widget.layout().activate()
    return widget.grab(QRect(0, 0, widget.width(), height)).toImage()


def wait(app, done, timeout_s: float = 600) -> None:
    end = time.monotonic() + timeout_s
    while not done() and time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wsseg.sample import sample_3d
    from napari_wsseg.widgets._annotate import AnnotateWidget
    from napari_wsseg.widgets._predict import PredictWidget
    from napari_wsseg.widgets._train import TrainWidget

    OUT.mkdir(parents=True, exist_ok=True)
    image, labels, classes = sample_3d()
    viewer = napari.Viewer(show=True)
    viewer.window._qt_window.resize(1500, 1300)  # screenshots only: a fixed window size
    app = QApplication.instance()
    viewer.add_image(image, name="phantom")
    annotate = AnnotateWidget(viewer)
    viewer.window.add_dock_widget(annotate, name="Annotate")
    session = annotate.session
    session.set_classes(list(classes))
    annotate.new_project(Path(tempfile.mkdtemp()) / "phantom-project")
    z = image.shape[0] // 2
    viewer.dims.set_current_step(0, z)

    rng = np.random.default_rng(0)
    points = session.layer("points")
    for k in range(len(classes)):
        coords = np.argwhere(labels[z] == k)
        pick = coords[rng.choice(len(coords), 12, replace=False)]
        points.feature_defaults["class"] = k
        points.add(np.column_stack([np.full(len(pick), z), pick]).astype(float))
    session.layer("boxes").feature_defaults["class"] = 2
    ys, xs = np.nonzero(labels[z] == 2)
    y0, x0 = ys.min(), xs.min()
    session.layer("boxes").add_rectangles([np.array([[z, y0, x0], [z, y0, x0 + 20], [z, y0 + 20, x0 + 20],
                                                     [z, y0 + 20, x0]])])
    session.layer("masks").data[z, 20:24, 20:120] = labels[z, 20:24, 20:120] + 1
    session.layer("masks").refresh()
    for k in np.unique(labels[z]):
        session.set_tag(z, int(k), True)
    annotate.set_current_class(1)
    wait(app, lambda: False, 1.0)
    save_small(grab(annotate), OUT / "annotate_widget.png", 420)

    train = TrainWidget(viewer)
    viewer.window.add_dock_widget(train, name="Train", tabify=True)
    train.method_combo.setCurrentText("rf")
    train.options.set_values(n_estimators=50)
    if train.train() is None:
        raise SystemExit("training did not start; see the notification above")
    wait(app, lambda: train.worker is None)
    save_small(grab(train), OUT / "train_widget.png", 420)

    predict = PredictWidget(viewer)
    viewer.window.add_dock_widget(predict, name="Predict", tabify=True)
    predict.refresh_models()
    predict.scope_combo.setCurrentText("whole volume")
    if predict.predict() is None:
        raise SystemExit("prediction did not start; see the notification above")
    wait(app, lambda: predict.worker is None)
    wait(app, lambda: False, 1.0)
    save_small(grab(predict), OUT / "predict_widget.png", 420)
    for layer in viewer.layers:
        layer.visible = layer.name in ("phantom", "phantom points", "phantom boxes") or "prediction" in layer.name
    wait(app, lambda: False, 1.0)
    save_small(viewer.window._qt_window.grab().toImage(), OUT / "viewer_prediction.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
