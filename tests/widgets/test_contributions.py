"""The reader and sample-data contributions, through a real napari viewer."""

from __future__ import annotations

import numpy as np
import tifffile

from napari_wsseg.widgets._reader import napari_get_reader


def test_sample_data_opens_phantom_with_class_coloured_ground_truth(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-wsseg", "phantom_2d")
    image, truth = viewer.layers[0], viewer.layers[1]
    assert image.data.ndim == 2 and truth.data.shape == image.data.shape
    assert truth.data.min() >= 1  # label k is class k-1: every pixel has a class
    assert len(np.unique(truth.data)) >= 3


def test_reader_opens_a_tiff_stack(make_napari_viewer, tmp_path):
    stack = np.random.default_rng(0).integers(0, 255, (6, 20, 24), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "stack.tif"), plugin="napari-wsseg")
    np.testing.assert_array_equal(np.asarray(viewer.layers[-1].data), stack)


def test_reader_declines_unknown_files(tmp_path):
    assert napari_get_reader(str(tmp_path / "notes.txt")) is None
    assert napari_get_reader(str(tmp_path / "a.tif")) is not None
