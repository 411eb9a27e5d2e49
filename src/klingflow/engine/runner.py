"""The DAG scheduler: every step as soon as its references are ready, failures contained.

This is the orchestration core, free of Prefect: each step is an asyncio task that waits for the
steps it refers to, resolves its arguments, and runs (a generation through
:mod:`~klingflow.engine.generation`, or a media operation through
:mod:`~klingflow.engine.operation`). A failed step fails only its dependants, which are recorded
as skipped; independent branches finish and are cached. A foreach step runs its items side by
side and exposes its outputs as lists.

Step executions whose references are ready start at most ``2 x concurrency`` at a time (the
``starts`` gate): a 200-item foreach would otherwise start 200 step executions (200 Prefect task
runs, each a few milliseconds of event-loop work and server events) before its first request
could go out, and the UI would show all 200 Running while 192 wait for a request slot. Twice the
cap keeps the next steps ready while the cap's worth are in flight. A step takes the gate only
after its references are done, so waiting for one can never hold it.

A step that waits for approval (``approve:``, :mod:`~klingflow.engine.approval`) is asked about
once its references are done, one question at a time per run; a rejected step and the steps that
read it become ``skipped`` rows without a submit, and do not fail the run.

The Prefect layer's :class:`~klingflow.engine.hooks.RunHooks` run each step inside a Prefect task
named after it; a plain Python call uses the default hooks and gets exactly the same caching,
resume and retries.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, PrivateAttr

from klingflow.backends.handles import QueueEvent
from klingflow.engine.approval import ApprovalDecision, ApprovalRequest, decide
from klingflow.engine.context import Logger, StepContext, plain
from klingflow.engine.generation import run_generation
from klingflow.engine.hooks import RunHooks, StepInfo
from klingflow.engine.interrupts import OpenRequest
from klingflow.engine.operation import run_operation
from klingflow.engine.plan import Plan, PlannedStep, make_plan
from klingflow.errors import KlingflowError, StepFailed
from klingflow.ledger import RunManifest, Status, StepRecord, to_frame
from klingflow.spec import (
    StepSpec,
    ValidatedPipeline,
    find_references,
    merged_arguments,
    resolve,
    step_endpoint,
)

__all__ = ["RunResult", "execute", "executions", "item_by_item", "upstream_labels"]

logger = logging.getLogger(__name__)


class RunResult(BaseModel):
    """What a run produced: outputs per step, one record per execution, and what failed."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    run_id: str
    pipeline: str
    status: Status
    outputs: dict[str, dict[str, Any]]
    records: list[StepRecord]
    failures: dict[str, str]
    final: dict[str, Path]
    flow_run_id: str | None = None
    batch_id: str | None = None
    """The batch this run is one row of, if it is (its ledger rows carry it, and ``row_key``)."""
    row_key: str | None = None
    manifest: RunManifest | None = None
    stopped_by: int | None = None
    """The signal that stopped the run (its unfinished steps are ``interrupted`` rows), if one did."""
    still_running: list[OpenRequest] = []
    """After a stop: requests fal accepted that this run did not store; a re-run collects them."""
    cancelled_at_fal: list[OpenRequest] = []
    """After a stop with ``cancel_queued``: requests cancelled while still queued (nothing billed)."""
    _recorded: pd.DataFrame | None = PrivateAttr(default=None)

    def recorded(self, manifest: RunManifest, frame: pd.DataFrame) -> None:
        """Attach what the run recorded: its manifest and its ledger rows as stored (secrets removed)."""
        self.manifest, self._recorded = manifest, frame

    @property
    def ledger(self) -> pd.DataFrame:
        """The run's ledger rows as a typed DataFrame (see :mod:`klingflow.ledger`), as recorded."""
        return self._recorded if self._recorded is not None else to_frame(self.rows())

    def rows(self) -> list[dict[str, Any]]:
        """One ledger row per record, with the run's ids."""
        run = {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "flow_run_id": self.flow_run_id,
            "batch_id": self.batch_id,
            "row_key": self.row_key,
        }
        return [{**r.model_dump(), **run} for r in self.records]


