"""CSV interchange: reading, writing, round trips and every bad-input message."""

import json

import numpy as np
import pytest

from napari_wsseg.annotations import (
    Annotations,
    ClassInfo,
    default_classes,
    find_annotation_files,
    load_annotations,
    read_boxes_csv,
    read_classes_json,
    read_points_csv,
    read_sizes_csv,
    read_tags_csv,
    write_annotations,
    write_boxes_csv,
    write_classes_json,
    write_points_csv,
    write_sizes_csv,
    write_tags_csv,
)
from napari_wsseg.errors import AnnotationError

NAMES = ["cyto", "mito"]


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------- reading
def test_read_points_with_ids(tmp_path):
    path = write(tmp_path, "points.csv", "z,y,x,class\n0,5,7,1\n3,2,1,0\n")
    points = read_points_csv(path)
    assert points.dtype == np.int64
    np.testing.assert_array_equal(points, [[0, 5, 7, 1], [3, 2, 1, 0]])


def test_read_points_with_names_and_mixed_ids(tmp_path):
    path = write(tmp_path, "points.csv", "z,y,x,class\n0,5,7,mito\n1,2,1,cyto\n2,0,0,1\n")
    np.testing.assert_array_equal(
        read_points_csv(path, classes=NAMES), [[0, 5, 7, 1], [1, 2, 1, 0], [2, 0, 0, 1]]
    )


def test_read_points_with_classinfo_list(tmp_path):
    path = write(tmp_path, "points.csv", "z,y,x,class\n0,5,7,mito\n")
    classes = [ClassInfo("cyto", "#000000"), ClassInfo("mito", "#ff0000")]
    np.testing.assert_array_equal(read_points_csv(path, classes=classes), [[0, 5, 7, 1]])


def test_read_points_2d_without_z_column(tmp_path):
    path = write(tmp_path, "points.csv", "y,x,class\n5,7,1\n")
    np.testing.assert_array_equal(read_points_csv(path), [[0, 5, 7, 1]])


def test_read_tolerates_spaces_blank_lines_bom_crlf_and_integral_floats(tmp_path):
    text = "\ufeffZ, y ,x,class\r\n\r\n 0 , 5.0,7, mito \r\n,,,\r\n"
    path = write(tmp_path, "points.csv", text)
    np.testing.assert_array_equal(read_points_csv(path, classes=NAMES), [[0, 5, 7, 1]])


def test_read_boxes(tmp_path):
    path = write(tmp_path, "boxes.csv", "z,y0,x0,y1,x1,class\n1,2,3,10,12,mito\n")
    boxes = read_boxes_csv(path, classes=NAMES)
    assert boxes.dtype == np.int64 and boxes.shape == (1, 6)
    np.testing.assert_array_equal(boxes, [[1, 2, 3, 10, 12, 1]])


def test_read_boxes_2d(tmp_path):
    path = write(tmp_path, "boxes.csv", "y0,x0,y1,x1,class\n2,3,10,12,0\n")
    np.testing.assert_array_equal(read_boxes_csv(path), [[0, 2, 3, 10, 12, 0]])


def test_read_tags(tmp_path):
    path = write(tmp_path, "tags.csv", "z,class\n4,mito\n4,0\n")
    np.testing.assert_array_equal(read_tags_csv(path, classes=NAMES), [[4, 1], [4, 0]])


def test_read_tags_2d_is_a_class_column(tmp_path):
    path = write(tmp_path, "tags.csv", "class\nmito\n")
    np.testing.assert_array_equal(read_tags_csv(path, classes=NAMES), [[0, 1]])


def test_read_sizes(tmp_path):
    path = write(tmp_path, "sizes.csv", "z,class,fraction\n2,cyto,0.7\n2,mito,3e-1\n")
    sizes = read_sizes_csv(path, classes=NAMES)
    assert sizes.dtype == np.float64
    np.testing.assert_allclose(sizes, [[2, 0, 0.7], [2, 1, 0.3]])


