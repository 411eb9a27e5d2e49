"""``klingflow validate``, ``klingflow plan`` and ``klingflow run``: a pipeline from a terminal.

``run`` checks the pipeline before Prefect starts, so a mistake is one message naming file, line,
step and field, printed before anything else and before anything is paid. During the run it shows
the run's view (:mod:`klingflow.cli._live`: live on a terminal, a line per change elsewhere) while
log lines go to the run's log file (:mod:`klingflow.cli._logs`; ``--verbose`` prints them too),
then the final outputs' paths.

A fully cached run reporting to klingflow's local server never imports Prefect: importing it and
starting a flow run (about 3 s on two cores) would cost more than the run, which submits nothing.
The engine makes it alone and a detached :mod:`klingflow.flows.record` makes it a flow run
afterwards (:func:`_run_cached_without_prefect`).
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from klingflow.cli._errors import friendly_errors, out, quiet_prefect_tracebacks, stderr
from klingflow.cli._live import run_view
from klingflow.cli._logs import RunLogs
from klingflow.cli._plan_json import plan_json
from klingflow.cli.batch import (
    BatchOpt,
    IgnoreExtraOpt,
    KeyColumnOpt,
    OnlyFailedOpt,
    RowConcurrencyOpt,
    batch_settings,
    plan_batch,
    run_batch_command,
)
from klingflow.errors import ConfigError, KlingflowError
from klingflow.settings import settings

if TYPE_CHECKING:
    from klingflow.engine import Plan, RunHooks, RunOptions, RunResult
    from klingflow.spec import PipelineSpec

__all__ = ["add_run_commands", "plan_table"]

FileArg = Annotated[Path, typer.Argument(help="The pipeline YAML file.")]
SetOpt = Annotated[
    list[str] | None, typer.Option("--set", help="Set a pipeline input: name=value (repeatable).")
]
BackendOpt = Annotated[
    str | None,
    typer.Option(help="emulator or fal (default: fal when FAL_KEY is set, else the embedded emulator)."),
]
OfflineOpt = Annotated[
    bool,
    typer.Option(
        help="Never fetch an endpoint's schema or price from fal: a fal id klingflow has neither vendored "
        "nor refreshed is refused (same as KLINGFLOW_OFFLINE=1)."
    ),
]


def _go_offline(offline: bool) -> None:
    """``--offline`` as the setting, so the check, the engine and a flow's own process all see it."""
    if offline:
        os.environ["KLINGFLOW_OFFLINE"] = "1"


def parse_sets(values: list[str]) -> dict[str, str]:
    """``--set name=value`` options as a dict of pipeline inputs."""
    parsed = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(
                f"--set expects name=value, got {item!r}",
                context="--set",
                hint='for example --set subject="a lighthouse keeper"',
            )
        parsed[name.strip()] = value
    return parsed


def plan_table(plan: Plan) -> Table:
    """The plan as a rich table (the plan itself is data: :class:`klingflow.engine.Plan`).

    Its five short columns fit 80 characters, and "why" (the reason a step is not reused, with its
    detail) takes the rest; a step id too long for the terminal wraps in its cell
    (``overflow="fold"``) rather than ending in an ellipsis, so every id stays readable whole.
    """
    table = Table(title=f"plan: {plan.pipeline}")
    for column in ("step", "uses", "status", "est. cost", "seconds", "why"):
        table.add_column(
            column, justify="right" if column in ("est. cost", "seconds") else "left", overflow="fold"
        )
    for step in plan.steps:
        name = step.step_id if step.item_index is None else f"{step.step_id}[{step.item_index}]"
        seconds = "" if step.estimated_seconds is None else f"{step.estimated_seconds:g}"
        cost = "unknown" if step.estimated_cost_usd is None else f"${step.estimated_cost_usd:.3f}"
        why = f"{step.reason}: {step.reason_detail}" if step.reason else ""
        table.add_row(name, step.uses, step.status, cost, seconds, escape(why))
    unknown = len(plan.unknown_cost)
    table.caption = (
        f"to spend: ${plan.total_cost_usd:.3f}"
        + (f" plus {unknown} generation(s) at an unknown price" if unknown else "")
        + f" ({plan.count('run')} generations to run, "
        f"{plan.count('cached')} cached, {plan.count('recoverable')} recoverable; "
        f"{plan.operations} local operations, free)" + _schema_line(plan)
    )
    return table


