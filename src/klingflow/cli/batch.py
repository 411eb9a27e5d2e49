"""``klingflow run PIPELINE --batch rows.csv`` and ``klingflow plan PIPELINE --batch rows.csv``.

A batch is one Prefect flow run with a child flow run per row (:mod:`klingflow.flows.batch`).
Its console is the run's view (:mod:`klingflow.cli._live`) over every row at once: each of the
pipeline's steps is one line counting its executions in every row (``clip ×200: 180 done,
8 running, ...``), the total line below; without a terminal, a line per change. At the end: how
many rows completed, what was spent, the failed rows with their errors, and where the result table
is. The exit status is 1 when a row failed, 130/143 when the batch was stopped.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from klingflow.cli._errors import out, quiet_prefect_tracebacks, stderr
from klingflow.cli._live import run_view
from klingflow.cli._logs import RunLogs
from klingflow.cli._plan_json import plan_json
from klingflow.errors import BatchFailed, ConfigError

if TYPE_CHECKING:
    from klingflow.batch import BatchResult, BatchRow
    from klingflow.engine import Plan, RunOptions
    from klingflow.spec import PipelineSpec

__all__ = [
    "BatchOpt",
    "IgnoreExtraOpt",
    "KeyColumnOpt",
    "OnlyFailedOpt",
    "RowConcurrencyOpt",
    "BatchSettings",
    "batch_settings",
    "plan_batch",
    "run_batch_command",
]

BatchOpt = Annotated[
    str | None,
    typer.Option(
        "--batch",
        help="Run the pipeline once per row of this table (.csv, .parquet, .jsonl; - for JSON lines on "
        "stdin): each column sets the input of its name.",
    ),
]
RowConcurrencyOpt = Annotated[
    int | None, typer.Option(min=1, help="With --batch: rows running at once (default 8).")
]
KeyColumnOpt = Annotated[
    str | None,
    typer.Option(help="With --batch: the column that names each row's output folder and flow run."),
]
IgnoreExtraOpt = Annotated[
    bool,
    typer.Option(
        help="With --batch: carry columns that are not inputs to the result table instead of refusing."
    ),
]
OnlyFailedOpt = Annotated[
    bool,
    typer.Option(help="With --batch: run only the rows the pipeline's last batch did not complete."),
]


@dataclass(frozen=True)
class BatchSettings:
    """The batch options of ``run`` and ``plan``, together."""

    rows: str
    row_concurrency: int | None = None
    key_column: str | None = None
    ignore_extra: bool = False
    only_failed: bool = False

    def parameters(self) -> dict[str, Any]:
        """What :func:`klingflow.flows.batch.arun_batch_flow` takes besides the table."""
        return {
            "row_concurrency": self.row_concurrency,
            "key_column": self.key_column,
            "ignore_extra": self.ignore_extra,
            "only_failed": self.only_failed,
        }


def _refuse_sets(sets: dict[str, str]) -> None:
    if sets:
        raise ConfigError(
            "--set cannot be combined with --batch",
            context="--set",
            hint="give the value in a column of the table (every row its own)",
        )


def plan_batch(
    spec: PipelineSpec,
    sets: dict[str, str],
    batch: BatchSettings,
    options: RunOptions,
    *,
    as_json: bool = False,
) -> None:
    """Print each row's planned status and cost (cached rows at $0) and the batch's total (or, with
    ``as_json``, every row's plan as JSON)."""
    from klingflow.batch import check_rows, read_sheet
    from klingflow.engine import context_for, make_plan, resolve_options, with_block_arguments
    from klingflow.ledger import spend_label

    _refuse_sets(sets)
    resolved = resolve_options(options, pipeline=spec)
    rows = check_rows(
        with_block_arguments(spec, resolved.arguments),
        read_sheet(batch.rows),
        key_column=batch.key_column,
        ignore_extra=batch.ignore_extra,
    )
    ctx = context_for(resolved, base_dir=spec.source.parent if spec.source else None)
    table = Table(title=f"{spec.name}: {len(rows)} rows of {batch.rows}")
    for column in ("row", "name", "key", "to run", "cached", "estimated"):
        table.add_column(column, justify="right" if column in ("row", "to run", "cached") else "left")
    estimates: list[float | None] = []
    if as_json:
        plans = [
            {
                "row": row.number,
                "name": row.name,
                "key": row.key,
                "plan": plan_json(make_plan(row.validated, ctx, row_key=row.key)),
            }
            for row in rows
        ]
        print(json.dumps({"pipeline": spec.name, "rows": plans}, indent=2))
        return
    for row in rows:
        plan = make_plan(row.validated, ctx, row_key=row.key)
        paid = [s.estimated_cost_usd for s in plan.steps if s.status == "run" and s.kind == "endpoint"]
        estimates += paid
        cached = sum(s.status == "cached" for s in plan.steps)
        table.add_row(
            str(row.number), escape(row.name), row.key, str(len(paid)), str(cached), spend_label(paid)
        )
    Console().print(table)
    Console().print(
        f"total: {spend_label(estimates)} for {sum(1 for _ in estimates)} generations", highlight=False
    )


def run_batch_command(
    spec: PipelineSpec,
    sets: dict[str, str],
    batch: BatchSettings,
    options: RunOptions,
    fallback: RunOptions,
    *,
    credentials: str | None,
    defaults: str | None,
    verbose: bool,
    debug: bool,
) -> None:
    """Run the batch in Prefect under the run's view; print the outcome; raise when a row failed."""
    from klingflow.batch import BatchHooks, check_rows, read_sheet
    from klingflow.engine import RunHooks, has_terminal
    from klingflow.flows.batch import arun_batch_flow
    from klingflow.flows.server import use_local_server
    from klingflow.ledger import runs_root

    _refuse_sets(sets)
    # read once (stdin can be read only once) and checked before Prefect starts: a bad row is one
    # message, printed before anything else, and nothing is paid
    sheet = read_sheet(batch.rows)
    check_rows(spec, sheet, key_column=batch.key_column, ignore_extra=batch.ignore_extra)
    use_local_server(echo=lambda line: stderr().print(line, markup=False, highlight=False))
    console = out()
    with RunLogs(console, verbose=verbose, folder=runs_root()) as logs, run_view(console) as view:
        started: list[bool] = []

        def row_hooks(row: BatchRow) -> RunHooks:
            prefix = f"{row.name}/"

            def on_run_start() -> None:  # the first row's flow run: Prefect's logging is set up
                if not started:
                    started.append(True)
                    logs.apply()
                    if not debug:
                        quiet_prefect_tracebacks()

            return RunHooks(
                on_run_start=on_run_start,
                on_start=lambda label: view.start(prefix + label),
                on_event=lambda label, event: view.event(prefix + label, event),
                on_finish=lambda record: view.finish(record, prefix),
                log=logging.getLogger("klingflow.steps").info,
                approve=view.ask if has_terminal() else view.pause,
            )

        def on_plan(rows: list[BatchRow], plans: list[Plan]) -> None:
            for row, plan in zip(rows, plans, strict=True):
                view.plan(plan, f"{row.name}/")

        hooks = BatchHooks(row_hooks=row_hooks, on_plan=on_plan)
        result = asyncio.run(
            arun_batch_flow(
                spec,
                sheet,
                options=options,
                credentials=credentials,
                defaults=defaults,
                hooks=hooks,
                fallback=fallback,
                **batch.parameters(),
            )
        )
        logs.keep_as(result.written[0].with_suffix(".log"))
    _print_outcome(console, result)


def _print_outcome(console: Console, result: BatchResult) -> None:
    from klingflow.batch import NOT_STARTED
    from klingflow.ledger import Status

    table = result.table
    done = int((table["status"] == str(Status.COMPLETED)).sum())
    cached = int((table["cache_hits"] == table["steps"]).sum())
    billed = float(table["cost_usd"].sum()) if len(table) else 0.0
    again = f" (the failed rows of batch {result.only_failed_of})" if result.only_failed_of else ""
    console.print(
        f"\n[bold]{escape(result.pipeline)}[/] batch {result.batch_id}{again}: {done} of {len(table)} rows "
        f"completed ({cached} entirely from the cache), billed ${billed:.3f}"
    )
    for path in result.written[1:] or result.written:
        console.print(f"  table: {path}", highlight=False, markup=False)
    if result.contact_sheet is not None:
        console.print(f"  contact sheet: {result.contact_sheet}", highlight=False, markup=False)
    failed = result.failed
    waiting = failed[failed["error"] == NOT_STARTED]
    for row in failed.drop(waiting.index).to_dict("records"):
        where = f" at step {row['failed_step']}" if isinstance(row["failed_step"], str) else ""
        error = str(row["error"]).splitlines()[0] if isinstance(row["error"], str) else ""
        console.print(
            f"  [red]row {row['row']}[/] ({escape(str(row['name']))}) {row['status']}{where}: {escape(error)}"
        )
    if len(waiting):
        console.print(
            f"  [yellow]{len(waiting)} rows did not start[/] (rows {_ranges(waiting['row'].tolist())})"
        )
    if len(failed):
        raise BatchFailed(result)


def _ranges(numbers: list[int]) -> str:
    """``1-4, 7, 9-10``: row numbers as runs."""
    runs: list[list[int]] = []
    for number in sorted(numbers):
        if runs and number == runs[-1][-1] + 1:
            runs[-1].append(number)
        else:
            runs.append([number])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]) for run in runs)


def batch_settings(
    rows: str | None,
    row_concurrency: int | None,
    key_column: str | None,
    ignore_extra: bool,
    only_failed: bool,
) -> BatchSettings | None:
    """The batch options as one value, or None without ``--batch`` (no other batch option allowed then)."""
    if rows is not None:
        return BatchSettings(rows, row_concurrency, key_column, ignore_extra, only_failed)
    given = [
        name
        for name, value in (
            ("--row-concurrency", row_concurrency),
            ("--key-column", key_column),
            ("--ignore-extra", ignore_extra or None),
            ("--only-failed", only_failed or None),
        )
        if value is not None
    ]
    if given:
        raise ConfigError(f"{', '.join(given)} needs --batch", context=given[0], hint="add --batch rows.csv")
    return None
