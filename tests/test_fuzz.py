"""Fuzz tests: the annotation CSV readers, the class-list reader and the model loader may answer
any input only with a result or a clear :class:`~napari_wsseg.errors.WssegError` (one line),
never with another exception.

Each test is bounded (at most 200 examples) and derandomized, so CI runs the same examples every
time; no example database is written.
"""

from __future__ import annotations

import copy
import json
import shutil
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from napari_wsseg.annotations import csv as ann_csv
from napari_wsseg.errors import WssegError

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

READERS = {
    "points": ann_csv.read_points_csv,
    "boxes": ann_csv.read_boxes_csv,
    "tags": ann_csv.read_tags_csv,
    "sizes": ann_csv.read_sizes_csv,
}
HEADERS = {
    "points": ["z,y,x,class", "y,x,class"],
    "boxes": ["z,y0,x0,y1,x1,class", "y0,x0,y1,x1,class", "z,y0,x0,y1,x1,class,exhaustive"],
    "tags": ["z,class", "class"],
    "sizes": ["z,class,fraction", "class,fraction"],
}
#: Cells every reader accepts, and cells that reach the parsers' corners (huge, negative,
#: fractional, non-finite, odd spellings, names).
PLAUSIBLE = st.sampled_from(["0", "1", "2", "12", " 3 "])
NASTY = st.one_of(
    st.integers(-(2**70), 2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(
        [
            "",
            " ",
            "nan",
            "inf",
            "-inf",
            "1e400",
            "1_0",
            "0x10",
            "１",
            "½",
            "cyto",
            "mito",
            "'q'",
            '"a,b"',
            "1.5",
            "-0",
            "+3",
            " 7 ",
            "1e-400",
            "True",
            "9.3e18",
        ]
    ),
    st.text(max_size=8),
)
CLASSES = [
    None,
    ["cyto", "mito", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c11", "c12"],
]


def assert_clear(error: Exception) -> None:
    """A clear user error: a WssegError whose message is one non-empty line."""
    assert isinstance(error, WssegError), f"{type(error).__name__}: {error}"
    message = str(error)
    assert message and "\n" not in message, message


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _read(kind: str, path, classes):
    try:
        array = READERS[kind](path, classes=classes)
    except Exception as error:  # noqa: BLE001 - what the fuzz test is about
        assert_clear(error)
        event("refused")
        return None
    assert array.ndim == 2 and len(array) >= 1
    event("read")
    return array


@pytest.mark.parametrize("kind", list(READERS))
@FUZZ
@given(data=st.data())
def test_csv_reader_answers_structured_rows_clearly(scratch, kind, data):
    header = data.draw(
        st.sampled_from(HEADERS[kind]) | st.sampled_from(["z,y,x", "", "z,,class"]), label="header"
    )
    width = header.count(",") + 1
    rows = data.draw(
        st.lists(st.lists(PLAUSIBLE, min_size=width, max_size=width), max_size=4), label="rows"
    )
    for _ in range(data.draw(st.integers(0, 2), label="nasty cells")):
        if rows:
            row = rows[data.draw(st.integers(0, len(rows) - 1), label="row")]
            row[data.draw(st.integers(0, width - 1), label="column")] = data.draw(
                NASTY, label="cell"
            )
    if data.draw(st.booleans(), label="ragged row"):
        rows.append(data.draw(st.lists(NASTY, max_size=8), label="ragged"))
    text = "\n".join([header] + [",".join(row) for row in rows]) + "\n"
    path = scratch / f"{kind}.csv"
    path.write_text(text, encoding="utf-8")
    array = _read(kind, path, data.draw(st.sampled_from(CLASSES), label="classes"))
    if array is not None:
        assert np.all(np.isfinite(array))
        assert np.abs(array).max() <= 2**53 or kind == "sizes"  # no silent int64 overflow


@pytest.mark.parametrize("kind", list(READERS))
@FUZZ
@given(
    raw=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(lambda t: t.encode("utf-8")))
)
def test_csv_reader_answers_any_bytes_clearly(scratch, kind, raw):
    path = scratch / f"{kind}-raw.csv"
    path.write_bytes(raw)
    _read(kind, path, None)


JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
CLASS_ENTRY = st.fixed_dictionaries(
    {},
    optional={
        "id": JSON | st.integers(-2, 5),
        "name": JSON | st.sampled_from(["a", "b", " a "]),
        "color": JSON | st.sampled_from(["#ff0000", "red", ""]),
    },
)


@FUZZ
@given(document=st.one_of(JSON, st.lists(CLASS_ENTRY, max_size=5)), raw=st.binary(max_size=20))
def test_classes_json_reader_answers_clearly(scratch, document, raw):
    path = scratch / "classes.json"
    for content in (json.dumps(document).encode(), raw):
        path.write_bytes(content)
        try:
            classes = ann_csv.read_classes_json(path)
        except Exception as error:  # noqa: BLE001
            assert_clear(error)
        else:
            assert classes and all(isinstance(c.name, str) and c.name for c in classes)


# ------------------------------------------------------------------------------ model loader
@pytest.fixture(scope="module")
def model_folders(phantom_2d, tmp_path_factory):
    """Small trained rf, dsp and size model folders (weights stay valid; config.json is fuzzed)."""
    from napari_wsseg.annotations.model import Annotations
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.base import FitOptions
    from napari_wsseg.methods.dsp.method import DSPMethod
    from napari_wsseg.methods.rf import RandomForestMethod
    from napari_wsseg.methods.size.method import SizeMethod

    image, labels, classes = phantom_2d
    rng = np.random.default_rng(0)
    ys, xs = rng.integers(0, 128, 40), rng.integers(0, 128, 40)
    annotations = Annotations(
        classes=classes, points=np.stack([0 * ys, ys, xs, labels[ys, xs]], axis=1)
    )
    root = tmp_path_factory.mktemp("models")
    models = {
        "rf": RandomForestMethod(n_estimators=2, max_depth=3, sigma_max=2.0),
        "dsp": DSPMethod(
            depth=1, width=4, embed_dim=8, crop_size=32, batch_size=2, max_steps=1, cpu_bf16=False
        ),
        "size": SizeMethod(depth=1, width=4, crop_size=32, batch_size=2, max_steps=1),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, model in models.items():
            model.fit(as_image(image), annotations, FitOptions(device="cpu"))
            model.save(root / name)
    return root


def _paths(node, prefix=()):
    """Every path ``(key, index, ...)`` into a JSON document, the root excluded."""
    children = (
        node.items()
        if isinstance(node, dict)
        else enumerate(node)
        if isinstance(node, list)
        else ()
    )
    for key, child in children:
        yield prefix + (key,)
        yield from _paths(child, prefix + (key,))


def _mutate(meta: dict, data) -> dict:
    """1-3 random edits: replace a value by any JSON value or a scaled number, or delete it."""
    meta = copy.deepcopy(meta)
    for _ in range(data.draw(st.integers(1, 3), label="edits")):
        paths = list(_paths(meta))
        if not paths:
            break
        path = data.draw(st.sampled_from(paths), label="path")
        parent = meta
        for key in path[:-1]:
            parent = parent[key]
        action = data.draw(st.sampled_from(["replace", "scale", "delete"]), label="action")
        old = parent[path[-1]]
        if action == "delete":
            del parent[path[-1]]
        elif action == "scale" and isinstance(old, (int, float)) and not isinstance(old, bool):
            factor = data.draw(st.sampled_from([-1, 0, 10**9, 10**-9, 2**64, 1.5]), label="factor")
            parent[path[-1]] = old * factor if old * factor == old * factor else 0
        else:
            parent[path[-1]] = data.draw(JSON, label="value")
    return meta


@pytest.mark.parametrize("method", ["rf", "dsp", "size"])
@FUZZ
@given(data=st.data())
def test_model_loader_answers_a_fuzzed_config_json_clearly(model_folders, method, data):
    from napari_wsseg.methods.base import load_model

    source = model_folders / method
    meta = _mutate(json.loads((source / "config.json").read_text()), data)
    folder = model_folders / f"fuzzed-{method}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(source, folder)
    (folder / "config.json").write_text(json.dumps(meta))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = load_model(folder)
            proba = model.predict_proba_slice(np.full((16, 16, model.n_channels), 100, np.uint8))
    except Exception as error:  # noqa: BLE001
        assert_clear(error)
        event("refused")
    else:
        assert proba.shape == (len(model.classes), 16, 16) and np.all(np.isfinite(proba))
        event("loaded and predicted")
