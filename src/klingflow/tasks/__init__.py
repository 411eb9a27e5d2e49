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
* ``completed``: Completed; ``failed``: Failed (the step's error is raised in the task run);
* ``interrupted`` (the run was stopped: Ctrl-C, SIGTERM, a cancelled flow run): **Cancelled**.

Edges in the flow-run graph: each task run names the task runs of the step executions it reads
(:attr:`StepInfo.upstream`, labels such as ``beats[0]``) as ``TaskRunResult`` task inputs of its
``arguments`` parameter, which is where their outputs went. That is what Prefect's ``Task.map``
does for the futures its items read (``run_task_async(..., dependencies=...)``). Not ``wait_for``: the
engine has already waited, and Prefect would look for upstream tasks inside each state's data
(by object id), where a string shared by two rows links the wrong task run. The ids are kept per
flow run, by label, for as long as the flow run's context lives.
"""

from __future__ import annotations

import asyncio
import weakref
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import State, StateDetails, TaskRunResult
from prefect.context import FlowRunContext
from prefect.states import Cancelled, Completed
from prefect.task_engine import run_task_async
from prefect.utilities.annotations import quote

from klingflow.cache import canonical_json
from klingflow.engine import STOP, Logger, StepCall, StepInfo
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


_TASK_RUN_IDS: dict[UUID, dict[str, UUID]] = {}


def _task_run_ids() -> dict[str, UUID]:
    """The task run ids of this flow run's steps, by label (what a dependant names as its inputs).

    Dropped when the flow run's context is collected, so a process that runs many flows keeps
    nothing of the finished ones; outside a flow run there is nothing to point to.
    """
    context = FlowRunContext.get()
    if context is None or context.flow_run is None:
        return {}
    key = context.flow_run.id
    if key not in _TASK_RUN_IDS:
        _TASK_RUN_IDS[key] = {}
        weakref.finalize(context, _TASK_RUN_IDS.pop, key, None)
    return _TASK_RUN_IDS[key]


async def run_step_as_task(step: StepInfo, call: StepCall, log: Logger) -> StepRecord:
    """The engine's ``run_step`` hook: one Prefect task run per step, named after it."""

    async def pipeline_step(step_id: str, uses: str, arguments: str) -> State[StepRecord] | StepRecord:
        logger = get_run_logger()
        try:
            record = await call(logger.info)
        except asyncio.CancelledError:
            if not STOP.requested:
                raise
            # the run was told to stop: the task run ends Cancelled (not Crashed), and the engine,
            # told below, records the step as interrupted
            return Cancelled(message="the run was interrupted; a request it submitted is kept")
        logger.info(
            "%s: %s%s",
            step.label,
            record.status,
            f" (request {record.request_id})" if record.request_id else "",
        )
        return step_state(record)

    runner = task(
        name=step.label,
        task_run_name=step.label,
        cache_policy=NO_CACHE,
        persist_result=False,
        retries=0,
        log_prints=False,
    )(pipeline_step)
    # quote(): Prefect links a parameter to an earlier task run whose result holds the same object
    # (by id); the step id and endpoint strings are in every record, so without it the second item
    # of a foreach step would be drawn as depending on the first.
    ids = _task_run_ids()
    # What Task.__call__ runs for an async task, with the upstream task runs as the arguments' inputs.
    final = await run_task_async(
        runner,
        parameters={
            "step_id": quote(step.step_id),
            "uses": quote(step.uses),
            "arguments": quote(canonical_json(step.arguments)),
        },
        dependencies={"arguments": {TaskRunResult(id=ids[label]) for label in step.upstream if label in ids}},
        return_type="state",
    )
    assert isinstance(final, State)  # return_type="state"
    if final.state_details.task_run_id is not None:
        ids[step.label] = final.state_details.task_run_id
    if final.is_cancelled():
        raise asyncio.CancelledError  # the engine turns it into the step's `interrupted` row
    # The row inside the final state (a failed step's error is raised here, as the engine expects).
    return await final.aresult()
