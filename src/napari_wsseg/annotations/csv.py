"""Read and write weak annotations as CSV files plus a ``classes.json`` class list. No Qt.

One CSV per kind, with these exact headers (see ``docs/annotations.md``)::

    points.csv  z,y,x,class
    boxes.csv   z,y0,x0,y1,x1,class[,exhaustive]
    tags.csv    z,class[,y0,x0,y1,x1]
    sizes.csv   z,class,fraction

For a 2D image the ``z`` column may be left out (``y,x,class``); its rows then lie in slice 0.
``boxes.csv`` may end with an ``exhaustive`` column (0/1, default 0): 1 says every object of the
row's class in its slice is boxed. All rows of one (z, class) must agree, and a row with empty
``y0,x0,y1,x1`` and ``exhaustive`` 1 says the slice has no object of the class.
``tags.csv`` may end with ``y0,x0,y1,x1``: a row with them tags a rectangle of the slice (a region
tag, ``Annotations.region_tags``), a row with them empty tags the whole slice.
The ``class`` column holds a class id ``0..C-1`` or a class name (names need the class list).
Files are written with the ``z`` column and integer class ids. Parsing uses the standard ``csv``
module; each column is converted with numpy at once and rows are only inspected one by one to
report the first bad value.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import AnnotationError
from .model import Annotations, ClassInfo, default_classes

CLASSES_FILE = "classes.json"
#: Largest coordinate or class id accepted (beyond any image; keeps int64 conversion exact).
_MAX_INDEX = 2**31


@dataclass(frozen=True)
class _Kind:
    name: str
    singular: str
    columns: tuple[str, ...]
    dtype: type
    optional: tuple[str, ...] = ()

    @property
    def file_name(self) -> str:
        return f"{self.name}.csv"

    @property
    def header(self) -> str:
        return ",".join(self.columns)

    @property
    def header_2d(self) -> str:
        return ",".join(self.columns[1:])


_KINDS = {
    "points": _Kind("points", "point", ("z", "y", "x", "class"), np.int64),
    "boxes": _Kind(
        "boxes", "box", ("z", "y0", "x0", "y1", "x1", "class"), np.int64, ("exhaustive",)
    ),
    "tags": _Kind("tags", "tag", ("z", "class"), np.int64, ("y0", "x0", "y1", "x1")),
    "sizes": _Kind("sizes", "size", ("z", "class", "fraction"), np.float64),
}

#: The CSV kinds in the order they are written and documented.
CSV_KINDS = tuple(_KINDS)


# ------------------------------------------------------------------------------------ classes
def as_class_list(classes) -> list[ClassInfo] | None:
    """Turn class names or :class:`ClassInfo` objects into a list of ``ClassInfo``; None stays None.

    Examples
    --------
    >>> [c.name for c in as_class_list(["cyto", "mito"])]
    ['cyto', 'mito']
    """
    if classes is None:
        return None
    if isinstance(classes, str):
        raise AnnotationError(
            f"classes '{classes}' is one string; give a list of class names in id order, "
            "e.g. ['cytoplasm', 'membrane']"
        )
    classes = list(classes)
    if not classes:
        raise AnnotationError("the class list is empty; give at least one class name")
    if all(isinstance(c, ClassInfo) for c in classes):
        infos = classes
    elif all(isinstance(c, str) for c in classes):
        infos = default_classes(len(classes), [c.strip() for c in classes])
    else:
        raise AnnotationError(
            f"classes {classes!r} mixes types; give a list of names or a list of ClassInfo"
        )
    _check_class_names([c.name for c in infos], "the class list")
    return infos


def _check_class_names(names: list[str], source: str) -> None:
    for i, name in enumerate(names):
        if not name:
            raise AnnotationError(f"{source}: class {i} has an empty name; give every class a name")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise AnnotationError(
                f"{source}: classes {seen[name]} and {i} are both named '{name}'; "
                "class names must be unique"
            )
        seen[name] = i


def read_classes_json(path) -> list[ClassInfo]:
    """Read a class list ``[{"id": 0, "name": ..., "color": "#rrggbb"}, ...]``.

    Entries may come in any order but their ids must be exactly ``0..C-1``. Without ``"id"``
    keys the list order gives the ids; a missing ``"color"`` gets a default colour.

    Parameters
    ----------
    path : str or Path
        The JSON file.

    Returns
    -------
    list of ClassInfo
        Class ``k`` at index ``k``.

    Raises
    ------
    AnnotationError
        When the file is missing, not JSON, or its ids/names are not valid.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "classes.json"
    >>> _ = path.write_text('[{"id": 1, "name": "mito"}, {"id": 0, "name": "cyto"}]')
    >>> [c.name for c in read_classes_json(path)]
    ['cyto', 'mito']
    """
    path = Path(path)
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found; check the path to the class list") from None
    except json.JSONDecodeError as err:
        raise AnnotationError(
            f"{path} line {err.lineno}: not valid JSON ({err.msg}); "
            'write a list like [{"id": 0, "name": "cytoplasm", "color": "#7f7f7f"}]'
        ) from None
    except (UnicodeDecodeError, RecursionError, OSError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else type(err).__name__
        raise AnnotationError(
            f"{path}: not a readable UTF-8 JSON class list ({reason}); "
            'write a list like [{"id": 0, "name": "cytoplasm", "color": "#7f7f7f"}]'
        ) from None
    if not isinstance(entries, list) or not entries:
        raise AnnotationError(
            f'{path}: expected a non-empty list like [{{"id": 0, "name": "cytoplasm", '
            f'"color": "#7f7f7f"}}], found {type(entries).__name__}'
        )
    ids = [_class_entry_id(path, i, e) for i, e in enumerate(entries)]
    if sorted(ids) != list(range(len(entries))):
        raise AnnotationError(
            f"{path}: class ids are {sorted(ids)} but must be 0..{len(entries) - 1}, each once; "
            "renumber the classes"
        )
    defaults = default_classes(len(entries))
    infos: list[ClassInfo | None] = [None] * len(entries)
    for i, (class_id, entry) in enumerate(zip(ids, entries)):
        color = entry.get("color", defaults[class_id].color)
        if not isinstance(color, str) or not _is_hex_colour(color):  # label writers need it
            raise AnnotationError(
                f"{path} entry {i + 1}: color {str(color)[:40]!r} is not '#rrggbb'; "
                "write e.g. '#ff8c00'"
            )
        infos[class_id] = ClassInfo(str(entry["name"]).strip(), color)
    _check_class_names([c.name for c in infos], str(path))
    return infos


def _is_hex_colour(text: str) -> bool:
    digits = "0123456789abcdefABCDEF"
    return len(text) == 7 and text[0] == "#" and all(c in digits for c in text[1:])


def _class_entry_id(path: Path, index: int, entry) -> int:
    if not isinstance(entry, dict) or "name" not in entry:
        raise AnnotationError(
            f'{path} entry {index + 1}: {entry!r} is not an object with a "name"; '
            'write {"id": 0, "name": "cytoplasm", "color": "#7f7f7f"}'
        )
    class_id = entry.get("id", index)
    if isinstance(class_id, bool) or not isinstance(class_id, int):
        raise AnnotationError(
            f"{path} entry {index + 1}: id {class_id!r} is not an integer; use ids 0..C-1"
        )
    return class_id


def write_classes_json(path, classes) -> Path:
    """Write ``classes`` (names or ClassInfo) as ``[{"id", "name", "color"}, ...]``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = write_classes_json(pathlib.Path(tempfile.mkdtemp()) / "classes.json", ["a", "b"])
    >>> [c.name for c in read_classes_json(path)]
    ['a', 'b']
    """
    infos = as_class_list(classes) or []
    entries = [{"id": i, "name": c.name, "color": c.color} for i, c in enumerate(infos)]
    return _write_atomic(Path(path), json.dumps(entries, indent=1) + "\n")


# ---------------------------------------------------------------------------------- reading
def read_points_csv(path, classes=None) -> np.ndarray:
    """Read ``points.csv`` (``z,y,x,class``; ``y,x,class`` for a 2D image).

    Parameters
    ----------
    path : str or Path
        The CSV file.
    classes : list of str or list of ClassInfo, optional
        The class list. Needed when the class column holds names; when given, ids are checked
        against it. By default ids are taken as they are.

    Returns
    -------
    (N, 4) int64 array
        Rows ``(z, y, x, class)``; ``z`` is 0 when the file has no ``z`` column.

    Raises
    ------
    AnnotationError
        Naming the file and line: wrong header, wrong number of values, a value that is not a
        number or not an integer, an unknown class, or a file without rows.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
    >>> _ = path.write_text("z,y,x,class\\n0,5,7,mito\\n2,1,3,0\\n")
    >>> read_points_csv(path, classes=["cyto", "mito"])
    array([[0, 5, 7, 1],
           [2, 1, 3, 0]])
    """
    return _read_kind(path, "points", as_class_list(classes))[0]


def read_boxes_csv(path, classes=None, *, with_exhaustive: bool = False):
    """Read ``boxes.csv`` (``z,y0,x0,y1,x1,class[,exhaustive]``,
    corners inclusive; no ``z`` for 2D).

    The optional ``exhaustive`` column (0/1, empty = 0) says, with 1, that every object of the
    row's class in its slice is boxed; all rows of one (z, class) must agree. A row with empty
    ``y0,x0,y1,x1`` and ``exhaustive`` 1 says the slice holds no object of the class.

    Parameters
    ----------
    path, classes
        As :func:`read_points_csv`.
    with_exhaustive : bool, optional
        Also return the exhaustive (z, class) pairs. By default only the boxes.

    Returns
    -------
    boxes : (N, 6) int64 array
        Rows ``(z, y0, x0, y1, x1, class)``.
    exhaustive : (M, 2) int64 array
        Rows ``(z, class)`` whose boxes enclose every object of the class; only with
        ``with_exhaustive``.

    Raises
    ------
    AnnotationError
        As :func:`read_points_csv`, and for an ``exhaustive`` value other than 0/1, boxes of
        one (z, class) that disagree on it, or empty coordinates without ``exhaustive`` 1.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "boxes.csv"
    >>> _ = path.write_text("y0,x0,y1,x1,class\\n2,3,10,12,1\\n")
    >>> read_boxes_csv(path)
    array([[ 0,  2,  3, 10, 12,  1]])
    >>> _ = path.write_text("z,y0,x0,y1,x1,class,exhaustive\\n0,2,3,10,12,1,1\\n4,,,,,0,1\\n")
    >>> boxes, exhaustive = read_boxes_csv(path, with_exhaustive=True)
    >>> boxes.tolist(), exhaustive.tolist()
    ([[0, 2, 3, 10, 12, 1]], [[0, 1], [4, 0]])
    """
    boxes, exhaustive = _boxes_from_table(_read_table(path, "boxes", as_class_list(classes)))
    return (boxes, exhaustive) if with_exhaustive else boxes


def read_tags_csv(path, classes=None) -> np.ndarray:
    """Read ``tags.csv`` (``z,class``: the class is present in slice z; ``class`` alone for 2D).

    Parameters and errors as :func:`read_points_csv`; a file with region rows
    (``z,class,y0,x0,y1,x1``) is refused: read it with :func:`read_region_tags_csv`.

    Returns
    -------
    (N, 2) int64 array
        Rows ``(z, class)``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tags.csv"
    >>> _ = path.write_text("z,class\\n3,mito\\n3,cyto\\n")
    >>> read_tags_csv(path, classes=["cyto", "mito"])
    array([[3, 1],
           [3, 0]])
    """
    tags, regions = read_region_tags_csv(path, classes)
    if len(regions):
        raise AnnotationError(
            f"{path} holds region tags (rows with y0,x0,y1,x1); read it with "
            "read_region_tags_csv or load_annotations"
        )
    return tags


#: The optional region columns of ``tags.csv``.
_REGION_COLUMNS = ("y0", "x0", "y1", "x1")


def read_region_tags_csv(path, classes=None) -> tuple[np.ndarray, np.ndarray]:
    """Read ``tags.csv`` with optional region columns (``z,class[,y0,x0,y1,x1]``).

    A row with ``y0,x0,y1,x1`` (corners inclusive) tags that rectangle of slice z: the tagged
    classes of a rectangle are present in it and every other class is absent from it. A row with
    the four cells empty, or a file without these columns, tags the whole slice.

    Parameters and errors as :func:`read_points_csv`, plus a header with only some of the four
    region columns.

    Returns
    -------
    tags : (N, 2) int64 array
        Whole-slice tags ``(z, class)``.
    region_tags : (M, 6) int64 array
        Region tags ``(z, class, y0, x0, y1, x1)``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "tags.csv"
    >>> _ = path.write_text("z,class,y0,x0,y1,x1\\n3,mito,0,0,31,31\\n4,cyto,,,,\\n")
    >>> tags, regions = read_region_tags_csv(path, classes=["cyto", "mito"])
    >>> tags.tolist(), regions.tolist()
    ([[4, 0]], [[3, 1, 0, 0, 31, 31]])
    """
    return _tags_from_table(_read_table(path, "tags", as_class_list(classes)))


def _tags_from_table(table: _Table) -> tuple[np.ndarray, np.ndarray]:
    """Split a parsed ``tags.csv`` into whole-slice tags and region tags."""
    if table.optional not in ((), _REGION_COLUMNS):
        raise AnnotationError(
            f"{table.path} line 1: the header has {','.join(table.optional)} but a region needs "
            f"all of {','.join(_REGION_COLUMNS)}; add the missing columns or remove them"
        )
    values = table.values
    if not table.optional:
        return values[:, :2], np.zeros((0, 6), np.int64)
    return values[table.no_box, :2], values[~table.no_box].reshape(-1, 6)


def read_sizes_csv(path, classes=None) -> np.ndarray:
    """Read ``sizes.csv`` (``z,class,fraction``: the approximate share of slice z a class covers).

    Parameters and errors as :func:`read_points_csv`.

    Returns
    -------
    (N, 3) float64 array
        Rows ``(z, class, fraction)``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "sizes.csv"
    >>> _ = path.write_text("z,class,fraction\\n0,0,0.75\\n0,1,0.25\\n")
    >>> read_sizes_csv(path)
    array([[0.  , 0.  , 0.75],
           [0.  , 1.  , 0.25]])
    """
    return _read_kind(path, "sizes", as_class_list(classes))[0]


@dataclass
class _Table:
    """A parsed annotation CSV: the values, their 1-based lines and what the header held."""

    path: Path
    values: np.ndarray  # (N, len(columns) + len(optional)); the z column is 0 without one
    lines: np.ndarray  # (N,) int
    has_z: bool
    optional: tuple[str, ...]  # the optional columns the file has, in order
    no_box: np.ndarray  # (N,) bool: boxes rows with empty coordinates (a statement only)


def _read_kind(path, kind_name: str, classes: list[ClassInfo] | None) -> tuple[np.ndarray, bool]:
    """Parse one annotation CSV; returns the array and whether the file had a ``z`` column."""
    table = _read_table(path, kind_name, classes)
    return table.values[:, : len(_KINDS[kind_name].columns)], table.has_z


def _read_table(path, kind_name: str, classes: list[ClassInfo] | None) -> _Table:
    kind = _KINDS[kind_name]
    path = Path(path)
    lines, rows = _read_rows(path)
    if not rows:
        raise AnnotationError(
            f"{path} is empty; its first line must be the header '{kind.header}' "
            f"followed by one row per {kind.singular}"
        )
    has_z, optional = _check_header(path, kind, rows[0])
    columns = (kind.columns if has_z else kind.columns[1:]) + optional
    data_lines, data = lines[1:], rows[1:]
    if not data:
        raise AnnotationError(
            f"{path} has a header but no rows; add rows '{','.join(columns)}' or leave the file out"
        )
    _check_row_lengths(path, data_lines, data, columns)
    table = np.char.strip(np.array(data, dtype=np.str_).reshape(len(data), len(columns)))
    lines_arr = np.asarray(data_lines)
    has_statements = "exhaustive" in optional or len(optional) == len(_REGION_COLUMNS)
    no_box = _statement_rows(table, columns) if has_statements else np.zeros(len(data), bool)
    out = np.zeros((len(data), len(kind.columns) + len(optional)), dtype=kind.dtype)
    offset = 0 if has_z else 1
    for j, name in enumerate(columns):
        if name == "class":
            values = _parse_classes(path, lines_arr, table[:, j], classes)
        elif name == "exhaustive":
            values = _parse_flags(path, lines_arr, table[:, j], name)
        elif name in ("y0", "x0", "y1", "x1"):
            values = _parse_numbers(path, lines_arr, np.where(no_box, "0", table[:, j]), name)
        else:
            values = _parse_numbers(path, lines_arr, table[:, j], name)
        out[:, j + offset] = values
    return _Table(path, out, lines_arr, has_z, optional, no_box)


def _statement_rows(table: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """Rows whose four box coordinates are all empty."""
    corners = [columns.index(name) for name in ("y0", "x0", "y1", "x1")]
    return np.all(table[:, corners] == "", axis=1)


def _parse_flags(path: Path, lines: np.ndarray, values: np.ndarray, column: str) -> np.ndarray:
    """0/1 cells (empty is 0)."""
    bad = ~np.isin(values, ["", "0", "1"])
    if bad.any():
        i = int(np.argmax(bad))
        raise AnnotationError(
            f"{path} line {lines[i]}: {column} is '{values[i]}'; write 1 (every object of the "
            "class in this slice is boxed) or 0 (only some are)"
        )
    return (values == "1").astype(np.int64)


def _boxes_from_table(table: _Table) -> tuple[np.ndarray, np.ndarray]:
    """Split a parsed ``boxes.csv`` into boxes and exhaustive (z, class) rows."""
    values = table.values
    if "exhaustive" not in table.optional:
        return values[:, :6], np.zeros((0, 2), np.int64)
    flags = values[:, 6]
    if (table.no_box & (flags == 0)).any():
        i = int(np.argmax(table.no_box & (flags == 0)))
        raise AnnotationError(
            f"{table.path} line {table.lines[i]}: y0,x0,y1,x1 are empty but exhaustive is not 1; "
            "give the box corners, or write exhaustive=1 to say slice "
            f"z={values[i, 0]} holds no object of class {values[i, 5]}"
        )
    _check_flags_agree(table, flags)
    exhaustive = np.unique(values[flags == 1][:, [0, 5]], axis=0).reshape(-1, 2)
    return values[~table.no_box, :6], exhaustive


def _check_flags_agree(table: _Table, flags: np.ndarray) -> None:
    """All rows of one (z, class) give the same ``exhaustive`` value."""
    keys, group = np.unique(table.values[:, [0, 5]], axis=0, return_inverse=True)
    group = group.ravel()
    lowest = np.full(len(keys), 2)
    np.minimum.at(lowest, group, flags)
    highest = np.zeros(len(keys), np.int64)
    np.maximum.at(highest, group, flags)
    if (lowest == highest).all():
        return
    rows = np.flatnonzero(group == int(np.argmax(lowest != highest)))
    a = rows[0]
    b = rows[np.argmax(flags[rows] != flags[a])]
    z, cls = table.values[a, 0], table.values[a, 5]
    raise AnnotationError(
        f"{table.path} lines {table.lines[a]} and {table.lines[b]}: boxes of class {cls} in "
        f"slice z={z} say exhaustive={flags[a]} and exhaustive={flags[b]}; all boxes of a "
        "class in a slice must agree: 1 if every object of the class there is boxed, else 0"
    )


def _check_row_lengths(path: Path, lines: list[int], rows: list[list[str]], columns) -> None:
    for line, row in zip(lines, rows):
        if len(row) != len(columns):
            raise AnnotationError(
                f"{path} line {line}: {len(row)} values '{','.join(row)}' but the header has "
                f"{len(columns)} columns ({','.join(columns)}); give one value per column"
            )


def _read_rows(path: Path) -> tuple[list[int], list[list[str]]]:
    """Non-blank CSV records of ``path`` and their 1-based line numbers."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            lines, rows = [], []
            for row in reader:
                if any(cell.strip() for cell in row):
                    lines.append(reader.line_num)
                    rows.append(row)
    except FileNotFoundError:
        raise AnnotationError(f"{path}: file not found; check the path") from None
    except (UnicodeDecodeError, csv.Error) as err:
        raise AnnotationError(
            f"{path}: not a readable UTF-8 CSV file ({err}); save it as CSV (comma-separated)"
        ) from None
    return lines, rows