def test_read_sizes_2d(tmp_path):
    path = write(tmp_path, "sizes.csv", "class,fraction\n1,0.25\n")
    np.testing.assert_allclose(read_sizes_csv(path), [[0, 1, 0.25]])


# ------------------------------------------------------------------------------------- writing
@pytest.mark.parametrize(
    "writer, reader, rows, header",
    [
        (write_points_csv, read_points_csv, [[0, 5, 7, 1], [2, 0, 3, 0]], "z,y,x,class"),
        (write_boxes_csv, read_boxes_csv, [[1, 2, 3, 4, 5, 1]], "z,y0,x0,y1,x1,class"),
        (write_tags_csv, read_tags_csv, [[3, 1], [3, 0]], "z,class"),
        (write_sizes_csv, read_sizes_csv, [[0, 0, 0.1], [0, 1, 0.9]], "z,class,fraction"),
    ],
)
def test_write_then_read_is_exact(tmp_path, writer, reader, rows, header):
    path = writer(tmp_path / "out.csv", np.array(rows))
    assert path.read_text().splitlines()[0] == header
    np.testing.assert_array_equal(reader(path), rows)


def test_write_sizes_keeps_full_precision(tmp_path):
    fraction = 1 / 3
    path = write_sizes_csv(tmp_path / "sizes.csv", [[0, 1, fraction]])
    assert read_sizes_csv(path)[0, 2] == fraction


def test_write_annotations_round_trip(tmp_path):
    classes = [
        ClassInfo("cyto", "#7f7f7f"),
        ClassInfo("mito", "#dc1e1e"),
        ClassInfo("glia", "#00c850"),
    ]
    ann = Annotations(
        classes,
        points=[[0, 1, 2, 0], [1, 3, 4, 2]],
        boxes=[[1, 0, 0, 2, 3, 1]],
        tags=[[1, 1], [1, 2], [1, 0]],
        sizes=[[0, 0, 0.5], [0, 1, 0.25], [0, 2, 0.25]],
    )
    written = write_annotations(tmp_path / "ann", ann)
    assert sorted(written) == ["boxes", "classes", "points", "sizes", "tags"]
    assert json.loads((tmp_path / "ann" / "classes.json").read_text()) == [
        {"id": 0, "name": "cyto", "color": "#7f7f7f"},
        {"id": 1, "name": "mito", "color": "#dc1e1e"},
        {"id": 2, "name": "glia", "color": "#00c850"},
    ]
    loaded = load_annotations(
        **find_annotation_files(tmp_path / "ann"),
        classes=read_classes_json(tmp_path / "ann" / "classes.json"),
        image_shape=(2, 8, 8),
    )
    assert loaded.classes == classes
    for kind in ("points", "boxes", "tags", "sizes"):
        np.testing.assert_array_equal(getattr(loaded, kind), getattr(ann, kind))


def test_write_annotations_removes_csv_of_a_kind_that_became_empty(tmp_path):
    write_annotations(
        tmp_path, Annotations(default_classes(1), points=[[0, 0, 0, 0]], tags=[[0, 0]])
    )
    write_annotations(tmp_path, Annotations(default_classes(1), tags=[[0, 0]]), overwrite=True)
    assert not (tmp_path / "points.csv").exists()
    assert list(find_annotation_files(tmp_path)) == ["tags"]


def test_write_annotations_without_overwrite_touches_no_existing_file(tmp_path):
    write_annotations(tmp_path, Annotations(default_classes(1), points=[[0, 0, 0, 0]]))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(AnnotationError, match=r"classes\.json already exists; pass overwrite=True"):
        write_annotations(tmp_path, Annotations(default_classes(1), tags=[[0, 0]]))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


