"""The project store: create/open round trip, validation on add, atomic saves, schema version."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from napari_wsseg.annotations.model import default_classes
from napari_wsseg.errors import AnnotationError, ProjectError
from napari_wsseg.project import Project, is_project


@pytest.fixture
def project(tmp_path):
    return Project.create(
        tmp_path / "proj", image_shape=(4, 32, 32), classes=default_classes(3, ["a", "b", "c"])
    )


def test_round_trip_of_every_kind(project):
    project.add_points([[0, 1, 2, 0], [3, 31, 31, 2]])
    project.add_boxes([[1, 2, 3, 10, 12, 1]])
    project.add_tags([[2, 0], [2, 1]])
    project.add_sizes([[1, 0, 0.5], [1, 1, 0.3], [1, 2, 0.2]])
    masks = np.zeros((4, 32, 32), np.uint8)
    masks[0, 20:24, 20:24] = 2
    project.set_masks(masks)
    project.save()

    again = Project.open(project.folder)
    ann = again.annotations
    assert ann.points.tolist() == [[0, 1, 2, 0], [3, 31, 31, 2]]
    assert ann.boxes.tolist() == [[1, 2, 3, 10, 12, 1]]
    assert ann.tags.tolist() == [[2, 0], [2, 1]]
    np.testing.assert_allclose(ann.sizes, [[1, 0, 0.5], [1, 1, 0.3], [1, 2, 0.2]])
    np.testing.assert_array_equal(ann.masks, masks)
    assert [c.name for c in again.classes] == ["a", "b", "c"]
    assert again.image_shape == (4, 32, 32)


def test_invalid_annotations_never_reach_the_project(project):
    with pytest.raises(AnnotationError):
        project.add_points([[0, 40, 2, 0]])  # y outside the 32-pixel image
    assert len(project.annotations.points) == 0


def test_create_refuses_existing_project(project):
    with pytest.raises(ProjectError, match="already exists"):
        Project.create(project.folder, image_shape=(1, 4, 4), classes=default_classes(2))


def test_unknown_schema_version_is_refused(project):
    meta = json.loads((project.folder / "project.json").read_text())
    meta["schema_version"] = 99
    (project.folder / "project.json").write_text(json.dumps(meta))
    with pytest.raises(ProjectError, match="schema version 99"):
        Project.open(project.folder)


def test_not_a_project(tmp_path):
    assert not is_project(tmp_path)
    with pytest.raises(ProjectError, match="not a napari-wsseg project"):
        Project.open(tmp_path)


def test_old_snapshots_are_pruned_and_latest_kept(project):
    for i in range(5):
        project.add_points([[0, i, i, 0]])
        project.save()
    snapshots = sorted(p.name for p in (project.folder / "annotations").iterdir())
    assert len(snapshots) == 2
    assert len(Project.open(project.folder).annotations.points) == 5


def test_kill_during_save_keeps_last_completed_save(tmp_path):
    """A process killed in the middle of save() leaves the previous save readable."""
    folder = tmp_path / "proj"
    p = Project.create(folder, image_shape=(1, 64, 64), classes=default_classes(2))
    p.add_points([[0, 1, 1, 0]])
    p.save()
    script = textwrap.dedent(f"""
        import os, signal
        import napari_wsseg.project as project_module
        from napari_wsseg.project import Project
        p = Project.open({str(folder)!r})
        p.add_points([[0, 2, 2, 1]])
        original = project_module._write_snapshot
        def write_then_die(path, annotations):
            original(path, annotations)
            os.kill(os.getpid(), signal.SIGKILL)   # dies before project.json is switched
        project_module._write_snapshot = write_then_die
        p.save()
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -9
    reopened = Project.open(folder)
    assert reopened.annotations.points.tolist() == [[0, 1, 1, 0]]
    reopened.add_points([[0, 3, 3, 1]])
    reopened.save()  # the next save cleans the leftover temporary snapshot
    assert not list((folder / "annotations").glob(".tmp-*"))
    assert len(Project.open(folder).annotations.points) == 2


