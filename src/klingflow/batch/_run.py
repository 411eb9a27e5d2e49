"""A batch, without Prefect: read → check every row → plan and budget the whole → run the rows → table.

Every row is a run of its own (its run id, ledger rows, manifest, report and out folder
``OUT/<row name>/``), so one row's failure is contained in that row, while all rows share one
:class:`~klingflow.engine.context.StepContext`: one cache (two rows that need the same clip pay
for it once), one concurrency cap on requests in flight (the fal account's, not a row's) and one
backend. At most ``row_concurrency`` rows run at once, so a thousand-row sheet does not start a
thousand runs (and, in Prefect, a thousand flow runs) before the first request can leave.

The layer above takes part through :class:`BatchHooks`: the Prefect layer runs each row as a
child flow run (``run_row``) and each step as a task run in it (``row_hooks``); the CLI draws
the rows' progress. A stop (Ctrl-C, SIGTERM) reaches every row through the one stop request:
started rows record their steps as interrupted, rows not started yet are ``interrupted`` rows of
the table, and the batch returns with ``stopped_by`` set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from klingflow.batch._result import (
    batches_root,
    failed_keys,
    new_batch_id,
    outcome_of,
    save_table,
    to_table,
    write_contact_sheet,
)
from klingflow.batch._rows import BatchRow, check_rows
from klingflow.batch._sheet import SheetSource, read_sheet
from klingflow.engine import (
    Plan,
    RunHooks,
    RunOptions,
    RunResult,
    check_budget,
    context_for,
    make_plan,
    resolve_options,
    run_checked,
    stop_on_signals,
    with_approvals,
    with_block_arguments,
)
from klingflow.errors import KlingflowError
from klingflow.ledger import Status
from klingflow.spec import PipelineSpec, load_pipeline

__all__ = ["DEFAULT_ROW_CONCURRENCY", "BatchHooks", "BatchResult", "RowCall", "arun_batch"]

RowCall = Callable[[str | None], Awaitable[RunResult]]
"""One row's run, given the flow run id that shows it (None without Prefect); returns its result."""

DEFAULT_ROW_CONCURRENCY = 8


async def _direct(row: BatchRow, call: RowCall) -> RunResult:
    return await call(None)


def _no_hooks(row: BatchRow) -> RunHooks:
    return RunHooks(log=lambda message: None)


def _ignore(*_: Any) -> None:
    return None


@dataclass
class BatchHooks:
    """How the layer above takes part in a batch; every hook is optional.

    * ``row_hooks(row)``: the :class:`~klingflow.engine.RunHooks` of that row's run;
    * ``run_row(row, call)``: wraps a row's run (the Prefect layer: a child flow run named after it);
    * ``on_plan(rows, plans)``: once, before any row starts;
    * ``on_row_start(row)`` / ``on_row_finish(row, outcome)``: a row began, a row ended.
    """

    row_hooks: Callable[[BatchRow], RunHooks] = _no_hooks
    run_row: Callable[[BatchRow, RowCall], Awaitable[RunResult]] = _direct
    on_plan: Callable[[list[BatchRow], list[Plan]], None] = _ignore
    on_row_start: Callable[[BatchRow], None] = _ignore
    on_row_finish: Callable[[BatchRow, Any], None] = _ignore


@dataclass
class BatchResult:
    """What a batch came to: its id, the result table, where the table was written, each row's run."""

    batch_id: str
    pipeline: str
    table: pd.DataFrame
    written: list[Path] = field(default_factory=list)
    results: dict[int, RunResult] = field(default_factory=dict)
    """Each row's run by row number (a row stopped before it started has none)."""
    stopped_by: int | None = None
    contact_sheet: Path | None = None
    """Every completed row's final cut, a row each (None: no row made a video)."""
    only_failed_of: str | None = None
    """With ``only_failed``: the batch whose failed rows this one ran again."""

    @property
    def failed(self) -> pd.DataFrame:
        """The rows that did not complete (failed, or interrupted by a stop)."""
        return self.table[self.table["status"] != str(Status.COMPLETED)]


