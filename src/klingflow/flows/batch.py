"""A batch in Prefect: one parent flow run for the table, one child flow run per row.

``batch_flow`` takes the table as a path or a list of records (JSON: a deployment's parameter, a
schedule's, the UI's form), runs :func:`klingflow.batch.arun_batch` and makes each row a child
flow run of ``row_flow`` named ``<pipeline>-<row name>`` (its key column's value, else its
number), whose steps are task runs as in any run. At most ``row_concurrency`` rows run at once,
so the server sees a bounded number of flow runs in flight and each run graph stays small (one
row's steps), where one flow run of every row's steps would be thousands of task runs.

Prefect does not fail a parent because a child failed: the parent ends **Failed** here when a
row did not complete, with the failed rows in its message, after every other row finished. A
stopped batch ends Cancelled. The parent's artifacts are the result table (status, cost, links
to each row's flow run and output) and the contact sheet of every row's final cut.

The rows' runs share the batch's context, which cannot travel as a flow parameter: the parent
hands each child its run as a callable through a ContextVar (:data:`_row_calls`), which child
flow runs started in the parent's task inherit.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.states import Cancelled, Failed

from klingflow.batch import BatchHooks, BatchResult, BatchRow, RowCall, Sheet, SheetSource, arun_batch
from klingflow.engine import RunHooks, RunOptions, RunResult
from klingflow.errors import ConfigError, PipelineFailed
from klingflow.flows.approval import flow_asker
from klingflow.flows.artifacts import publish_batch_artifacts, publish_row_summary
from klingflow.flows.pipeline import block_layer, flow_parameter, with_option_parameters
from klingflow.flows.server import use_local_server
from klingflow.flows.team import check_team_limit, team_slot
from klingflow.spec import PipelineSpec
from klingflow.tasks import run_step_as_task

__all__ = [
    "BATCH_PARAMETERS",
    "InBatch",
    "abatch_body",
    "arun_batch_flow",
    "batch_flow",
    "row_flow",
    "run_batch",
]


@dataclass
class InBatch:
    """What a Python caller hands the batch flow besides its JSON parameters."""

    options: RunOptions = field(default_factory=RunOptions)
    fallback: RunOptions | None = None
    hooks: BatchHooks = field(default_factory=BatchHooks)
    spec: PipelineSpec | None = None
    rows: SheetSource | None = None
    """A DataFrame (not JSON): the table itself, in place of the ``rows`` parameter."""
    result: BatchResult | None = None


_in_batch: ContextVar[InBatch | None] = ContextVar("klingflow_in_batch", default=None)
_row_calls: ContextVar[dict[int, Callable[[str], Awaitable[RunResult]]]] = ContextVar("klingflow_row_calls")


async def _row_flow(pipeline: str, row: int, name: str, inputs: dict[str, Any]) -> RunResult | State[Any]:
    """One row of a batch: the pipeline with this row's inputs; its steps are this flow run's task runs."""
    result = await _row_calls.get()[row](str(flow_run.id))
    if result.manifest is not None:
        await publish_row_summary(result.manifest, result.ledger)
    if result.stopped_by is not None:
        return Cancelled(message=f"row {row} was stopped; what it submitted is kept")
    if result.failures:
        raise PipelineFailed(result)
    return result


row_flow = flow(name="klingflow-row", persist_result=False, log_prints=False)(_row_flow)


def _row_runner(pipeline: str) -> Callable[[BatchRow, RowCall], Awaitable[RunResult]]:
    """``BatchHooks.run_row``: the row as a child flow run of the current (batch) flow run."""
    calls: dict[int, Callable[[str], Awaitable[RunResult]]] = {}
    _row_calls.set(calls)

    async def run_row(row: BatchRow, call: RowCall) -> RunResult:
        done: list[RunResult] = []
        began: list[str] = []

        async def in_child(flow_run_id: str) -> RunResult:
            began.append(flow_run_id)
            done.append(await call(flow_run_id))
            return done[0]

        calls[row.number] = in_child
        child = row_flow.with_options(flow_run_name=f"{pipeline}-{row.name}")
        try:
            state = await child(pipeline, row.number, row.name, row.inputs, return_state=True)
        except Exception as exc:
            # Prefect's own calls around the row (its flow run created, its end reported) can fail
            # after their retries, e.g. a local SQLite server answering 503 "database is locked"
            # under a large batch. That ends this row, never the batch: the other rows go on.
            if done:  # the row's run had finished and is recorded; only its flow run's end was lost
                return done[0]
            what = "ended before its run finished" if began else "could not be created"
            raise ConfigError(
                f"row {row.number}'s flow run {what} ({type(exc).__name__}: {exc})",
                context=row.name,
                hint="--only-failed runs the row again" + ("" if began else "; nothing of it was submitted"),
            ) from exc
        if done:
            return done[0]
        error = await state.aresult(raise_on_failure=False)  # the child failed before its run began
        raise ConfigError(f"row {row.number}'s flow run ended {state.type.value}: {error}", context=row.name)

    return run_row


BATCH_PARAMETERS = ("row_concurrency", "key_column", "ignore_extra", "only_failed")
"""The batch's own flow parameters, besides the pipeline, the rows and the run options."""