@pytest.mark.parametrize("theirs", ["points.csv", "classes.json"])
def test_write_annotations_never_replaces_or_removes_a_file_it_did_not_write(tmp_path, theirs):
    (tmp_path / theirs).write_text("a file of the user's\n")
    with pytest.raises(AnnotationError, match=rf"{theirs} was not written by napari-wsseg"):
        write_annotations(tmp_path, Annotations(default_classes(1), tags=[[0, 0]]), overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == [theirs]
    assert (tmp_path / theirs).read_text() == "a file of the user's\n"


def test_write_annotations_keeps_a_csv_the_user_edited_after_writing(tmp_path):
    write_annotations(
        tmp_path, Annotations(default_classes(1), points=[[0, 0, 0, 0]], tags=[[0, 0]])
    )
    edited = (tmp_path / "points.csv").read_text() + "0,1,1,0\n"
    (tmp_path / "points.csv").write_text(edited)
    with pytest.raises(AnnotationError, match=r"points\.csv was not written by .* or was changed"):
        write_annotations(tmp_path, Annotations(default_classes(1), tags=[[0, 0]]), overwrite=True)
    assert (tmp_path / "points.csv").read_text() == edited


def test_find_annotation_files_rejects_a_missing_folder(tmp_path):
    with pytest.raises(AnnotationError, match="not a folder"):
        find_annotation_files(tmp_path / "nope")


# ------------------------------------------------------------------------------- classes.json
def test_read_classes_json_in_any_order_with_default_colour(tmp_path):
    path = write(
        tmp_path,
        "classes.json",
        json.dumps(
            [{"id": 1, "name": "membrane", "color": "#ff8c00"}, {"id": 0, "name": "intracellular"}]
        ),
    )
    classes = read_classes_json(path)
    assert [c.name for c in classes] == ["intracellular", "membrane"]
    assert classes[1].color == "#ff8c00" and classes[0].color.startswith("#")


def test_write_classes_json_round_trip(tmp_path):
    classes = [ClassInfo("a", "#010203"), ClassInfo("b", "#040506")]
    assert read_classes_json(write_classes_json(tmp_path / "c.json", classes)) == classes


@pytest.mark.parametrize(
    "text, expected",
    [
        ('[{"id": 0, "name": "a"},', ["classes.json line 1", "not valid JSON"]),
        ("{}", ["expected a non-empty list"]),
        ("[]", ["expected a non-empty list"]),
        (
            '[{"id": 0, "name": "a"}, {"id": 2, "name": "b"}]',
            ["ids are [0, 2]", "0..1", "renumber"],
        ),
        ('[{"id": 0, "name": "a"}, {"id": 1, "name": "a"}]', ["classes 0 and 1", "'a'", "unique"]),
        ('[{"id": 0}]', ["entry 1", '"name"']),
        ('[{"id": "0", "name": "a"}]', ["entry 1", "id '0' is not an integer"]),
        ('[{"id": 0, "name": "a", "color": 5}]', ["entry 1", "color '5' is not '#rrggbb'"]),
    ],
)
def test_read_classes_json_errors(tmp_path, text, expected):
    path = write(tmp_path, "classes.json", text)
    with pytest.raises(AnnotationError) as err:
        read_classes_json(path)
    for part in expected:
        assert part in str(err.value)


def test_read_classes_json_missing_file(tmp_path):
    with pytest.raises(AnnotationError, match="classes.json: file not found"):
        read_classes_json(tmp_path / "classes.json")


# ---------------------------------------------------------------------------- bad CSV inputs
BAD_CSVS = [
    # (reader, file name, text, classes, expected message parts)
    (
        read_points_csv,
        "points.csv",
        "z,y,x,label\n0,1,1,0\n",
        None,
        [
            "points.csv line 1",
            "header is 'z,y,x,label'",
            "must be 'z,y,x,class'",
            "'y,x,class'",
            "fix the first line",
        ],
    ),
    (
        read_points_csv,
        "points.csv",
        "0,1,2,0\n",
        None,
        ["points.csv line 1", "must be 'z,y,x,class'"],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y,x,class\n0,1,1,0\n",
        None,
        ["boxes.csv line 1", "must be 'z,y0,x0,y1,x1,class'"],
    ),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,1,2,0\n0,1,2\n",
        None,
        [
            "points.csv line 3",
            "3 values '0,1,2'",
            "4 columns (z,y,x,class)",
            "one value per column",
        ],
    ),
    (read_points_csv, "points.csv", "z,y,x,class\n0,1,2,0,\n", None, ["line 2", "5 values"]),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,1,2,0\n0,abc,2,0\n",
        None,
        ["points.csv line 3", "y is 'abc', not a number", "whole pixel index"],
    ),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,,2,0\n",
        None,
        ["line 2", "y is '', not a number"],
    ),
    (read_points_csv, "points.csv", "z,y,x,class\n0,1,nan,0\n", None, ["line 2", "x is 'nan'"]),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,1.5,2,0\n",
        None,
        ["points.csv line 2", "y is 1.5, not an integer", "round it"],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y0,x0,y1,x1,class\n0,1,2,3,4.25,0\n",
        None,
        ["boxes.csv line 2", "x1 is 4.25, not an integer"],
    ),
    (
        read_sizes_csv,
        "sizes.csv",
        "z,class,fraction\n0,0,30%\n",
        None,
        ["sizes.csv line 2", "fraction is '30%', not a number", "fraction between 0 and 1"],
    ),
    (
        read_tags_csv,
        "tags.csv",
        "z,class\n0.5,0\n",
        None,
        ["tags.csv line 2", "z is 0.5, not an integer"],
    ),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,1,2,mitochondria\n",
        NAMES,
        [
            "points.csv line 2",
            "class 'mitochondria' is not a known class",
            "known: 0 'cyto', 1 'mito'",
            "fix the name",
        ],
    ),
    (
        read_tags_csv,
        "tags.csv",
        "z,class\n0,0\n\n0,5\n",
        NAMES,
        ["tags.csv line 4", "class 5 is not a class id 0..1", "add the class"],
    ),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,1,2,-1\n",
        None,
        ["line 2", "class -1 is not a class id"],
    ),
    (read_points_csv, "points.csv", "z,y,x,class\n0,1,2,1.5\n", None, ["line 2", "class 1.5"]),
    (read_points_csv, "points.csv", "z,y,x,class\n0,1,2,\n", NAMES, ["line 2", "class is empty"]),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n0,1,2,0\n0,1,3,mito\n",
        None,
        ["points.csv line 3", "class 'mito' is a name but no class list was given", "--classes"],
    ),
    (read_sizes_csv, "sizes.csv", "", None, ["sizes.csv is empty", "header 'z,class,fraction'"]),
    (read_boxes_csv, "boxes.csv", "\n", None, ["boxes.csv is empty", "one row per box"]),
    (
        read_points_csv,
        "points.csv",
        "z,y,x,class\n\n",
        None,
        ["points.csv has a header but no rows", "leave the file out"],
    ),
    (
        read_points_csv,
        "points.csv",
        b"z,y,x,class\n\xff\xfe,1,2,0\n",
        None,
        ["points.csv", "not a readable UTF-8 CSV"],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y0,x0,y1,x1,class,exhaustive\n0,1,1,2,2,0,yes\n",
        None,
        ["boxes.csv line 2", "exhaustive is 'yes'", "write 1", "or 0"],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y0,x0,y1,x1,class,exhaustive\n0,1,1,2,2,0,1\n0,5,5,6,6,1,0\n0,3,3,4,4,0,0\n",
        None,
        [
            "boxes.csv lines 2 and 4",
            "class 0 in slice z=0",
            "exhaustive=1 and exhaustive=0",
            "must agree",
        ],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y0,x0,y1,x1,class,exhaustive\n3,,,,,1,0\n",
        None,
        [
            "boxes.csv line 2",
            "y0,x0,y1,x1 are empty",
            "exhaustive=1",
            "z=3 holds no object of class 1",
        ],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y0,x0,y1,x1,class\n3,,,,,1\n",
        None,
        ["boxes.csv line 2", "y0 is '', not a number"],
    ),
    (
        read_boxes_csv,
        "boxes.csv",
        "z,y0,x0,y1,x1,class,exhaustive,extra\n0,1,1,2,2,0,1,0\n",
        None,
        ["boxes.csv line 1", "optionally followed by ',exhaustive'"],
    ),
]