def _schema_line(plan: Plan) -> str:
    """Which copy of each endpoint's schema and price the plan used (vendored or refreshed, and when)."""
    sources = {
        step.endpoint: step.schema_source for step in plan.steps if step.endpoint and step.schema_source
    }
    if not sources:
        return ""
    if len(set(sources.values())) == 1:
        return f"\nschemas and prices: {next(iter(sources.values()))}"
    return "\nschemas and prices: " + "; ".join(f"{e}: {source}" for e, source in sorted(sources.items()))


def validate(file: FileArg, set_: SetOpt = None, offline: OfflineOpt = False) -> None:
    """Check a pipeline completely, without running or spending anything."""
    from klingflow.spec import check, load_pipeline

    _go_offline(offline)

    validated = check(load_pipeline(file), parse_sets(set_ or []))
    out().print(f"[green]ok[/] {file}: {len(validated.order)} steps, order: {' -> '.join(validated.order)}")


def plan(
    file: FileArg,
    set_: SetOpt = None,
    backend: BackendOpt = None,
    refresh: Annotated[bool, typer.Option(help="Plan as if every step were regenerated.")] = False,
    offline: OfflineOpt = False,
    rows: BatchOpt = None,
    key_column: KeyColumnOpt = None,
    ignore_extra: IgnoreExtraOpt = False,
    output_format: Annotated[
        str, typer.Option("--format", help="table (for people) or json (every field, for programs).")
    ] = "table",
) -> None:
    """Show each step's status (cached / recoverable / run), why it runs, its estimated cost and seconds.

    With ``--batch``, one line per row of the table (cached rows at $0) and the batch's total.
    ``--format json`` prints the plan as JSON instead: each step's status, reason and its detail,
    cost, seconds, cache key and endpoint, and the totals (with ``--batch``: a plan per row).
    """
    from klingflow.backends import backend_kind
    from klingflow.cli.endpoints import stale_note
    from klingflow.engine import RunOptions, plan_pipeline

    _go_offline(offline)
    if output_format not in ("table", "json"):
        raise ConfigError(f"unknown format {output_format!r}", context="--format", hint="table or json")
    options = RunOptions(backend=backend_kind(backend), refresh=refresh or None)
    batch = batch_settings(rows, None, key_column, ignore_extra, False)
    if batch is not None:
        from klingflow.spec import load_pipeline

        plan_batch(
            load_pipeline(file), parse_sets(set_ or []), batch, options, as_json=output_format == "json"
        )
        return
    result = plan_pipeline(file, parse_sets(set_ or []), options)
    if output_format == "json":
        print(json.dumps(plan_json(result), indent=2))
        return
    Console().print(plan_table(result))
    note = stale_note(step.uses for step in result.steps)
    if note:
        stderr().print(note, markup=False, highlight=False)


