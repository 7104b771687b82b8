"""Dependencies point one way, and the core never imports Qt, napari, magicgui or superqt.

The layers, lowest first (README's Layout): ``errors``/``progress`` -> ``io``/``annotations`` ->
``engine`` -> ``methods`` -> ``predict``/``eval``/``project``/... -> ``cli``/``widgets``. A module
may import its own layer and the layers below it. The check reads every import statement,
including those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import napari_wsseg

GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "magicgui", "superqt")
PACKAGE_ROOT = Path(napari_wsseg.__file__).parent

#: Rank of each top-level part of the package; imports go to the same or a lower rank. A new
#: top-level core module not listed here gets APPLICATION's rank.
RANKS = {
    "": 0,
    "errors": 0,
    "progress": 0,
    "io": 1,
    "annotations": 1,
    "engine": 2,
    "methods": 3,
    "cli": 5,
    "widgets": 5,
}
APPLICATION = 4  # predict, eval, project, sample and other core modules beside them
#: Modules of ``methods`` that every method may import; methods never import each other
#: (``methods.warm``: the warm-start policy, not itself a method).
SHARED_METHOD_MODULES = ("methods", "methods.base", "methods._torch", "methods.warm")


def _core_modules() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(napari_wsseg.__path__, prefix="napari_wsseg."):
        if ".widgets" not in info.name and "._tests" not in info.name:
            names.append(info.name)
    return names


def _module_files() -> dict[str, Path]:
    """``{"io.readers": path, "methods": path of methods/__init__.py, ...}``."""
    files = {}
    for path in PACKAGE_ROOT.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE_ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _imports(module: str, path: Path) -> set[str]:
    """The ``napari_wsseg`` modules ``module`` imports, relative to the package (``"io.image"``)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = _strip_root(node.module or "")
        elif isinstance(node, ast.Import):
            names = [_strip_root(alias.name) for alias in node.names]
            found.update(n for n in names if n is not None)
            continue
        else:
            continue
        if target is not None:
            found.add(target)
    return found


def _strip_root(name: str) -> str | None:
    if name == "napari_wsseg":
        return ""
    if name.startswith("napari_wsseg."):
        return name[len("napari_wsseg.") :]
    return None


def _part(module: str) -> str:
    return module.split(".")[0]


def _rank(module: str) -> int:
    return RANKS.get(_part(module), APPLICATION)


def _edges() -> list[tuple[str, str]]:
    return [
        (module, target)
        for module, path in sorted(_module_files().items())
        for target in sorted(_imports(module, path))
    ]


def test_the_import_graph_is_read():
    edges = _edges()
    assert ("methods._torch", "engine.tiling") in edges
    assert ("io.convert", "progress") in edges
    assert ("predict.volume", "methods.base") in edges  # a lazy import inside a function


def test_dependencies_point_down():
    """Siblings of one layer may import each other (io and annotations, predict and eval), except
    the front ends: cli and widgets stay independent."""
    upward = [
        f"{module} -> {target}"
        for module, target in _edges()
        if _part(module) != _part(target)
        and (_rank(target) > _rank(module) or _rank(target) == RANKS["cli"])
    ]
    assert upward == [], "imports against the layering:\n" + "\n".join(upward)


@pytest.mark.parametrize(
    "lower, upper",
    [
        ("io", ("engine", "methods", "predict")),
        ("annotations", ("engine", "methods", "predict")),
        ("engine", ("methods", "predict")),
        ("methods", ("predict", "widgets", "cli")),
    ],
)
def test_named_layers_do_not_import_upwards(lower, upper):
    bad = [f"{m} -> {t}" for m, t in _edges() if _part(m) == lower and _part(t) in upper]
    assert bad == []


def test_methods_do_not_import_each_other():
    def method_of(module: str) -> str | None:
        if module in SHARED_METHOD_MODULES or _part(module) != "methods":
            return None
        return module.split(".")[1]

    crossing = [
        f"{m} -> {t}"
        for m, t in _edges()
        if method_of(m) and method_of(t) and method_of(m) != method_of(t)
    ]
    assert crossing == []


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
    code = (
        "import sys, napari_wsseg.methods as m; m.available_methods(); "
        "print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
