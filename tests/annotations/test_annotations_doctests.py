"""The Examples in the annotation modules' docstrings run and pass."""

import doctest

import pytest

from napari_wsseg.annotations import csv, model, targets, validate


@pytest.mark.parametrize("module", [csv, model, targets, validate], ids=lambda m: m.__name__)
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