def test_models_are_saved_into_the_project(project, phantom_2d):
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods.rf import RandomForestMethod

    image, labels, classes = phantom_2d
    p = Project.create(
        project.folder.parent / "p2", image_shape=(1,) + image.shape, classes=classes
    )
    p.add_points([[0, 5, 5, int(labels[5, 5])], [0, 60, 60, int(labels[60, 60])]])
    rf = RandomForestMethod(n_estimators=3)
    rf.fit(as_image(image), p.annotations)
    p.save_model(rf, "rf-1")
    assert p.list_models() == ["rf-1"]
    reloaded = Project.open(p.folder).load_model("rf-1")
    np.testing.assert_array_equal(
        reloaded.predict_slice(image[..., None]), rf.predict_slice(image[..., None])
    )
    with pytest.raises(ProjectError, match="not a plain folder name"):
        p.model_dir("../evil")


# ----------------------------------------------------------------- paths inside the project
def _project_with_own_image(folder):
    import zarr

    p = Project.create(folder, image_shape=(2, 8, 8), classes=default_classes(2))
    array = zarr.create_array(
        str(folder / "image.zarr"), shape=(2, 8, 8), dtype="uint8", chunks=(1, 8, 8)
    )
    array[:] = 7
    p.set_image_path(folder / "image.zarr")
    return p


def test_own_image_is_stored_relative_so_a_copy_reads_its_own_image(tmp_path):
    import shutil

    original = _project_with_own_image(tmp_path / "a")
    assert (
        json.loads((original.folder / "project.json").read_text())["image"]["path"] == "image.zarr"
    )
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    shutil.rmtree(tmp_path / "a")  # the original is gone: the copy must not need it
    copy = Project.open(tmp_path / "copy")
    assert copy.image_path == str(tmp_path / "copy" / "image.zarr")
    assert int(np.asarray(copy.load_image().data).max()) == 7


def test_old_absolute_own_image_path_still_works_after_a_move_and_is_migrated(tmp_path):
    p = _project_with_own_image(tmp_path / "old")
    meta = json.loads((p.folder / "project.json").read_text())
    meta["image"]["path"] = str(
        (tmp_path / "old" / "image.zarr").resolve()
    )  # as older releases wrote it
    (p.folder / "project.json").write_text(json.dumps(meta))
    (tmp_path / "old").rename(tmp_path / "moved")
    moved = Project.open(tmp_path / "moved")
    assert moved.load_image().shape == (2, 8, 8)
    moved.save()
    assert (
        json.loads((tmp_path / "moved" / "project.json").read_text())["image"]["path"]
        == "image.zarr"
    )


def test_external_image_stays_absolute(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "vol.tif", np.zeros((2, 8, 8), np.uint8))
    p = Project.create(tmp_path / "p", image=tmp_path / "vol.tif", classes=default_classes(2))
    stored = json.loads((p.folder / "project.json").read_text())["image"]["path"]
    assert stored == str((tmp_path / "vol.tif").resolve())


@pytest.mark.parametrize(
    "key, value",
    [
        ("annotations", "../../elsewhere"),
        ("annotations", "/etc"),
        ("image", "../outside.zarr"),
        ("predictions", {"p": {"model": "m", "path": "../../secret.zarr"}}),
        ("predictions", {"p": {"model": "m", "path": "/tmp/x.zarr"}}),
        ("models", {"../../evil": {"method": "rf"}}),
    ],
)
def test_paths_leading_out_of_the_project_are_refused_in_one_line(project, key, value):
    meta = json.loads((project.folder / "project.json").read_text())
    if key == "image":
        meta["image"]["path"] = value
    else:
        meta[key] = value
    (project.folder / "project.json").write_text(json.dumps(meta))
    with pytest.raises(ProjectError) as caught:
        Project.open(project.folder)
    message = str(caught.value)
    assert "\n" not in message and str(project.folder) in message
    assert "outside" in message or "not a plain folder name" in message