def _labels(raw: Any, resolved: Any) -> list[str]:
    """Step ids for each clip of a list argument (contact sheets show where each clip came from)."""
    labels: list[str] = []
    for entry, value in zip(
        raw if isinstance(raw, list) else [raw],
        resolved if isinstance(resolved, list) else [resolved],
        strict=False,
    ):
        steps = [r.step_id for r in find_references(entry) if r.step_id is not None]
        name = steps[0] if steps else str(entry)
        labels.extend([f"{name}[{i}]" for i in range(len(value))] if isinstance(value, list) else [name])
    return labels


def executions(pipeline: ValidatedPipeline) -> int:
    """How many step executions a run of ``pipeline`` has: one per step, one per foreach item.

    A foreach list is an input or another foreach step's output (``check`` allows nothing else),
    so its length is known before anything runs.
    """
    counts: dict[str, int] = {}
    for step_id in pipeline.order:
        foreach = pipeline.step(step_id).foreach
        if foreach is None:
            counts[step_id] = 1
            continue
        (reference,) = find_references(foreach)
        if reference.step_id is not None:
            counts[step_id] = counts.get(reference.step_id, 1)
        else:
            items = pipeline.inputs.get(reference.name or "")
            counts[step_id] = len(items) if isinstance(items, list) else 1
    return sum(counts.values())


def item_by_item(pipeline: ValidatedPipeline) -> dict[str, str]:
    """The foreach steps whose item ``i`` reads only item ``i`` of the step they run over: step -> that step.

    Such a step names the other only in ``foreach`` (each item gets its own element as ``${item}``);
    one whose arguments also name it reads it whole, in every item.
    """
    pairs: dict[str, str] = {}
    for step in pipeline.spec.steps:
        if step.foreach is None:
            continue
        (source,) = find_references(step.foreach)
        named = {r.step_id for r in find_references(merged_arguments(pipeline.spec, step))}
        if source.step_id is not None and source.step_id not in named:
            pairs[step.id] = source.step_id
    return pairs


def upstream_labels(
    step_id: str,
    item_index: int | None,
    dependencies: Mapping[str, Iterable[str]],
    by_item: Mapping[str, str],
    done: Iterable[StepRecord],
    order: Sequence[str],
) -> tuple[str, ...]:
    """The labels of the step executions one execution reads, in pipeline order, among ``done``.

    Every execution of each dependency, except of the step ``by_item`` names for it (see
    :func:`item_by_item`): of that one, only the execution of the same item. The runner and the
    replay of a recorded run (its manifest) name the same upstream executions with it.
    """
    needs = set(dependencies.get(step_id, ()))
    reads = [
        r
        for r in done
        if r.step_id in needs and (r.step_id != by_item.get(step_id) or r.item_index == item_index)
    ]
    reads.sort(key=lambda r: (order.index(r.step_id), r.item_index or 0))
    return tuple(r.step_label for r in reads)


def dependants(pipeline: ValidatedPipeline, step_id: str) -> list[str]:
    """The steps that read ``step_id``'s outputs, directly or through others, in pipeline order."""
    found: set[str] = set()
    for other in pipeline.order:
        if pipeline.dependencies[other] & ({step_id} | found):
            found.add(other)
    return [s for s in pipeline.order if s in found]


def _read_files(arguments: Mapping[str, Any]) -> list[tuple[str, Path]]:
    """The files among resolved arguments (what earlier steps made, or local inputs), by argument."""
    files: list[tuple[str, Path]] = []
    for name, value in arguments.items():
        for one in value if isinstance(value, list) else [value]:
            if isinstance(one, Path):
                files.append((name, one))
    return files


