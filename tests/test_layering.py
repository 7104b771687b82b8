"""The core never imports Qt, napari, magicgui or superqt (only napari_wsseg.widgets may)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import napari_wsseg

GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")


def _core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(napari_wsseg.__path__, prefix="napari_wsseg."):
        if ".widgets" not in info.name and "._tests" not in info.name:
            names.append(info.name)
    return names


def test_core_modules_import_no_gui_toolkit():
    modules = _core_modules()
    assert "napari_wsseg.cli" in modules and "napari_wsseg.methods.rf" in modules
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {GUI_MODULES!r})\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"GUI modules imported by the core: {out.stdout.strip()}"


def test_registry_import_does_not_import_torch():
    code = "import sys, napari_wsseg.methods as m; m.available_methods(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