@pytest.mark.parametrize("reader, name, text, classes, expected", BAD_CSVS)
def test_bad_csv_messages(tmp_path, reader, name, text, classes, expected):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    with pytest.raises(AnnotationError) as err:
        reader(path, classes=classes)
    message = str(err.value)
    assert "\n" not in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_missing_csv_file(tmp_path):
    with pytest.raises(AnnotationError, match="points.csv: file not found"):
        read_points_csv(tmp_path / "points.csv")


@pytest.mark.parametrize(
    "classes, expected",
    [
        ("cyto,mito", "one string"),
        ([], "empty"),
        (["a", "a"], "both named 'a'"),
        (["a", ClassInfo("b", "#000000")], "mixes types"),
        (["a", " "], "empty name"),
    ],
)
def test_bad_class_lists(tmp_path, classes, expected):
    path = write(tmp_path, "points.csv", "z,y,x,class\n0,1,2,0\n")
    with pytest.raises(AnnotationError, match=expected):
        read_points_csv(path, classes=classes)


# ---------------------------------------------------------------------------- load_annotations
def test_load_infers_class_count_from_the_largest_id(tmp_path):
    points = write(tmp_path, "points.csv", "z,y,x,class\n0,1,2,0\n")
    tags = write(tmp_path, "tags.csv", "z,class\n1,3\n")
    ann = load_annotations(points=points, tags=tags)
    assert ann.class_names == ["class0", "class1", "class2", "class3"]


