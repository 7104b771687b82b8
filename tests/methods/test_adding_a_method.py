"""docs/methods/adding-a-method.md, followed as written: its method, registered by its registry
line, trains, saves, reloads and predicts through the public API, slice-wise and block-wise."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from napari_wsseg import methods
from napari_wsseg.annotations.model import Annotations
from napari_wsseg.engine.results import FitResult
from napari_wsseg.errors import ModelError, WssegError
from napari_wsseg.io.image import as_image
from napari_wsseg.io.readers import read_labels
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.predict.slices import predict_image
from napari_wsseg.predict.volume import predict_volume

GUIDE = Path(__file__).parents[2] / "docs" / "methods" / "adding-a-method.md"
MODULE_PATH = "src/napari_wsseg/methods/threshold/method.py"


def _python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


@pytest.fixture
def threshold(monkeypatch):
    """The guide's method module, importable under the name its registry line gives."""
    blocks = _python_blocks(GUIDE.read_text(encoding="utf-8"))
    [code] = [b for b in blocks if b.startswith(f"# {MODULE_PATH}\n")]
    [registry] = [b for b in blocks if b.startswith("# src/napari_wsseg/methods/__init__.py")]
    key, target = re.search(r'^\s*"(\w+)": "([\w.]+:\w+)",$', registry, flags=re.MULTILINE).groups()
    module_name, class_name = target.split(":")
    assert module_name.replace(".", "/") + ".py" == MODULE_PATH.removeprefix("src/")

    module = types.ModuleType(module_name)
    module.__file__ = MODULE_PATH
    monkeypatch.setitem(sys.modules, module_name, module)
    exec(compile(code, MODULE_PATH, "exec"), module.__dict__)
    monkeypatch.setitem(methods._REGISTRY, key, target)
    method_class = getattr(module, class_name)
    assert method_class.name == key
    return method_class


def _points(labels: np.ndarray, per_class: int = 6) -> np.ndarray:
    """Clicks on slices 0 and 4, ``per_class`` of every class, from the ground truth."""
    rng = np.random.default_rng(0)
    rows = []
    for z in (0, 4):
        for cls in range(int(labels.max()) + 1):
            ys, xs = np.nonzero(labels[z] == cls)
            for i in rng.choice(len(ys), per_class, replace=False):
                rows.append([z, ys[i], xs[i], cls])
    return np.array(rows, dtype=np.int64)


def test_the_guide_method_runs_through_the_public_api(threshold, phantom_3d, tmp_path):
    image, labels, classes = phantom_3d
    img = as_image(image)
    assert "threshold" in methods.available_methods()
    assert methods.get_method("threshold") is threshold

    model = threshold(sigma=1.5)
    result = model.fit(
        img, Annotations(classes=classes, points=_points(labels)), FitOptions(seed=0)
    )
    assert isinstance(result, FitResult) and result.stopped == "done"
    assert (
        model.halo == 7 and model.halo_z == 0 and set(model.main_options) <= {"sigma", "softness"}
    )
    proba = model.predict_proba_slice(img.slice(2))
    assert proba.shape == (len(classes), *image.shape[1:]) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=0), 1.0, atol=1e-5)
    # what the method promises: a pixel whose smoothed intensity is a class's mean gets that class
    order = np.argsort(model.means)
    assert np.all(np.diff(model.means[order]) > 0)  # distinct means on the phantom
    smoothed = model._smoothed(img.slice(2))
    nearest = np.argmin(np.abs(smoothed[None] - model.means[:, None, None]), axis=0)
    np.testing.assert_array_equal(np.argmax(proba, axis=0), nearest)

    folder = model.save(tmp_path / "threshold")
    meta = json.loads((folder / "config.json").read_text())
    assert meta["method"] == "threshold" and meta["config"] == {"sigma": 1.5, "softness": 0.05}
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    reloaded = load_model(folder)
    assert type(reloaded) is threshold
    np.testing.assert_array_equal(reloaded.predict_proba_slice(img.slice(2)), proba)

    slice_wise = predict_image(reloaded, img)
    expected = np.argmax(
        np.stack([reloaded.predict_proba_slice(img.slice(z)) for z in range(img.n_slices)], axis=1),
        axis=0,
    )
    np.testing.assert_array_equal(slice_wise, expected)

    out = tmp_path / "pred.zarr"
    volume = predict_volume(folder, image, out, block=(3, 37, 53))
    assert volume.stopped == "done" and volume.n_blocks == 3 * 4 * 3
    np.testing.assert_array_equal(np.asarray(read_labels(out)), expected)  # no seams: the halo


def test_the_guide_method_refuses_bad_input_in_one_line(threshold, phantom_3d, tmp_path):
    image, labels, classes = phantom_3d
    with pytest.raises(WssegError, match=r"sigma=-1 must be between 0 and 32") as bad_option:
        threshold(sigma=-1)
    assert "\n" not in str(bad_option.value)
    only_two_classes = _points(labels)
    only_two_classes = only_two_classes[only_two_classes[:, 3] < 2]
    with pytest.raises(WssegError, match=r"add points of \['mitochondrion', 'nucleus'\]"):
        threshold().fit(as_image(image), Annotations(classes=classes, points=only_two_classes))

    model = threshold()
    model.fit(as_image(image), Annotations(classes=classes, points=_points(labels)))
    folder = model.save(tmp_path / "m")
    from safetensors.numpy import save_file

    save_file({"means": np.zeros(2, np.float32)}, str(folder / "model.safetensors"))
    with pytest.raises(ModelError, match="does not hold one finite mean per class"):
        load_model(folder)