async def arun_batch(
    pipeline: str | Path | PipelineSpec,
    rows: SheetSource,
    options: RunOptions | None = None,
    *,
    block: RunOptions | None = None,
    fallback: RunOptions | None = None,
    hooks: BatchHooks | None = None,
    row_concurrency: int | None = None,
    key_column: str | None = None,
    ignore_extra: bool = False,
    only_failed: bool = False,
) -> BatchResult:
    """Run ``pipeline`` once per row of ``rows`` (see :mod:`klingflow.batch`) and return the table.

    Every row is checked before anything is paid (one :class:`~klingflow.errors.SpecError` names
    each bad row and column), the whole batch is planned and its uncached estimate held against
    ``max_cost_usd`` (a :class:`~klingflow.errors.BudgetError` before any submit). ``only_failed``
    keeps the rows whose key did not complete in the newest earlier batch of this pipeline.
    """
    hooks = hooks or BatchHooks()
    spec = pipeline if isinstance(pipeline, PipelineSpec) else load_pipeline(pipeline)
    resolved = resolve_options(options, block=block, pipeline=spec, fallback=fallback)
    sheet = read_sheet(rows)
    checked = check_rows(
        with_approvals(with_block_arguments(spec, resolved.arguments), resolved.approve),
        sheet,
        key_column=key_column,
        ignore_extra=ignore_extra,
    )
    batch = BatchResult(batch_id=new_batch_id(), pipeline=spec.name, table=pd.DataFrame())
    if only_failed:
        batch.only_failed_of, keys = failed_keys(spec.name)
        checked = [row for row in checked if row.key in keys]
    ctx = context_for(resolved, base_dir=spec.source.parent if spec.source else None)
    try:
        plans = [make_plan(row.validated, ctx, row_key=row.key) for row in checked]
        whole = Plan(pipeline=spec.name, steps=[step for plan in plans for step in plan.steps])
        check_budget(whole, resolved.max_cost_usd, allow_unknown=bool(resolved.allow_unknown_cost))
        hooks.on_plan(checked, plans)
        gate = asyncio.Semaphore(row_concurrency or DEFAULT_ROW_CONCURRENCY)

        async def one(row: BatchRow, plan: Plan) -> Any:
            async with gate:
                started = datetime.now(UTC)
                result: RunResult | None = None
                error: str | None = None
                if not ctx.stop.requested:
                    hooks.on_row_start(row)
                    out = resolved.out_dir / row.name if resolved.out_dir is not None else None

                    async def call(flow_run_id: str | None) -> RunResult:
                        return await run_checked(
                            row.validated,
                            ctx.for_row(),
                            plan,
                            hooks=hooks.row_hooks(row),
                            out_dir=out,
                            key=resolved.key,
                            run_id=flow_run_id,
                            flow_run_id=flow_run_id,
                            batch_id=batch.batch_id,
                            row_key=row.key,
                            contact_sheet=False,  # the batch's contact sheet shows every row's cut
                        )

                    try:
                        result = await hooks.run_row(row, call)
                    except KlingflowError as exc:  # the row's record failed (the ledger, its flow run)
                        error = str(exc)
                estimate = (
                    None
                    if any(s.estimated_cost_usd is None for s in plan.steps if s.status == "run")
                    else plan.total_cost_usd
                )
                outcome = outcome_of(
                    row,
                    result,
                    batch_id=batch.batch_id,
                    estimated=estimate,
                    started=started,
                    finished=datetime.now(UTC),
                )
                if error is not None:
                    outcome = outcome.model_copy(update={"status": Status.FAILED, "error": error})
                if result is not None:
                    batch.results[row.number] = result
                hooks.on_row_finish(row, outcome)
                return outcome

        with stop_on_signals(ctx.stop):  # one stop for every row: no new submit anywhere
            outcomes = await asyncio.gather(
                *(one(row, plan) for row, plan in zip(checked, plans, strict=True))
            )
    finally:
        await ctx.aclose()
    batch.stopped_by = ctx.stop.signum if ctx.stop.requested else None
    batch.table = to_table(list(outcomes), {row.number: row for row in checked})
    batch.written = save_table(batch.table, batch.batch_id, resolved.out_dir)
    picture = (resolved.out_dir or batches_root()) / f"batch-{batch.batch_id}-contact-sheet.png"
    batch.contact_sheet = await asyncio.to_thread(write_contact_sheet, batch.table, picture)
    return batch
