"""Every row of a batch checked against the pipeline before anything is paid, each with its key.

A row's columns are the pipeline's inputs. The columns are checked once for the whole table (an
unknown column, a required input without a column, the key column); then each row's cells are
typed by the input they set (the same reading as ``--set``), and the row's whole run is checked
(:func:`klingflow.spec.check`: endpoints, fields, media), so a value that only fails where it
reaches a step's field is found too. Every problem of every row is collected into one
:class:`~klingflow.errors.SpecError` whose lines name the table, the row and the column (or the
step and field the value reaches).

A row's **key** is a hash of its resolved inputs (defaults included): the same inputs in another
sheet or another order is the same key, which is how ``--only-failed`` finds a failed row again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from klingflow.batch._sheet import Sheet
from klingflow.cache import canonical_json
from klingflow.errors import SpecError
from klingflow.spec import PipelineSpec, ValidatedPipeline, check, did_you_mean, typed_input

__all__ = ["MAX_SHOWN", "BatchRow", "check_rows", "row_key"]

MAX_SHOWN = 25
"""Problems listed in one error at most (a sheet with a wrong column type would list every row)."""

_UNSAFE_NAME = set('/\\:*?"<>|\0')


@dataclass(frozen=True)
class BatchRow:
    """One checked row: its number in the table (from 1), its inputs, its key and its name."""

    number: int
    inputs: dict[str, Any]
    """The inputs the row sets, typed (the defaults of the others apply)."""
    extra: dict[str, Any]
    """Cells of columns that are not inputs (with ``ignore_extra``), carried to the result table."""
    key: str
    name: str
    """What its output folder and its flow run are named: its key column's value, else its number."""
    validated: ValidatedPipeline


def row_key(inputs: Mapping[str, Any]) -> str:
    """The first 16 hex digits of the sha256 of the resolved inputs as canonical JSON."""
    return hashlib.sha256(canonical_json(dict(inputs)).encode()).hexdigest()[:16]


def _column_problems(
    spec: PipelineSpec, sheet: Sheet, key_column: str | None, ignore_extra: bool
) -> list[str]:
    problems = []
    inputs = ", ".join(spec.inputs) or "none"
    for column in sheet.columns:
        if column not in spec.inputs and column != key_column and not ignore_extra:
            problems.append(
                f"{sheet.source}: column {column!r} is not an input of pipeline {spec.name!r}"
                f"{did_you_mean(column, spec.inputs)}\n    hint: inputs: {inputs}; "
                "--ignore-extra carries other columns to the result table"
            )
    for name, declared in spec.inputs.items():
        if declared.required and name not in sheet.columns:
            problems.append(
                f"{sheet.source}: no column {name!r}, and input {name!r} has no default"
                f"\n    hint: add a column {name!r} to the table"
            )
    if key_column is not None and key_column not in sheet.columns:
        problems.append(
            f"{sheet.source}: no key column {key_column!r}{did_you_mean(key_column, sheet.columns)}"
        )
    return problems


def _name_problems(sheet: Sheet, key_column: str | None) -> list[str]:
    """A key column names folders and flow runs: each value given, unique and a plain file name."""
    if key_column is None:
        return []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, cells in enumerate(sheet.rows, start=1):
        value = str(cells.get(key_column, ""))
        where = f"{sheet.source} row {number} column {key_column!r}"
        if not value or value in (".", "..") or _UNSAFE_NAME & set(value):
            problems.append(f"{where}: {value!r} cannot name the row's output folder")
        elif value in seen:
            problems.append(f"{where}: {value!r} is also the key of row {seen[value]}")
        seen.setdefault(value, number)
    return problems


def check_rows(
    spec: PipelineSpec, sheet: Sheet, *, key_column: str | None = None, ignore_extra: bool = False
) -> list[BatchRow]:
    """Check every row of ``sheet`` as a run of ``spec``; one SpecError lists every problem found."""
    problems = _column_problems(spec, sheet, key_column, ignore_extra) + _name_problems(sheet, key_column)
    rows: list[BatchRow] = []
    width = len(str(len(sheet.rows)))
    if not problems:
        for number, cells in enumerate(sheet.rows, start=1):
            row, found = _check_row(spec, sheet, number, cells, key_column)
            problems += found
            if row is not None:
                rows.append(row if key_column else _named(row, str(number).zfill(width)))
    if problems:
        shown = problems[:MAX_SHOWN]
        if len(problems) > MAX_SHOWN:
            shown.append(f"... and {len(problems) - MAX_SHOWN} more problems")
        raise SpecError(f"invalid batch {sheet.source}", problems=shown)
    return rows


def _named(row: BatchRow, name: str) -> BatchRow:
    return BatchRow(row.number, row.inputs, row.extra, row.key, name, row.validated)


def _check_row(
    spec: PipelineSpec, sheet: Sheet, number: int, cells: Mapping[str, Any], key_column: str | None
) -> tuple[BatchRow | None, list[str]]:
    where = f"{sheet.source} row {number}"
    typed: dict[str, Any] = {}
    problems = []
    for column, value in cells.items():
        declared = spec.inputs.get(column)
        if declared is None:
            continue
        try:
            typed[column] = typed_input(declared.type, value, declared.enum)
        except ValueError as exc:
            problems.append(f"{where} column {column!r}: {exc}")
    if problems:
        return None, problems
    try:
        validated = check(spec, typed)
    except SpecError as exc:
        return None, [f"{where}: {problem}" for problem in exc.problems]
    extra = {column: value for column, value in cells.items() if column not in spec.inputs}
    name = str(cells[key_column]) if key_column else str(number)
    return BatchRow(number, typed, extra, row_key(validated.inputs), name, validated), []
