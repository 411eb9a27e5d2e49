"""The batch's result table: one row per input row, kept as Parquet, with a CSV copy next to the outputs.

:class:`RowOutcome` is one row of it, so its fields are the table's columns (as the ledger's are
:class:`~klingflow.ledger.StepRecord`'s); the input row's extra columns follow them. Every batch
is kept as ``<home>/batches/batch-<id>.parquet`` (what ``--only-failed`` reads back: the newest
batch of the same pipeline) and, with an out dir, as ``batch-<id>.parquet`` and ``.csv`` there.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel

from klingflow._files import atomic_path
from klingflow.batch._rows import BatchRow
from klingflow.errors import ConfigError, KlingflowError
from klingflow.ledger import Status
from klingflow.media import contact_sheet
from klingflow.report import media_kind
from klingflow.settings import klingflow_home

__all__ = [
    "NOT_STARTED",
    "RowOutcome",
    "batches_root",
    "failed_keys",
    "new_batch_id",
    "outcome_of",
    "save_table",
    "to_table",
]


logger = logging.getLogger(__name__)

SHEET_FRAMES = 2
"""Frames per row on a batch's contact sheet: a row's cut at a glance, for hundreds of rows."""


NOT_STARTED = "stopped before the row started"
"""The error of a row a stop kept from starting (nothing of it was submitted)."""


class RowOutcome(BaseModel):
    """What one row of a batch came to."""

    batch_id: str
    pipeline: str
    row: int
    """The row's number in the table (from 1, the header not counted)."""
    name: str
    key: str
    status: Status
    """``completed`` (every step produced its output, some maybe from the cache), ``failed`` or
    ``interrupted`` (stopped before it finished, or before it started)."""
    failed_step: str | None = None
    error: str | None = None
    output_path: str | None = None
    """The row's final cut: the exported output of the last step nothing depends on."""
    output_sha256: str | None = None
    outputs: str = "{}"
    """Every final output, step id -> exported path, as JSON."""
    estimated_cost_usd: float | None = None
    """The plan's estimate for what the row had to generate (None: some price is unknown)."""
    cost_usd: float = 0.0
    """What fal billed for the row's generations (units x unit price), $0 for cache hits."""
    request_ids: str = "[]"
    steps: int = 0
    cache_hits: int = 0
    run_id: str | None = None
    flow_run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None


_NULLABLE = (
    "failed_step",
    "error",
    "output_path",
    "output_sha256",
    "run_id",
    "flow_run_id",
    "estimated_cost_usd",
)
_NUMBERS = ("estimated_cost_usd",)
_TEXT = "string"


def new_batch_id() -> str:
    """A batch id that sorts by start time: ``20261203T131500-4f2a9c``."""
    import uuid

    return f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"


def _step(final: str, order: list[str]) -> str:
    """The step a final output's name is of: ``cut``, ``shots-1`` (a list's item) and
    ``captioned.subtitles`` (a step's subtitles, beside its video) are of cut, shots and captioned."""
    item = final.partition(".")[0]
    return item if item in order else item.rpartition("-")[0]


def outcome_of(
    row: BatchRow,
    result: Any,
    *,
    batch_id: str,
    estimated: float | None,
    started: datetime,
    finished: datetime,
) -> RowOutcome:
    """A row's outcome from its :class:`~klingflow.engine.RunResult` (``None``: it never started)."""
    base: dict[str, Any] = {
        "batch_id": batch_id,
        "pipeline": row.validated.spec.name,
        "row": row.number,
        "name": row.name,
        "key": row.key,
        "estimated_cost_usd": estimated,
        "started_at": started,
        "finished_at": finished,
    }
    if result is None:
        return RowOutcome(**base, status=Status.INTERRUPTED, error=NOT_STARTED)
    records = result.records
    order = row.validated.order
    finals = sorted(
        (name for name in result.final if "." not in name), key=lambda name: order.index(_step(name, order))
    )
    last = finals[-1] if finals else None
    sha = {r.step_id: r.sha256 for r in records if r.sha256 and r.item_index in (None, 0)}
    failed = next((step for step in order if step in result.failures), None)
    status = Status.INTERRUPTED if result.stopped_by is not None else result.status
    error = result.failures.get(failed) if failed else None
    if result.stopped_by is not None and error is None:
        running = len(result.still_running)
        error = (
            f"stopped; {running} request(s) still running at fal (a re-run collects them, unpaid)"
            if running
            else "stopped before it finished; a re-run goes on from the cache"
        )
    return RowOutcome(
        **base,
        status=Status.COMPLETED if status == Status.CACHED else status,
        failed_step=failed,
        error=error,
        output_path=str(result.final[last]) if last else None,
        output_sha256=sha.get(last) if last else None,
        outputs=json.dumps({step: str(path) for step, path in result.final.items()}),
        cost_usd=round(sum(r.cost_usd or 0.0 for r in records), 6),
        request_ids=json.dumps([r.request_id for r in records if r.request_id]),
        steps=len(records),
        cache_hits=sum(r.status == Status.CACHED for r in records),
        run_id=result.run_id,
        flow_run_id=result.flow_run_id,
    )


