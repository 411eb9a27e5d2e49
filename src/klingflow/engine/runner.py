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

The Prefect layer's :class:`~klingflow.engine.hooks.RunHooks` run each step inside a Prefect task
named after it; a plain Python call uses the default hooks and gets exactly the same caching,
resume and retries.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, PrivateAttr

from klingflow.engine.context import StepContext, plain
from klingflow.engine.generation import run_generation
from klingflow.engine.hooks import Logger, RunHooks, StepInfo
from klingflow.engine.operation import run_operation
from klingflow.errors import StepFailed
from klingflow.ledger import RunManifest, Status, StepRecord, to_frame
from klingflow.spec import ValidatedPipeline, find_references, merged_arguments, resolve, step_endpoint

__all__ = ["RunResult", "execute", "executions"]

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
    manifest: RunManifest | None = None
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
        run = {"run_id": self.run_id, "pipeline": self.pipeline, "flow_run_id": self.flow_run_id}
        return [{**r.model_dump(), **run} for r in self.records]


def _labels(raw: Any, resolved: Any) -> list[str]:
    """Step ids for each clip of a list argument (contact sheets show where each clip came from)."""
    labels: list[str] = []
    for entry, value in zip(
        raw if isinstance(raw, list) else [raw],
        resolved if isinstance(resolved, list) else [resolved],
        strict=False,
    ):
        refs = [r for r in find_references(entry) if r.kind == "step"]
        name = refs[0].step_id if refs else str(entry)
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


class _Run:
    def __init__(self, pipeline: ValidatedPipeline, ctx: StepContext, hooks: RunHooks) -> None:
        self.pipeline, self.ctx, self.hooks = pipeline, ctx, hooks
        self.outputs: dict[str, dict[str, Any]] = {}
        self.records: list[StepRecord] = []
        self.failures: dict[str, str] = {}
        self.done: dict[str, asyncio.Event] = {step: asyncio.Event() for step in pipeline.order}
        self.steps = {step.id: step for step in pipeline.spec.steps}
        self.starts = asyncio.Semaphore(2 * max(1, ctx.concurrency))

    def _record(self, record: StepRecord) -> None:
        self.records.append(record)
        self.hooks.on_finish(record)

    async def _one(self, step_id: str, arguments: dict[str, Any], item_index: int | None) -> StepRecord:
        step = self.steps[step_id]
        endpoint = step_endpoint(self.pipeline.spec, step)

        async def call(log: Logger) -> StepRecord:
            position: list[int | None] = []

            def forward(event: Any) -> None:
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

        label = step_id if item_index is None else f"{step_id}[{item_index}]"
        info = StepInfo(label=label, step_id=step_id, uses=step.uses, arguments=plain(arguments))
        async with self.starts:
            self.hooks.on_start(label)
            return await self.hooks.run_step(info, call, self.hooks.log)

    async def _step(self, step_id: str) -> None:
        step = self.steps[step_id]
        for dependency in self.pipeline.dependencies[step_id]:
            await self.done[dependency].wait()
        blocked = sorted(d for d in self.pipeline.dependencies[step_id] if d in self.failures)
        try:
            if blocked:
                self.failures[step_id] = f"skipped: depends on failed step(s) {', '.join(blocked)}"
                self._record(
                    StepRecord(
                        step_id=step_id,
                        kind=self.pipeline.kind(step_id),
                        endpoint=step.uses,
                        backend="",
                        status=Status.SKIPPED,
                        error=self.failures[step_id],
                    )
                )
                return
            raw = merged_arguments(self.pipeline.spec, step)
            context = {"inputs": self.pipeline.inputs, "outputs": self.outputs}
            if step.foreach is None:
                records = [await self._guarded(step_id, resolve(raw, **context), None)]
            else:
                items = resolve(step.foreach, **context)
                records = list(
                    await asyncio.gather(
                        *(
                            self._guarded(step_id, resolve(raw, **context, item=item), index)
                            for index, item in enumerate(items)
                        )
                    )
                )
            failed = [r for r in records if r.status == Status.FAILED]
            if failed:
                self.failures[step_id] = "; ".join(r.error or "failed" for r in failed)
            elif step.foreach is None:
                self.outputs[step_id] = records[0].outputs
            else:
                names = {name for r in records for name in r.outputs}
                self.outputs[step_id] = {name: [r.outputs.get(name) for r in records] for name in names}
        finally:
            self.done[step_id].set()

    async def _guarded(self, step_id: str, arguments: dict[str, Any], item_index: int | None) -> StepRecord:
        try:
            record = await self._one(step_id, arguments, item_index)
        except StepFailed as exc:
            record = exc.record
        except Exception as exc:  # a bug must not lose the other branches' work: record it, keep going
            logger.exception("step %s crashed", step_id)
            step = self.steps[step_id]
            record = StepRecord(
                step_id=step_id,
                item_index=item_index,
                kind=self.pipeline.kind(step_id),
                endpoint=step.uses,
                backend="",
                status=Status.FAILED,
                error=f"internal error: {type(exc).__name__}: {exc}",
            )
        self._record(record)
        return record


async def execute(
    pipeline: ValidatedPipeline,
    ctx: StepContext,
    *,
    hooks: RunHooks | None = None,
    run_id: str | None = None,
) -> RunResult:
    """Run every step of a checked pipeline and return what it produced."""
    run = _Run(pipeline, ctx, hooks or RunHooks())
    run.hooks.on_steps(pipeline.spec.name, executions(pipeline))
    started = datetime.now(UTC)
    await asyncio.gather(*(run._step(step_id) for step_id in pipeline.order))
    dependants = {d for deps in pipeline.dependencies.values() for d in deps}
    final: dict[str, Path] = {}
    for step_id in (s for s in pipeline.order if s not in dependants):
        out = run.outputs.get(step_id, {})
        for kind in ("video", "audio", "image"):
            value = out.get(kind)
            if isinstance(value, Path):
                final[step_id] = value
            elif isinstance(value, list):
                final.update({f"{step_id}-{i}": v for i, v in enumerate(value) if isinstance(v, Path)})
    run.records.sort(key=lambda r: (pipeline.order.index(r.step_id), r.item_index or 0))
    for record in run.records:
        record.started_at = record.started_at or started
    return RunResult(
        run_id=run_id or uuid.uuid4().hex[:12],
        pipeline=pipeline.spec.name,
        status=Status.FAILED if run.failures else Status.COMPLETED,
        outputs=run.outputs,
        records=run.records,
        failures=run.failures,
        final=final,
    )
