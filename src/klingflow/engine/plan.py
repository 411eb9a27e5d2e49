"""The plan: what a run will do and what it will cost, before anything is spent.

Walking the steps in order, each one is classified without submitting anything:

* ``cached``: its cache key is known (every input is a literal or a cached upstream output) and
  the journal holds verified outputs for it: it costs nothing;
* ``recoverable``: a request for this key was already submitted (and paid for) by an earlier run
  that did not finish, a submit's answer was lost, or the stored copy of its result rotted (cut,
  altered or deleted): the run will poll it, find it in fal's request history or fetch its
  result again, at no new cost while fal keeps that result (``klingflow recover`` fetches it now);
* ``run``: it will be generated and costs its endpoint's price.

A step downstream of one that will run cannot know its inputs yet, so it is planned as ``run``
(its own arguments still give the price). Every execution planned ``run`` or ``recoverable`` says
why, in one word and a detail (:mod:`~klingflow.engine.reasons`): new, arguments changed, upstream
changed, refresh, verification failed, recoverable, or the cache key's version. Media operations
are local and free. A step whose price klingflow does not know plans as ``unknown`` (None), never
$0. The budget check (``max_cost_usd``) compares the total of ``run`` steps with the limit and
refuses to start, and refuses a run with unknown prices unless ``allow_unknown_cost`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from klingflow.endpoints import estimate_cost, estimate_seconds, is_url, media_inputs, validate_input
from klingflow.engine.context import CacheLookup, StepContext, plain, shown_arguments, step_outputs
from klingflow.engine.generation import generation_key_for
from klingflow.engine.operation import operation_key_for, operation_outputs, shown_operation_arguments
from klingflow.engine.reasons import RunReason, Why, changed_reason
from klingflow.errors import BudgetError
from klingflow.media import probe
from klingflow.spec import (
    MEDIA_SUFFIXES,
    ValidatedPipeline,
    many_outputs,
    merged_arguments,
    output_kinds,
    resolve,
    step_endpoint,
    target_of,
)

__all__ = ["Plan", "PlanStatus", "PlannedStep", "check_budget", "fully_cached", "make_plan"]

PlanStatus = Literal["cached", "recoverable", "run"]
"""What a run will do with a step: reuse it, collect a request already paid for, or pay for it."""

_PENDING = Path("/pending")


class PlannedStep(BaseModel):
    """One step (or foreach item) of the plan."""

    step_id: str
    item_index: int | None = None
    uses: str
    kind: str = "endpoint"
    status: PlanStatus
    estimated_cost_usd: float | None = 0.0
    """None: unknown (the endpoint has no known price, or its count needs a length not known yet)."""
    estimated_seconds: float | None = None
    cache_key: str | None = None
    endpoint: str | None = None
    """The fal endpoint id a generation calls."""
    schema_source: str | None = None
    """Where its schema and price come from (``snapshot (schema 2026-05-12, ...)`` or ``refreshed ...``)."""
    reason: RunReason | None = None
    """Why it is not reused (None when it is cached); see :mod:`klingflow.engine.reasons`."""
    reason_detail: str | None = None
    """Which fields, which step, which request."""


class Plan(BaseModel):
    """Every planned step, and the money the run would spend."""

    pipeline: str
    steps: list[PlannedStep]

    @property
    def total_cost_usd(self) -> float:
        """What the steps that will run are expected to cost, counting only the known prices."""
        return round(sum(s.estimated_cost_usd or 0.0 for s in self.steps if s.status == "run"), 6)

    @property
    def unknown_cost(self) -> list[PlannedStep]:
        """The steps that will run at a price klingflow does not know."""
        return [s for s in self.steps if s.status == "run" and s.estimated_cost_usd is None]

    @property
    def operations(self) -> int:
        """How many local media operations the run has (always free)."""
        return sum(1 for s in self.steps if s.kind == "operation")

    def reasons(self) -> dict[tuple[str, int | None], tuple[RunReason, str | None]]:
        """Each execution that will not be reused: (step id, item) -> (reason, detail)."""
        return {(s.step_id, s.item_index): (s.reason, s.reason_detail) for s in self.steps if s.reason}

    def count(self, status: PlanStatus, kind: str = "endpoint") -> int:
        """How many planned generations (or operations) have this status."""
        return sum(1 for s in self.steps if s.status == status and s.kind == kind)


def _placeholder_outputs(uses: str) -> dict[str, Any]:
    """Stand-ins for the outputs of a step that has not run yet, by name (a list for ``images``)."""
    target = target_of(uses)
    if target is None:
        return {}
    listed = many_outputs(target)
    placeholders: dict[str, Any] = {}
    for name, kind in output_kinds(target).items():
        if kind == "number":
            pending: Any = None
        elif kind == "text":
            pending = "(pending)"  # a value such as a voice id: any text validates until it is known
        else:
            pending = _PENDING / f"{name}.{MEDIA_SUFFIXES[kind]}"
        placeholders[name] = [pending] if name in listed else pending
    return placeholders


def _why(lookup: CacheLookup, regenerate: bool, refresh_by: str, last_reason: Callable[[], Why]) -> Why:
    """The reason of an execution that is not cached (its key known), from its cache lookup."""
    entry = lookup.entry
    if lookup.state == "recoverable" and entry is not None:
        if entry.request_id:
            return Why("recoverable", f"request {entry.request_id} was paid and never stored: collected")
        return Why("recoverable", "a submit's answer was lost: looked up in fal's request history")
    if lookup.state == "refetch" and entry is not None:
        return Why(
            "verification_failed",
            f"its stored file is missing or altered: request {entry.request_id} fetched again",
        )
    if entry is not None and regenerate:
        return Why("refresh", refresh_by)
    if entry is not None:
        return Why("verification_failed", "its stored file is missing or altered: made again")
    return last_reason()


def _plan_one(
    pipeline: ValidatedPipeline,
    ctx: StepContext,
    step_id: str,
    arguments: dict[str, Any],
    pending: set[str],
    item_index: int | None,
    row_key: str | None,
) -> tuple[PlannedStep, dict[str, Any] | None]:
    step = next(s for s in pipeline.spec.steps if s.id == step_id)
    endpoint = step_endpoint(pipeline.spec, step)
    body = plain(arguments)
    planned = PlannedStep(
        step_id=step_id,
        item_index=item_index,
        uses=step.uses,
        status="run",
        kind="endpoint" if endpoint else "operation",
    )
    known = not pending
    if endpoint is None:
        key = operation_key_for(ctx, step.uses, arguments) if known else None
    else:
        model = validate_input(endpoint.id, body)
        key = generation_key_for(ctx, endpoint.id, body)[1] if known else None
        planned.endpoint, planned.schema_source = endpoint.id, endpoint.record.provenance()
        requested = estimate_seconds(endpoint.id, model)
        # a length that follows an input (avatar: its audio; lipsync: its video), when it is a local
        # file; probed only when the request sets no duration, so a plan opens no file it need not
        lengths = {
            kind: probe(value).duration
            for _, value, kind in reversed(media_inputs(endpoint.id, model))
            if requested is None
            and kind in ("audio", "video")
            and not is_url(value)
            and Path(value).is_absolute()
            and Path(value).is_file()
        }
        seconds = lengths.get("audio", lengths.get("video"))
        planned.estimated_seconds = requested or seconds
        planned.estimated_cost_usd = estimate_cost(
            endpoint.id, model, output_seconds=seconds, input_seconds=lengths.get("video"), prices=ctx.prices
        )
    planned.cache_key = key
    if key is None:
        planned.reason, planned.reason_detail = (
            "upstream_changed",
            f"{', '.join(sorted(pending))} will run first",
        )
        return planned, None
    # a stored result is redone on refresh, a paid one never
    regenerate = not step.cache or step.refresh or ctx.refresh
    lookup = ctx.look_up(key, regenerate=regenerate)
    if lookup.state != "cached" or lookup.files is None or not lookup.entry:
        refresh_by = "cache: false" if not step.cache else "refresh: true" if step.refresh else "--refresh"

        def last_reason() -> Why:
            shown = shown_arguments(body) if endpoint else shown_operation_arguments(ctx, arguments)
            last = ctx.history.last(pipeline.spec.name, row_key, step_id, item_index)
            return changed_reason(last, shown, key, merged_arguments(pipeline.spec, step))

        why = _why(lookup, regenerate, refresh_by, last_reason)
        planned.reason, planned.reason_detail = why.reason, why.detail
    if lookup.state == "cached" and lookup.files is not None and lookup.entry:
        planned.status, planned.estimated_cost_usd = "cached", 0.0
        if endpoint is None:
            outputs: dict[str, Any] = operation_outputs(lookup.files, lookup.entry.values)
        else:
            outputs = step_outputs(endpoint, lookup.files, lookup.entry.values)
        return planned, outputs
    if lookup.state in ("recoverable", "refetch"):
        planned.status, planned.estimated_cost_usd = "recoverable", 0.0
    return planned, None


def _walk(pipeline: ValidatedPipeline, ctx: StepContext, row_key: str | None = None) -> Iterator[PlannedStep]:
    """Each step (and foreach item) planned in order, as soon as it is (no network, no submissions)."""
    outputs: dict[str, dict[str, Any]] = {}
    known: set[str] = set()
    for step in (next(s for s in pipeline.spec.steps if s.id == sid) for sid in pipeline.order):
        pending = set(pipeline.dependencies[step.id]) - known
        raw = merged_arguments(pipeline.spec, step)
        context = {"inputs": pipeline.inputs, "outputs": outputs}
        items = [None] if step.foreach is None else list(resolve(step.foreach, **context))
        found = []
        for index, item in enumerate(items):
            arguments = resolve(raw, **context, item=item) if step.foreach else resolve(raw, **context)
            planned, output = _plan_one(
                pipeline, ctx, step.id, arguments, pending, None if step.foreach is None else index, row_key
            )
            yield planned
            found.append(output)
        if all(o is not None for o in found):
            known.add(step.id)
        placeholder = _placeholder_outputs(step.uses)
        chosen = [o if o is not None else placeholder for o in found]
        outputs[step.id] = (
            chosen[0]
            if step.foreach is None
            else {name: [o.get(name) for o in chosen] for name in placeholder}
        )


def make_plan(pipeline: ValidatedPipeline, ctx: StepContext, *, row_key: str | None = None) -> Plan:
    """Plan every step of a checked pipeline (no network, no submissions); ``row_key``: a batch row's."""
    return Plan(pipeline=pipeline.spec.name, steps=list(_walk(pipeline, ctx, row_key)))


