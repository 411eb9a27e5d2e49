"""The one Prefect flow that runs any pipeline, and the Python entry points around it.

``pipeline_flow`` takes JSON-friendly parameters (a pipeline file, its inputs, run options), so it
can be deployed and started from the Prefect UI; each step becomes a task run named after its
step id. A run with failed steps ends in the Failed state with a summary of what failed and why,
after every independent branch has finished and been cached.

Options are *resolved* in one place only, :func:`klingflow.engine.resolve_options`, called by the
engine: this module just hands it the layers: the flow's parameters (and, from a Python call,
the richer :class:`~klingflow.engine.RunOptions` they came from) as the explicit layer, and the
``KlingDefaults`` / ``FalCredentials`` blocks as the block layer.

A flow's parameters go through Prefect's API, so they must be JSON: a pipeline object, a store, a
key given in code or a progress callback cannot. A call from Python therefore hands those over
in-process, as one :class:`InProcess` object in one ContextVar, read once by :func:`run_body`.

A fully cached ``klingflow run`` does not start this flow: it runs in the engine alone (Prefect's
import and a flow run's start-up would cost more than the whole run) and is recorded afterwards by
:func:`arecord_run`, which starts ``pipeline_flow`` with an :class:`InProcess` holding the recorded
run: the flow replays its ledger rows as task runs instead of running the engine.

Where a run reports: a Prefect API the user configured always wins; else klingflow's local server
(:func:`klingflow.flows.server.use_local_server`, called first thing by both entry points, before
any Prefect settings context), started on first use and shared by later runs; else, with
``KLINGFLOW_PREFECT=ephemeral`` or when that server cannot start, Prefect's ephemeral server, for
which klingflow turns off the two server services that print tracebacks at shutdown on Prefect 3.8
(analytics and the task-run recorder), and only then: a user's own Prefect settings are never
overridden.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import signal
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from prefect import flow
from prefect.client.schemas.objects import State
from prefect.runtime import flow_run
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_SERVER_ANALYTICS_ENABLED,
    PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED,
    temporary_settings,
)
from prefect.states import Cancelled

from klingflow.blocks import FalCredentials, KlingDefaults
from klingflow.cache import claims_from_env, new_owner
from klingflow.engine import (
    FLOW_OPTIONS,
    FLOW_RUN_PARAMETERS,
    RunHooks,
    RunOptions,
    RunResult,
    StepInfo,
    arun,
    link_flow_run,
    recorded_run,
    stop_on_signals,
    upstream_labels,
)
from klingflow.errors import ConfigError, LedgerError, PipelineFailed, RunInterrupted, StepFailed
from klingflow.flows.approval import flow_asker
from klingflow.flows.artifacts import ProgressPublisher, publish_artifacts
from klingflow.flows.server import use_local_server
from klingflow.flows.team import check_team_limit, team_slot
from klingflow.ledger import Status, StepRecord, run_dir
from klingflow.spec import PipelineSpec
from klingflow.tasks import run_step_as_task

__all__ = [
    "InProcess",
    "arecord_run",
    "arun_pipeline",
    "pipeline_flow",
    "run_body",
    "run_pipeline",
    "flow_parameter",
    "with_option_parameters",
]


@dataclass
class InProcess:
    """What a Python caller hands the flow besides its JSON parameters."""

    options: RunOptions = field(default_factory=RunOptions)
    fallback: RunOptions | None = None
    hooks: RunHooks = field(default_factory=RunHooks)
    spec: PipelineSpec | None = None
    recorded: RunResult | None = None
    """A run already made without Prefect (a fully cached CLI run): the flow replays it instead."""
    interrupted: RunInterrupted | None = None
    """Set when the run was stopped (the flow run ends Cancelled): the Python caller re-raises it."""


_in_process: ContextVar[InProcess | None] = ContextVar("klingflow_in_process", default=None)


@contextlib.contextmanager
def quiet_ephemeral_server() -> Iterator[None]:
    """Prefect's temporary server, when klingflow is the one starting it: quiet, and deaf to Ctrl-C.

    Its noisy services are turned off. It is started here rather than by the flow run's first
    client, with SIGINT blocked in the starting thread: the server is a child process in the
    terminal's process group, and a blocked signal stays blocked in a child, so Ctrl-C reaches
    klingflow alone, which stops the run cleanly through the still-running server (killed by Ctrl-C,
    the server left the stopping run's API calls retrying for minutes). It still stops with this
    process (Prefect stops it at exit, with SIGTERM).
    """
    if PREFECT_API_URL.value():
        yield
        return
    with temporary_settings(
        updates={
            PREFECT_SERVER_ANALYTICS_ENABLED: False,
            PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_ENABLED: False,
        }
    ):
        from prefect.server.api.server import SubprocessASGIServer

        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            SubprocessASGIServer().start()  # the one Prefect's clients use (one per process)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        yield


def _run_name() -> str:
    parameters = flow_run.parameters or {}
    return Path(str(parameters.get("pipeline", "pipeline"))).stem


async def block_layer(credentials: str | None, defaults: str | None) -> RunOptions | None:
    """The options the named Prefect blocks give (the layer under explicit options)."""
    if not credentials and not defaults:
        return None
    layer: dict[str, Any] = {}
    if credentials:
        # Annotated: Prefect's inject_client decorator loses aload's Self, so mypy cannot infer it.
        fal: FalCredentials = await FalCredentials.aload(credentials)
        layer.update(backend="fal", connector=fal.get_backend)
    if defaults:
        block: KlingDefaults = await KlingDefaults.aload(defaults)
        layer.update(block.run_options().given())
    return RunOptions(**layer)


async def run_body(
    pipeline: str,
    inputs: dict[str, Any] | None,
    *,
    credentials: str | None = None,
    defaults: str | None = None,
    **options: Any,
) -> RunResult | State[Any]:
    """What every klingflow flow does: gather the option layers, run the pipeline, fail on failures.

    ``options`` are the flow run's parameters of :data:`~klingflow.engine.FLOW_OPTIONS`. A stopped
    run (Ctrl-C, SIGTERM, the flow run cancelled from the UI or API on a worker) is recorded and
    published like any other, and its flow run ends **Cancelled**, never Completed.
    """
    local = _in_process.get() or InProcess()
    parameters = RunOptions(**options)
    explicit = local.options.model_copy(update=parameters.given())
    run_id = str(flow_run.id) if flow_run.id else None
    progress = ProgressPublisher()

    def on_steps(name: str, count: int) -> None:
        local.hooks.on_steps(name, count)
        progress.start(name, count)

    def on_finish(record: StepRecord) -> None:
        local.hooks.on_finish(record)
        progress.finished(record)

    interrupted: RunInterrupted | None = None
    try:
        if local.recorded is not None:
            result = await _replay(local.recorded, run_id, on_steps, on_finish)
        else:
            result = await _run(
                local, pipeline, inputs, explicit, credentials, defaults, run_id, on_steps, on_finish
            )
    except RunInterrupted as exc:
        interrupted, result = exc, exc.result
    finally:
        await progress.close()
    if result.manifest is not None:
        await publish_artifacts(result.manifest, result.ledger)
    if interrupted is not None:
        local.interrupted = interrupted
        return Cancelled(message=interrupted.message)
    if result.failures:
        raise PipelineFailed(result)
    return result


async def _run(
    local: InProcess,
    pipeline: str,
    inputs: dict[str, Any] | None,
    explicit: RunOptions,
    credentials: str | None,
    defaults: str | None,
    run_id: str | None,
    on_steps: Callable[[str, int], None],
    on_finish: Callable[[StepRecord], None],
) -> RunResult:
    """The run itself: the engine, each step a task run (:func:`run_step_as_task`), the team's cap held."""
    await check_team_limit()
    if explicit.team_slot is None:
        explicit = explicit.model_copy(update={"team_slot": team_slot()})
    return await arun(
        local.spec or pipeline,
        inputs,
        explicit,
        block=await block_layer(credentials, defaults),
        fallback=local.fallback,
        hooks=replace(
            local.hooks,
            run_step=run_step_as_task,
            on_steps=on_steps,
            on_finish=on_finish,
            approve=flow_asker(local.hooks.approve),
        ),
        run_id=run_id,
        flow_run_id=run_id,
    )


_REPLAYED_AT_ONCE = 8


async def _replay(
    result: RunResult,
    flow_run_id: str | None,
    on_steps: Callable[[str, int], None],
    on_finish: Callable[[StepRecord], None],
) -> RunResult:
    """A run made without Prefect, shown as this flow run: each ledger row a task run in its state.

    As in a run: a cache hit ends Cached, a failed step's task run fails with its error, a
    skipped step (its dependency failed) has no task run, and each task run starts after those of
    its dependencies, which it names as its upstream (the flow-run graph's edges).
    """
    uses = result.manifest.uses if result.manifest else {}
    dependencies = result.manifest.dependencies if result.manifest else {}
    by_item = result.manifest.item_by_item if result.manifest else {}
    order = result.manifest.order if result.manifest else []
    on_steps(result.pipeline, len(result.records))
    limit = asyncio.Semaphore(_REPLAYED_AT_ONCE)
    replayed = {record.step_label: asyncio.Event() for record in result.records}

    async def one(record: StepRecord) -> None:
        async def recorded(_log: Callable[..., None]) -> StepRecord:
            if record.status == Status.FAILED:
                raise StepFailed(record)
            return record

        if record.status == Status.SKIPPED:
            on_finish(record)
            replayed[record.step_label].set()
            return
        upstream = upstream_labels(
            record.step_id, record.item_index, dependencies, by_item, result.records, order
        )
        for label in upstream:
            await replayed[label].wait()
        step = StepInfo(
            label=record.step_label,
            step_id=record.step_id,
            uses=uses.get(record.step_id, record.endpoint),
            arguments=json.loads(record.arguments),
            upstream=upstream,
        )
        async with limit:
            try:
                on_finish(await run_step_as_task(step, recorded, _ignore))
            except StepFailed as failed:
                on_finish(failed.record)
            finally:
                replayed[record.step_label].set()

    await asyncio.gather(*(one(record) for record in result.records))
    if flow_run_id:
        link_flow_run(result, flow_run_id)
    return result


def _ignore(*_: Any) -> None:
    return None


def with_option_parameters(function: F, *leading: inspect.Parameter) -> F:
    """Give a flow function the parameters ``leading`` then one per run option, derived from RunOptions.

    Prefect reads a flow's parameters from its signature (the UI's form, a deployment's schema,
    the validation of a run's parameters), so the options a flow run takes are declared once, as
    :data:`~klingflow.engine.FLOW_OPTIONS` fields of :class:`~klingflow.engine.RunOptions` (type,
    default None = "not given here", description); the function receives them as ``**options``.
    """
    options = [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=RunOptions.model_fields[name].annotation,
        )
        for name in FLOW_OPTIONS
    ]
    function.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*leading, *options], return_annotation=inspect.Signature.empty
    )
    return function