def run(
    file: FileArg,
    set_: SetOpt = None,
    backend: BackendOpt = None,
    concurrency: Annotated[
        int | None, typer.Option(help="Requests in flight at once (default 4, or the defaults block's).")
    ] = None,
    refresh: Annotated[bool, typer.Option(help="Regenerate every step instead of using the cache.")] = False,
    max_cost: Annotated[
        float | None, typer.Option(help="Refuse to start if the uncached estimate exceeds USD.")
    ] = None,
    allow_unknown_cost: Annotated[
        bool,
        typer.Option(help="With --max-cost: start even if some step's price is unknown to klingflow."),
    ] = False,
    credentials: Annotated[str | None, typer.Option(help="Name of a FalCredentials block to use.")] = None,
    defaults: Annotated[str | None, typer.Option(help="Name of a KlingDefaults block to use.")] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help="Where to copy the final outputs (default ./klingflow-out/NAME)."),
    ] = None,
    on_ambiguous_submit: Annotated[
        str | None,
        typer.Option(
            help="A submit fal may have accepted (answer lost): reconcile (ask fal's history; default), "
            "fail, or resubmit (pay again, flagged possible_duplicate)."
        ),
    ] = None,
    debug: Annotated[bool, typer.Option(help="Also print Prefect's tracebacks in the terminal.")] = False,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="Also print the run's log lines (Prefect's, fal's model logs, klingflow's step "
            "messages) above the progress view; they are always in the run's log file.",
        ),
    ] = False,
    ephemeral: Annotated[
        bool,
        typer.Option(
            help="Use Prefect's temporary in-process server instead of the local one "
            "(same as KLINGFLOW_PREFECT=ephemeral)."
        ),
    ] = False,
    cancel_queued: Annotated[
        bool,
        typer.Option(
            help="On Ctrl-C or SIGTERM, also cancel requests still queued at fal (free; "
            "KLINGFLOW_CANCEL_QUEUED). Running requests are left to finish, collected by a re-run."
        ),
    ] = False,
    offline: OfflineOpt = False,
    approve: Annotated[
        list[str] | None,
        typer.Option(
            "--approve",
            metavar="STEP",
            help="Wait for a person's approval before STEP is paid for (as approve: on the step; "
            "repeatable). On a terminal you are asked; elsewhere the flow run pauses until "
            "`klingflow approve` or the Prefect UI resumes it.",
        ),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Approve every approval gate unattended.")] = False,
    rows: BatchOpt = None,
    row_concurrency: RowConcurrencyOpt = None,
    key_column: KeyColumnOpt = None,
    ignore_extra: IgnoreExtraOpt = False,
    only_failed: OnlyFailedOpt = False,
) -> None:
    """Run a pipeline as a Prefect flow, showing progress, and print the final outputs' paths.

    With ``--batch rows.csv``, once per row of the table: every row checked first, the whole
    batch's estimate held against ``--max-cost``, each row a child flow run (outputs in
    ``OUT/<row>/``), then a result table; exit 1 if a row failed.

    Without a configured Prefect API the run reports to klingflow's local Prefect server (started
    on first use, shared by later runs; ``klingflow server status``), and ends with its UI address.
    A fully cached re-run there is done without Prefect's start-up, and recorded as a flow run
    right after, by a detached process.
    """
    from klingflow.backends import backend_kind, check_backend
    from klingflow.spec import check, load_pipeline

    _go_offline(offline)
    inputs = parse_sets(set_ or [])
    spec = load_pipeline(file)
    batch = batch_settings(rows, row_concurrency, key_column, ignore_extra, only_failed)
    if batch is None:
        check(spec, inputs)  # every mistake, before Prefect starts and before anything is paid
    if not credentials:  # a block brings its own key and hosts, checked when it is loaded
        check_backend(backend)  # no key, an emulator host without its tunnel: said before anything starts
    if ephemeral:
        os.environ["KLINGFLOW_PREFECT"] = "ephemeral"  # for run_pipeline's own look, and subprocesses

    from klingflow.engine import RunOptions, ambiguous_submit_policy

    options = RunOptions(
        backend=backend_kind(backend),
        concurrency=concurrency,
        refresh=refresh or None,
        max_cost_usd=max_cost,
        allow_unknown_cost=allow_unknown_cost or None,
        out_dir=out_dir,
        on_ambiguous_submit=ambiguous_submit_policy(on_ambiguous_submit),
        cancel_queued=cancel_queued or None,
        approve=approve or None,
        yes=yes or None,
    )
    if approve:
        from klingflow.engine import with_approvals

        with_approvals(spec, approve)  # a step it does not have is said now, before Prefect starts
    fallback = RunOptions(out_dir=Path("klingflow-out") / spec.name)
    if batch is not None:  # its rows are checked by the batch itself, before anything is paid
        run_batch_command(
            spec,
            inputs,
            batch,
            options,
            fallback,
            credentials=credentials,
            defaults=defaults,
            verbose=verbose,
            debug=debug,
        )
        return
    console = out()
    if not (credentials or defaults):  # blocks are Prefect's: a run naming one needs Prefect
        server_url = _fully_cached_without_prefect(spec, inputs, options, fallback)
        if server_url is not None:

            def engine_alone(hooks: RunHooks) -> RunResult:
                return asyncio.run(_arun_cached(spec, inputs, options, fallback, hooks))

            result, failed, logs = _watched(console, verbose, engine_alone)
            ui = _record_in_prefect_later(result.run_id, _flow_parameters(spec, inputs, options), server_url)
            _print_final(console, result, ui, logs)
            if failed is not None:
                raise failed
            return

    from klingflow.flows.pipeline import run_pipeline
    from klingflow.flows.server import use_local_server

    use_local_server(echo=lambda line: stderr().print(line, markup=False, highlight=False))
    if credentials or defaults:
        _check_blocks(credentials, defaults)  # before a flow run starts

    def in_prefect(hooks: RunHooks) -> RunResult:
        def started() -> None:  # the flow run began: Prefect's logging is set up, quiet it down
            hooks.on_run_start()
            if not debug:
                quiet_prefect_tracebacks()

        return run_pipeline(
            spec,
            inputs,
            options=options,
            credentials=credentials,
            defaults=defaults,
            hooks=replace(hooks, on_run_start=started),
            fallback=fallback,
        )

    result, failed, logs = _watched(console, verbose, in_prefect)
    _print_final(console, result, _flow_run_page(result.flow_run_id), logs)
    if failed is not None:
        raise failed


