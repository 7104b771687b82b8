"""The Predict widget's Export… button and the export worker behind it."""

from __future__ import annotations

import tempfile
import zipfile

import numpy as np
import pytest

from napari_wsseg.eval.simulate import simulate_annotations
from napari_wsseg.io.image import as_image
from napari_wsseg.methods import get_method
from napari_wsseg.methods.base import FitOptions
from napari_wsseg.sample import make_phantom

WAIT_MS = 60_000  # only guards against a hang

pytestmark = pytest.mark.gui


@pytest.fixture(autouse=True)
def _no_triton_after_a_viewer():
    """A viewer loads libLLVM (OpenGL under Xvfb) and importing triton after that crashes the
    process, so later tests that train torch models must not import it."""
    yield
    from napari_wsseg.training import avoid_triton_llvm_crash

    avoid_triton_llvm_crash()


@pytest.fixture(scope="module")
def tiny_size_model():
    from napari_wsseg.training import avoid_triton_llvm_crash

    avoid_triton_llvm_crash()  # a viewer of an earlier test may have loaded libLLVM
    image, labels, classes = make_phantom((64, 64), seed=1)
    annotations = simulate_annotations(labels[None], classes=classes, points=2, sizes=True, seed=0)
    model = get_method("size")(max_steps=2, batch_size=1, crop_size=32, depth=2, width=4)
    model.fit(as_image(image), annotations, FitOptions(device="cpu"))
    return model


def test_predict_widget_has_an_export_button(make_napari_viewer):
    from qtpy.QtWidgets import QPushButton

    from napari_wsseg.widgets._predict import PredictWidget

    widget = PredictWidget(make_napari_viewer())
    assert "Export…" in [b.text() for b in widget.findChildren(QPushButton)]


def test_export_worker_writes_a_package_from_an_in_memory_model(
    tiny_size_model, tmp_path, qtbot, monkeypatch
):
    from napari_wsseg.widgets._export import export_model

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    worker = export_model(tiny_size_model, tmp_path / "model.zip", licence="MIT")
    with qtbot.waitSignal(worker.finished, timeout=WAIT_MS):
        worker.start()
    with zipfile.ZipFile(tmp_path / "model.zip") as package:
        assert "rdf.yaml" in package.namelist()
        assert np.load(package.open("test_output.npy")).shape[1] == len(tiny_size_model.classes)
    # the temporary model and package folders are gone (other libraries leave their own tmp*)
    assert [p.name for p in (tmp_path / "tmp").iterdir() if p.name.startswith("wsseg-")] == []