F = TypeVar("F", bound=Callable[..., Any])


def flow_parameter(name: str, annotation: Any, default: Any = None) -> inspect.Parameter:
    """One named flow parameter before the options (``...`` as default: required)."""
    return inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=inspect.Parameter.empty if default is ... else default,
        annotation=annotation,
    )


async def _pipeline_flow(
    pipeline: str,
    inputs: dict[str, Any] | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    **options: Any,
) -> RunResult | State[Any]:
    """Run any klingflow pipeline file: each Kling call a cached, retried task; independent steps in parallel.

    ``credentials`` and ``defaults`` name a FalCredentials and a KlingDefaults block; every run
    option (backend, concurrency, refresh, budget, output folder, ...) is a parameter of its own.
    """
    return await run_body(pipeline, inputs, credentials=credentials, defaults=defaults, **options)


pipeline_flow = flow(name="klingflow", flow_run_name=_run_name, persist_result=False, log_prints=False)(
    with_option_parameters(
        _pipeline_flow,
        flow_parameter("pipeline", str, ...),
        flow_parameter("inputs", dict[str, Any] | None),
        flow_parameter("credentials", str | None),
        flow_parameter("defaults", str | None),
    )
)


async def arun_pipeline(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    *,
    options: RunOptions | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    hooks: RunHooks | None = None,
    fallback: RunOptions | None = None,
) -> RunResult:
    """Run a pipeline as a Prefect flow and return its result (raises PipelineFailed with it on failure).

    ``options`` are the caller's explicit options: they win over the ``defaults`` block, which wins
    over the pipeline file, which wins over ``fallback`` (the caller's own defaults) and the
    built-in ones. ``credentials`` / ``defaults`` name a FalCredentials / KlingDefaults block.
    """
    await asyncio.to_thread(use_local_server)  # a first run starts the server: seconds, off the loop
    options = options or RunOptions()
    spec = pipeline if isinstance(pipeline, PipelineSpec) else None
    name = (spec.source or spec.name) if spec else pipeline
    local = InProcess(options=options, fallback=fallback, hooks=hooks or RunHooks(), spec=spec)
    token = _in_process.set(local)
    try:
        with quiet_ephemeral_server():
            state = await pipeline_flow(
                str(name),
                inputs,
                credentials=credentials,
                defaults=defaults,
                **options.flow_parameters(),
                return_state=True,
            )
    finally:
        _in_process.reset(token)
    if local.interrupted is not None:
        raise local.interrupted
    # return_state=True returns the State; Prefect's overloads cannot tell (**options takes any keyword).
    assert isinstance(state, State)
    value = await state.aresult(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value


_RECORDING_TTL = 900.0
"""Seconds a recorder's claim lasts: starting a server and replaying a run take well under it (a
recorder that died on this machine frees its claim at once)."""


async def arecord_run(run_id: str) -> RunResult | None:
    """Record a run made without Prefect (a fully cached ``klingflow run``) as a flow run.

    The flow run is one of :func:`pipeline_flow`, with the parameters the CLI left in the run's
    folder (:data:`~klingflow.engine.FLOW_RUN_PARAMETERS`, removed once it is recorded); each
    step is a task run in the state its ledger row says (a cache hit: Cached, with its key), the
    run's artifacts are published, and the flow run's id is written back into the run's ledger
    rows, manifest and report. Reports to the local server if it runs (whatever
    ``KLINGFLOW_PREFECT`` says: never to a temporary one that would vanish with this process), or
    to the Prefect API the user configured. It never starts the local server (one the user
    stopped stays stopped): with none running it returns None and the run waits, its parameters
    kept, for the next start (:mod:`klingflow.engine.waiting`).

    One recorder per run: it holds the run's claim (:mod:`klingflow.cache.claims`, the same leases
    steps take) while it records; a run already recorded, being recorded, or not waiting to be is
    refused with a :class:`~klingflow.errors.LedgerError` saying so.
    """
    from klingflow.engine.waiting import recording_claim
    from klingflow.flows.server import configured_api_url

    result = recorded_run(run_id)
    pending = run_dir(result.run_id) / FLOW_RUN_PARAMETERS
    if result.flow_run_id:
        pending.unlink(missing_ok=True)  # a recorder that stopped after linking the run
        raise LedgerError(
            f"run {result.run_id} is already recorded in Prefect: it is flow run {result.flow_run_id}",
            context=str(pending.parent),
        )
    claims, owner, key = claims_from_env(), new_owner(), recording_claim(result.run_id)
    if not claims.acquire(key, owner, ttl=_RECORDING_TTL):
        raise LedgerError(
            f"run {result.run_id} is being recorded in Prefect by {claims.holder(key)}", context=str(pending)
        )
    try:
        if not pending.is_file():
            raise LedgerError(
                f"run {result.run_id} is not waiting to be recorded in Prefect",
                context=str(pending),
                hint="only a fully cached `klingflow run` is recorded after it ends",
            )
        parameters = json.loads(pending.read_text(encoding="utf-8"))
        server = await asyncio.to_thread(use_local_server, mode="local", start=False)
        if server is None and not configured_api_url():
            return None  # no server runs: the run waits for the next start
        token = _in_process.set(InProcess(recorded=result))
        try:
            state = await pipeline_flow(**parameters, return_state=True)
        finally:
            _in_process.reset(token)
        value = await state.aresult(raise_on_failure=False)
        if isinstance(value, BaseException) and not isinstance(value, PipelineFailed):
            raise value  # a failed run's replay ends Failed, as the run did; anything else is an error
    finally:
        if result.flow_run_id:  # linked, so recorded (even if something after it, artifacts, failed)
            pending.unlink(missing_ok=True)
        claims.release(key, owner)
    return result


def run_pipeline(
    pipeline: str | Path | PipelineSpec,
    inputs: dict[str, Any] | None = None,
    *,
    options: RunOptions | None = None,
    credentials: str | None = None,
    defaults: str | None = None,
    hooks: RunHooks | None = None,
    fallback: RunOptions | None = None,
    **option_values: Any,
) -> RunResult:
    """Run a pipeline from plain Python (a script or a notebook cell) and return its outputs and ledger.

    Options go either in ``options`` or as keywords of the same names (``backend``, ``concurrency``,
    ``refresh``, ``max_cost_usd``, ``out_dir``, ...); they win over a ``defaults`` block, which
    wins over the pipeline file, which wins over ``fallback`` (the caller's own defaults).
    Blocks work here as in deployments: ``credentials="fal-production"``,
    ``defaults="studio"``.

    Example::

        from klingflow import run_pipeline

        result = run_pipeline("deployments/pipelines/avatar.yaml", inputs={"line": "Hello!"})
        print(result.final, result.ledger[["step_id", "status", "estimated_cost_usd"]])

    Where an event loop already runs (a Jupyter cell, sync code called from ``asyncio.run``), the
    run cannot have this thread's loop: like Prefect's own sync calls from async code, it runs in
    Prefect's run-sync loop (``run_coro_as_sync``: its own thread) while this thread waits. In a
    notebook, ``await arun_pipeline(...)`` runs it in the notebook's loop instead.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync

    given = RunOptions(**option_values).given()
    twice = sorted(set(given) & set(options.given() if options else {}))
    if twice:
        raise ConfigError(
            f"{', '.join(twice)} given both as a keyword and in options",
            context="run_pipeline",
            hint="give each option once",
        )
    explicit = (options or RunOptions()).model_copy(update=given)
    use_local_server()  # before the event loop; arun_pipeline's own call then finds it running
    try:
        asyncio.get_running_loop()
        in_a_loop = True  # a notebook cell, or sync code called from async code: see the docstring
    except RuntimeError:
        in_a_loop = False  # a script: the run has this thread, in a loop of its own
    try:
        with stop_on_signals():  # Ctrl-C stops the run cleanly, then raises KeyboardInterrupt here
            run = arun_pipeline(
                pipeline,
                inputs,
                options=explicit,
                credentials=credentials,
                defaults=defaults,
                hooks=hooks,
                fallback=fallback,
            )
            return run_coro_as_sync(run) if in_a_loop else asyncio.run(run)
    except RunInterrupted as exc:
        raise KeyboardInterrupt(str(exc)) from exc
