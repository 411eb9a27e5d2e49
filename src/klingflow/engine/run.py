"""A whole run, without Prefect: check → options → plan → budget → execute → export → record.

The Prefect flow (:mod:`klingflow.flows`), the CLI and plain Python all come through :func:`arun`,
so they validate, resolve options, plan, cache and budget identically. It returns the
:class:`~klingflow.engine.runner.RunResult` with the run's manifest attached, so nothing above
reads back from disk what the run just wrote.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import SecretStr

from klingflow._files import atomic_path
from klingflow.backends import connect
from klingflow.backends.config import planned_identity
from klingflow.cache import Journal, Store, claims_from_env
from klingflow.engine.approval import with_approvals
from klingflow.engine.context import StepContext
from klingflow.engine.hooks import RunHooks
from klingflow.engine.interrupts import stop_on_signals
from klingflow.engine.options import BUILT_IN, RetryPolicy, RunOptions, resolve_options
from klingflow.engine.plan import Plan, check_budget, make_plan
from klingflow.engine.recording import SheetRows, record_run
from klingflow.engine.runner import RunResult, execute
from klingflow.errors import RunInterrupted
from klingflow.ledger import StepRecord
from klingflow.spec import PipelineSpec, ValidatedPipeline, check, load_pipeline

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend

__all__ = [
    "arun",
    "context_for",
    "export_outputs",
    "plan_pipeline",
    "prepare",
    "run_checked",
    "with_block_arguments",
]


def with_block_arguments(spec: PipelineSpec, arguments: dict[str, dict[str, Any]] | None) -> PipelineSpec:
    """The spec with a block's default arguments under its own (the pipeline's own defaults win)."""
    if not arguments:
        return spec
    merged = {
        name: {**arguments.get(name, {}), **spec.defaults.get(name, {})}
        for name in {*arguments, *spec.defaults}
    }
    return spec.model_copy(update={"defaults": merged})


def prepare(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None,
    options: RunOptions | None = None,
    *,
    block: RunOptions | None = None,
    fallback: RunOptions | None = None,
) -> tuple[ValidatedPipeline, StepContext, RunOptions]:
    """Load and check the pipeline (one SpecError with every problem), resolve options, build the context."""
    spec = pipeline if isinstance(pipeline, PipelineSpec) else load_pipeline(pipeline)
    resolved = resolve_options(options, block=block, pipeline=spec, fallback=fallback)
    validated = check(
        with_approvals(with_block_arguments(spec, resolved.arguments), resolved.approve), inputs or {}
    )
    source = validated.spec.source
    return validated, context_for(resolved, base_dir=source.parent if source else None), resolved


def context_for(resolved: RunOptions, *, base_dir: Path | None = None) -> StepContext:
    """The step context resolved options describe (the cache, the backend made on first use, the cap)."""
    store = resolved.store or Store()
    connector = resolved.connector
    made: FalBackend | None = connector(store) if connector else None
    # A block names its own hosts (and points fal_client at them): the identity that keys the cache
    # is the backend's own, known only once it is made; without a block it is known from the
    # environment without starting anything (so a fully cached run never makes a backend).
    identity = made.identity if made is not None else planned_identity(resolved.backend, resolved.key)

    def backend_factory() -> FalBackend:
        return made if made is not None else connect(resolved.backend, key=resolved.key, store=store)

    return StepContext(
        store=store,
        journal=resolved.journal or Journal(),
        backend_identity=identity,
        backend_factory=backend_factory,
        claims=claims_from_env(resolved.claims),
        concurrency=resolved.concurrency or BUILT_IN.concurrency or 1,
        retry=resolved.retry or RetryPolicy(),
        refresh=bool(resolved.refresh),
        base_dir=base_dir,
        prices=resolved.prices,
        on_ambiguous_submit=resolved.on_ambiguous_submit or "reconcile",
        cancel_queued=bool(resolved.cancel_queued),
        approve_unattended=bool(resolved.yes),
        team_slot=resolved.team_slot,
    )


def plan_pipeline(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> Plan:
    """What a run would do and cost (nothing is submitted)."""
    validated, ctx, _ = prepare(pipeline, inputs, options)
    return make_plan(validated, ctx)


def export_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Copy the final outputs (steps nothing depends on) to ``out_dir`` as ``<step id><suffix>``.

    A step's subtitles (``captioned.subtitles``, ``captioned.webvtt``) get the name of the video
    they go with (``captioned.srt``, ``captioned.vtt`` beside ``captioned.mp4``): players load
    subtitles that share the video's name.
    """
    exported = {}
    for name, source in result.final.items():
        target = out_dir / f"{name.partition('.')[0]}{source.suffix}"
        with atomic_path(target) as temp:
            shutil.copyfile(source, temp)
        exported[name] = target
    return exported