STEP_LOG = "klingflow.steps"
"""The logger of step messages in a run without Prefect's task loggers (a cached run, plain Python)."""


def _watched(
    console: Console, verbose: bool, execute: Callable[[RunHooks], RunResult]
) -> tuple[RunResult, KlingflowError | None, Path | None]:
    """Run ``execute`` under the run's view and log file; return its result, its error and the log's path.

    The view is fed by the run's hooks; every log line goes to the log file (moved into the run's
    folder at the end) and, with ``verbose``, to the console above the view. A failed or stopped
    run's error is returned, not raised, so its summary is printed after the view's last frame.
    """
    from klingflow.engine import RunHooks, has_terminal
    from klingflow.errors import PipelineFailed, RunInterrupted
    from klingflow.ledger import run_dir, runs_root

    failed: KlingflowError | None = None
    with RunLogs(console, verbose=verbose, folder=runs_root()) as logs, run_view(console) as view:
        hooks = RunHooks(
            on_run_start=logs.apply,  # once Prefect has set up its logging for the flow run
            on_plan=view.plan,
            on_start=view.start,
            on_event=view.event,
            on_finish=view.finish,
            log=logging.getLogger(STEP_LOG).info,
            approve=view.ask if has_terminal() else view.pause,
        )
        try:
            result = execute(hooks)
        except PipelineFailed as exc:
            result, failed = exc.result, exc
        except KeyboardInterrupt as stopped:  # run_pipeline's, after a clean stop: its cause says what ran
            if not isinstance(stopped.__cause__, RunInterrupted):
                raise
            result, failed = stopped.__cause__.result, stopped.__cause__
        except RunInterrupted as exc:  # the engine's own, in a run without Prefect
            result, failed = exc.result, exc
        logs.keep_as(run_dir(result.run_id) / "run.log")
    return result, failed, logs.final_path