class _Run:
    def __init__(
        self, pipeline: ValidatedPipeline, ctx: StepContext, hooks: RunHooks, ids: Mapping[str, str | None]
    ) -> None:
        self.pipeline, self.ctx, self.hooks, self.ids = pipeline, ctx, hooks, ids
        self.outputs: dict[str, dict[str, Any]] = {}
        self.records: list[StepRecord] = []
        self.failures: dict[str, str] = {}
        self.rejected: dict[str, str] = {}
        """Steps skipped because a person rejected them (or a step they read): not failures."""
        self.reasons: Mapping[tuple[str, int | None], tuple[str, str | None]] = {}
        """The plan's reason for each execution it did not expect to reuse (:mod:`.reasons`)."""
        self.asking = asyncio.Lock()
        """One approval question at a time: a terminal has one prompt, a flow run one pause."""
        self.done: dict[str, asyncio.Event] = {step: asyncio.Event() for step in pipeline.order}
        self.steps = {step.id: step for step in pipeline.spec.steps}
        self.starts = asyncio.Semaphore(2 * max(1, ctx.concurrency))
        self.item_by_item = item_by_item(pipeline)

    def _record(self, record: StepRecord) -> None:
        self.records.append(record)
        self.hooks.on_finish(record)

    async def _one(self, step_id: str, arguments: dict[str, Any], item_index: int | None) -> StepRecord:
        step = self.steps[step_id]
        endpoint = step_endpoint(self.pipeline.spec, step)
        label = step_id if item_index is None else f"{step_id}[{item_index}]"

        async def call(log: Logger) -> StepRecord:
            position: list[int | None] = []

            def forward(event: QueueEvent) -> None:
                self.hooks.on_event(label, event)
                # One record per change: each record is a line on the console and a row the
                # Prefect server inserts, so a queue position is said when it moves and the
                # model's new log lines of one poll go out together.
                if event.status == "IN_QUEUE" and position[-1:] != [event.queue_position]:
                    position.append(event.queue_position)
                    log(f"{step_id}: in queue, position {event.queue_position}")
                lines = [str(line.get("message", "")) for line in event.logs]
                if lines:
                    log(f"{step_id}: " + "\n".join(lines))

            if endpoint is not None:
                return await run_generation(
                    self.ctx,
                    step_id=step_id,
                    endpoint=endpoint.id,
                    arguments=arguments,
                    item_index=item_index,
                    retries=step.retries,
                    timeout=step.timeout,
                    use_cache=step.cache,
                    refresh=step.refresh,
                    on_event=forward,
                    on_ambiguous_submit=step.on_ambiguous_submit,
                    log=log,
                )
            return await run_operation(
                self.ctx,
                step_id=step_id,
                operation=step.uses,
                arguments=arguments,
                labels=_labels(step.with_.get("inputs"), arguments.get("inputs")),
                item_index=item_index,
                use_cache=step.cache,
                refresh=step.refresh,
                log=log,
            )

        info = StepInfo(
            label=label,
            step_id=step_id,
            uses=step.uses,
            arguments=plain(arguments),
            upstream=upstream_labels(
                step_id,
                item_index,
                self.pipeline.dependencies,
                self.item_by_item,
                self.records,
                self.pipeline.order,
            ),
        )
        async with self.starts:
            self.hooks.on_start(label)
            return await self.hooks.run_step(info, call, self.hooks.log)

    async def _step_or_stop(self, step_id: str) -> None:
        """One step; when the run is stopped, its unfinished executions become ``interrupted`` rows."""
        try:
            await self._step(step_id)
        except asyncio.CancelledError:
            if not self.ctx.stop.requested:
                raise
            if not any(r.step_id == step_id for r in self.records):
                self._record(self._interrupted(step_id, None, started=False))

    def _interrupted(self, step_id: str, item_index: int | None, *, started: bool) -> StepRecord:
        label = step_id if item_index is None else f"{step_id}[{item_index}]"
        open_request = next((r for r in self.ctx.open_requests.values() if r.label == label), None)
        if open_request is not None and self.ctx.journal_says_open(open_request.key):
            error = (
                f"interrupted: request {open_request.request_id} is still running at fal; "
                "a re-run collects it without paying again"
            )
        elif started:
            error = "interrupted before it finished: nothing was left running at fal"
        else:
            error = "interrupted before it started"
        request_id = open_request.request_id if open_request else None
        return self._unrun(step_id, item_index, Status.INTERRUPTED, error, request_id=request_id)

    async def _step(self, step_id: str) -> None:
        step = self.steps[step_id]
        for dependency in self.pipeline.dependencies[step_id]:
            await self.done[dependency].wait()
        blocked = sorted(d for d in self.pipeline.dependencies[step_id] if d in self.failures)
        declined = sorted(d for d in self.pipeline.dependencies[step_id] if d in self.rejected)
        try:
            if blocked:
                self.failures[step_id] = f"skipped: depends on failed step(s) {', '.join(blocked)}"
                self._record(self._unrun(step_id, None, Status.SKIPPED, self.failures[step_id]))
                return
            if declined:
                self.rejected[step_id] = f"skipped: depends on rejected step(s) {', '.join(declined)}"
                self._record(self._unrun(step_id, None, Status.SKIPPED, self.rejected[step_id]))
                return
            raw = merged_arguments(self.pipeline.spec, step)
            context = {"inputs": self.pipeline.inputs, "outputs": self.outputs}
            if step.foreach is None:
                calls: list[tuple[dict[str, Any], int | None]] = [(resolve(raw, **context), None)]
            else:
                items = resolve(step.foreach, **context)
                calls = [(resolve(raw, **context, item=item), index) for index, item in enumerate(items)]
            decision = await self._approval(step, [arguments for arguments, _ in calls])
            if decision is not None and not decision.approved:
                self.rejected[step_id] = decision.reason(step_id)
                skipped = self._unrun(step_id, None, Status.SKIPPED, self.rejected[step_id])
                self._record(_stamped(skipped, decision))
                return
            if decision is not None and decision.prompt:
                calls = [({**a, "prompt": decision.prompt} if "prompt" in a else a, i) for a, i in calls]
            records = list(await asyncio.gather(*(self._guarded(step_id, a, i, decision) for a, i in calls)))
            failed = [r for r in records if r.status == Status.FAILED]
            if failed:
                self.failures[step_id] = "; ".join(r.error or "failed" for r in failed)
            elif any(r.status == Status.INTERRUPTED for r in records):
                pass  # the run is stopping: its dependants are interrupted too, none reads its outputs
            elif step.foreach is None:
                self.outputs[step_id] = records[0].outputs
            else:
                names = {name for r in records for name in r.outputs}
                self.outputs[step_id] = {name: [r.outputs.get(name) for r in records] for name in names}
        finally:
            self.done[step_id].set()

    async def _approval(self, step: StepSpec, calls: list[dict[str, Any]]) -> ApprovalDecision | None:
        """The decision on a step that waits for approval; None when it needs none.

        A step whose every execution is cached needs none: it costs nothing, and a person approved
        it when it ran. The plan is made again here, now that the step's inputs exist, so the
        price shown is the step's real one (a length read from its audio, a cache hit upstream).
        """
        if step.approve is None:
            return None
        async with self.asking:
            planned = make_plan(self.pipeline, self.ctx).steps
            own = [p for p in planned if p.step_id == step.id]
            if own and all(p.status == "cached" for p in own):
                return None
            after = dependants(self.pipeline, step.id)
            paying = [p for p in planned if p.step_id in {step.id, *after} and p.status == "run"]
            request = ApprovalRequest(
                pipeline=self.pipeline.spec.name,
                step_id=step.id,
                uses=step.uses,
                spec=step.approve,
                prompts=tuple(str(a["prompt"]) for a in calls if isinstance(a.get("prompt"), str)),
                inputs=tuple(dict.fromkeys(f for a in calls for f in _read_files(a))),
                step_cost_usd=_total(p for p in paying if p.step_id == step.id),
                cost_from_here_usd=_total(paying),
                executions=len(calls),
                after=tuple(after),
                run_id=self.ids.get("run_id"),
                batch_id=self.ids.get("batch_id"),
                row_key=self.ids.get("row_key"),
            )
            decision = await decide(request, unattended=self.ctx.approve_unattended, ask=self.hooks.approve)
            note = f" ({decision.note})" if decision.note else ""
            self.hooks.log(f"{step.id}: {decision.word} by {decision.by}{note}")
            return decision

    def _unrun(
        self, step_id: str, item_index: int | None, status: Status, error: str, request_id: str | None = None
    ) -> StepRecord:
        """The row of an execution that produced nothing (failed, skipped, interrupted), saying why."""
        return StepRecord(
            step_id=step_id,
            item_index=item_index,
            kind=self.pipeline.kind(step_id),
            endpoint=self.steps[step_id].uses,
            backend="",
            status=status,
            request_id=request_id,
            error=error,
        )

    async def _guarded(
        self,
        step_id: str,
        arguments: dict[str, Any],
        item_index: int | None,
        decision: ApprovalDecision | None = None,
    ) -> StepRecord:
        try:
            record = await self._one(step_id, arguments, item_index)
        except StepFailed as exc:
            record = exc.record
        except asyncio.CancelledError:
            if not self.ctx.stop.requested:
                raise
            record = self._interrupted(step_id, item_index, started=True)
        except KlingflowError as exc:  # a configuration or input problem: its own words, not a crash
            record = self._unrun(step_id, item_index, Status.FAILED, str(exc))
        except Exception as exc:  # a bug must not lose the other branches' work: record it, keep going
            logger.exception("step %s crashed", step_id)
            error = f"internal error: {type(exc).__name__}: {exc}"
            record = self._unrun(step_id, item_index, Status.FAILED, error)
        if record.status not in (Status.CACHED, Status.SKIPPED):
            record.run_reason, record.run_reason_detail = self.reasons.get(
                (step_id, item_index), (None, None)
            )
        self._record(_stamped(record, decision))
        return record


