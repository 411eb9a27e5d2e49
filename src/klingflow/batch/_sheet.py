"""A batch's table, read into rows of cells: CSV, Parquet, JSON lines (a file or stdin), or a DataFrame.

pandas reads CSV and Parquet. CSV cells are read as text (``dtype=str``) so each value is typed
later by the pipeline's own ``inputs:`` (``"[a, b]"`` becomes a list input, ``"3"`` an integer),
exactly as ``--set`` values are. JSON lines are read one line at a time with :mod:`json` rather
than ``pandas.read_json``, whose errors do not say which line is broken. An empty cell (an empty
CSV field, a null, a NaN) means "not given here": the input's default applies.
"""

from __future__ import annotations

import io
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from klingflow.errors import ConfigError

__all__ = ["Sheet", "SheetSource", "read_sheet"]

_HINT = "a batch is a .csv (with a header row), .parquet or .jsonl file, or - for JSON lines on stdin"


@dataclass(frozen=True)
class Sheet:
    """The rows of a batch as cells, before they are checked against a pipeline.

    ``rows[i]`` is data row ``i + 1`` (the header is not a row), holding only its non-empty cells.
    """

    source: str
    """How errors name the table: its path, ``stdin``, ``the DataFrame`` or ``the records``."""
    columns: list[str]
    rows: list[dict[str, Any]]
    path: Path | None = None


SheetSource = str | Path | pd.DataFrame | Sequence[Mapping[str, Any]] | Sheet
"""What a batch runs over: a path (``.csv``, ``.parquet``, ``.jsonl``), ``-`` (JSON lines on
stdin), a DataFrame, a list of records (a deployment's parameter), or a sheet already read."""


def _cell(value: Any) -> Any:
    """A cell as a plain Python value (numpy scalars and arrays too), or None when it is empty."""
    if hasattr(value, "tolist"):  # a numpy scalar or array (a Parquet list column)
        value = value.tolist()
    if value is None or value is pd.NA or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None
    return value


def _rows(records: Sequence[Mapping[Any, Any]]) -> list[dict[str, Any]]:
    return [
        {str(name): cell for name, value in record.items() if (cell := _cell(value)) is not None}
        for record in records
    ]


def _from_frame(frame: pd.DataFrame, source: str, path: Path | None = None) -> Sheet:
    columns = [str(name) for name in frame.columns]
    return Sheet(source, columns, _rows(frame.to_dict("records")), path)


def _csv(path: Path) -> Sheet:
    try:
        with warnings.catch_warnings():
            # a first row longer than the header: pandas drops the extra cells with only a warning
            warnings.simplefilter("error", pd.errors.ParserWarning)
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, index_col=False)
    except pd.errors.ParserWarning as exc:
        raise ConfigError(
            "a row has more fields than the header has columns", context=str(path), hint="check its commas"
        ) from exc
    except pd.errors.EmptyDataError as exc:
        raise ConfigError(
            "the file is empty: no header row and no rows", context=str(path), hint=_HINT
        ) from exc
    except pd.errors.ParserError as exc:
        # pandas counts rows from 0 after the header; its text names the row ("starting at row 3")
        raise ConfigError(
            f"not a readable CSV table: {exc}",
            context=str(path),
            hint="check the quotes and commas of that row",
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text: {exc}", context=str(path), hint="save the sheet as UTF-8 CSV"
        ) from exc
    return _from_frame(frame, str(path), path)


def _json_lines(text: str, source: str, path: Path | None = None) -> Sheet:
    records: list[dict[str, Any]] = []
    columns: dict[str, None] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"line {number} is not JSON: {exc.msg}", context=source, hint=_HINT) from exc
        if not isinstance(record, dict):
            raise ConfigError(
                f"line {number} is a JSON {type(record).__name__}, not an object",
                context=source,
                hint='each line is one row: {"subject": "a fox", "seconds": 5}',
            )
        records.append(record)
        columns.update(dict.fromkeys(map(str, record)))
    return Sheet(source, list(columns), _rows(records), path)


def read_sheet(source: SheetSource) -> Sheet:
    """Read a batch's table (see :data:`SheetSource`); a table with no rows is refused.

    Raises :class:`~klingflow.errors.ConfigError` naming the file (and the line or row) when the
    table cannot be read: a missing or empty file, a broken quote, a line that is not JSON.
    """
    if isinstance(source, Sheet):
        sheet = source
    elif isinstance(source, pd.DataFrame):
        sheet = _from_frame(source, "the DataFrame")
    elif isinstance(source, (str, Path)) and str(source) == "-":
        sheet = _json_lines(sys.stdin.read(), "stdin")
    elif isinstance(source, (str, Path)):
        sheet = _read_file(Path(source))
    else:
        records = list(source)
        bad = next((i for i, record in enumerate(records, start=1) if not isinstance(record, Mapping)), None)
        if bad is not None:
            raise ConfigError(f"record {bad} is not a mapping of column to value", context="the records")
        sheet = Sheet("the records", list(dict.fromkeys(str(k) for r in records for k in r)), _rows(records))
    if not sheet.rows:
        raise ConfigError("the table has no rows", context=sheet.source, hint=_HINT)
    return sheet


def _read_file(path: Path) -> Sheet:
    if not path.is_file():
        raise ConfigError("no such file", context=str(path), hint=_HINT)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return _csv(path)
    if suffix in (".jsonl", ".ndjson"):
        return _json_lines(path.read_text(encoding="utf-8"), str(path), path)
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(io.BytesIO(path.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"not a readable Parquet file: {exc}", context=str(path), hint=_HINT) from exc
        return _from_frame(frame, str(path), path)
    raise ConfigError(
        f"cannot read a {suffix or 'suffix-less'} file as a table", context=str(path), hint=_HINT
    )
