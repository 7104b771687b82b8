"""A catalogue of hostile inputs: each is refused with one clear line and changes nothing.

Every case runs the ``wsseg`` command line in-process and checks what a user would see: exit
status 2, exactly one ``wsseg: error:`` line on stderr that names the offending file or argument
and says how to fix it, no traceback, and every file the user had (and the shared inputs) byte
for byte as before, with no new file left behind.

The shared inputs are built once per module: a 2x32x32 phantom written by ``wsseg sample``,
simulated clicks, a 2-tree rf model and a finished block-wise prediction.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

from napari_wsseg.cli import main

#: A message must offer a fix: one of these verbs.
FIX_VERBS = (
    "give",
    "use",
    "pass",
    "choose",
    "remove",
    "write",
    "pick",
    "retrain",
    "fix",
    "check",
    "add",
    "delete",
    "see",
    "rename",
    "install",
    "create",
    "resume",
    "name it",
    "renumber",
    "swap",
    "restore",
    "open",
)


@dataclass
class Workspace:
    """Paths a case may use: shared inputs (never to be changed) and the case's own folder."""

    shared: Path
    tmp: Path

    @property
    def image(self) -> Path:
        return self.shared / "sample" / "image.tif"

    @property
    def labels(self) -> Path:
        return self.shared / "sample" / "labels.tif"

    @property
    def classes(self) -> Path:
        return self.shared / "sample" / "classes.json"

    @property
    def points(self) -> Path:
        return self.shared / "clicks" / "points.csv"

    @property
    def model(self) -> Path:
        return self.shared / "model"

    @property
    def batch(self) -> Path:
        return self.shared / "batch.zarr"

    def write(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
        return path

    def npy(self, name: str, array: np.ndarray) -> Path:
        path = self.tmp / name
        np.save(path, array)
        return path

    def model_copy(self, edit=None) -> Path:
        """A copy of the trained model whose config.json ``edit(meta)`` may change."""
        folder = self.tmp / "model-copy"
        shutil.copytree(self.model, folder)
        if edit is not None:
            meta = json.loads((folder / "config.json").read_text())
            edit(meta)
            (folder / "config.json").write_text(json.dumps(meta))
        return folder

    def batch_copy(self) -> Path:
        folder = self.tmp / "pred.zarr"
        shutil.copytree(self.batch, folder)
        return folder

    def train(self, *extra, points=None, out=None) -> list:
        return [
            "train",
            self.image,
            "--points",
            points or self.points,
            "--classes",
            self.classes,
            "--method",
            "rf",
            "--out",
            out or self.tmp / "m",
            "--n-estimators",
            "2",
            *extra,
        ]

    def predict(self, *extra, model=None, image=None, out=None) -> list:
        return [
            "predict",
            model or self.model,
            image or self.image,
            "--out",
            out or self.tmp / "p.tif",
            *extra,
        ]


def _succeed(*argv) -> None:
    assert main([str(a) for a in argv]) == 0


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shared")
    sample, clicks = root / "sample", root / "clicks"
    _succeed("sample", "--out", sample, "--shape", "2,32,32")
    _succeed("simulate", sample / "labels.tif", "--out", clicks, "--points", "3")
    _succeed("train", sample / "image.tif", "--points", clicks / "points.csv", "--classes",
             sample / "classes.json", "--method", "rf", "--out", root / "model",
             "--n-estimators", "2", "--sigma-max", "4")  # fmt: skip
    _succeed("predict", root / "model", sample / "image.tif", "--out", root / "batch.zarr",
             "--block", "1,32,32")  # fmt: skip
    return root


def _tree_digest(*folders: Path) -> dict[str, str]:
    digest = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            key = str(path)
            digest[key] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return digest


# Each case: (id, builder(ws) -> argv, text the error line must contain, or a tuple of texts one
# of which it must contain)
CASES = [
    # ---------------------------------------------------------------- command-line arguments
    ("train-device-tpu9", lambda ws: ws.train("--device", "tpu9"), "tpu9"),
    ("train-device-cuda-letter", lambda ws: ws.train("--device", "cuda:x"), "cuda:x"),
    ("train-time-budget-nan", lambda ws: ws.train("--time-budget", "nan"), "--time-budget"),
    ("train-time-budget-negative", lambda ws: ws.train("--time-budget", "-5"), "--time-budget"),
    ("train-time-budget-inf", lambda ws: ws.train("--time-budget", "inf"), "--time-budget"),
    ("train-seed-negative", lambda ws: ws.train("--seed", "-1"), "--seed"),
    (
        "train-unknown-method",
        lambda ws: ["train", ws.image, "--method", "nope", "--out", ws.tmp / "m"],
        "--method",
    ),
    ("train-unknown-option", lambda ws: ws.train("--frobnicate", "3"), "--frobnicate"),
    ("rf-n-estimators-0", lambda ws: ws.train("--n-estimators", "0"), "n_estimators"),
    ("rf-n-estimators-text", lambda ws: ws.train("--n-estimators", "many"), "--n-estimators"),
    ("rf-n-estimators-huge", lambda ws: ws.train("--n-estimators", "9" * 30), "n_estimators"),
    ("rf-sigma-max-negative", lambda ws: ws.train("--sigma-max", "-1"), "sigma_max"),
    ("rf-sigma-min-nan", lambda ws: ws.train("--sigma-min", "nan"), "--sigma-min"),
    (
        "rf-sigma-min-above-max",
        lambda ws: ws.train("--sigma-min", "8", "--sigma-max", "2"),
        "sigma_min",
    ),
    ("rf-max-depth-0", lambda ws: ws.train("--max-depth", "0"), "max_depth"),
    (
        "predict-slices-huge-range",
        lambda ws: ws.predict("--slices", "0-99999999999999999999"),
        "--slices",
    ),
    ("predict-slices-megabyte", lambda ws: ws.predict("--slices", "1-" * 500_000), "--slices"),
    ("predict-slices-reversed", lambda ws: ws.predict("--slices", "1-0"), "1-0"),
    ("predict-slices-outside", lambda ws: ws.predict("--slices", "5"), "--slices"),
    ("predict-slices-words", lambda ws: ws.predict("--slices", "first,last"), "first"),
    ("predict-slices-negative", lambda ws: ws.predict("--slices", "-1"), "-1"),
    (
        "predict-workers-0",
        lambda ws: ws.predict("--scheduler", "processes", "--workers", "0", out=ws.tmp / "p.zarr"),
        "--workers",
    ),
    (
        "predict-block-0",
        lambda ws: ws.predict("--block", "0,8,8", out=ws.tmp / "p.zarr"),
        "--block",
    ),
    (
        "predict-resume-with-slices",
        lambda ws: ws.predict("--resume", "--slices", "0", out=ws.tmp / "p.zarr"),
        "--resume",
    ),
    (
        "sample-shape-text",
        lambda ws: ["sample", "--out", ws.tmp / "s", "--shape", "3,a"],
        "--shape",
    ),
    ("sample-shape-1d", lambda ws: ["sample", "--out", ws.tmp / "s", "--shape", "5"], "--shape"),
    ("sample-shape-tiny", lambda ws: ["sample", "--out", ws.tmp / "s", "--shape", "2,2"], "shape"),
    (
        "evaluate-n-classes-0",
        lambda ws: ["evaluate", ws.labels, ws.labels, "--n-classes", "0"],
        "--n-classes",
    ),
    (
        "evaluate-slices-reversed",
        lambda ws: ["evaluate", ws.labels, ws.labels, "--slices", "1-0"],
        "1-0",
    ),
    ("import-out-not-zarr", lambda ws: ["import", ws.image, "--out", ws.tmp / "vol.n5"], "vol.n5"),
    (
        "simulate-size-noise-nan",
        lambda ws: ["simulate", ws.labels, "--out", ws.tmp / "a", "--sizes", "--size-noise", "nan"],
        "--size-noise",
    ),
    (
        "simulate-slice-list-reversed",
        lambda ws: ["simulate", ws.labels, "--out", ws.tmp / "a", "--slice-list", "1-0"],
        "--slice-list",
    ),
    # ------------------------------------------------------------ outputs that hold user data
    ("train-out-user-folder", lambda ws: ws.train(out=_user_folder(ws)), "mine"),
    (
        "train-out-user-folder-overwrite",
        lambda ws: ws.train("--overwrite", out=_user_folder(ws)),
        "mine",
    ),
    ("train-out-holds-the-image", lambda ws: ws.train("--overwrite", out=ws.image.parent), "image"),
    ("train-out-existing-model", lambda ws: ws.train(out=ws.model_copy()), "--overwrite"),
    ("train-out-is-a-file", lambda ws: ws.train(out=ws.write("m.txt", "notes")), "m.txt"),
    ("predict-out-exists", lambda ws: ws.predict(out=ws.write("p.tif", b"mine")), "--overwrite"),
    ("predict-out-is-the-image", lambda ws: ws.predict("--overwrite", out=ws.image), "input image"),
    ("predict-out-in-the-model", lambda ws: ws.predict(out=ws.model / "p.tif"), "model folder"),
    ("predict-out-is-a-folder", lambda ws: ws.predict("--overwrite", out=_user_folder(ws)), "mine"),
    (
        "predict-out-user-zarr",
        lambda ws: ws.predict("--overwrite", out=_user_folder(ws, "mine.zarr")),
        "mine.zarr",
    ),
    (
        "predict-overwrite-other-tools-labels",
        lambda ws: ws.predict("--overwrite", "--block", "1,32,32", out=_other_tools_labels(ws)),
        "cells.zarr",
    ),
    (
        "predict-overwrite-other-tools-labels-tiles",
        lambda ws: ws.predict("--overwrite", out=_other_tools_labels(ws)),
        "cells.zarr",
    ),
    (
        "simulate-overwrite-user-csv",
        lambda ws: [
            "simulate",
            ws.labels,
            "--out",
            _user_csv_folder(ws),
            "--tags",
            "--overwrite",
        ],
        "points.csv",
    ),
    (
        "sample-out-has-sample",
        lambda ws: ["sample", "--out", ws.image.parent, "--shape", "2,32,32"],
        "--overwrite",
    ),
    (
        "sample-out-is-a-file",
        lambda ws: ["sample", "--out", ws.write("s.txt", "x"), "--shape", "8,8"],
        "s.txt",
    ),
    (
        "simulate-out-has-csvs",
        lambda ws: ["simulate", ws.labels, "--out", ws.points.parent, "--points", "1"],
        "--overwrite",
    ),
    (
        "simulate-out-is-the-gt",
        lambda ws: [
            "simulate",
            _copy(ws.labels, ws.tmp / "masks.npy", ws),
            "--out",
            ws.tmp,
            "--masks",
            "--overwrite",
        ],
        "masks.npy",
    ),
    (
        "import-out-exists",
        lambda ws: ["import", ws.image, "--out", _user_folder(ws, "v.zarr")],
        "v.zarr",
    ),
    (
        "measure-instances-is-the-labels",
        lambda ws: [
            "measure",
            _copy_tree(ws.batch, ws.tmp / "pred.zarr"),
            "--out",
            ws.tmp / "t.csv",
            "--instances",
            ws.tmp / "pred.zarr",
            "--overwrite",
        ],
        "pred.zarr",
    ),
    (
        "measure-instances-exists",
        lambda ws: [
            "measure",
            ws.labels,
            "--out",
            ws.tmp / "t.csv",
            "--instances",
            _copy_tree(ws.batch, ws.tmp / "old.zarr"),
        ],
        "--overwrite",
    ),
    # ------------------------------------------------------------------------------ images
    ("image-missing", lambda ws: _train_on(ws, ws.tmp / "nope.tif"), "nope.tif"),
    ("image-empty-file", lambda ws: _train_on(ws, ws.write("empty.tif", b"")), "empty.tif"),
    (
        "image-wrong-extension",
        lambda ws: _train_on(ws, ws.write("image.bmp", b"BM....")),
        "image.bmp",
    ),
    (
        "image-truncated-tiff",
        lambda ws: _train_on(ws, ws.write("cut.tif", ws.image.read_bytes()[:300])),
        "cut.tif",
    ),
    ("image-is-a-folder", lambda ws: _train_on(ws, _user_folder(ws, "stack.tif")), "stack.tif"),
    (
        "image-one-pixel",
        lambda ws: _train_on(ws, ws.npy("dot.npy", np.ones((1, 1), np.uint8))),
        "points",
    ),
    (
        "image-all-nan",
        lambda ws: _train_on(ws, ws.npy("nan.npy", np.full((2, 32, 32), np.nan))),
        "nan.npy",
    ),
    (
        "image-all-inf",
        lambda ws: _train_on(ws, ws.npy("inf.npy", np.full((2, 32, 32), np.inf, np.float32))),
        "inf.npy",
    ),
    (
        "image-5d-npy",
        lambda ws: _train_on(ws, ws.npy("five.npy", np.zeros((2, 2, 2, 32, 32), np.uint8))),
        "five.npy",
    ),
    (
        "image-complex-npy",
        lambda ws: _train_on(ws, ws.npy("cplx.npy", np.zeros((2, 32, 32), complex))),
        "cplx.npy",
    ),
    (
        "image-garbage-npy",
        lambda ws: _train_on(ws, ws.write("junk.npy", b"\x93NUMPY garbage")),
        "junk.npy",
    ),
    (
        "image-pickled-npy",
        lambda ws: _train_on(ws, ws.npy("obj.npy", np.array([{"a": 1}], object))),
        "obj.npy",
    ),
    ("predict-image-wrong-channels", lambda ws: ws.predict(image=_rgb_tiff(ws)), "channel"),
    # -------------------------------------------------------------------------------- CSVs
    ("csv-bad-header", lambda ws: ws.train(points=ws.write("p.csv", "a,b,c\n1,2,3\n")), "p.csv"),
    # Rows that parse but do not fit the image are named by kind and row ("points row 1").
    (
        "csv-negative-coords",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,-4,5,0\n")),
        "points row 1",
    ),
    (
        "csv-outside-image",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,40,5,0\n")),
        "points row 1",
    ),
    (
        "csv-slice-outside",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n7,4,5,0\n")),
        "points row 1",
    ),
    (
        "csv-unknown-class",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,4,5,9\n")),
        "p.csv",
    ),
    (
        "csv-unknown-class-name",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,4,5,golgi\n")),
        "golgi",
    ),
    (
        "csv-huge-number",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,4,1" + "0" * 40 + ",0\n")),
        ("p.csv", "points row 1"),  # refused by the reader, or by the image-shape check
    ),
    (
        "csv-fraction-coords",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,4.5,5,0\n")),
        "p.csv",
    ),
    (
        "csv-nan-coords",
        lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,nan,5,0\n")),
        "p.csv",
    ),
    (
        "csv-non-utf8",
        lambda ws: ws.train(points=ws.write("p.csv", b"z,y,x,class\n0,4,5,\xff\xfe\n")),
        "p.csv",
    ),
    ("csv-empty-file", lambda ws: ws.train(points=ws.write("p.csv", "")), "p.csv"),
    ("csv-missing", lambda ws: ws.train(points=ws.tmp / "gone.csv"), "gone.csv"),
    ("csv-header-only", lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n")), "p.csv"),
    ("csv-short-row", lambda ws: ws.train(points=ws.write("p.csv", "z,y,x,class\n0,4\n")), "p.csv"),
    (
        "boxes-upside-down",
        lambda ws: ws.train("--boxes", ws.write("b.csv", "z,y0,x0,y1,x1,class\n0,9,9,2,2,0\n")),
        "b.csv: boxes row 1",
    ),
    (
        "tags-unknown-class",
        lambda ws: ws.train("--tags", ws.write("t.csv", "z,class\n0,12\n")),
        "t.csv",
    ),
    (
        "sizes-fraction-above-one",
        lambda ws: ws.train("--sizes", ws.write("s.csv", "z,class,fraction\n0,0,1.7\n")),
        "s.csv: sizes row 1",
    ),
    (
        "masks-wrong-shape",
        lambda ws: ws.train("--masks", ws.npy("m.npy", np.ones((5, 5), np.uint8))),
        "m.npy: mask shape",
    ),
    # ------------------------------------------------------------------------- class lists
    ("classes-duplicate-names", lambda ws: ws.train_classes("a,b,a"), "a"),
    ("classes-empty-text", lambda ws: ws.train_classes(" , "), "--classes"),
    (
        "classes-json-duplicate",
        lambda ws: ws.train_classes(
            ws.write("c.json", json.dumps([{"id": 0, "name": "x"}, {"id": 1, "name": "x"}]))
        ),
        "c.json",
    ),
    (
        "classes-json-bad-colour",
        lambda ws: ws.train_classes(
            ws.write(
                "c.json",
                json.dumps([{"id": 0, "name": "x", "color": "blurple"}, {"id": 1, "name": "y"}]),
            )
        ),
        "blurple",
    ),
    ("classes-json-empty-list", lambda ws: ws.train_classes(ws.write("c.json", "[]")), "c.json"),
    ("classes-json-not-json", lambda ws: ws.train_classes(ws.write("c.json", "{oops")), "c.json"),
    (
        "classes-json-bad-ids",
        lambda ws: ws.train_classes(
            ws.write("c.json", json.dumps([{"id": 0, "name": "x"}, {"id": 5, "name": "y"}]))
        ),
        "c.json",
    ),
    ("classes-json-missing", lambda ws: ws.train_classes(ws.tmp / "gone.json"), "gone.json"),
    # ------------------------------------------------------------------------ model folders
    ("model-folder-missing", lambda ws: ws.predict(model=ws.tmp / "no-model"), "no-model"),
    (
        "model-config-missing",
        lambda ws: ws.predict(model=_without(ws.model_copy(), "config.json")),
        "config.json",
    ),
    (
        "model-config-not-json",
        lambda ws: ws.predict(model=_overwrite(ws.model_copy(), "config.json", "{broken")),
        "config.json",
    ),
    (
        "model-format-version-99",
        lambda ws: ws.predict(model=ws.model_copy(lambda m: m.update(format_version=99))),
        "format version",
    ),
    (
        "model-weights-missing",
        lambda ws: ws.predict(model=_without(ws.model_copy(), "model.safetensors")),
        "model-copy",
    ),
    (
        "model-unknown-method",
        lambda ws: ws.predict(model=ws.model_copy(lambda m: m.update(method="zz"))),
        "zz",
    ),
    (
        "model-nan-normalization",
        lambda ws: ws.predict(
            model=ws.model_copy(
                lambda m: m.update(normalization={"low": [float("nan")], "high": [1.0]})
            )
        ),
        "normalization",
    ),
    (
        "model-n-estimators-0",
        lambda ws: ws.predict(model=ws.model_copy(lambda m: m["config"].update(n_estimators=0))),
        "n_estimators",
    ),
    (
        "model-sigma-max-huge",
        lambda ws: ws.predict(model=ws.model_copy(lambda m: m["config"].update(sigma_max=1e9))),
        "sigma_max",
    ),
    (
        "model-unknown-option",
        lambda ws: ws.predict(model=ws.model_copy(lambda m: m["config"].update(turbo=True))),
        "turbo",
    ),
    # ------------------------------------------------------------------------ batch outputs
    (
        "batch-resume-user-zarr",
        lambda ws: ws.predict("--resume", out=_user_folder(ws, "mine.zarr")),
        "mine.zarr",
    ),
    (
        "batch-resume-and-overwrite",
        lambda ws: ws.predict("--resume", "--overwrite", out=ws.batch_copy()),
        "resume",
    ),
    ("batch-exists-without-flag", lambda ws: ws.predict(out=ws.batch_copy()), "--overwrite"),
    (
        "batch-resume-other-block",
        lambda ws: ws.predict("--resume", "--block", "2,16,16", out=ws.batch_copy()),
        "block",
    ),
]


def _user_folder(ws: Workspace, name: str = "mine") -> Path:
    """A folder of the user's own files."""
    folder = ws.tmp / name
    folder.mkdir()
    (folder / "thesis.txt").write_text("years of work")
    return folder


def _other_tools_labels(ws: Workspace) -> Path:
    """An OME-Zarr label image written by ome-zarr-py (not napari-wsseg) inside an image."""
    import zarr
    from ome_zarr.writer import write_labels as ome_write_labels

    image = ws.tmp / "theirs.zarr"
    zarr.open_group(str(image), mode="w", zarr_format=3)
    labels = np.ones((2, 32, 32), np.uint8)
    ome_write_labels(labels, str(image), name="cells.zarr", axes="zyx", scaler=None,
                     scale_factors=())  # fmt: skip
    return image / "labels" / "cells.zarr"


def _user_csv_folder(ws: Workspace) -> Path:
    """A folder holding the user's own points.csv (not written by napari-wsseg)."""
    folder = _user_folder(ws, "clicks")
    (folder / "points.csv").write_text("z,y,x,class\n0,4,4,1\n")
    return folder


def _rgb_tiff(ws: Workspace) -> Path:
    path = ws.tmp / "rgb.tif"
    tifffile.imwrite(path, np.zeros((32, 32, 3), np.uint8), photometric="rgb")
    return path


def _copy_tree(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def _copy(source: Path, target: Path, ws: Workspace) -> Path:
    target.write_bytes(source.read_bytes())
    return target


def _without(folder: Path, name: str) -> Path:
    (folder / name).unlink()
    return folder


def _overwrite(folder: Path, name: str, text: str) -> Path:
    (folder / name).write_text(text)
    return folder


def _train_on(ws: Workspace, image: Path) -> list:
    return ["train", image, "--points", ws.points, "--method", "rf", "--out", ws.tmp / "m"]


def _train_classes(self: Workspace, classes) -> list:
    return [
        "train",
        self.image,
        "--points",
        self.points,
        "--classes",
        classes,
        "--method",
        "rf",
        "--out",
        self.tmp / "m",
    ]


Workspace.train_classes = _train_classes


def test_the_catalogue_is_large_enough():
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("build", "names"), [pytest.param(b, n, id=i) for i, b, n in CASES])
def test_hostile_input_is_refused_in_one_line(build, names, shared, tmp_path, capsys):
    ws = Workspace(shared, tmp_path)
    argv = [str(a) for a in build(ws)]
    before = _tree_digest(shared, tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 2, f"exit {code}; stderr: {err[:500]}"
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("wsseg: error: "), err[:1000]
    line = lines[0]
    assert len(line) <= 500, f"{len(line)} characters"
    assert any(name in line for name in ((names,) if isinstance(names, str) else names)), line
    assert any(verb in line.lower() for verb in FIX_VERBS), line
    assert _tree_digest(shared, tmp_path) == before, "files changed or left behind"


def _foreign_project(ws: Workspace) -> Path:
    """Another tool's folder that happens to hold a ``project.json``."""
    folder = _user_folder(ws, "website")
    (folder / "project.json").write_text('{"name": "my-website"}')
    return folder


def _project_file(ws: Workspace, text: str) -> Path:
    folder = ws.tmp / "proj"
    folder.mkdir()
    (folder / "project.json").write_text(text)
    return folder


def _create(folder: Path):
    from napari_wsseg.annotations.model import default_classes
    from napari_wsseg.project import Project

    return Project.create(folder, image_shape=(1, 8, 8), classes=default_classes(2), overwrite=True)


def _open(folder: Path):
    from napari_wsseg.project import Project

    return Project.open(folder)


# Project folders have no subcommand: (id, build(ws) -> folder, open or create, text the one-line
# ProjectError must contain)
PROJECT_CASES = [
    ("open-missing-folder", lambda ws: ws.tmp / "nowhere", _open, "nowhere"),
    ("open-user-folder", _user_folder, _open, "project.json"),
    ("open-bad-json", lambda ws: _project_file(ws, "{oops"), _open, "project.json"),
    ("open-json-list", lambda ws: _project_file(ws, "[]"), _open, "project.json"),
    (
        "open-schema-99",
        lambda ws: _project_file(ws, '{"schema_version": 99}'),
        _open,
        "schema version",
    ),
    ("create-over-user-folder", _user_folder, _create, "mine"),
    ("create-over-foreign-project-json", _foreign_project, _create, "website"),
]


@pytest.mark.parametrize(
    ("build", "action", "names"), [pytest.param(b, a, n, id=i) for i, b, a, n in PROJECT_CASES]
)
def test_hostile_project_folder_is_refused_in_one_line(build, action, names, shared, tmp_path):
    from napari_wsseg.errors import ProjectError

    folder = build(Workspace(shared, tmp_path))
    before = _tree_digest(tmp_path)
    with pytest.raises(ProjectError) as info:
        action(folder)
    message = str(info.value)
    assert "\n" not in message and names in message, message
    assert any(verb in message.lower() for verb in FIX_VERBS), message
    assert _tree_digest(tmp_path) == before, "files changed or left behind"


# ----------------------------------------------------------- the rules, through the Python API
def _trained_rf():
    from napari_wsseg.annotations.model import Annotations, default_classes
    from napari_wsseg.io.image import Image
    from napari_wsseg.methods import get_method

    image = np.zeros((1, 16, 16), np.float32)
    image[:, :, 8:] = 1.0
    model = get_method("rf")(n_estimators=2, sigma_max=2.0)
    model.fit(
        Image(image[..., None], source="halves"),
        Annotations(default_classes(2), points=[[0, 4, 2, 0], [0, 4, 12, 1]]),
    )
    return model


def test_save_refuses_what_is_not_its_own(tmp_path):
    from napari_wsseg.errors import ModelError
    from napari_wsseg.methods.base import is_model_folder

    model = _trained_rf()
    (tmp_path / "empty").mkdir()
    assert is_model_folder(model.save(tmp_path / "empty"))  # an empty folder is fine
    with pytest.raises(ModelError, match="--overwrite"):
        model.save(tmp_path / "empty")
    assert is_model_folder(model.save(tmp_path / "empty", overwrite=True))
    user = _user_folder(Workspace(tmp_path, tmp_path))
    with pytest.raises(ModelError, match="not a napari-wsseg model"):
        model.save(user, overwrite=True)
    assert [p.name for p in user.iterdir()] == ["thesis.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "mine"]  # no temporary left


def test_save_refuses_a_config_json_of_another_tool(tmp_path):
    from napari_wsseg.errors import ModelError

    folder = tmp_path / "app"
    folder.mkdir()
    (folder / "config.json").write_text('{"theme": "dark"}')
    with pytest.raises(ModelError, match="not a napari-wsseg model"):
        _trained_rf().save(folder, overwrite=True)
    assert (folder / "config.json").read_text() == '{"theme": "dark"}'


def test_slice_ranges_are_bounded_before_they_are_built():
    from napari_wsseg.errors import WssegError
    from napari_wsseg.predict.slices import parse_slices

    assert parse_slices("0-2,1", 3) == [0, 1, 2]
    with pytest.raises(WssegError, match="outside") as info:
        parse_slices("0-" + "9" * 100_000, 3)
    assert len(str(info.value)) < 200
    with pytest.raises(WssegError, match="backwards; write it as 1-3"):
        parse_slices("3-1", 5)


def test_normalisation_ignores_nan_and_inf_and_maps_them_to_finite_values():
    from napari_wsseg.errors import ImageFormatError
    from napari_wsseg.io.normalize import Normalization

    values = np.linspace(0, 100, 1001, dtype=np.float32)[:, None]
    clean = Normalization.from_array(values)
    dirty = values.copy()
    dirty[3], dirty[500] = np.nan, np.inf
    assert Normalization.from_array(dirty).low == pytest.approx(clean.low, abs=0.2)
    assert Normalization.from_array(dirty).high == pytest.approx(clean.high, abs=0.2)
    assert np.isfinite(clean.apply(dirty)).all()
    with pytest.raises(ImageFormatError, match="no finite value"):
        Normalization.from_array(np.full((5, 1), np.nan))


def test_a_model_from_an_image_with_one_nan_predicts_like_one_without(tmp_path, capsys):
    from napari_wsseg.methods.base import read_model_config

    sample = tmp_path / "s"
    assert main(["sample", "--out", str(sample), "--shape", "2,48,48"]) == 0
    assert (
        main(
            ["simulate", str(sample / "labels.tif"), "--out", str(tmp_path / "a"), "--points", "4"]
        )
        == 0
    )
    image = tifffile.imread(sample / "image.tif").astype(np.float32)
    image[0, 10, 10] = np.nan
    np.save(tmp_path / "nan.npy", image)
    np.save(tmp_path / "clean.npy", np.nan_to_num(image, nan=float(image[0, 10, 11])))
    for name in ("nan", "clean"):
        assert (
            main(
                [
                    "train",
                    str(tmp_path / f"{name}.npy"),
                    "--points",
                    str(tmp_path / "a" / "points.csv"),
                    "--method",
                    "rf",
                    "--n-estimators",
                    "5",
                    "--out",
                    str(tmp_path / f"m-{name}"),
                ]
            )
            == 0
        )
        assert (
            main(
                [
                    "predict",
                    str(tmp_path / f"m-{name}"),
                    str(tmp_path / f"{name}.npy"),
                    "--out",
                    str(tmp_path / f"p-{name}.npy"),
                ]
            )
            == 0
        )
    capsys.readouterr()
    normalization = read_model_config(tmp_path / "m-nan")["normalization"]
    assert np.isfinite(normalization["low"] + normalization["high"]).all()
    with_nan, without = np.load(tmp_path / "p-nan.npy"), np.load(tmp_path / "p-clean.npy")
    assert len(np.unique(with_nan)) > 1
    assert (with_nan == without).mean() > 0.95


def test_device_names_are_checked_for_every_method():
    from napari_wsseg.engine.devices import check_device_name
    from napari_wsseg.errors import WssegError
    from napari_wsseg.methods.base import FitOptions

    assert [check_device_name(d) for d in ("auto", "CPU", "cuda", "cuda:1")] == [
        "auto",
        "cpu",
        "cuda",
        "cuda:1",
    ]
    for bad in ("tpu9", "cuda:", "cuda:-1", "mps", ""):
        with pytest.raises(WssegError, match="use one of auto, cpu, cuda"):
            FitOptions(device=bad)
    for budget in (float("nan"), float("inf"), -1.0, 0.0):
        with pytest.raises(WssegError, match="time budget"):
            FitOptions(time_budget_s=budget)


def test_rf_options_are_bounded_also_in_a_model_file():
    from napari_wsseg.errors import WssegError
    from napari_wsseg.methods.base import config_from_dict
    from napari_wsseg.methods.rf import RFConfig

    assert config_from_dict(RFConfig, {"n_estimators": 3, "sigma_max": 4.0}).n_estimators == 3
    for bad in (
        {"n_estimators": 0},
        {"n_estimators": 10**8},
        {"n_estimators": 2.5},
        {"sigma_max": -1.0},
        {"sigma_min": 0.0},
        {"sigma_max": float("inf")},
        {"num_sigma": 0},
        {"max_samples_per_class": 0},
        {"max_depth": True},
    ):
        with pytest.raises(WssegError, match="rf option"):
            config_from_dict(RFConfig, bad)