def _stamped(record: StepRecord, decision: ApprovalDecision | None) -> StepRecord:
    """The row with the approval decision it ran (or was skipped) under, if it waited for one."""
    if decision is not None:
        record.approval, record.approval_by = decision.word, decision.by
        record.approval_at, record.approval_note = decision.at, decision.note
    return record


def _total(planned: Iterable[PlannedStep]) -> float | None:
    """The estimated cost of planned executions; None when any price is unknown."""
    costs = [p.estimated_cost_usd for p in planned]
    return None if any(c is None for c in costs) else round(sum(c or 0.0 for c in costs), 6)


def _final_files(step_id: str, outputs: Mapping[str, Any], produces: Mapping[str, str]) -> dict[str, Path]:
    """What a final step gives the run: its video, audio or image under the step's id (a list, of
    images or of a foreach step's items, as ``id-0``, ``id-1``...), and the subtitles it writes as
    ``id.output`` (``captioned.subtitles``, ``captioned-0.subtitles``), exported beside the video
    under its name so that a player opening the one finds the other."""
    files: dict[str, Path] = {}
    for kind in ("video", "audio", "image"):
        value = outputs.get(kind)
        if isinstance(value, Path):
            files[step_id] = value
        elif isinstance(value, list):
            files.update({f"{step_id}-{i}": v for i, v in enumerate(value) if isinstance(v, Path)})
    for name in (name for name, kind in produces.items() if kind == "subtitles"):
        value = outputs.get(name)
        if isinstance(value, Path):
            files[f"{step_id}.{name}"] = value
        elif isinstance(value, list):
            files.update({f"{step_id}-{i}.{name}": v for i, v in enumerate(value) if isinstance(v, Path)})
    return files