def fully_cached(pipeline: ValidatedPipeline, ctx: StepContext) -> bool:
    """Whether every step reuses verified outputs, so the run is planned to submit and pay nothing.

    Stops at the first step that does not: verifying a cache hit re-hashes its file, and a run
    that will generate anyway should not pay for hashing the rest twice.
    """
    return all(planned.status == "cached" for planned in _walk(pipeline, ctx))


def check_budget(plan: Plan, max_cost_usd: float | None, *, allow_unknown: bool = False) -> None:
    """Refuse to start (BudgetError) when the uncached estimate exceeds ``max_cost_usd``, or when a
    step that will run has an unknown price and ``allow_unknown`` is not set: a limit that counted an
    unknown price as $0 would not be a limit."""
    if max_cost_usd is None:
        return
    unknown = plan.unknown_cost
    if unknown and not allow_unknown:
        names = ", ".join(sorted({f"{s.step_id} ({s.endpoint or s.uses})" for s in unknown}))
        raise BudgetError(
            f"a budget of ${max_cost_usd:.3f} was set, but klingflow knows no price for: {names}",
            context=f"pipeline '{plan.pipeline}'",
            hint="pass --allow-unknown-cost (allow_unknown_cost=True) to start anyway, or set the price"
            " with KLINGFLOW_PRICES='{\"ENDPOINT_ID\": USD_PER_UNIT}'; `klingflow endpoints show ID` shows"
            " what klingflow knows",
        )
    if plan.total_cost_usd > max_cost_usd:
        raise BudgetError(
            f"this run would spend an estimated ${plan.total_cost_usd:.3f}, "
            f"over the limit of ${max_cost_usd:.3f}",
            context=f"pipeline '{plan.pipeline}'",
            hint="raise --max-cost (or max_cost_usd in the pipeline); `klingflow plan` shows each step",
        )