async def arun(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    options: RunOptions | None = None,
    *,
    block: RunOptions | None = None,
    fallback: RunOptions | None = None,
    hooks: RunHooks | None = None,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> RunResult:
    """Check, resolve options, plan, enforce the budget, run every step, export and record the run.

    ``options`` are the caller's explicit options, ``block`` a KlingDefaults block's and
    ``fallback`` the caller's own defaults (see :mod:`~klingflow.engine.options` for the order).
    A stop (Ctrl-C, SIGTERM: :mod:`~klingflow.engine.interrupts`) ends the run early, recorded
    like any other, and raises :class:`~klingflow.errors.RunInterrupted` with its result.
    """
    hooks = hooks or RunHooks()
    hooks.on_run_start()
    validated, ctx, resolved = prepare(pipeline, inputs, options, block=block, fallback=fallback)
    try:
        plan = make_plan(validated, ctx)  # its cache checks are the run's own: each file is hashed once
        check_budget(plan, resolved.max_cost_usd, allow_unknown=bool(resolved.allow_unknown_cost))
        with stop_on_signals(ctx.stop):  # Ctrl-C / SIGTERM: stop submitting, keep what was paid
            result = await run_checked(
                validated,
                ctx,
                plan,
                hooks=hooks,
                out_dir=resolved.out_dir,
                key=resolved.key,
                run_id=run_id,
                flow_run_id=flow_run_id,
            )
    finally:
        await ctx.aclose()
    if result.stopped_by is not None:
        raise RunInterrupted(result, result.stopped_by, result.still_running, result.cancelled_at_fal)
    return result


async def run_checked(
    validated: ValidatedPipeline,
    ctx: StepContext,
    plan: Plan,
    *,
    hooks: RunHooks,
    out_dir: Path | None,
    key: SecretStr | None = None,
    run_id: str | None = None,
    flow_run_id: str | None = None,
    batch_id: str | None = None,
    row_key: str | None = None,
    contact_sheet: bool = True,
) -> RunResult:
    """Execute, export and record one checked, planned and budgeted run on a context the caller owns.

    :func:`arun` calls it for a run of its own; a batch (:mod:`klingflow.batch`) for each row, on
    one shared context (one cache, one concurrency cap, one backend), so the caller installs the
    signal handlers and closes the context. A stopped run is returned (``stopped_by`` set), not raised.
    ``contact_sheet=False`` records the run without one (a batch's row: the batch's sheet shows it).
    """
    hooks.on_plan(plan)
    sheet = SheetRows() if contact_sheet else None  # its rows, made while the other steps still run
    finished = hooks.on_finish

    def on_finish(record: StepRecord) -> None:
        if sheet is not None:
            sheet.add(record)
        finished(record)

    try:
        result = await execute(
            validated,
            ctx,
            hooks=replace(hooks, on_finish=on_finish),
            run_id=run_id,
            batch_id=batch_id,
            row_key=row_key,
            plan=plan,
        )
        result.flow_run_id, result.batch_id, result.row_key = flow_run_id, batch_id, row_key
        if out_dir is not None:
            result.final = export_outputs(result, out_dir)
        secrets = [key, *ctx.secrets()] if key else ctx.secrets()
        recorded = record_run(
            result, validated, out_dir=out_dir, secrets=secrets, sheet_rows=sheet, contact_sheet=contact_sheet
        )
    finally:
        if sheet is not None:
            sheet.close()
    result.recorded(*recorded)
    return result