async def abatch_body(
    pipeline: str,
    rows: str | list[dict[str, Any]] | None,
    *,
    credentials: str | None = None,
    defaults: str | None = None,
    row_concurrency: int | None = None,
    key_column: str | None = None,
    ignore_extra: bool = False,
    only_failed: bool = False,
    **options: Any,
) -> BatchResult | State[Any]:
    """What a batch flow run does: every row a child flow run; Failed when a row failed."""
    local = _in_batch.get() or InBatch()
    table = local.rows if local.rows is not None else rows
    if table is None:
        raise ConfigError(
            "a batch needs its rows", context="rows", hint="a .csv/.parquet/.jsonl path or records"
        )
    explicit = local.options.model_copy(update=RunOptions(**options).given())
    await check_team_limit()
    if explicit.team_slot is None:
        explicit = explicit.model_copy(update={"team_slot": team_slot()})
    given = local.hooks
    pause = flow_asker(None)  # decided here: a row's own flow run is never a deployment's

    def row_hooks(row: BatchRow) -> RunHooks:
        hooks = given.row_hooks(row)
        return replace(hooks, run_step=run_step_as_task, approve=hooks.approve or pause)

    spec = local.spec or pipeline
    name = spec.name if isinstance(spec, PipelineSpec) else Path(pipeline).stem
    batch = await arun_batch(
        spec,
        table,
        explicit,
        block=await block_layer(credentials, defaults),
        fallback=local.fallback,
        hooks=replace(given, row_hooks=row_hooks, run_row=_row_runner(name)),
        row_concurrency=row_concurrency,
        key_column=key_column,
        ignore_extra=ignore_extra,
        only_failed=only_failed,
    )
    local.result = batch
    await publish_batch_artifacts(batch)
    failed = batch.failed
    if batch.stopped_by is not None:
        return Cancelled(
            message=f"the batch was stopped: {len(failed)} of {len(batch.table)} rows did not finish"
        )
    if len(failed):
        listed = ", ".join(str(n) for n in failed["row"].tolist()[:20])
        return Failed(message=f"{len(failed)} of {len(batch.table)} rows failed (rows {listed})")
    return batch


async def _batch_flow(
    pipeline: str,
    rows: str | list[dict[str, Any]] | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    row_concurrency: int | None = None,
    key_column: str | None = None,
    ignore_extra: bool = False,
    only_failed: bool = False,
    **options: Any,
) -> BatchResult | State[Any]:
    """Run a pipeline once per row of a table: each row a child flow run, sharing one cache and cap.

    ``rows`` is a .csv, .parquet or .jsonl path, or a list of records (column -> value);
    ``key_column`` names the rows' output folders and flow runs; ``only_failed`` runs the rows the
    pipeline's last batch did not complete.
    """
    return await abatch_body(
        pipeline,
        rows,
        credentials=credentials,
        defaults=defaults,
        row_concurrency=row_concurrency,
        key_column=key_column,
        ignore_extra=ignore_extra,
        only_failed=only_failed,
        **options,
    )