def _check_header(path: Path, kind: _Kind, header: list[str]) -> tuple[bool, tuple[str, ...]]:
    """Whether the header has the ``z`` column and which optional columns follow; raises if bad."""
    cells = [cell.strip().lower() for cell in header]
    for n_optional in range(len(kind.optional), -1, -1):
        optional = kind.optional[:n_optional]
        if cells == [*kind.columns, *optional]:
            return True, optional
        if cells == [*kind.columns[1:], *optional]:
            return False, optional
    extra = f", optionally followed by ',{','.join(kind.optional)}'" if kind.optional else ""
    raise AnnotationError(
        f"{path} line 1: header is '{','.join(header)}' but must be '{kind.header}' "
        f"(or '{kind.header_2d}' for a 2D image){extra}; fix the first line of the file"
    )


def _parse_numbers(path: Path, lines: np.ndarray, values: np.ndarray, column: str) -> np.ndarray:
    try:
        numbers = values.astype(np.float64)
    except ValueError:
        bad = next(i for i, v in enumerate(values) if not _is_float(v))
        raise AnnotationError(
            f"{path} line {lines[bad]}: {column} is '{values[bad]}', not a number; "
            f"write {_expected(column)}"
        ) from None
    not_finite = ~np.isfinite(numbers)
    if not_finite.any():
        bad = int(np.argmax(not_finite))
        raise AnnotationError(
            f"{path} line {lines[bad]}: {column} is '{values[bad]}'; write {_expected(column)}"
        )
    if column == "fraction":
        return numbers
    too_large = np.abs(numbers) > _MAX_INDEX
    if too_large.any():
        bad = int(np.argmax(too_large))
        raise AnnotationError(
            f"{path} line {lines[bad]}: {column} is {values[bad]}, beyond any image; "
            f"write {_expected(column)}"
        )
    fractional = numbers != np.round(numbers)
    if fractional.any():
        bad = int(np.argmax(fractional))
        raise AnnotationError(
            f"{path} line {lines[bad]}: {column} is {values[bad]}, not an integer; coordinates "
            f"are whole pixel indices, round it (e.g. {column}={int(np.round(numbers[bad]))})"
        )
    return numbers.astype(np.int64)