def test_load_infers_class_count_from_masks():
    masks = np.zeros((1, 4, 4), dtype=np.uint8)
    masks[0, 0, 0] = 3
    with pytest.warns(UserWarning, match="has no points"):
        ann = load_annotations(masks=masks, image_shape=(1, 4, 4))
    assert ann.n_classes == 3 and ann.masks.shape == (1, 4, 4)


def test_load_with_class_names(tmp_path):
    points = write(tmp_path, "points.csv", "z,y,x,class\n0,1,2,mito\n")
    with pytest.warns(UserWarning, match="class 0 'cyto' has no points"):
        ann = load_annotations(points=points, classes=NAMES, image_shape=(1, 4, 4))
    assert ann.class_names == NAMES
    np.testing.assert_array_equal(ann.points, [[0, 1, 2, 1]])


def test_load_class_name_without_class_list_asks_for_classes(tmp_path):
    points = write(tmp_path, "points.csv", "z,y,x,class\n0,1,2,mito\n")
    with pytest.raises(AnnotationError, match="points.csv line 2.*--classes"):
        load_annotations(points=points)


def test_load_2d_csv_for_a_2d_image(tmp_path):
    points = write(tmp_path, "points.csv", "y,x,class\n1,2,0\n3,3,1\n")
    ann = load_annotations(points=points, image_shape=(1, 4, 4))
    np.testing.assert_array_equal(ann.points, [[0, 1, 2, 0], [0, 3, 3, 1]])


def test_load_2d_csv_for_a_volume_asks_for_a_z_column(tmp_path):
    boxes = write(tmp_path, "boxes.csv", "y0,x0,y1,x1,class\n1,2,3,3,0\n")
    with pytest.raises(AnnotationError) as err:
        load_annotations(boxes=boxes, image_shape=(5, 4, 4))
    message = str(err.value)
    assert "boxes.csv has no z column" in message and "5 slices" in message
    assert "'z,y0,x0,y1,x1,class'" in message


def test_load_validates_against_the_image_and_names_the_file(tmp_path):
    points = write(tmp_path, "points.csv", "z,y,x,class\n0,1,2,0\n0,9,2,1\n")
    with pytest.raises(AnnotationError) as err:
        load_annotations(points=points, image_shape=(1, 4, 4))
    message = str(err.value)
    assert message.startswith(f"{points}: points row 2 (z=0, y=9, x=2, class=1")
    assert "y=9 is outside the image" in message


