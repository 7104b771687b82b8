"""The Predict widget's "Export…" button: write the chosen model as a bioimage.io package.

The export (:func:`napari_wsseg.export.export_bioimageio`) runs in a thread worker; a model that
only exists in memory is saved to a temporary folder first, removed afterwards.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from qtpy.QtWidgets import QFileDialog, QPushButton

from ..errors import WssegError
from ._notify import notify_error, notify_exception, notify_info

_TEMP_MARKER = ".wsseg-export-temporary"


def make_export_button(predict_widget) -> QPushButton:
    """A button that exports ``predict_widget``'s chosen model (needs its ``_model_source``)."""
    button = QPushButton("Export…")
    button.setToolTip(
        "export the chosen model as a bioimage.io package (dsp, size and mews models)"
    )
    button.clicked.connect(lambda: _ask_and_export(predict_widget))
    return button


def export_model(source, out, *, licence: str = "CC-BY-4.0"):
    """Start exporting ``source`` (a model folder or a trained Method) to ``out``; returns the
    worker."""
    from napari.qt.threading import create_worker

    from ..training import avoid_triton_llvm_crash

    avoid_triton_llvm_crash()  # torch may import triton while tracing; see its docstring
    worker = create_worker(
        _export, source, Path(out), licence, _ignore_errors=True, _start_thread=False
    )
    worker.returned.connect(lambda path: notify_info(f"bioimage.io package written to {path}"))
    worker.errored.connect(lambda exc: notify_exception(exc, "export"))
    return worker


def _ask_and_export(predict_widget) -> None:
    try:
        source = predict_widget._model_source()
    except WssegError as exc:
        notify_error(str(exc))
        return
    path, _ = QFileDialog.getSaveFileName(
        predict_widget, "Export bioimage.io package", "model.zip", "bioimage.io package (*.zip)"
    )
    if path:
        export_model(source, path).start()


def _export(source, out: Path, licence: str) -> Path:
    """Worker body (no Qt): export a model folder, saving an in-memory model to a temporary one."""
    from ..export import check_exportable, export_bioimageio
    from ..methods.base import Method

    if not isinstance(source, Method):
        return export_bioimageio(source, out, licence=licence, overwrite=True)
    check_exportable(source.name)
    folder = Path(tempfile.mkdtemp(prefix="wsseg-export-model-"))
    (folder / _TEMP_MARKER).write_text("created by the napari-wsseg Export button\n")
    try:
        model_dir = source.save(folder / "model")
        return export_bioimageio(model_dir, out, licence=licence, overwrite=True)
    finally:
        if (folder / _TEMP_MARKER).is_file():
            shutil.rmtree(folder, ignore_errors=True)