def _expected(column: str) -> str:
    if column == "fraction":
        return "a fraction between 0 and 1 (e.g. 0.25)"
    return "a whole pixel index (e.g. 12)"


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _parse_classes(path: Path, lines: np.ndarray, values: np.ndarray, classes) -> np.ndarray:
    unique, first, inverse = np.unique(values, return_index=True, return_inverse=True)
    ids = np.array(
        [_parse_class(path, lines[i], v, classes) for v, i in zip(unique, first)], dtype=np.int64
    )
    return ids[inverse.ravel()]


def _parse_class(path: Path, line: int, value: str, classes: list[ClassInfo] | None) -> int:
    if not value:
        raise AnnotationError(f"{path} line {line}: class is empty; write a class id or name")
    if _is_float(value):
        number = float(value)
        if not math.isfinite(number) or number != round(number) or not 0 <= number <= _MAX_INDEX:
            raise AnnotationError(
                f"{path} line {line}: class {value} is not a class id; "
                "write an integer 0..C-1 or a class name"
            )
        class_id = int(number)
        if classes is not None and class_id >= len(classes):
            raise AnnotationError(
                f"{path} line {line}: class {class_id} is not a class id 0..{len(classes) - 1} "
                f"({_known(classes)}); fix the id or add the class to the class list"
            )
        return class_id
    if classes is None:
        raise AnnotationError(
            f"{path} line {line}: class '{value}' is a name but no class list was given; "
            "pass the class names in id order (--classes on the command line) or write class ids"
        )
    names = [c.name for c in classes]
    if value not in names:
        raise AnnotationError(
            f"{path} line {line}: class '{value}' is not a known class ({_known(classes)}); "
            "fix the name or add the class to the class list"
        )
    return names.index(value)