def _batch_name() -> str:
    parameters = flow_run.parameters or {}
    return f"{Path(str(parameters.get('pipeline', 'pipeline'))).stem}-batch"


batch_flow = flow(name="klingflow-batch", flow_run_name=_batch_name, persist_result=False, log_prints=False)(
    with_option_parameters(
        _batch_flow,
        flow_parameter("pipeline", str, ...),
        flow_parameter("rows", str | list[dict[str, Any]] | None),
        flow_parameter("credentials", str | None),
        flow_parameter("defaults", str | None),
        flow_parameter("row_concurrency", int | None),
        flow_parameter("key_column", str | None),
        flow_parameter("ignore_extra", bool, False),
        flow_parameter("only_failed", bool, False),
    )
)


async def arun_batch_flow(
    pipeline: str | Path | PipelineSpec,
    rows: SheetSource,
    *,
    options: RunOptions | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    hooks: BatchHooks | None = None,
    fallback: RunOptions | None = None,
    **batch: Any,
) -> BatchResult:
    """Run a batch as a Prefect flow run (each row a child flow run) and return its result table.

    ``batch`` takes :data:`BATCH_PARAMETERS`. A failed row does not raise: it is a row of the
    table with its error (``result.failed``); a stop raises KeyboardInterrupt after the table is kept.
    """
    await asyncio.to_thread(use_local_server)
    options = options or RunOptions()
    spec = pipeline if isinstance(pipeline, PipelineSpec) else None
    name = (spec.source or spec.name) if spec else pipeline
    # the flow run's parameter says where the rows come from; a table in memory travels in-process
    shown = rows.source if isinstance(rows, Sheet) else str(rows) if isinstance(rows, (str, Path)) else None
    parameter = rows if isinstance(rows, list) else shown
    in_memory = None if isinstance(rows, (str, Path, list)) else rows
    local = InBatch(
        options=options, fallback=fallback, hooks=hooks or BatchHooks(), spec=spec, rows=in_memory
    )
    token = _in_batch.set(local)
    try:
        from klingflow.flows.pipeline import quiet_ephemeral_server

        with quiet_ephemeral_server():
            state = await batch_flow(
                str(name),
                parameter,
                credentials=credentials,
                defaults=defaults,
                **batch,
                **options.flow_parameters(),
                return_state=True,
            )
    finally:
        _in_batch.reset(token)
    if local.result is None:
        assert isinstance(state, State)
        error = await state.aresult(raise_on_failure=False)
        raise (
            error if isinstance(error, BaseException) else ConfigError(f"the batch ended {state.type.value}")
        )
    return local.result


def run_batch(
    pipeline: str | Path | PipelineSpec,
    rows: SheetSource,
    *,
    options: RunOptions | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    hooks: BatchHooks | None = None,
    fallback: RunOptions | None = None,
    row_concurrency: int | None = None,
    key_column: str | None = None,
    ignore_extra: bool = False,
    only_failed: bool = False,
    **option_values: Any,
) -> BatchResult:
    """Run ``pipeline`` once per row of ``rows`` (a path or a DataFrame) from plain Python.

    Example::

        from klingflow import run_batch

        batch = run_batch("deployments/pipelines/story.yaml", "products.csv", key_column="sku")
        print(batch.table[["row", "name", "status", "output_path", "cost_usd"]])
    """
    explicit = (options or RunOptions()).model_copy(update=RunOptions(**option_values).given())
    use_local_server()
    return asyncio.run(
        arun_batch_flow(
            pipeline,
            rows,
            options=explicit,
            credentials=credentials,
            defaults=defaults,
            hooks=hooks,
            fallback=fallback,
            row_concurrency=row_concurrency,
            key_column=key_column,
            ignore_extra=ignore_extra,
            only_failed=only_failed,
        )
    )
