"""The one Prefect flow that runs any pipeline, and the Python entry points around it.

``pipeline_flow`` takes JSON-friendly parameters (a pipeline file, its inputs, run options), so it
can be deployed and started from the Prefect UI; each step becomes a task run named after its
step id. A run with failed steps ends in the Failed state with a summary of what failed and why,
after every independent branch has finished and been cached.

With no Prefect API configured, Prefect starts its ephemeral server; klingflow then turns off the
two server services that print tracebacks at shutdown on Prefect 3.8 (analytics and the task-run
recorder), and only then: a user's own Prefect settings are never overridden.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from prefect import flow
from prefect.runtime import flow_run
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
    temporary_settings,
)

from klingflow.backends.config import use_hosts
from klingflow.blocks import FalCredentials, KlingDefaults
from klingflow.errors import KlingflowError
from klingflow.flows.artifacts import publish_artifacts
from klingflow.runner import ProgressHook, RunResult
from klingflow.runtime import RunOptions, arun
from klingflow.spec import PipelineSpec
from klingflow.tasks import run_step_as_task

__all__ = ["PipelineFailed", "arun_pipeline", "pipeline_flow", "run_body", "run_pipeline"]

# In-process extras that are not flow parameters (a callback and objects can't go through the API).
_local_options: ContextVar[RunOptions | None] = ContextVar("klingflow_options", default=None)
_local_progress: ContextVar[ProgressHook | None] = ContextVar("klingflow_progress", default=None)
_local_spec: ContextVar[PipelineSpec | None] = ContextVar("klingflow_spec", default=None)


class PipelineFailed(KlingflowError):
    """Some steps failed; ``result`` holds everything that did run (outputs, ledger rows)."""

    reference = "pipeline-failed"

    def __init__(self, result: RunResult) -> None:
        lines = [f"{step}: {reason}" for step, reason in result.failures.items()]
        super().__init__(
            f"{len(result.failures)} step(s) did not complete:\n  " + "\n  ".join(lines),
            context=f"pipeline '{result.pipeline}'",
            hint="fix the cause and run again: completed steps are cached and not paid twice",
        )
        self.result = result


@contextlib.contextmanager
def quiet_ephemeral_server() -> Iterator[None]:
    """Turn off the ephemeral server's noisy services, only when klingflow is the one starting it."""
    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(
        updates={
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
            PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False,
        }
    ):
        yield


def _run_name() -> str:
    parameters = flow_run.parameters or {}
    return Path(str(parameters.get("pipeline", "pipeline"))).stem


async def run_body(
    pipeline: str,
    inputs: dict[str, Any] | None,
    *,
    backend: str | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    concurrency: int | None = None,
    refresh: bool = False,
    max_cost_usd: float | None = None,
    out_dir: str | None = None,
) -> RunResult:
    """What every klingflow flow does: resolve blocks and options, run the pipeline, fail on failures.

    Explicit parameters win over a ``KlingDefaults`` block, which wins over built-in defaults.
    """
    base = _local_options.get() or RunOptions()
    update: dict[str, Any] = {"backend": backend or base.backend, "refresh": refresh or base.refresh}
    if credentials:
        block = await FalCredentials.aload(credentials)
        use_hosts(block.queue_host, block.run_host, block.ca_bundle)
        update.update(key=block.key, backend=backend or "fal")
    team = await KlingDefaults.aload(defaults) if defaults else None
    update["concurrency"] = concurrency or (team.concurrency if team else base.concurrency)
    update["max_cost_usd"] = next(
        (v for v in (max_cost_usd, team.max_cost_usd if team else None, base.max_cost_usd) if v is not None),
        None,
    )
    location = out_dir or (team.output_location if team else None)
    update["out_dir"] = Path(location) if location else base.out_dir
    if team:
        update["extra_defaults"] = team.arguments
    run_id = str(flow_run.id) if flow_run.id else None
    result = await arun(
        _local_spec.get() or pipeline,
        inputs,
        base.model_copy(update=update),
        wrap=run_step_as_task,
        progress=_local_progress.get(),
        run_id=run_id,
        flow_run_id=run_id,
    )
    await publish_artifacts(result.run_id)
    if result.failures:
        raise PipelineFailed(result)
    return result


@flow(name="klingflow", flow_run_name=_run_name, persist_result=False, log_prints=False)
async def pipeline_flow(
    pipeline: str,
    inputs: dict[str, Any] | None = None,
    backend: Literal["emulator", "fal"] | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    concurrency: int | None = None,
    refresh: bool = False,
    max_cost_usd: float | None = None,
    out_dir: str | None = None,
) -> RunResult:
    """Run any klingflow pipeline file: each Kling call a cached, retried task; independent steps in parallel.

    ``credentials`` and ``defaults`` name a FalCredentials and a KlingDefaults block.
    """
    return await run_body(
        pipeline,
        inputs,
        backend=backend,
        credentials=credentials,
        defaults=defaults,
        concurrency=concurrency,
        refresh=refresh,
        max_cost_usd=max_cost_usd,
        out_dir=out_dir,
    )


async def arun_pipeline(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    *,
    options: RunOptions | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressHook | None = None,
) -> RunResult:
    """Run a pipeline as a Prefect flow and return its result (raises PipelineFailed with it on failure).

    ``credentials`` / ``defaults`` name a FalCredentials / KlingDefaults block. The outputs go to
    ``out_dir``, else the defaults block's ``output_location``, else ``options.out_dir``.
    """
    options = options or RunOptions()
    spec = pipeline if isinstance(pipeline, PipelineSpec) else None
    name = spec.source or spec.name if spec else pipeline
    tokens = (_local_options.set(options), _local_progress.set(progress), _local_spec.set(spec))
    try:
        with quiet_ephemeral_server():
            state = await pipeline_flow(
                str(name),
                inputs,
                credentials=credentials,
                defaults=defaults,
                concurrency=options.concurrency,
                out_dir=str(out_dir) if out_dir else None,
                return_state=True,
            )
    finally:
        for var, token in zip((_local_options, _local_progress, _local_spec), tokens, strict=True):
            var.reset(token)  # type: ignore[attr-defined]
    value = await state.aresult(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value


def run_pipeline(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    *,
    backend: str | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    concurrency: int | None = None,
    refresh: bool = False,
    max_cost_usd: float | None = None,
    out_dir: str | Path | None = None,
    options: RunOptions | None = None,
    progress: ProgressHook | None = None,
) -> RunResult:
    """Run a pipeline from plain Python (a script or a notebook cell) and return its outputs and ledger.

    Blocks work here as in deployments: ``credentials="fal-production"``, ``defaults="studio"``.

    Example::

        from klingflow import run_pipeline

        result = run_pipeline("deployments/pipelines/avatar.yaml", inputs={"line": "Hello!"})
        print(result.final, result.ledger[["step_id", "status", "estimated_cost_usd"]])
    """
    base = options or RunOptions()
    merged = base.model_copy(
        update={
            "backend": backend or base.backend,
            "concurrency": concurrency or base.concurrency,
            "refresh": refresh or base.refresh,
            "max_cost_usd": max_cost_usd if max_cost_usd is not None else base.max_cost_usd,
            "out_dir": Path(out_dir) if out_dir else base.out_dir,
        }
    )
    return asyncio.run(
        arun_pipeline(
            pipeline, inputs, options=merged, credentials=credentials, defaults=defaults, progress=progress
        )
    )