def _known(classes: list[ClassInfo]) -> str:
    return "known: " + ", ".join(f"{i} '{c.name}'" for i, c in enumerate(classes))


# ---------------------------------------------------------------------------------- writing
def write_points_csv(path, points) -> Path:
    """Write ``(N, 4)`` points as ``z,y,x,class`` (class as integer id).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = write_points_csv(pathlib.Path(tempfile.mkdtemp()) / "points.csv", [[0, 5, 7, 1]])
    >>> print(path.read_text(), end="")
    z,y,x,class
    0,5,7,1
    """
    return _write_kind(path, "points", points)


def write_boxes_csv(path, boxes, exhaustive=None) -> Path:
    """Write ``(N, 6)`` boxes as ``z,y0,x0,y1,x1,class``, with an ``exhaustive`` column if needed.

    Parameters
    ----------
    path : str or Path
        The CSV file (written atomically).
    boxes : (N, 6) int array
        Rows ``(z, y0, x0, y1, x1, class)``.
    exhaustive : (M, 2) int array, optional
        Rows ``(z, class)`` whose boxes enclose every object of the class. When there are any,
        the file gets the ``exhaustive`` column, and an exhaustive (z, class) without boxes is
        written as a row with empty corners. By default there are none.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = write_boxes_csv(pathlib.Path(tempfile.mkdtemp()) / "b.csv", [[0, 1, 2, 3, 4, 0]])
    >>> print(path.read_text(), end="")
    z,y0,x0,y1,x1,class
    0,1,2,3,4,0
    >>> path = write_boxes_csv(path, [[0, 1, 2, 3, 4, 0]], exhaustive=[[0, 0], [2, 1]])
    >>> print(path.read_text(), end="")
    z,y0,x0,y1,x1,class,exhaustive
    0,1,2,3,4,0,1
    2,,,,,1,1
    """
    exhaustive = np.asarray([] if exhaustive is None else exhaustive, np.int64).reshape(-1, 2)
    if not len(exhaustive):
        return _write_kind(path, "boxes", boxes)
    boxes = np.asarray(boxes, dtype=np.int64).reshape(-1, 6)
    flagged = {(int(z), int(c)) for z, c in exhaustive}
    rows = [
        ",".join(map(str, row)) + f",{int((row[0], row[5]) in flagged)}" for row in boxes.tolist()
    ]
    boxed = {(int(z), int(c)) for z, c in boxes[:, [0, 5]]}
    rows += [f"{z},,,,,{c},1" for z, c in sorted(flagged - boxed)]
    header = _KINDS["boxes"].header + ",exhaustive"
    return _write_atomic(Path(path), "\n".join([header, *rows]) + "\n")