async def execute(
    pipeline: ValidatedPipeline,
    ctx: StepContext,
    *,
    hooks: RunHooks | None = None,
    run_id: str | None = None,
    batch_id: str | None = None,
    row_key: str | None = None,
    plan: Plan | None = None,
) -> RunResult:
    """Run every step of a checked pipeline and return what it produced.

    ``plan`` (the run's own, made before it started) gives each execution that ran its reason.
    """
    ids = {"run_id": run_id, "batch_id": batch_id, "row_key": row_key}
    run = _Run(pipeline, ctx, hooks or RunHooks(), ids)
    run.reasons = plan.reasons() if plan is not None else {}
    run.hooks.on_steps(pipeline.spec.name, executions(pipeline))
    started = datetime.now(UTC)
    await _until_done_or_stopped(run, [asyncio.ensure_future(run._step_or_stop(s)) for s in pipeline.order])
    dependants = {d for deps in pipeline.dependencies.values() for d in deps}
    final: dict[str, Path] = {}
    for step_id in (s for s in pipeline.order if s not in dependants):
        final.update(_final_files(step_id, run.outputs.get(step_id, {}), pipeline.produces(step_id)))
    run.records.sort(key=lambda r: (pipeline.order.index(r.step_id), r.item_index or 0))
    for record in run.records:
        record.started_at = record.started_at or started
    stopped = ctx.stop.signum if any(r.status == Status.INTERRUPTED for r in run.records) else None
    still_running, cancelled = await _left_at_fal(ctx) if stopped else ([], [])
    for request in cancelled:
        for record in (r for r in run.records if r.request_id == request.request_id):
            record.error = f"interrupted: its queued request {request.request_id} was cancelled at fal"
    return RunResult(
        run_id=run_id or uuid.uuid4().hex[:12],
        pipeline=pipeline.spec.name,
        status=Status.INTERRUPTED if stopped else Status.FAILED if run.failures else Status.COMPLETED,
        outputs=run.outputs,
        records=run.records,
        failures=run.failures,
        final=final,
        stopped_by=stopped,
        still_running=still_running,
        cancelled_at_fal=cancelled,
    )


