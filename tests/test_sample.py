"""The procedural phantom: shapes, classes, determinism, slice continuity, files on disk."""

import json

import numpy as np
import pytest
import tifffile

from napari_wsseg.errors import WssegError
from napari_wsseg.eval import evaluate
from napari_wsseg.sample import PHANTOM_CLASSES, make_phantom, sample_2d, save_sample


@pytest.fixture(scope="module")
def phantom5():
    return make_phantom((16, 128, 128), seed=0, n_classes=5)


@pytest.mark.parametrize("n_classes", [3, 4, 5])
def test_volume_has_dense_labels_of_every_class(n_classes):
    image, labels, classes = make_phantom((6, 128, 128), seed=3, n_classes=n_classes)
    assert image.shape == labels.shape == (6, 128, 128)
    assert image.dtype == labels.dtype == np.uint8
    assert [c.name for c in classes] == [c.name for c in PHANTOM_CLASSES[:n_classes]]
    assert np.array_equal(np.unique(labels), np.arange(n_classes))


def test_classes_have_distinct_names_and_colours():
    _, _, classes = make_phantom((32, 32), n_classes=5)
    assert len({c.name for c in classes}) == len({c.color for c in classes}) == 5


def test_2d_shape_gives_2d_arrays():
    image, labels, _ = make_phantom((96, 80), seed=1)
    assert image.shape == labels.shape == (96, 80)
    assert image.std() > 10


def test_same_seed_same_phantom_other_seed_differs():
    a = make_phantom((4, 64, 64), seed=7)
    b = make_phantom((4, 64, 64), seed=7)
    c = make_phantom((4, 64, 64), seed=8)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


def test_neighbouring_slices_agree_mostly_but_not_fully(phantom5):
    _, labels, _ = phantom5
    agreement = (labels[1:] == labels[:-1]).mean(axis=(1, 2))
    assert agreement.min() > 0.8
    assert agreement.max() < 0.999
    far = (labels[0] == labels[-1]).mean()
    assert far < agreement.mean()  # objects drift through the stack


def test_membranes_are_thin(phantom5):
    from scipy import ndimage as ndi

    _, labels, _ = phantom5
    depth = ndi.distance_transform_edt(labels[8] == 1)
    assert 0.03 < (labels[8] == 1).mean() < 0.25
    assert np.percentile(depth[depth > 0], 95) <= 3  # half-width: membranes ~2-4 px wide


def test_intensity_alone_does_not_separate_classes(phantom5):
    image, labels, _ = phantom5
    # best possible grey-value lookup table, fitted on the ground truth itself
    hist = np.zeros((256, 5))
    np.add.at(hist, (image.ravel(), labels.ravel()), 1)
    lut = hist.argmax(axis=1).astype(np.uint8)
    result = evaluate(lut[image], labels, n_classes=5)
    assert result["mean_fg_dice"] < 0.5
    means = [image[labels == k].mean() for k in range(5)]
    assert means[1] < means[0] and means[2] < means[0]  # membranes, mitochondria dark


def test_save_sample_writes_tifs_and_classes(tmp_path):
    paths = save_sample(tmp_path / "out", shape=(3, 40, 48), seed=2, n_classes=5)
    image, labels, classes = make_phantom((3, 40, 48), seed=2, n_classes=5)
    assert np.array_equal(tifffile.imread(paths["image"]), image)
    assert np.array_equal(tifffile.imread(paths["labels"]), labels)
    records = json.loads(paths["classes"].read_text())
    assert records == [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(classes)]


def test_sample_2d_is_5_class_512():
    image, labels, classes = sample_2d()
    assert image.shape == (512, 512) and len(classes) == 5
    assert labels.max() == 4


@pytest.mark.parametrize(
    ("shape", "n_classes"), [((4,), 4), ((2, 3, 64, 64), 4), ((4, 64), 4), ((64, 64), 6)]
)
def test_bad_arguments_raise(shape, n_classes):
    with pytest.raises(WssegError, match="phantom"):
        make_phantom(shape, n_classes=n_classes)
