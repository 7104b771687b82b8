"""Write measurement tables as CSV: objects, per-class summary, per-slice summary. Imports no Qt."""

from __future__ import annotations

import csv
from pathlib import Path

from ..errors import WssegError


def table_paths(out) -> dict[str, Path]:
    """The three CSV paths of a measurement written to ``out`` (``TABLE.csv``).

    Examples
    --------
    >>> sorted(p.name for p in table_paths("cells.csv").values())
    ['cells.csv', 'cells_per_slice.csv', 'cells_summary.csv']
    """
    out = Path(out).expanduser()
    if out.suffix.lower() != ".csv":
        raise WssegError(f"table {out} must end in .csv; e.g. {out.with_suffix('.csv').name}")
    return {
        "objects": out,
        "summary": out.with_name(f"{out.stem}_summary.csv"),
        "per_slice": out.with_name(f"{out.stem}_per_slice.csv"),
    }


def write_tables(result, out, *, overwrite: bool = False) -> dict[str, Path]:
    """Write ``result``'s objects, summary and per-slice tables next to each other.

    Parameters
    ----------
    result : MeasureResult
    out : str or Path
        ``TABLE.csv``; the summaries go to ``TABLE_summary.csv`` and ``TABLE_per_slice.csv``.
    overwrite : bool, default False
        Replace existing files; otherwise an existing file is an error.

    Returns
    -------
    dict of str to Path
    """
    paths = table_paths(out)
    if not overwrite:
        existing = [str(p) for p in paths.values() if p.exists()]
        if existing:
            raise WssegError(
                f"{', '.join(existing)} exist(s); pass --overwrite to replace or "
                "choose another --out"
            )
    paths["objects"].parent.mkdir(parents=True, exist_ok=True)
    for key, path in paths.items():
        write_csv(path, getattr(result, key))
    return paths


def write_csv(path, rows: list[dict]) -> Path:
    """Write rows (dicts with the same keys) as CSV; an empty table gets an empty file."""
    path = Path(path)
    with open(path, "w", newline="") as handle:
        if rows:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return path
