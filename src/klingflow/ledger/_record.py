"""The ledger row and the status vocabulary: defined once, used by the engine, CLI, report and artifacts.

:class:`StepRecord` is both what a step execution returns and what the ledger stores: its fields
*are* the ledger's columns (:data:`COLUMNS`, derived from the model, so the parquet schema cannot
drift from the row). :class:`Status` is every value a row's ``status`` takes; a printer that
forgets one fails a test instead of crashing a user's run.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Iterable
from datetime import datetime
from enum import StrEnum
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, Field

__all__ = [
    "COLUMNS",
    "LEDGER_SCHEMA_VERSION",
    "ColumnDtype",
    "Status",
    "StepRecord",
    "spend_label",
    "step_label",
]

LEDGER_SCHEMA_VERSION = 3
"""Version of the column set, stored in each parquet file; columns are only ever added."""


class Status(StrEnum):
    """What happened to one step execution."""

    COMPLETED = "completed"
    """Generated (or computed) by this run: paid for, when it is a generation."""
    CACHED = "cached"
    """Reused from the verified cache: nothing submitted, nothing paid."""
    JOINED = "joined"
    """Polled a request another run or worker had already submitted: not paid again."""
    FAILED = "failed"
    """Did not produce its output; ``error`` says why."""
    SKIPPED = "skipped"
    """Not run because a step it depends on failed."""
    INTERRUPTED = "interrupted"
    """Stopped on request (Ctrl-C, SIGTERM, a cancelled flow run) before it finished; a request it
    had submitted stays journaled (``request_id``) and a re-run collects it without paying again."""

    @property
    def produced(self) -> bool:
        """True when the step's output exists (completed, cached or joined)."""
        return self in (Status.COMPLETED, Status.CACHED, Status.JOINED)


class StepRecord(BaseModel):
    """One step execution (or one foreach item): one ledger row.

    ``estimated_cost_usd`` is klingflow's estimate; ``billable_units`` is what fal said it bills
    (``x-fal-billable-units``) and ``cost_usd`` those units at fal's unit price. ``billing_note``
    flags money that needs a person's eye: ``possibly_billed`` (fal may bill a request its model
    refused) or ``possible_duplicate`` (a lost submit was not found in fal's history and was sent
    again), with the times.

    ``run_reason`` says why an execution that was not reused ran (the plan's reason: new,
    arguments_changed, upstream_changed, refresh, verification_failed, recoverable, key_version),
    ``run_reason_detail`` which fields, step or request; ``cache_version`` is the version of the
    cache key it was filed under (what ``key_version`` compares).

    ``approval`` is set on the rows of a step that waited for a person (``approve:``): "approved"
    or "rejected", by whom (``approval_by``: a user name, ``--yes``, ``auto``, ``timeout``), when,
    and the note they left. A rejected step's row is ``skipped`` and nothing was submitted for it.

    ``outputs`` (the step's outputs for the steps after it) travels with the record in the run
    but is not a column.
    """

    run_id: str | None = None
    flow_run_id: str | None = None
    pipeline: str | None = None
    batch_id: str | None = None
    """The batch the run was one row of (``klingflow run --batch``), if it was."""
    row_key: str | None = None
    """That row's key: a hash of its resolved inputs (see :mod:`klingflow.batch`)."""
    step_id: str
    item_index: int | None = None
    kind: str
    endpoint: str
    schema_sha256: str | None = None
    """The sha256 of the endpoint schema the step's arguments were checked against (a generation)."""
    backend: str
    request_id: str | None = None
    status: Status = Status.COMPLETED
    cache_key: str | None = None
    attempts: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    estimated_cost_usd: float | None = 0.0
    """None: the endpoint's price is unknown (never counted as $0 by a budget)."""
    billable_units: float | None = None
    cost_usd: float | None = None
    billing_note: str | None = None
    prompt: str | None = None
    arguments: str = "{}"
    output_path: str | None = None
    output_url: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    has_audio: bool | None = None
    error: str | None = None
    cache_version: str | None = None
    run_reason: str | None = None
    run_reason_detail: str | None = None
    approval: str | None = None
    approval_by: str | None = None
    approval_at: datetime | None = None
    approval_note: str | None = None
    outputs: dict[str, Any] = Field(default_factory=dict, exclude=True)

    @property
    def step_label(self) -> str:
        """``step_id``, or ``step_id[i]`` for item ``i`` of a foreach step."""
        return step_label(self.model_dump(include={"step_id", "item_index"}))


def step_label(row: dict[str, Any]) -> str:
    """``step_id``, or ``step_id[i]`` for item ``i`` of a foreach step: how every view names a row."""
    index = row.get("item_index")
    pandas = sys.modules.get("pandas")  # a row from a DataFrame may say pd.NA (never imported for it)
    missing = index is None or (pandas is not None and index is pandas.NA)
    return row["step_id"] if missing else f"{row['step_id']}[{index}]"


ColumnDtype = Literal["string", "Int64", "Float64", "boolean", "datetime64[us, UTC]"]
"""The pandas dtypes a ledger column has (named exactly, so a type checker knows what ``astype`` gives)."""

_DTYPES: dict[type, ColumnDtype] = {
    str: "string",
    Status: "string",
    int: "Int64",
    float: "Float64",
    bool: "boolean",
    datetime: "datetime64[us, UTC]",
}


def _dtype(annotation: Any) -> ColumnDtype:
    """The pandas dtype of a field: ``X | None`` is nullable X."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [a for a in get_args(annotation) if a is not type(None)]
    return _DTYPES[annotation]


COLUMNS: dict[str, ColumnDtype] = {
    name: _dtype(field.annotation) for name, field in StepRecord.model_fields.items() if not field.exclude
}
"""Every ledger column and its pandas dtype, in order: the fields of :class:`StepRecord`."""


def spend_label(estimates: Iterable[float | None], digits: int = 3) -> str:
    """An estimated spend for people: ``$0.900``, or ``$0.900 + 2 at an unknown price``.

    ``None`` is a generation whose price klingflow does not know (``estimated_cost_usd``); it is
    counted apart, never shown as $0.
    """
    values = list(estimates)
    known = sum(value for value in values if value is not None)
    unknown = sum(value is None for value in values)
    return f"${known:.{digits}f}" + (f" + {unknown} at an unknown price" if unknown else "")
