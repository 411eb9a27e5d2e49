"""Prefect tasks: thin wrappers that give each pipeline step a task run of its own.

The step's work (cache decision, resume, retries, concurrency cap) happens in the engine
(:mod:`klingflow.engine.generation`); the task adds only what Prefect is for: a task run named
after the step, whose parameters are the step id, the endpoint (or operation) and the arguments
as JSON, its state in the UI, and fal's queue position and log lines on the Prefect logger.
Prefect's own cache and retries are off on purpose: its cache cannot tell whether the media file
behind a result still exists, and its retries cannot honour fal's Retry-After.

The engine's work is a closure, which is not a parameter anyone should see in the UI, so each step
gets a task made around it (:func:`run_step_as_task`) whose parameters are the plain facts.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from klingflow.cache import canonical_json
from klingflow.engine import Logger, StepCall, StepInfo
from klingflow.ledger import StepRecord

__all__ = ["run_step_as_task"]


async def run_step_as_task(step: StepInfo, call: StepCall, log: Logger) -> StepRecord:
    """The engine's ``run_step`` hook: one Prefect task run per step, named after it."""

    async def pipeline_step(step_id: str, uses: str, arguments: str) -> StepRecord:
        logger = get_run_logger()
        record = await call(logger.info)
        logger.info(
            "%s: %s%s",
            step.label,
            record.status,
            f" (request {record.request_id})" if record.request_id else "",
        )
        return record

    runner = task(
        pipeline_step,
        name=step.label,
        task_run_name=step.label,
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=0,
        log_prints=False,
    )
    return await runner(step.step_id, step.uses, canonical_json(step.arguments))
