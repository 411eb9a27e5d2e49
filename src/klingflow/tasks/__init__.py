"""Prefect tasks: thin wrappers that give each pipeline step a task run of its own.

The step's work (cache decision, resume, retries, concurrency cap) happens in the core
(:mod:`klingflow.steps`); the task adds only what Prefect is for: a task run named after the step
id, its state in the UI, and fal's queue position and log lines on the Prefect logger. Prefect's
own cache and retries are off on purpose: its cache cannot tell whether the media file behind a
result still exists, and its retries cannot honour fal's Retry-After.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from klingflow.runner import StepCall
from klingflow.steps import StepRecord

__all__ = ["pipeline_step", "run_step_as_task"]


@task(cache_policy=NO_CACHE, persist_result=False, retries=0, log_prints=False)
async def pipeline_step(call: StepCall, step: str) -> StepRecord:
    """Run one step (or one foreach item) and log its progress to Prefect."""
    logger = get_run_logger()
    record = await call(logger.info)
    logger.info(
        "%s: %s%s", step, record.status, f" (request {record.request_id})" if record.request_id else ""
    )
    return record


async def run_step_as_task(name: str, call: StepCall) -> StepRecord:
    """The runner's wrap hook: one Prefect task run per step, named after the step id."""
    return await pipeline_step.with_options(name=name, task_run_name=name)(call, step=name)
