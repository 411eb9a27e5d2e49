"""``klingflow approve``: answer a flow run that paused for an approval, from a shell.

Prefect's CLI cannot resume a run with input; this sends the same typed form the Prefect UI's
Resume button shows (:class:`klingflow.flows.approval.ApprovalInput`), so the server validates it
either way. One run by its id (what ``klingflow run`` printed, the flow run's id), or a batch's
waiting rows at once: ``--batch ID --all``, or ``--batch ID --row KEY`` for some of them (a row's
name, number or key). ``--batch ID`` alone lists the rows that wait.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from klingflow.cli._errors import friendly_errors, out
from klingflow.errors import ConfigError

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

__all__ = ["add_approve_command"]


def _row_names(run: FlowRun) -> set[str]:
    """What ``--row`` may call a batch's row: its name, its number, its key."""
    names = {str(run.parameters.get("name", "")), str(run.parameters.get("row", ""))}
    names |= {tag.removeprefix("klingflow-row:") for tag in run.tags if tag.startswith("klingflow-row:")}
    return names - {""}


def approve(
    run_id: Annotated[str | None, typer.Argument(help="The paused run's id (its flow run id).")] = None,
    reject: Annotated[
        bool, typer.Option("--reject", help="Reject: the step and the steps after it are skipped.")
    ] = False,
    note: Annotated[str | None, typer.Option(help="Why (kept in the ledger).")] = None,
    prompt: Annotated[str | None, typer.Option(help="Send this prompt instead of the pipeline's.")] = None,
    by: Annotated[str | None, typer.Option(help="Who decides (default: your user name).")] = None,
    batch: Annotated[
        str | None, typer.Option(help="A batch id (or its flow run id): answer its waiting rows.")
    ] = None,
    all_rows: Annotated[bool, typer.Option("--all", help="With --batch: every row that waits.")] = False,
    row: Annotated[
        list[str] | None, typer.Option(help="With --batch: this row (name, number or key); repeatable.")
    ] = None,
) -> None:
    """Approve (or --reject) a run that waits for approval, or the waiting rows of a batch."""
    from klingflow.flows.approval import resume, waiting_flow_runs
    from klingflow.flows.server import configured_api_url, use_local_server

    if (run_id is None) == (batch is None):
        raise ConfigError("give a run id or --batch ID", hint="klingflow approve RUN_ID, or --batch ID --all")
    if batch is None and (all_rows or row):
        raise ConfigError(
            "--all and --row choose rows of a --batch", hint="klingflow approve --batch ID --all"
        )
    if use_local_server(start=False) is None and not configured_api_url():
        raise ConfigError(
            "no Prefect server is running, so no run can be waiting",
            hint="`klingflow server status` says where the local server is",
        )
    waiting = asyncio.run(waiting_flow_runs(batch=batch, flow_run=run_id))
    if run_id is not None and not waiting:
        raise ConfigError(f"run {run_id} is not waiting for an approval", context=run_id)
    if batch is not None and not (all_rows or row):
        _list(waiting, batch)
        return
    chosen = (
        waiting if run_id is not None or all_rows else [w for w in waiting if _row_names(w) & set(row or [])]
    )
    missing = sorted(set(row or []) - {name for w in chosen for name in _row_names(w)})
    if missing:
        raise ConfigError(
            f"no row of batch {batch} waits for approval as: {', '.join(missing)}", context=str(batch)
        )

    async def answer_all() -> None:
        for run in chosen:
            await resume(run.id, approved=not reject, note=note, prompt=prompt, approver=by)

    asyncio.run(answer_all())
    word = "rejected" if reject else "approved"
    for run in chosen:
        out().print(f"{word}: {run.name} ({run.id})", markup=False, highlight=False)


def _list(waiting: list[FlowRun], batch: str) -> None:
    console = out()
    if not waiting:
        console.print(f"no row of batch {batch} waits for approval", markup=False)
        return
    table = Table(title=f"rows of batch {batch} waiting for approval")
    for column in ("row", "name", "flow run"):
        table.add_column(column)
    for run in waiting:
        table.add_row(
            str(run.parameters.get("row", "")), str(run.parameters.get("name", run.name)), str(run.id)
        )
    console.print(table)
    console.print("answer them with --all, or --row NAME for some", markup=False)


def add_approve_command(app: typer.Typer) -> None:
    """Register ``approve`` on the top-level app."""
    app.command("approve")(friendly_errors(approve))
