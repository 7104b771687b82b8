"""A model folder is untrusted input: crafted files are refused with one clear line, never a hang,
a crash or an allocation the file did not pay for.

Each test saves a real tiny model, edits one thing in its files the way an attacker (or a broken
disk) could, and loads it again.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from napari_wsseg.annotations.model import Annotations
from napari_wsseg.errors import ModelError
from napari_wsseg.io.image import as_image
from napari_wsseg.methods.base import FitOptions, load_model
from napari_wsseg.methods.rf import RandomForestMethod


def assert_one_line(error: pytest.ExceptionInfo, *parts: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, f"{part!r} not in {message!r}"


# ------------------------------------------------------------------------------ rf forests
@pytest.fixture(scope="module")
def rf_folder(phantom_2d, tmp_path_factory):
    image, labels, classes = phantom_2d
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, labels.shape[0], 60), rng.integers(0, labels.shape[1], 60)
    points = np.stack([np.zeros_like(ys), ys, xs, labels[ys, xs]], axis=1)
    rf = RandomForestMethod(n_estimators=2, max_depth=4, sigma_max=4.0)
    rf.fit(as_image(image), Annotations(classes=classes, points=points), FitOptions(seed=0))
    return rf.save(tmp_path_factory.mktemp("rf") / "model")


def _crafted_rf(rf_folder, tmp_path, edit) -> tuple:
    """A copy of ``rf_folder`` whose weights went through ``edit(tensors, metadata)``."""
    import shutil

    from safetensors import safe_open

    folder = tmp_path / "crafted"
    shutil.copytree(rf_folder, folder)
    path = folder / "model.safetensors"
    with safe_open(str(path), framework="numpy") as f:
        metadata = dict(f.metadata())
    tensors = load_file(str(path))
    edit(tensors, metadata)
    save_file(tensors, str(path), metadata=metadata)
    return folder, path


def _inner(tensors) -> int:
    """An inner node of tree 0 other than the root."""
    left = tensors["tree0.left_child"]
    return int(np.flatnonzero(left != -1)[1])


def _set(name, index, value):
    def edit(tensors, metadata):
        array = tensors[f"tree0.{name}"].copy()
        array[index(tensors) if callable(index) else index] = value
        tensors[f"tree0.{name}"] = array

    return edit


RF_CRAFTS = {
    "root points to itself": (
        lambda t, m: [_set(side, 0, 0)(t, m) for side in ("left_child", "right_child")],
        "not after its parent",
    ),
    "inner node points back to the root (a cycle)": (
        lambda t, m: _set("right_child", _inner(t), 0)(t, m),
        "not after its parent",
    ),
    "child -1 on one side only": (_set("left_child", 0, -1), "one child"),
    "child index out of range": (_set("right_child", 0, 10**9), "out of range"),
    "child index below -1": (_set("right_child", 0, -7), "out of range"),
    "both children the same node": (
        lambda t, m: _set("right_child", 0, int(t["tree0.left_child"][0]))(t, m),
        "several parents",
    ),
    "feature index beyond the feature count": (_set("feature", 0, 10**6), "feature index"),
    "negative feature index": (_set("feature", 0, -3), "feature index"),
    "NaN threshold": (_set("threshold", 0, np.nan), "threshold"),
    "leaf values of the wrong shape": (
        lambda t, m: t.__setitem__("tree0.values", t["tree0.values"][:, :, :1].copy()),
        "leaf values",
    ),
    "negative leaf value": (_set("values", 0, -1.0), "leaf values"),
    "node field of the wrong length": (
        lambda t, m: t.__setitem__("tree0.feature", t["tree0.feature"][:-1].copy()),
        "field feature",
    ),
    "10^9 trees declared": (lambda t, m: m.__setitem__("n_trees", str(10**9)), "declares"),
    "fewer trees declared than stored": (lambda t, m: m.__setitem__("n_trees", "1"), "declares"),
    "feature count that is not a number": (
        lambda t, m: m.__setitem__("n_features", "many"),
        "forest description",
    ),
    "feature count of another filter bank": (
        lambda t, m: m.__setitem__("n_features", str(int(m["n_features"]) + 1)),
        "filter bank",
    ),
    "class id beyond the class list": (
        lambda t, m: t.__setitem__("classes", t["classes"] + 5),
        "class ids",
    ),
    "classes not increasing": (
        lambda t, m: t.__setitem__("classes", t["classes"][::-1].copy()),
        "classes",
    ),
}


@pytest.mark.parametrize("craft", list(RF_CRAFTS))
def test_crafted_rf_forest_is_refused_naming_the_file(rf_folder, tmp_path, craft):
    edit, expected = RF_CRAFTS[craft]
    folder, path = _crafted_rf(rf_folder, tmp_path, edit)
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(error, str(path), expected, "retrain")


def test_untouched_rf_copy_loads_and_predicts(rf_folder, tmp_path, phantom_2d):
    """The crafting helper itself changes nothing: the refusals above come from the edits."""
    folder, _ = _crafted_rf(rf_folder, tmp_path, lambda t, m: None)
    image = phantom_2d[0][..., None]
    np.testing.assert_array_equal(
        load_model(folder).predict_slice(image), load_model(rf_folder).predict_slice(image)
    )


# ------------------------------------------------------------------ config.json of any method
def _rewrite_config(folder, tmp_path, edit):
    """A copy of ``folder`` whose config.json went through ``edit(meta)``."""
    import shutil

    copy = tmp_path / "crafted"
    shutil.copytree(folder, copy)
    meta = json.loads((copy / "config.json").read_text())
    edit(meta)
    (copy / "config.json").write_text(json.dumps(meta))
    return copy


@pytest.fixture(scope="module")
def dsp_folder(phantom_2d, tmp_path_factory):
    from napari_wsseg.methods.dsp.method import DSPMethod

    image, labels, classes = phantom_2d
    points = np.array([[0, y, x, int(labels[y, x])] for y, x in ((10, 10), (60, 70), (100, 30))])
    method = DSPMethod(
        depth=1, width=4, embed_dim=8, crop_size=32, batch_size=2, max_steps=2, cpu_bf16=False
    )
    method.fit(
        as_image(image), Annotations(classes=classes, points=points), FitOptions(device="cpu")
    )
    return method.save(tmp_path_factory.mktemp("dsp") / "model")


def _set_key(*keys, value):
    def edit(meta):
        target = meta
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value

    return edit


CONFIG_CRAFTS = {
    "10^8 prototypes": (
        _set_key("config", "prototypes_per_class", value=10**8),
        "prototypes_per_class",
    ),
    "a 10^6-pixel tile": (_set_key("config", "tile", value=10**6), "tile=1000000"),
    "a depth given as text": (_set_key("config", "depth", value="3"), "depth='3'"),
    "a NaN temperature": (lambda m: m["config"].__setitem__("tau", float("nan")), "tau=nan"),
    "an unknown option": (_set_key("config", "evil", value=1), "unknown option"),
    "options that are a list": (_set_key("config", value=[1, 2]), "mapping"),
    "10^9 channels": (_set_key("n_channels", value=10**9), "n_channels"),
    "channels as text": (_set_key("n_channels", value="1"), "n_channels"),
    "normalisation of another channel count": (
        _set_key("normalization", value={"low": [0, 0], "high": [1, 1]}),
        "normalization",
    ),
    "no classes": (_set_key("classes", value=[]), "classes"),
    "a class with an extra key": (lambda m: m["classes"][0].__setitem__("evil", 1), "classes"),
    "a method name that is a list": (_set_key("method", value=["dsp"]), "method"),
    "an unknown method": (_set_key("method", value="evil"), "unknown method"),
    "a missing key": (lambda m: m.pop("normalization"), "missing"),
    "state that is a list": (_set_key("state", value=[]), "state"),
    "a prior shift of text": (
        _set_key("state", "log_prior_shift", value=["a"] * 4),
        "log_prior_shift",
    ),
    "a prior shift per wrong class count": (
        _set_key("state", "log_prior_shift", value=[0.0]),
        "log_prior_shift",
    ),
    "fit info that is a number": (_set_key("state", "fit", value=3), "state fit"),
    "format version true": (_set_key("format_version", value=True), "format version"),
    "label counts of text": (
        _set_key("training_summary", "counts", "points", value=["x"]),
        "counts",
    ),
    "warnings that are a number": (_set_key("training_summary", "warnings", value=7), "warnings"),
    "a label count past int64": (  # found by test_fuzz: numpy's isfinite raised TypeError
        _set_key("training_summary", "counts", "points", value=[-(2**63) - 1]),
        "counts",
    ),
}


@pytest.mark.parametrize("craft", list(CONFIG_CRAFTS))
def test_crafted_config_json_is_refused_naming_the_folder(dsp_folder, tmp_path, craft):
    edit, expected = CONFIG_CRAFTS[craft]
    folder = _rewrite_config(dsp_folder, tmp_path, edit)
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(error, str(folder), expected, "retrain")


@pytest.mark.parametrize(
    "text", ["[1, 2]", '"model"', "[" * 100_000, "\xff\xfe".encode("latin-1").decode("latin-1")]
)
def test_config_json_that_is_not_an_object_is_refused(dsp_folder, tmp_path, text):
    folder = _rewrite_config(dsp_folder, tmp_path, lambda meta: None)
    (folder / "config.json").write_bytes(
        text.encode("latin-1") if text.startswith("\xff") else text.encode()
    )
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(error, str(folder), "config.json", "retrain")


def test_architecture_options_must_match_the_stored_tensor_shapes(
    dsp_folder, tmp_path, monkeypatch
):
    """A config asking for a bigger network than the file holds is refused from the file header,
    before the network is built (so a crafted config cannot make us allocate it)."""
    import torch

    from napari_wsseg.methods.dsp import method as dsp_method

    built_on = []
    real = dsp_method.PrototypeUNet

    def recording(*args):
        built_on.append(torch.get_default_device().type)
        return real(*args)

    monkeypatch.setattr(dsp_method, "PrototypeUNet", recording)
    folder = _rewrite_config(
        dsp_folder, tmp_path, _set_key("config", "prototypes_per_class", value=100)
    )
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(
        error, str(folder / "model.safetensors"), "prototypes", "config.json implies", "retrain"
    )
    assert built_on == ["meta"]  # only the shape probe was built, on torch's meta device


def test_nan_weights_are_refused(dsp_folder, tmp_path):
    import shutil

    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    folder = tmp_path / "nan"
    shutil.copytree(dsp_folder, folder)
    tensors = load_torch(str(folder / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = tensors[key].clone().fill_(float("nan"))
    save_torch(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(error, "model.safetensors", "NaN", "retrain")


def test_untouched_dsp_copy_loads(dsp_folder, tmp_path, phantom_2d):
    folder = _rewrite_config(dsp_folder, tmp_path, lambda meta: None)
    image = phantom_2d[0][..., None]
    np.testing.assert_allclose(
        load_model(folder).predict_proba_slice(image),
        load_model(dsp_folder).predict_proba_slice(image),
        atol=1e-6,
    )


# ------------------------------------------------------------------ mews: paths in a model file
@pytest.fixture(scope="module")
def mews_folder(phantom_2d, tmp_path_factory):
    """A mews model trained with backbone weights read from a file, and that file."""
    import timm
    import torch
    from safetensors.torch import save_file as save_torch

    from napari_wsseg.methods.mews.method import MEWSMethod

    root = tmp_path_factory.mktemp("mews")
    torch.manual_seed(0)
    vit = timm.create_model("test_vit", pretrained=False)
    weights = root / "vit.safetensors"
    save_torch({k: v.contiguous() for k, v in vit.state_dict().items()}, str(weights))
    image, labels, classes = phantom_2d
    rng = np.random.default_rng(0)
    rows = []
    for cls in range(len(classes)):
        ys, xs = np.nonzero(labels == cls)
        rows += [[0, ys[i], xs[i], cls] for i in rng.choice(len(ys), 2, replace=False)]
    method = MEWSMethod(backbone="test_vit", backbone_weights=str(weights), max_steps=1)
    method.fit(
        as_image(image),
        Annotations(classes=classes, points=np.array(rows)),
        FitOptions(device="cpu"),
    )
    return method.save(root / "model"), weights


def _predict_once(folder, image):
    model = load_model(folder)
    return model.predict_slice(image[..., None])


@pytest.mark.parametrize("cache_dir", ["../../escaped", "/tmp/wsseg-untrusted-abs"])
def test_mews_cache_dir_outside_the_model_folder_is_ignored_with_a_warning(
    mews_folder, tmp_path, phantom_2d, monkeypatch, cache_dir
):
    monkeypatch.setenv("WSSEG_CACHE_DIR", str(tmp_path / "user-cache"))
    folder = _rewrite_config(
        mews_folder[0], tmp_path / "a" / "b", _set_key("config", "cache_dir", value=cache_dir)
    )
    target = (folder / cache_dir).resolve()
    before = target.exists()
    with pytest.warns(UserWarning, match="outside the model folder .* keeping features in memory"):
        labels = _predict_once(folder, phantom_2d[0])
    assert labels.shape == phantom_2d[0].shape
    assert target.exists() == before  # nothing was created there


def test_mews_cache_dir_inside_the_model_folder_or_the_cache_root_is_used(
    mews_folder, tmp_path, phantom_2d, monkeypatch
):
    monkeypatch.setenv("WSSEG_CACHE_DIR", str(tmp_path / "user-cache"))
    inside = _rewrite_config(
        mews_folder[0], tmp_path / "in", _set_key("config", "cache_dir", value="features")
    )
    _predict_once(inside, phantom_2d[0])
    assert (inside / "features" / "zarr.json").is_file()
    in_root = tmp_path / "user-cache" / "mews"
    folder = _rewrite_config(
        mews_folder[0], tmp_path / "root", _set_key("config", "cache_dir", value=str(in_root))
    )
    _predict_once(folder, phantom_2d[0])
    assert (in_root / "zarr.json").is_file()


def test_mews_backbone_file_with_other_bytes_is_not_read(mews_folder, tmp_path, monkeypatch):
    """The model records its weights file's sha256: a file of another content at the recorded
    path (or found by name) is refused before it is parsed."""
    import timm
    import torch

    from napari_wsseg.engine import vit

    folder, weights = mews_folder
    other = tmp_path / "other.pt"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), str(other))
    crafted = _rewrite_config(
        folder, tmp_path, _set_key("state", "backbone", "weights_source", value=f"file:{other}")
    )
    parsed = []
    monkeypatch.setattr(vit, "_read_state_dict", lambda path: parsed.append(path))
    with pytest.raises(ModelError) as error:
        load_model(crafted)
    assert_one_line(error, str(other), "file weights hash", "retrain")
    assert parsed == []


def test_mews_model_without_a_file_hash_only_reads_safetensors(mews_folder, tmp_path, monkeypatch):
    import timm
    import torch

    from napari_wsseg.engine import vit

    folder, _ = mews_folder
    other = tmp_path / "state.pt"
    torch.save(timm.create_model("test_vit", pretrained=False).state_dict(), str(other))

    def edit(meta):
        meta["state"]["backbone"]["weights_source"] = f"file:{other}"
        del meta["state"]["backbone"]["weights_file_sha256"]

    crafted = _rewrite_config(folder, tmp_path, edit)
    parsed = []
    monkeypatch.setattr(vit, "_read_state_dict", lambda path: parsed.append(path))
    with pytest.raises(ModelError) as error:
        load_model(crafted)
    assert_one_line(error, "state.pt", "does not exist")
    assert parsed == []


def test_loaded_mews_model_never_uses_the_config_weights_path(mews_folder, tmp_path):
    folder, weights = mews_folder

    def edit(meta):
        del meta["state"]["backbone"]["weights_source"]
        meta["config"]["backbone_weights"] = "/etc/passwd"

    with pytest.raises(ModelError) as error:
        load_model(_rewrite_config(folder, tmp_path, edit))
    assert_one_line(error, "weights source None", "retrain")


@pytest.mark.parametrize(
    "edit, expected",
    [
        (
            lambda t: t.__setitem__("heads", t["heads"][:, :, :3].contiguous()),
            "config.json implies",
        ),
        (lambda t: t.pop("centroids"), "config.json implies"),
        (
            lambda t: t.__setitem__("heads", t["heads"].clone().fill_(float("inf"))),
            "NaN or infinite",
        ),
    ],
)
def test_mews_heads_must_fit_the_config(mews_folder, tmp_path, edit, expected):
    import shutil

    from safetensors.torch import load_file as load_torch
    from safetensors.torch import save_file as save_torch

    folder = tmp_path / "m"
    shutil.copytree(mews_folder[0], folder)
    tensors = load_torch(str(folder / "model.safetensors"))
    edit(tensors)
    save_torch(tensors, str(folder / "model.safetensors"))
    with pytest.raises(ModelError) as error:
        load_model(folder)
    assert_one_line(error, "model.safetensors", expected, "retrain")


def test_untouched_mews_copy_loads_with_its_hash_checked_file(mews_folder, tmp_path, phantom_2d):
    folder = _rewrite_config(mews_folder[0], tmp_path, lambda meta: None)
    meta = json.loads((folder / "config.json").read_text())
    assert len(meta["state"]["backbone"]["weights_file_sha256"]) == 64
    np.testing.assert_array_equal(
        _predict_once(folder, phantom_2d[0]), _predict_once(mews_folder[0], phantom_2d[0])
    )
