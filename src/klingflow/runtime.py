"""Setting up and running a pipeline, without Prefect: load, check, plan, budget, execute, export.

The Prefect flow (:mod:`klingflow.flows`) and the CLI both come through here, so a plain Python
call, a CLI run and a Prefect deployment validate, plan, cache and budget identically.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, SecretStr

from klingflow.backends import BackendKind, connect
from klingflow.backends.config import planned_identity
from klingflow.claims import claims_from_env
from klingflow.journal import Journal
from klingflow.planning import Plan, check_budget, make_plan
from klingflow.runner import ProgressHook, RunResult, StepWrapper, execute
from klingflow.runs import record_run
from klingflow.spec import PipelineSpec, ValidatedPipeline, check, load_pipeline
from klingflow.steps import RetryPolicy, StepContext
from klingflow.store import Store

DEFAULT_CONCURRENCY = 4

__all__ = ["DEFAULT_CONCURRENCY", "RunOptions", "arun", "export_outputs", "plan_pipeline", "prepare"]


class RunOptions(BaseModel):
    """How to run: which backend, how many requests at once, what to spend at most, where to put results."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    backend: BackendKind | None = None
    key: SecretStr | None = None
    concurrency: int | None = None  # None: 4, or a KlingDefaults block's
    refresh: bool = False
    max_cost_usd: float | None = None
    out_dir: Path | None = None
    retry: RetryPolicy = RetryPolicy()
    store: Store | None = None
    journal: Journal | None = None
    prices: dict[str, float] | None = None
    claims: str | None = None
    extra_defaults: dict[str, dict[str, Any]] | None = None


def _load(
    pipeline: str | Path | PipelineSpec, extra_defaults: dict[str, dict[str, Any]] | None
) -> PipelineSpec:
    spec = pipeline if isinstance(pipeline, PipelineSpec) else load_pipeline(pipeline)
    if not extra_defaults:
        return spec
    merged = {
        name: {**extra_defaults.get(name, {}), **spec.defaults.get(name, {})}
        for name in {*extra_defaults, *spec.defaults}
    }
    return spec.model_copy(update={"defaults": merged})  # the pipeline's own defaults win


def prepare(
    pipeline: str | Path | PipelineSpec, inputs: dict[str, Any] | None, options: RunOptions
) -> tuple[ValidatedPipeline, StepContext]:
    """Load and check the pipeline (raising one SpecError with every problem) and build the step context."""
    validated = check(_load(pipeline, options.extra_defaults), inputs or {})
    source = validated.spec.source
    key = options.key
    ctx = StepContext(
        store=options.store or Store(),
        journal=options.journal or Journal(),
        backend_identity=planned_identity(options.backend, key),
        backend_factory=lambda: connect(options.backend, key=key, store=ctx.store),
        claims=claims_from_env(options.claims),
        concurrency=options.concurrency or DEFAULT_CONCURRENCY,
        retry=options.retry,
        refresh=options.refresh,
        base_dir=source.parent if source else None,
        prices=options.prices,
    )
    return validated, ctx


def plan_pipeline(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    options: RunOptions | None = None,
) -> Plan:
    """What a run would do and cost (nothing is submitted)."""
    validated, ctx = prepare(pipeline, inputs, options or RunOptions())
    return make_plan(validated, ctx)


def export_outputs(result: RunResult, out_dir: Path) -> dict[str, Path]:
    """Copy the final outputs (steps nothing depends on) to ``out_dir`` as ``<step id><suffix>``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    exported = {}
    for step_id, source in result.final.items():
        target = out_dir / f"{step_id}{source.suffix}"
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.copyfile(source, tmp)
        tmp.replace(target)
        exported[step_id] = target
    return exported


async def arun(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    options: RunOptions | None = None,
    *,
    wrap: StepWrapper | None = None,
    progress: ProgressHook | None = None,
    run_id: str | None = None,
    flow_run_id: str | None = None,
) -> RunResult:
    """Check, plan, enforce the budget, run every step, and export the final outputs."""
    options = options or RunOptions()
    validated, ctx = prepare(pipeline, inputs, options)
    limit = options.max_cost_usd if options.max_cost_usd is not None else validated.spec.max_cost_usd
    if limit is not None:
        check_budget(make_plan(validated, ctx), limit)
    result = await execute(validated, ctx, wrap=wrap, progress=progress, run_id=run_id)
    result.flow_run_id = flow_run_id
    if options.out_dir is not None:
        result.final = export_outputs(result, options.out_dir)
    record_run(result, validated, out_dir=options.out_dir, secrets=[options.key] if options.key else [])
    return result