def write_tags_csv(path, tags, region_tags=None) -> Path:
    """Write ``(N, 2)`` tags as ``z,class``, and ``(M, 6)`` region tags as region rows.

    With region tags the header is ``z,class,y0,x0,y1,x1`` and whole-slice tags have the four
    region cells empty.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = write_tags_csv(pathlib.Path(tempfile.mkdtemp()) / "tags.csv", [[3, 1]])
    >>> print(path.read_text(), end="")
    z,class
    3,1
    >>> path = write_tags_csv(path, [[3, 1]], region_tags=[[2, 0, 0, 0, 15, 15]])
    >>> print(path.read_text(), end="")
    z,class,y0,x0,y1,x1
    3,1,,,,
    2,0,0,0,15,15
    """
    regions = np.asarray([] if region_tags is None else region_tags, np.int64).reshape(-1, 6)
    if not len(regions):
        return _write_kind(path, "tags", tags)
    tags = np.asarray(tags, dtype=np.int64).reshape(-1, 2)
    rows = [f"{z},{c},,,," for z, c in tags.tolist()]
    rows += [",".join(map(str, row)) for row in regions.tolist()]
    header = ",".join(_KINDS["tags"].columns + _REGION_COLUMNS)
    return _write_atomic(Path(path), "\n".join([header, *rows]) + "\n")