STOP_GRACE = 10.0
"""Seconds the stopped steps get to unwind: cancellation reaches each at its next wait at once, and
only a submit already on the wire waits for its answer (``SUBMIT_ANSWER_GRACE``)."""


async def _until_done_or_stopped(run: _Run, steps: list[asyncio.Future[None]]) -> None:
    """Wait for every step; on a stop request, cancel them where they wait and let them unwind."""
    everything = asyncio.gather(*steps)
    stop = asyncio.ensure_future(run.ctx.stop.wait())
    try:
        either: set[asyncio.Future[Any]] = {everything, stop}
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not everything.done():
            for step in steps:
                step.cancel()
            await asyncio.wait(steps, timeout=STOP_GRACE)
        await everything
    finally:
        stop.cancel()


async def _left_at_fal(ctx: StepContext) -> tuple[list[OpenRequest], list[OpenRequest]]:
    """After a stop: the requests still open at fal, and those cancelled because still queued.

    With ``cancel_queued``, a request still ``IN_QUEUE`` is cancelled (a queued request costs
    nothing and fal removes it), and its journal entry is dropped: nothing will come of it.
    Anything running is left alone: fal bills work in progress, and a re-run collects it.
    """
    still = [r for r in ctx.open_requests.values() if ctx.journal_says_open(r.key)]
    if not ctx.cancel_queued or not still:
        return still, []
    from klingflow.backends.handles import RequestHandle
    from klingflow.errors import BackendError

    cancelled = []
    for request in still:
        handle = RequestHandle(endpoint=request.endpoint, request_id=request.request_id)
        try:
            # "OK": removed from the queue before a runner took it; anything else may be billed
            if await ctx.backend.status(handle) == "IN_QUEUE" and await ctx.backend.cancel(handle) == "OK":
                ctx.journal.forget(request.key)
                cancelled.append(request)
        except BackendError as exc:
            logger.warning("could not cancel queued request %s: %s", request.request_id, exc.message)
    return [r for r in still if r not in cancelled], cancelled
