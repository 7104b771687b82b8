from __future__ import annotations

import pytest

from napari_wsseg.errors import WssegError
from napari_wsseg.predict.slices import parse_slices


def test_parse_slices_ranges_and_lists():
    assert parse_slices("15-19", 20) == [15, 16, 17, 18, 19]
    assert parse_slices("3, 1,2", 5) == [1, 2, 3]
    assert parse_slices(None, 5) is None


@pytest.mark.parametrize(
    "text, message", [("a", "not a slice number"), ("3,25", r"outside the image's 0..19")]
)
def test_parse_slices_errors(text, message):
    with pytest.raises(WssegError, match=message):
        parse_slices(text, 20)