def write_sizes_csv(path, sizes) -> Path:
    """Write ``(N, 3)`` sizes as ``z,class,fraction``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = write_sizes_csv(pathlib.Path(tempfile.mkdtemp()) / "s.csv", [[0, 1, 0.25]])
    >>> print(path.read_text(), end="")
    z,class,fraction
    0,1,0.25
    """
    return _write_kind(path, "sizes", sizes)


def _write_kind(path, kind_name: str, array) -> Path:
    kind = _KINDS[kind_name]
    array = np.asarray(array, dtype=kind.dtype).reshape(-1, len(kind.columns))
    rows = [kind.header]
    if kind_name == "sizes":
        rows += [f"{int(z)},{int(c)},{float(f)!r}" for z, c, f in array]
    else:
        rows += [",".join(map(str, row)) for row in array.tolist()]
    return _write_atomic(Path(path), "\n".join(rows) + "\n")


def _write_atomic(path: Path, text: str) -> Path:
    """Write via a temporary sibling so a crash never leaves a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8", newline="")
    os.replace(tmp, path)
    return path


#: Written by :func:`write_annotations` next to its files: their names and sha256, the proof that
#: replacing or removing one of them later deletes only what napari-wsseg wrote.
MANIFEST_FILE = ".napari_wsseg_annotations.json"


def write_annotations(
    folder, annotations: Annotations, *, overwrite: bool = False
) -> dict[str, Path]:
    """Write the annotations to ``folder`` as CSV files plus ``classes.json``.

    Each non-empty kind is written to ``points.csv``, ``boxes.csv`` (with the ``exhaustive``
    column when ``annotations.exhaustive_boxes`` has rows), ``tags.csv`` or ``sizes.csv``, so the
    folder holds exactly these annotations. Masks are not written here (save them as an image
    with :mod:`napari_wsseg.io`). The names and checksums of the files written are kept in
    ``.napari_wsseg_annotations.json``.

    Parameters
    ----------
    folder : str or Path
        Created if missing.
    annotations : Annotations
    overwrite : bool, default False
        Replace the annotation files of an earlier call, and remove the CSV of a kind that is now
        empty. Only files this function wrote and nobody changed since are replaced or removed.
        By default, any existing ``classes.json`` or annotation CSV in ``folder`` is an error.

    Returns
    -------
    dict
        ``{"classes": path, "points": path, ...}`` for the files written.

    Raises
    ------
    AnnotationError
        An annotation file exists and ``overwrite`` is False, or it exists and was not written
        by this function (or was changed since); nothing is written then.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> ann = Annotations(default_classes(2), points=[[0, 1, 1, 0], [0, 3, 3, 1]])
    >>> sorted(write_annotations(folder, ann))
    ['classes', 'points']
    >>> sorted(write_annotations(folder, Annotations(default_classes(2), tags=[[0, 1]]),
    ...                          overwrite=True))
    ['classes', 'tags']
    """
    folder = Path(folder)
    _check_replaceable(folder, overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    written = {"classes": write_classes_json(folder / CLASSES_FILE, annotations.classes)}
    for name, kind in _KINDS.items():
        array = getattr(annotations, name)
        path = folder / kind.file_name
        if name == "boxes" and len(annotations.exhaustive_boxes):
            written[name] = write_boxes_csv(path, array, annotations.exhaustive_boxes)
        elif name == "tags" and len(annotations.region_tags):
            written[name] = write_tags_csv(path, array, annotations.region_tags)
        elif len(array):
            written[name] = _write_kind(path, name, array)
        elif path.exists():
            path.unlink()  # ours: _check_replaceable proved it
    manifest = {path.name: _sha256(path) for path in written.values()}
    _write_atomic(folder / MANIFEST_FILE, json.dumps(manifest, indent=1) + "\n")
    return written


def _check_replaceable(folder: Path, overwrite: bool) -> None:
    """Refuse when an annotation file in ``folder`` may not be replaced or removed."""
    names = [CLASSES_FILE, *(kind.file_name for kind in _KINDS.values())]
    existing = [folder / name for name in names if (folder / name).exists()]
    if not existing:
        return
    if not overwrite:
        raise AnnotationError(
            f"{existing[0]} already exists; pass overwrite=True to replace the annotations in "
            f"{folder}, or choose another folder"
        )
    ours = _read_manifest(folder)
    for path in existing:
        if not path.is_file() or ours.get(path.name) != _sha256(path):
            raise AnnotationError(
                f"{path} was not written by napari-wsseg or was changed since, so it is never "
                "replaced or removed; move it away or choose another folder"
            )


def _read_manifest(folder: Path) -> dict:
    try:
        manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def find_annotation_files(folder) -> dict[str, Path]:
    """The annotation CSVs present in ``folder``, as keyword arguments for :func:`load_annotations`.

    Examples
    --------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = write_annotations(folder, Annotations(default_classes(1), tags=[[0, 0]]))
    >>> list(find_annotation_files(folder))
    ['tags']
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise AnnotationError(f"{folder}: not a folder; give the folder holding points.csv etc.")
    found = {name: folder / kind.file_name for name, kind in _KINDS.items()}
    return {name: path for name, path in found.items() if path.is_file()}


