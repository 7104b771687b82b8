"""Region tags: data model, CSV and project round trips, validation, simulator, dsp's A(j)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_wsseg.annotations.csv import (
    load_annotations,
    read_region_tags_csv,
    read_tags_csv,
    write_annotations,
)
from napari_wsseg.annotations.model import Annotations, default_classes
from napari_wsseg.annotations.region_tags import region_allowed, tag_regions
from napari_wsseg.annotations.validate import validate_annotations
from napari_wsseg.cli import main
from napari_wsseg.engine.crops import Crop
from napari_wsseg.engine.weak_targets import AnnotationIndex
from napari_wsseg.errors import AnnotationError
from napari_wsseg.eval.simulate import grid_region_tags, simulate_annotations
from napari_wsseg.project import Project

SHAPE = (3, 16, 16)
# slice 1: the top-left 8 x 8 cell holds classes 0 and 2; slice 2: the whole slice holds 1
REGION_ROWS = [[1, 0, 0, 0, 7, 7], [1, 2, 0, 0, 7, 7]]


def _annotations(**extra) -> Annotations:
    kinds = {"points": [[1, 2, 2, 0]], "tags": [[2, 1]], "region_tags": REGION_ROWS} | extra
    return Annotations(default_classes(3, ["cyto", "mito", "membrane"]), **kinds)


def test_old_annotations_have_no_region_tags_and_old_csvs_read_as_before(tmp_path):
    assert Annotations(default_classes(2)).region_tags.shape == (0, 6)
    path = tmp_path / "tags.csv"
    path.write_text("z,class\n1,0\n")
    tags, regions = read_region_tags_csv(path)
    assert tags.tolist() == [[1, 0]] and regions.shape == (0, 6)


def test_csv_round_trip_keeps_slice_and_region_tags_apart(tmp_path):
    ann = _annotations()
    write_annotations(tmp_path, ann)
    text = (tmp_path / "tags.csv").read_text().splitlines()
    assert text == ["z,class,y0,x0,y1,x1", "2,1,,,,", "1,0,0,0,7,7", "1,2,0,0,7,7"]
    again = load_annotations(
        tags=tmp_path / "tags.csv",
        points=tmp_path / "points.csv",
        classes=ann.classes,
        image_shape=SHAPE,
    )
    assert again.tags.tolist() == [[2, 1]]
    assert again.region_tags.tolist() == REGION_ROWS


def test_region_tags_alone_are_annotations_and_infer_the_class_count(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("z,class,y0,x0,y1,x1\n0,2,0,0,3,3\n")
    ann = load_annotations(tags=path)
    assert ann.n_classes == 3 and not ann.is_empty()
    assert ann.annotated_slices().tolist() == [0]
    assert ann.counts()["region_tags"].tolist() == [0, 0, 1]


def test_a_partial_region_header_is_refused(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("z,class,y0,x0\n0,1,0,0\n")
    with pytest.raises(AnnotationError, match="line 1: the header has y0,x0 but a region needs"):
        load_annotations(tags=path)


def test_read_tags_csv_refuses_region_rows_instead_of_dropping_them(tmp_path):
    path = tmp_path / "tags.csv"
    path.write_text("z,class,y0,x0,y1,x1\n0,1,0,0,3,3\n")
    with pytest.raises(AnnotationError, match="holds region tags"):
        read_tags_csv(path)


def test_project_store_round_trip(tmp_path):
    project = Project.create(tmp_path / "proj", image_shape=SHAPE, classes=_annotations().classes)
    project.set_annotations(_annotations())
    project.save()
    again = Project.open(project.folder).annotations
    assert again.region_tags.tolist() == REGION_ROWS and again.tags.tolist() == [[2, 1]]


def test_select_slices_keeps_the_regions_of_the_kept_slices():
    assert _annotations().select_slices([1]).region_tags.tolist() == REGION_ROWS
    assert _annotations().select_slices([2]).region_tags.shape == (0, 6)


# ----------------------------------------------------------------------------------- validation
def test_consistent_region_tags_validate():
    assert validate_annotations(_annotations(), SHAPE, warn=False) == []


def test_a_point_of_a_class_the_region_excludes_names_both_rows():
    ann = _annotations(points=[[1, 9, 9, 1], [1, 3, 4, 1]])  # row 2 lies in the region
    with pytest.raises(AnnotationError) as err:
        validate_annotations(ann, SHAPE, warn=False)
    message = str(err.value)
    assert "points row 2 (z=1, y=3, x=4, class=1 'mito')" in message
    assert "region_tags row 1 (z=1, class=0 'cyto', y0=0, x0=0, y1=7, x1=7)" in message
    assert "tags only 'cyto', 'membrane'" in message and "\n" not in message


def test_a_point_on_the_region_corner_counts_as_inside():
    with pytest.raises(AnnotationError, match="points row 1"):
        validate_annotations(_annotations(points=[[1, 7, 7, 1]]), SHAPE, warn=False)
    assert validate_annotations(_annotations(points=[[1, 8, 7, 1]]), SHAPE, warn=False) == []


@pytest.mark.parametrize(
    ("row", "parts"),
    [
        ([1, 0, 5, 0, 2, 7], ["region_tags row 1", "y1 < y0", "swap them"]),
        ([1, 0, 0, 0, 7, 16], ["region_tags row 1", "x1=16 is outside"]),
        ([3, 0, 0, 0, 7, 7], ["region_tags row 1", "z=3 is outside"]),
        ([1, 5, 0, 0, 7, 7], ["region_tags row 1", "class=5"]),
    ],
)
def test_bad_region_rows_are_errors(row, parts):
    with pytest.raises(AnnotationError) as err:
        validate_annotations(_annotations(region_tags=[row]), SHAPE, warn=False)
    for part in parts:
        assert part in str(err.value)


# ------------------------------------------------------------------------------ allowed classes
def test_region_allowed_excludes_untagged_classes_inside_the_region_only():
    allowed = region_allowed(tag_regions(_annotations()), 1, 0, 0, 16, 16)
    assert allowed.shape == (3, 16, 16)
    assert not allowed[1, :8, :8].any() and allowed[[0, 2], :8, :8].all()
    assert allowed[:, 8:, :].all() and allowed[:, :, 8:].all()
    assert region_allowed(tag_regions(_annotations()), 0, 0, 0, 16, 16).all()


def test_overlapping_regions_keep_only_classes_both_tag():
    rows = REGION_ROWS + [[1, 0, 4, 4, 11, 11]]  # a second region tagging cyto only
    allowed = region_allowed(tag_regions(_annotations(region_tags=rows)), 1, 0, 0, 16, 16)
    assert allowed[:, 5, 5].tolist() == [True, False, False]  # in both
    assert allowed[:, 1, 1].tolist() == [True, False, True]  # in the first only
    assert allowed[:, 10, 10].tolist() == [True, False, False]  # in the second only


def test_a_window_reaching_outside_the_image_is_shifted_correctly():
    allowed = region_allowed(tag_regions(_annotations()), 1, -4, 6, 8, 8)
    # window rows -4..3, columns 6..13: region pixels are rows 4..7 (image 0..3) x columns 0..1
    assert not allowed[1, 4:, :2].any() and allowed[1, :4].all() and allowed[1, :, 2:].all()


def test_dsp_allowed_set_follows_region_tags():
    index = AnnotationIndex(_annotations(), SHAPE)
    targets = index.crop_targets(Crop(1, 0, 0, 16))
    assert not targets.allowed[1, :8, :8].any() and targets.allowed[1, 8:].all()
    assert targets.allowed[:, 2, 2].tolist() == [True, False, False]  # the point pins class 0
    assert not targets.tagged.any()  # region tags add no slice-level positive
    assert targets.region_boxes.tolist() == [[0, 0, 7, 7]] * 2
    assert targets.region_classes.tolist() == [0, 2]
    cut = index.crop_targets(Crop(1, 4, 4, 12))  # the crop cuts the region: no positive
    assert cut.region_classes.shape == (0,) and not cut.allowed[1, :4, :4].any()


def test_dsp_region_tag_positive_is_the_mean_over_the_region_after_a_flip():
    import torch

    from napari_wsseg.engine.augment import Geometry
    from napari_wsseg.engine.weak_losses import positives
    from napari_wsseg.engine.weak_targets import collate, transform_targets

    index = AnnotationIndex(_annotations(), SHAPE)
    crop = index.crop_targets(Crop(1, 0, 0, 16))
    targets = collate([crop], [np.ones((16, 16), bool)])
    logits = torch.arange(3 * 16 * 16, dtype=torch.float32).reshape(1, 3, 16, 16)
    values, classes = positives(logits, targets)["tag"]
    assert classes.tolist() == [0, 2]
    expected = [logits[0, c, :8, :8].mean().item() for c in (0, 2)]
    assert values.tolist() == pytest.approx(expected)
    flipped = transform_targets(targets, [Geometry(flip_x=True, rot90=0)])
    assert flipped.region_boxes.tolist() == [[0, 8, 7, 15]] * 2
    values, _ = positives(logits, flipped)["tag"]
    assert values.tolist() == pytest.approx([logits[0, c, :8, 8:].mean().item() for c in (0, 2)])


# ------------------------------------------------------------------------------------ simulator
def _brute_force_cells(labels: np.ndarray, z: int, cell: int) -> list[list[int]]:
    rows = []
    for y0 in range(0, labels.shape[0], cell):
        for x0 in range(0, labels.shape[1], cell):
            window = labels[y0 : y0 + cell, x0 : x0 + cell]
            y1, x1 = y0 + window.shape[0] - 1, x0 + window.shape[1] - 1
            rows += [[z, int(k), y0, x0, y1, x1] for k in np.unique(window)]
    return rows


def test_grid_region_tags_equal_a_brute_force_count():
    labels = np.random.default_rng(0).integers(0, 4, (23, 17)) * (np.arange(17) % 5 == 0)
    assert grid_region_tags(labels, 4, 6, 4).tolist() == _brute_force_cells(labels, 4, 6)


def test_simulated_region_tags_validate_with_points_and_a_count_limits_the_cells():
    gt = np.zeros((2, 32, 32), np.uint8)
    gt[:, 4:12, 4:12] = 1
    gt[:, 20:30, 2:30] = 2
    ann = simulate_annotations(gt, points=3, region_tags=8, seed=0)
    assert validate_annotations(ann, gt.shape, warn=False) == []
    assert len(tag_regions(ann)) == 2 * 16
    few = simulate_annotations(gt, slices=[1], points=0, region_tags=8, region_tag_cells=3, seed=1)
    assert len(tag_regions(few)) == 3 and set(few.region_tags[:, 0]) == {1}


def test_cli_simulate_writes_region_tags(tmp_path, capsys):
    gt = np.zeros((2, 20, 20), np.uint8)
    gt[:, 10:, :] = 1
    np.save(tmp_path / "gt.npy", gt)
    out = tmp_path / "ann"
    assert (
        main(
            [
                "simulate",
                str(tmp_path / "gt.npy"),
                "--out",
                str(out),
                "--region-tags",
                "10",
                "--region-tag-cells",
                "2",
                "--slice-list",
                "1",
            ]
        )
        == 0
    )
    capsys.readouterr()
    ann = load_annotations(tags=out / "tags.csv", image_shape=gt.shape)
    assert len(tag_regions(ann)) == 2 and ann.tags.shape == (0, 2)
    for z, k, y0, x0, y1, x1 in ann.region_tags:
        assert np.any(gt[z, y0 : y1 + 1, x0 : x1 + 1] == k)


def test_cli_simulate_refuses_a_zero_cell(tmp_path, capsys):
    np.save(tmp_path / "gt.npy", np.zeros((8, 8), np.uint8))
    out = str(tmp_path / "o")
    code = main(["simulate", str(tmp_path / "gt.npy"), "--out", out, "--region-tags", "0"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("wsseg: error:") and "--region-tags" in err
    assert not (tmp_path / "o").exists()


def test_dsp_trains_from_region_tags_alone():
    from napari_wsseg.io.image import as_image
    from napari_wsseg.methods import get_method
    from napari_wsseg.methods.base import FitOptions

    gt = np.zeros((2, 32, 32), np.uint8)
    gt[:, 4:12, 4:12] = 1
    gt[:, 20:30, 2:30] = 2
    image = as_image((gt * 60 + 20).astype(np.float32))
    ann = simulate_annotations(gt, slices=[0], points=0, region_tags=8, seed=0)
    method = get_method("dsp")(max_steps=2, batch_size=2, crop_size=32)
    result = method.fit(image, ann, FitOptions(device="cpu", seed=0))
    assert result.steps == 2 and result.history[0]["dsp_tag"] > 0  # region positives were used


def test_region_tags_anchor_training_crops_inside_their_regions():
    from napari_wsseg.engine.crops import annotation_anchors

    anchors = annotation_anchors(_annotations(points=[]), SHAPE, np.random.default_rng(0))
    assert anchors[:, [0, 3]].tolist() == [[1, 0], [1, 2]] + [[2, 1]] * (len(anchors) - 2)
    assert np.all(anchors[:2, 1:3] <= 7) and np.all(anchors[:2, 1:3] >= 0)


def test_grid_cell_and_toggle_build_the_rows_the_simulator_writes():
    from napari_wsseg.annotations.region_tags import grid_cell, toggle_region_tag

    labels = np.zeros((20, 30), np.int64)
    labels[12:, 25:] = 1
    simulated = grid_region_tags(labels, 0, 8, 2)
    rows = np.zeros((0, 6), np.int64)
    for _, k, y0, x0, _, _ in simulated:  # click every tagged cell with its class
        rows = toggle_region_tag(rows, 0, int(k), grid_cell(y0 + 1, x0 + 1, 8, labels.shape))
    assert rows.tolist() == simulated.tolist()
    assert grid_cell(19, 29, 8, labels.shape) == (16, 24, 19, 29)
    again = toggle_region_tag(rows, 0, 1, grid_cell(19, 29, 8, labels.shape))
    assert len(again) == len(rows) - 1 and [0, 1, 16, 24, 19, 29] not in again.tolist()


def test_mask_pixels_of_a_class_the_region_excludes_are_an_error():
    masks = np.zeros(SHAPE, np.uint8)
    masks[1, 10:12, 10:12] = 2  # mito outside the region: fine
    assert validate_annotations(_annotations(masks=masks), SHAPE, warn=False) == []
    masks[1, 6:8, 6:8] = 2  # mito inside the region tagging cyto and membrane
    with pytest.raises(AnnotationError) as err:
        validate_annotations(_annotations(masks=masks), SHAPE, warn=False)
    assert (
        "the mask labels 4 pixels of class 1 'mito' inside the region of region_tags row 1"
        in str(err.value)
    )


def test_mews_says_it_ignores_region_tags():
    from napari_wsseg.methods.mews.method import _warn_unused_annotations

    with pytest.warns(UserWarning, match="ignoring 1 tags, 2 region_tags"):
        _warn_unused_annotations(_annotations())


def test_region_tags_anchor_only_classes_that_no_click_locates():
    from napari_wsseg.engine.crops import annotation_anchors

    # a click of class 0 in slice 1: the region rows of class 0 add no anchors, class 2 keeps its
    anchors = annotation_anchors(_annotations(), SHAPE, np.random.default_rng(0))
    assert anchors[:, [0, 3]].tolist() == [[1, 0], [1, 2]] + [[2, 1]] * (len(anchors) - 2)
    assert anchors[0].tolist() == [1, 2, 2, 0]  # the click itself, no random pixel of class 0