def _check_blocks(credentials: str | None, defaults: str | None) -> None:
    """Refuse a block name that does not exist on the Prefect server, before a flow run is made."""
    from klingflow.blocks import FalCredentials, KlingDefaults

    named = ((FalCredentials, credentials, "--credentials"), (KlingDefaults, defaults, "--defaults"))
    for kind, name, option in named:
        if not name:
            continue
        try:
            kind.load(name)
        except ValueError as exc:
            raise ConfigError(
                f"no {kind.__name__} block named {name!r} on the Prefect server",
                context=option,
                hint="`klingflow blocks register` registers the block types; create the block in the "
                "Prefect UI (Blocks) or in Python (FalCredentials(...).save(name))",
            ) from exc


def _fully_cached_without_prefect(
    spec: PipelineSpec, inputs: dict[str, str], options: RunOptions, fallback: RunOptions
) -> str | None:
    """Whether to run in the engine alone: None if not, else the local server's address ("" if down).

    None (the run then goes the ordinary way, as a Prefect flow) unless the run reports to
    klingflow's local server and every step reuses verified outputs: then Prefect's import and a
    flow run's start-up would cost more than the run itself. The server is not waited for: the
    address is "" when it is not running (stopped, or after its idle shutdown), and the run waits
    to be recorded by the next start.
    """
    from klingflow.engine import fully_cached, prepare
    from klingflow.prefect_server import prefect_api_may_be_configured, server_status

    if settings().prefect == "ephemeral" or prefect_api_may_be_configured():
        return None
    validated, ctx, _resolved = prepare(spec, inputs, options, fallback=fallback)
    if not fully_cached(validated, ctx):
        return None
    status = server_status()
    return status.server.url if status.running and status.server else ""


async def _arun_cached(
    spec: PipelineSpec, inputs: dict[str, str], options: RunOptions, fallback: RunOptions, hooks: RunHooks
) -> RunResult:
    """The fully cached run, in the engine alone (recorded in Prefect afterwards); failures raise.

    Should a cache entry vanish in the moment between the check and the run, that step is
    generated as in any run (journaled, claimed, never paid twice), only outside a flow run, and
    recorded with the others.
    """
    from klingflow.engine import arun
    from klingflow.errors import PipelineFailed

    result = await arun(spec, inputs, options, fallback=fallback, hooks=hooks)
    if result.failures:
        raise PipelineFailed(result)
    return result


def _flow_parameters(spec: PipelineSpec, inputs: dict[str, str], options: RunOptions) -> dict[str, Any]:
    """What ``run_pipeline`` would give ``pipeline_flow`` for this command (no block, by design)."""
    return {"pipeline": str(spec.source or spec.name), "inputs": inputs, **options.flow_parameters()}


def _record_in_prefect_later(run_id: str, parameters: dict[str, Any], server_url: str | None) -> str | None:
    """Leave the flow run's parameters in the run's folder; if the server runs, start its recorder.

    Returns what the run's "Prefect UI" line says. With the local server up (``server_url``), a
    detached recorder (:func:`klingflow.engine.waiting.start_recorder`) records the run within
    seconds. With it down (stopped, or after its idle shutdown) none is started: a recorder never
    starts a server, so the run waits for the next run that starts it, or ``klingflow server
    start``, which record every waiting run. When the recorder cannot be started, one line says
    how to record the run later, and None is returned.
    """
    from klingflow._files import atomic_write
    from klingflow.engine import FLOW_RUN_PARAMETERS
    from klingflow.engine.waiting import RECORDER, start_recorder
    from klingflow.ledger import run_dir

    folder = run_dir(run_id)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(folder / FLOW_RUN_PARAMETERS, json.dumps(parameters))
        if not server_url:
            return (
                "the local Prefect server is not running; this run is recorded there by the next run "
                "that starts it, or by `klingflow server start`"
            )
        start_recorder([run_id], folder / "prefect-record.log")
    except OSError as exc:
        stderr().print(
            f"klingflow: could not start recording run {run_id} in Prefect ({exc}); the run is complete, "
            f"record it later with: {sys.executable} -m {RECORDER} {run_id}",
            markup=False,
            highlight=False,
        )
        return None
    return f"{server_url}/runs (this run appears there within seconds)"