# ---------------------------------------------------------------------------------- loading
def load_annotations(
    *,
    points=None,
    boxes=None,
    tags=None,
    sizes=None,
    masks=None,
    classes=None,
    image_shape: Sequence[int] | None = None,
    masks_file=None,
) -> Annotations:
    """Read the given annotation CSVs (and a mask array) into :class:`Annotations`.

    Parameters
    ----------
    points, boxes, tags, sizes : str or Path, optional
        CSV files in the formats of :func:`read_points_csv` etc. A file that is given must
        have at least one row. The ``exhaustive`` column of ``boxes`` fills
        ``Annotations.exhaustive_boxes``.
    masks : (Z, Y, X) or (Y, X) integer array, optional
        Partial label image: 0 unlabeled, ``k > 0`` means class ``k - 1``.
    classes : list of str or list of ClassInfo, optional
        The class list, class ``k`` at index ``k``. By default the class count is the largest
        class id in the files (or mask value) + 1 and classes are named ``class0``, ``class1``...;
        class names in a CSV then raise an error.
    image_shape : (Z, Y, X) tuple, optional
        The image the annotations belong to. When given, a CSV without a ``z`` column is only
        accepted for a 2D image (Z = 1), and the result is checked with
        :func:`~napari_wsseg.annotations.validate.validate_annotations` (which may warn).
        Its messages name the CSV file (and row) of a bad row.
    masks_file : str or Path, optional
        The file ``masks`` was read from, named in messages about the mask. By default the
        messages say "annotations".

    Returns
    -------
    Annotations

    Raises
    ------
    AnnotationError
        For any bad file or row (see :func:`read_points_csv`) and, when ``image_shape`` is
        given, for annotations that do not fit the image.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "points.csv"
    >>> _ = path.write_text("y,x,class\\n1,2,0\\n3,3,1\\n")
    >>> ann = load_annotations(points=path, image_shape=(1, 8, 8))
    >>> ann.class_names, ann.points.tolist()
    (['class0', 'class1'], [[0, 1, 2, 0], [0, 3, 3, 1]])
    """
    infos = as_class_list(classes)
    given = {"points": points, "boxes": boxes, "tags": tags, "sizes": sizes}
    arrays = {}
    for name, path in given.items():
        if path is None:
            continue
        table = _read_table(path, name, infos)
        has_z = table.has_z
        if name == "boxes":
            arrays["boxes"], arrays["exhaustive_boxes"] = _boxes_from_table(table)
        elif name == "tags":
            arrays["tags"], arrays["region_tags"] = _tags_from_table(table)
        else:
            arrays[name] = table.values
        if not has_z and image_shape is not None and int(image_shape[0]) > 1:
            kind = _KINDS[name]
            raise AnnotationError(
                f"{path} has no z column (header '{kind.header_2d}') but the image has "
                f"{int(image_shape[0])} slices; add a z column: '{kind.header}'"
            )
    masks = None if masks is None else np.asarray(masks)
    if infos is None:
        infos = default_classes(_inferred_class_count(arrays, masks))
    annotations = Annotations(classes=infos, masks=masks, **arrays)
    if image_shape is not None:
        from .validate import validate_annotations

        files = {**given, "masks": masks_file}
        validate_annotations(annotations, image_shape, source=_source_name(given), files=files)
    return annotations


def _inferred_class_count(arrays: dict[str, np.ndarray], masks: np.ndarray | None) -> int:
    from .validate import CLASS_COLUMN

    top = [int(arrays[k][:, c].max()) for k, c in CLASS_COLUMN.items() if len(arrays.get(k, []))]
    if masks is not None and masks.size and np.issubdtype(masks.dtype, np.integer):
        top.append(int(masks.max()) - 1)
    return max(top, default=-1) + 1


def _source_name(given: dict) -> str:
    """The folder holding all given files, else a generic name, for validation messages."""
    folders = {str(Path(p).parent) for p in given.values() if p is not None}
    return f"annotations in {folders.pop()}" if len(folders) == 1 else "annotations"
