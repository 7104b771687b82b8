"""Every Examples block in the core modules' docstrings runs and passes."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import napari_wsseg


def _core_modules() -> list[str]:
    return sorted(
        info.name
        for info in pkgutil.walk_packages(napari_wsseg.__path__, prefix="napari_wsseg.")
        if ".widgets" not in info.name
    )


@pytest.mark.parametrize("name", _core_modules())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