def to_table(outcomes: list[RowOutcome], rows: dict[int, BatchRow]) -> pd.DataFrame:
    """The result table: one row per outcome, in table order, the input rows' extra columns after."""
    records = []
    for outcome in sorted(outcomes, key=lambda o: o.row):
        extra = rows[outcome.row].extra if outcome.row in rows else {}
        records.append(
            {**outcome.model_dump(), **{k: v for k, v in extra.items() if k not in RowOutcome.model_fields}}
        )
    frame = pd.DataFrame(
        records, columns=list(dict.fromkeys([*RowOutcome.model_fields, *(k for r in records for k in r)]))
    )
    frame["status"] = frame["status"].astype(str)
    frame = frame.convert_dtypes()
    # columns that are None in every row: typed as the model says, not left as objects
    return frame.astype({name: _TEXT if name not in _NUMBERS else "Float64" for name in _NULLABLE})


def batches_root() -> Path:
    """``<klingflow home>/batches``: every batch's result table."""
    return klingflow_home() / "batches"


def save_table(table: pd.DataFrame, batch_id: str, out_dir: Path | None) -> list[Path]:
    """Write the table to the home's batches (Parquet) and, with ``out_dir``, Parquet and CSV there."""
    targets = [batches_root() / f"batch-{batch_id}.parquet"]
    if out_dir is not None:
        targets += [out_dir / f"batch-{batch_id}.parquet", out_dir / f"batch-{batch_id}.csv"]
    for target in targets:
        with atomic_path(target) as temp:
            if target.suffix == ".csv":
                table.to_csv(temp, index=False)
            else:
                table.to_parquet(temp, index=False)
    return targets


def write_contact_sheet(table: pd.DataFrame, target: Path) -> Path | None:
    """A contact sheet of every completed row's final cut (a video), labelled by row name.

    Cosmetic, like a run's: the rows are paid for and recorded, so a sheet that cannot be made
    is logged and left out.
    """
    videos = [
        (str(row["name"]), Path(str(row["output_path"])))
        for row in table.to_dict("records")
        if row["status"] == str(Status.COMPLETED)
        and isinstance(row["output_path"], str)
        and media_kind(row["output_path"]) == "video"
        and Path(row["output_path"]).is_file()
    ]
    if not videos:
        return None
    try:
        return contact_sheet(videos, target, frames_per_clip=SHEET_FRAMES, context="batch contact sheet")
    except KlingflowError:
        logger.warning("could not make the batch's contact sheet %s", target, exc_info=True)
        return None


def failed_keys(pipeline: str) -> tuple[str, set[str]]:
    """The newest batch of ``pipeline`` and the keys of its rows that did not complete.

    Raises :class:`~klingflow.errors.ConfigError` when no batch of that pipeline was kept.
    """
    for path in sorted(batches_root().glob("batch-*.parquet"), reverse=True):
        table = pd.read_parquet(path, columns=["batch_id", "pipeline", "key", "status"])
        if len(table) and (table["pipeline"] == pipeline).all():
            failed = table[table["status"] != str(Status.COMPLETED)]
            return str(table["batch_id"].iloc[0]), set(failed["key"].astype(str))
    raise ConfigError(
        f"no earlier batch of pipeline {pipeline!r} to take the failed rows of",
        context=str(batches_root()),
        hint="run the batch once without --only-failed",
    )