def test_validation_names_the_file_of_each_kind(tmp_path):
    for name in "ps":
        (tmp_path / name).mkdir()
    points = write(tmp_path / "p", "points.csv", "z,y,x,class\n0,1,1,0\n")
    sizes = write(tmp_path / "s", "sizes.csv", "z,class,fraction\n0,0,0.5\n0,0,0.5\n")
    with pytest.raises(AnnotationError) as err:
        load_annotations(points=points, sizes=sizes, image_shape=(1, 4, 4))
    assert str(err.value).startswith(f"{sizes}: sizes rows 1 and 2 both give")
    masks = tmp_path / "m" / "masks.npy"
    with pytest.raises(AnnotationError) as err:
        load_annotations(
            points=points,
            masks=np.ones((1, 3, 3), np.uint8),
            masks_file=masks,
            image_shape=(1, 4, 4),
        )
    assert str(err.value).startswith(f"{masks}: mask shape (1, 3, 3) is not the image shape")
    assert str(points.parent) not in str(err.value)


def test_load_header_only_file_is_an_error(tmp_path):
    tags = write(tmp_path, "tags.csv", "z,class\n")
    with pytest.raises(AnnotationError, match="tags.csv has a header but no rows"):
        load_annotations(tags=tags)


# --------------------------------------------------------------------- exhaustive boxes
def test_boxes_exhaustive_column_is_optional_and_defaults_to_not_exhaustive(tmp_path):
    path = tmp_path / "boxes.csv"
    path.write_text("z,y0,x0,y1,x1,class\n0,1,1,2,2,0\n")
    boxes, exhaustive = read_boxes_csv(path, with_exhaustive=True)
    assert boxes.tolist() == [[0, 1, 1, 2, 2, 0]] and exhaustive.shape == (0, 2)
    path.write_text("y0,x0,y1,x1,class,exhaustive\n1,1,2,2,0,\n3,3,4,4,1,1\n")  # 2D, empty = 0
    boxes, exhaustive = read_boxes_csv(path, with_exhaustive=True)
    assert boxes[:, 0].tolist() == [0, 0] and exhaustive.tolist() == [[0, 1]]


def test_exhaustive_boxes_round_trip_through_write_and_load(tmp_path):
    ann = Annotations(
        default_classes(3),
        boxes=[[0, 1, 1, 2, 2, 0], [0, 5, 5, 6, 6, 1], [2, 1, 1, 3, 3, 1]],
        exhaustive_boxes=[[0, 1], [2, 1], [2, 2]],  # (2, 2): no box, so class 2 is absent there
    )
    written = write_annotations(tmp_path, ann)
    assert written["boxes"].read_text().splitlines() == [
        "z,y0,x0,y1,x1,class,exhaustive",
        "0,1,1,2,2,0,0",
        "0,5,5,6,6,1,1",
        "2,1,1,3,3,1,1",
        "2,,,,,2,1",
    ]
    loaded = load_annotations(
        **find_annotation_files(tmp_path), classes=ann.classes, image_shape=(3, 8, 8)
    )
    assert loaded.boxes.tolist() == ann.boxes.tolist()
    assert loaded.exhaustive_boxes.tolist() == ann.exhaustive_boxes.tolist()


def test_only_exhaustive_statements_still_write_a_boxes_file(tmp_path):
    ann = Annotations(
        default_classes(3), points=[[0, 1, 1, 0], [0, 2, 2, 1]], exhaustive_boxes=[[1, 2]]
    )
    write_annotations(tmp_path, ann)
    loaded = load_annotations(**find_annotation_files(tmp_path), image_shape=(2, 4, 4))
    assert loaded.boxes.shape == (0, 6) and loaded.exhaustive_boxes.tolist() == [[1, 2]]
    assert loaded.n_classes == 3  # the class of a statement row counts for the inferred classes