def _print_final(console: Console, result: RunResult, ui: str | None, log: Path | None = None) -> None:
    from klingflow.ledger import spend_label

    spent = spend_label(r.estimated_cost_usd for r in result.records)
    console.print(
        f"\n[bold]{escape(result.pipeline)}[/]: {result.status}, estimated spend {spent} "
        f"(run {result.run_id})"
    )
    for step_id, path in result.final.items():
        console.print(f"  {step_id}: {path.resolve()}", highlight=False, markup=False)
    if ui:
        console.print(f"  Prefect UI: {ui}", highlight=False, markup=False)
    if log is not None:
        console.print(f"  log: {log}", highlight=False, markup=False)


def _flow_run_page(flow_run_id: str | None) -> str | None:
    """The flow run's page in the Prefect UI, if the run reported to a server that outlives it."""
    from prefect.settings import get_current_settings

    ui = get_current_settings().ui_url
    if not flow_run_id or not ui or not get_current_settings().api.url:
        return None  # ephemeral mode: the server is gone with this process
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run_id}"


def recover(backend: BackendOpt = None) -> None:
    """Find paid requests no cache entry holds; fetch what fal still keeps; say what is lost and its cost.

    A run that crashed, was killed or lost a submit's answer leaves journal entries for requests
    fal may have accepted. Each is looked up (fal's request history for a lost submit), fetched
    into the store and the cache while fal keeps its result (1 hour after it completes), and the
    next run of the pipeline is then a cache hit.
    """
    import asyncio

    from klingflow.backends import backend_kind
    from klingflow.engine import RunOptions, context_for, recover

    found = asyncio.run(recover(context_for(RunOptions(backend=backend_kind(backend)))))
    console = out()
    if not found:
        console.print("nothing to recover: every request this home paid for is stored")
        return
    table = Table(title="paid requests no cache entry held", show_lines=False)
    for column in ("outcome", "endpoint", "request id", "billed", "detail"):
        table.add_column(column)
    for item in found:
        billed = f"${item.cost_usd:.3f}" if item.cost_usd is not None else "–"
        table.add_row(
            item.outcome,
            item.endpoint.removeprefix("fal-ai/kling-video/"),
            item.request_id or "–",
            billed,
            item.detail,
        )
    console.print(table)
    lost = [item for item in found if item.outcome == "lost"]
    console.print(
        f"{sum(i.outcome == 'recovered' for i in found)} recovered, {len(lost)} lost for good, "
        f"{sum(i.outcome in ('pending', 'unreachable') for i in found)} still to collect, "
        f"{sum(i.outcome == 'not accepted' for i in found)} never accepted"
    )


def _stoppable(command: Callable[..., None]) -> Callable[..., None]:
    """The command with klingflow's Ctrl-C / SIGTERM handling from its first line (before Prefect starts).

    The first signal stops the run without a traceback (exit 130 / 143, what is still running
    at fal printed); a second exits at once (:mod:`klingflow.engine.interrupts`).
    """

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        from klingflow.engine import stop_on_signals

        with stop_on_signals():
            command(*args, **kwargs)

    return wrapper


def add_run_commands(app: typer.Typer) -> None:
    """Attach ``validate``, ``plan``, ``run`` and ``recover`` to ``app`` behind the error boundary."""
    app.command("validate")(friendly_errors(validate))
    app.command("plan")(friendly_errors(plan))
    app.command("run")(friendly_errors(_stoppable(run)))
    app.command("recover")(friendly_errors(recover))
