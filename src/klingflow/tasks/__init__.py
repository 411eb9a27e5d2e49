"""Prefect tasks: thin wrappers that give each pipeline step a task run of its own.

The step's work (cache decision, resume, retries, concurrency cap) happens in the engine
(:mod:`klingflow.engine.generation`); the task adds only what Prefect is for: a task run named
after the step, whose parameters are the step id, the endpoint (or operation) and the arguments
as JSON, its state in the UI, and fal's queue position and log lines on the Prefect logger.
Prefect's own cache and retries are off on purpose: its cache cannot tell whether the media file
behind a result still exists, and its retries cannot honour fal's Retry-After.

The engine's work is a closure, which is not a parameter anyone should see in the UI, so each step
gets a task made around it (:func:`run_step_as_task`) whose parameters are the plain facts.

What the UI shows per status (:func:`step_state`):

* ``cached``: a **Cached** state (type COMPLETED, name "Cached", ``state_details.cache_key`` the
  ledger row's cache key), what Prefect users know from Prefect's own cache. klingflow's verified
  store made the decision and Prefect's cache stays off: the server files the key, but never hands
  the state to another task run, since klingflow's tasks start without a cache key;
* ``joined``: **Completed**, with a message naming the request it joined: the step did wait for a
  real generation (queue and run time, a request id), it only did not pay for it; "Cached" would
  claim it reused a result without running;
* ``completed``: Completed; ``failed``: Failed (the step's error is raised in the task run).
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import StateDetails
from prefect.states import Completed, State
from prefect.utilities.annotations import quote

from klingflow.cache import canonical_json
from klingflow.engine import Logger, StepCall, StepInfo
from klingflow.ledger import Status, StepRecord

__all__ = ["run_step_as_task", "step_state"]


def step_state(record: StepRecord) -> State[StepRecord] | StepRecord:
    """What a step's task run returns: a hand-made state for a cache hit or a join, else the record."""
    if record.status == Status.CACHED:
        return Completed(
            name="Cached",
            data=record,
            message=f"reused verified outputs (cache key {record.cache_key}): nothing submitted or paid",
            state_details=StateDetails(cache_key=record.cache_key),
        )
    if record.status == Status.JOINED:
        return Completed(
            data=record,
            message=f"joined request {record.request_id}, submitted by another run: not paid again",
        )
    return record


async def run_step_as_task(step: StepInfo, call: StepCall, log: Logger) -> StepRecord:
    """The engine's ``run_step`` hook: one Prefect task run per step, named after it."""

    async def pipeline_step(step_id: str, uses: str, arguments: str) -> State[StepRecord] | StepRecord:
        logger = get_run_logger()
        record = await call(logger.info)
        logger.info(
            "%s: %s%s",
            step.label,
            record.status,
            f" (request {record.request_id})" if record.request_id else "",
        )
        return step_state(record)

    runner = task(
        pipeline_step,
        name=step.label,
        task_run_name=step.label,
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=0,
        log_prints=False,
    )
    # quote(): Prefect links a parameter to an earlier task run whose result holds the same object
    # (by id); the step id and endpoint strings are in every record, so without it the second item
    # of a foreach step would be drawn as depending on the first.
    value = await runner(quote(step.step_id), quote(step.uses), quote(canonical_json(step.arguments)))
    # A task that returns a State hands its caller that State; the engine needs the row inside.
    return await value.aresult() if isinstance(value, State) else value
