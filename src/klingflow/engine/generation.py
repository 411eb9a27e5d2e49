"""One generation: the cache decision, claim or join, submit or resume, poll, download, retries.

Prefect's own task cache would return a stored value without knowing whether the media file
behind it still exists, and a plain Python call must cache the same way, so the decision lives
here (store + journal) and the Prefect task only calls it. For a generation:

1. key = endpoint + canonical arguments (media replaced by content sha256) + backend identity;
2. journal says ``done`` and every stored file re-hashes correctly -> cached, nothing submitted;
   a missing, cut or altered file -> its request's result is fetched from fal again (free while
   fal keeps it); only when fal no longer has it is a new request paid for, and the ledger's
   ``billing_note`` says why (the decision: :meth:`StepContext.look_up`);
3. claim the key (one worker generates it; another one *joins* the request in flight);
4. journal says ``submitted`` -> poll that request id (resume after a crash or retry);
5. otherwise submit, write the request id to the journal *before* polling, wait, download.

Errors are matched by type (:mod:`klingflow.errors`): transient ones are retried with backoff and
jitter, never sooner than Retry-After, and a retry polls the request it already has. Only a
request fal finished with an error (:class:`~klingflow.errors.RequestFailed`) or no longer knows
(:class:`~klingflow.errors.RequestGone`, when resuming) is submitted again. Anything else fails the
step at once with fal's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from klingflow.backends.handles import QueueEvent, RequestHandle
from klingflow.backends.platform import payload_digest
from klingflow.cache import CACHE_VERSION, JournalEntry, generation_key, media_digest
from klingflow.endpoints import (
    billed_cost,
    canonical_arguments,
    estimate_cost,
    get_endpoint,
    is_url,
    media_inputs,
    set_media_input,
    validate_input,
)
from klingflow.engine.context import (
    CacheLookup,
    Logger,
    StepContext,
    describe_output,
    output_field,
    plain,
    prompt_of,
    shown_arguments,
    step_outputs,
)
from klingflow.engine.interrupts import OpenRequest, finish_despite_stop
from klingflow.engine.options import AmbiguousSubmitPolicy
from klingflow.errors import (
    BackendError,
    InvalidInput,
    RequestFailed,
    RequestGone,
    ResultLost,
    ResultTimeout,
    StepFailed,
    SubmitAmbiguous,
    is_transient,
)
from klingflow.ledger import Status, StepRecord

__all__ = ["generation_key_for", "run_generation"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def generation_key_for(ctx: StepContext, endpoint_id: str, body: dict[str, Any]) -> tuple[BaseModel, str]:
    """Validate a generation's arguments and compute its cache key (media keyed by content)."""
    model = validate_input(endpoint_id, body)
    keyed = canonical_arguments(model)
    for path, value, _kind in media_inputs(endpoint_id, model):
        local = ctx.base_dir / value if ctx.base_dir and not is_url(value) else Path(value)
        set_media_input(keyed, path, media_digest(value if is_url(value) else local, ctx.store))
    return model, generation_key(endpoint_id, keyed, ctx.backend_identity)


async def run_generation(
    ctx: StepContext,
    *,
    step_id: str,
    endpoint: str,
    arguments: dict[str, Any],
    item_index: int | None = None,
    retries: int | None = None,
    timeout: float | None = None,
    use_cache: bool = True,
    refresh: bool = False,
    on_event: Callable[[QueueEvent], None] | None = None,
    on_ambiguous_submit: AmbiguousSubmitPolicy | None = None,
    log: Logger = print,
) -> StepRecord:
    """Run (or reuse) one generation; raise StepFailed with the failed record on error.

    ``refresh`` (or ``use_cache=False``) regenerates a *stored* result; a request that is paid for
    but not stored yet is always resumed, never forgotten.
    """
    info = get_endpoint(endpoint)
    body = plain(arguments)
    backend_id = ctx.backend_identity
    record = StepRecord(
        step_id=step_id,
        item_index=item_index,
        kind="endpoint",
        endpoint=info.id,
        schema_sha256=info.sha256,
        backend=backend_id,
        arguments=shown_arguments(body),
        prompt=prompt_of(body),
        started_at=datetime.now(UTC),
    )
    try:
        model, key = generation_key_for(ctx, info.id, body)
    except ValidationError as exc:
        record.status, record.error = Status.FAILED, f"invalid arguments: {exc}"
        raise StepFailed(record) from exc
    record.cache_key, record.cache_version = key, CACHE_VERSION
    kinds = dict(info.produces)
    lookup = await ctx.alook_up(key, regenerate=refresh or ctx.refresh or not use_cache)
    if lookup.state == "cached":
        await asyncio.to_thread(ctx.fill_cached, lookup, record, kinds)
        record.finished_at = datetime.now(UTC)
        return record
    if lookup.state == "run" and lookup.entry is not None:
        ctx.journal.forget(key)
    generation = _Generation(
        ctx,
        record,
        info.id,
        body,
        kinds,
        ctx.retry.retries if retries is None else retries,
        timeout,
        on_event,
        on_ambiguous_submit or ctx.on_ambiguous_submit,
        log,
    )
    async with ctx.generating(key):  # one execution of this process per key at a time
        while True:
            # Capacity first, then the claim: a worker claims only what it can start now, so the keys it
            # cannot reach yet stay free for another worker to generate instead of waiting behind it.
            async with _Slot(ctx.limiter, ctx.team_slot) as slot:
                held = ctx.claims.acquire(key, ctx.owner, ctx.claim_ttl)
                if held:
                    try:
                        # a dead holder may have left a request id (resume it), or stored the outputs
                        lookup = await ctx.alook_up(key)
                        if lookup.state == "cached":
                            await asyncio.to_thread(ctx.fill_cached, lookup, record, kinds)
                        else:
                            entry = generation.refetching(lookup)
                            async with _renewing(ctx, key, log):
                                await generation.run(entry, may_submit=True, slot=slot)
                            generation.price(model)
                            if record.billable_units is not None and generation.healed is None:
                                record.cost_usd = billed_cost(
                                    info.id,
                                    canonical_arguments(model),
                                    record.billable_units,
                                    await ctx.unit_price(info.id),
                                )
                    finally:
                        ctx.claims.release(key, ctx.owner)
            if held:
                break
            lookup = await ctx.alook_up(key)
            if lookup.state == "cached":
                await asyncio.to_thread(ctx.fill_cached, lookup, record, kinds)
                break
            entry = lookup.entry
            if lookup.state == "recoverable" and entry is not None and entry.request_id:
                log(f"{step_id}: joining request {entry.request_id}, in flight for {ctx.claims.holder(key)}")
                try:
                    await generation.run(entry, may_submit=False)
                except _JoinedRequestEnded:
                    continue
                record.status = Status.JOINED
                break
            await asyncio.sleep(0.2)  # the holder is submitting; its request id is about to appear
    record.finished_at = datetime.now(UTC)
    return record


class _Slot:
    """One place under the run's concurrency cap, given back the moment fal completes the request.

    The cap limits requests at fal; fetching the result, downloading and probing the files need no
    place there, so the next step's submit need not wait for them. A new submit (a retry) takes
    the place again first. With a team cap (``ctx.team_slot``: a Prefect global concurrency limit
    every machine shares), a place holds one of its slots too, taken after the run's own (a run
    never holds a team slot it cannot use yet) and given back first.
    """

    def __init__(
        self, limiter: asyncio.Semaphore, team: Callable[[], AbstractAsyncContextManager[Any]] | None = None
    ) -> None:
        self._limiter, self._team = limiter, team
        self._team_slot: AbstractAsyncContextManager[Any] | None = None
        self._held = False

    async def take(self) -> None:
        if self._held:
            return
        await self._limiter.acquire()
        try:
            if self._team is not None:
                slot = self._team()
                await slot.__aenter__()
                self._team_slot = slot
        except BaseException:
            self._limiter.release()
            raise
        self._held = True

    async def give_back(self) -> None:
        if not self._held:
            return
        self._held = False
        slot, self._team_slot = self._team_slot, None
        try:
            if slot is not None:
                await slot.__aexit__(None, None, None)
        except Exception:  # a paid request must not fail over its slot: the lease runs out by itself
            logger.warning("could not give back the team's concurrency slot", exc_info=True)
        finally:
            self._limiter.release()

    async def __aenter__(self) -> _Slot:
        await self.take()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.give_back()


class _JoinedRequestEnded(Exception):
    """A joined request failed or is unknown: the claim holder will submit again; join or claim anew."""


@contextlib.asynccontextmanager
async def _renewing(ctx: StepContext, key: str, log: Logger) -> AsyncIterator[None]:
    """Renew the claim on ``key`` while the body runs, so other workers see a live holder."""

    async def renew() -> None:
        while True:
            await asyncio.sleep(ctx.claim_ttl / 3)
            if not ctx.claims.renew(key, ctx.owner, ctx.claim_ttl):
                log(f"lost the claim on {key[:12]} (expired); another worker may join this request")

    task = asyncio.create_task(renew())
    try:
        yield
    finally:
        task.cancel()


@dataclass
class _Generation:
    """Submit-or-resume, poll, fetch, download and journal one generation; retry by what it costs."""

    ctx: StepContext
    record: StepRecord
    endpoint: str
    body: dict[str, Any]
    kinds: Mapping[str, str]
    retries: int
    timeout: float | None
    on_event: Callable[[QueueEvent], None] | None
    policy: AmbiguousSubmitPolicy
    log: Logger
    healed: str | None = None
    """The request id whose result is fetched again because the stored copy failed verification."""

    @property
    def key(self) -> str:
        return self.record.cache_key or ""

    def refetching(self, lookup: CacheLookup) -> JournalEntry | None:
        """The journal entry to resume; a stored result that rotted is turned into its request.

        The request was paid and fal keeps its result for an hour after it completed, so the
        outputs are fetched again from it instead of paying for a new generation; only when fal
        no longer has it does :meth:`run` submit anew (under the step's policy, noted in the
        ledger's ``billing_note``).
        """
        entry = lookup.entry
        if lookup.state == "run":
            return None
        if lookup.state != "refetch" or entry is None or not entry.request_id:
            return entry
        self.healed = entry.request_id
        self.log(
            f"{self.record.step_id}: the stored output failed verification (missing, cut or altered); "
            f"fetching it again from request {entry.request_id} (free while fal keeps its result)"
        )
        return self.ctx.journal.reopen(entry)

    def price(self, model: BaseModel) -> None:
        """The row's estimated cost: nothing for a result fetched again, else the endpoint's price."""
        record = self.record
        if self.healed is not None and record.request_id == self.healed:
            record.status, record.estimated_cost_usd, record.cost_usd = Status.CACHED, 0.0, 0.0
            record.billing_note = _note(
                "refetched",
                f"the stored output failed verification; fetched again from request {self.healed}, "
                "paid by an earlier run, at no new cost",
            )
            return
        record.estimated_cost_usd = estimate_cost(
            self.endpoint,
            model,
            output_seconds=record.duration_s,
            input_seconds=record.duration_s,  # a lipsync's output is as long as its input video
            prices=self.ctx.prices,
        )

    def fail(self, error: str, cause: BaseException | None = None) -> StepFailed:
        """The step's failure, with its row filled in."""
        self.record.status, self.record.error = Status.FAILED, error
        failure = StepFailed(self.record)
        failure.__cause__ = cause
        return failure

    async def free(self, phase: str, call: Callable[[], Awaitable[T]]) -> T:
        """A call that costs nothing, retried on transient errors until the phase's deadline.

        A completed request's result fetch is retried for as long as fal keeps the result
        (``result_deadline``, fal's hour), so a paid clip is never given up while it can be fetched.
        """
        policy, started, attempt = self.ctx.retry, time.monotonic(), 0
        deadline = policy.result_deadline if phase == "result" else policy.free_deadline
        while True:
            try:
                return await call()
            except BackendError as exc:
                if not is_transient(exc) or isinstance(exc, RequestFailed):
                    raise
                attempt += 1
                if time.monotonic() - started > deadline:
                    raise
                wait = policy.delay(attempt, exc.retry_after)
                self.log(
                    f"{self.record.step_id}: {exc.message} ({phase}, costs nothing); retry in {wait:.1f} s"
                )
                await asyncio.sleep(wait)

    async def run(self, entry: JournalEntry | None, *, may_submit: bool, slot: _Slot | None = None) -> None:
        """Poll ``entry``'s request (or submit one, if allowed) until its outputs are stored.

        ``slot``, the step's place under the concurrency cap, is given back once fal completed the
        request, and taken again before any new submit.
        """
        ctx, record, backend = self.ctx, self.record, self.ctx.backend
        handle: RequestHandle | None = None
        if entry is not None and entry.status == "submitted" and entry.request_id:
            handle = RequestHandle(endpoint=self.endpoint, request_id=entry.request_id)
            record.submitted_at, record.attempts = entry.submitted_at, max(record.attempts, 1)
            if may_submit:
                self.log(
                    f"{record.step_id}: resuming request {handle.request_id} instead of submitting again"
                )
        elif entry is not None and entry.status == "interrupted" and may_submit:
            self.log(
                f"{record.step_id}: an earlier submit's outcome is unknown; asking fal's request history"
            )
            handle = await self.reconcile(entry)
        resumed = handle is not None
        while True:
            if handle is None:
                if not may_submit:
                    raise _JoinedRequestEnded
                if slot is not None:
                    await slot.take()
                handle = await self.submit()
            record.request_id = handle.request_id
            self.opened(handle.request_id)
            try:
                started = time.monotonic()
                queue_s: float | None = None
                run_s: float | None = None
                try:
                    queue_s, run_s = await self.free(
                        "status", partial(backend.wait, handle, on_event=self.on_event, timeout=self.timeout)
                    )
                except ResultTimeout:
                    if not may_submit or await self.cancel(handle) != "ALREADY_COMPLETED":
                        raise
                    self.log(
                        f"{record.step_id}: request {handle.request_id} finished before the cancel: kept"
                    )
                if slot is not None:
                    await slot.give_back()  # completed at fal: the result and its files need no place there
                fetched = await self.free("result", partial(backend.fetch_result, handle))
                done = await self.free("download", partial(backend.download, handle, fetched.raw))
                break
            except ResultTimeout as exc:
                if may_submit:
                    ctx.journal.forget(self.key)  # cancelled: nobody will collect it
                raise self.fail(
                    f"did not finish within {self.timeout:g} s (step timeout); the request was cancelled", exc
                ) from exc
            except RequestGone as exc:
                if not may_submit:
                    raise _JoinedRequestEnded from exc
                ctx.journal.forget(self.key)
                if not resumed:
                    raise self.fail(str(exc), exc) from exc
                # an earlier run's request that fal no longer keeps (its result is kept 1 hour): paid, lost
                if self.policy == "fail":
                    raise self.fail(
                        f"request {handle.request_id} was paid, but fal no longer keeps its result (kept 1 "
                        "hour after it completes); the step's policy forbids paying again",
                        exc,
                    ) from exc
                self.log(
                    f"{record.step_id}: fal no longer knows request {handle.request_id}; submitting anew"
                )
                record.billing_note = _note(
                    "result_gone",
                    f"request {handle.request_id} was paid but fal no longer keeps its result"
                    + (
                        " (the stored copy failed verification); generated again"
                        if self.healed == handle.request_id
                        else ""
                    ),
                )
                handle, resumed = None, False
            except InvalidInput as exc:
                ctx.journal.forget(self.key)
                record.billing_note = _note(
                    "possibly_billed", f"fal's model refused request {handle.request_id}"
                )
                raise self.fail(str(exc), exc) from exc
            except (RequestFailed, ResultLost) as exc:
                if not may_submit:
                    raise _JoinedRequestEnded from exc
                ctx.journal.forget(self.key)  # this request is spent: a new one must be submitted
                if isinstance(exc, ResultLost) or record.attempts > self.retries:
                    raise self.fail(str(exc), exc) from exc
                wait = ctx.retry.delay(record.attempts, exc.retry_after)
                self.log(
                    f"{record.step_id}: {exc.message}; "
                    f"new request {record.attempts}/{self.retries} in {wait:.1f} s"
                )
                await asyncio.sleep(wait)
                handle, resumed = None, False
            except BackendError as exc:
                # still failing after its deadline; the request id stays journaled: a re-run resumes it
                raise self.fail(str(exc), exc) from exc
        record.queue_seconds, record.run_seconds = queue_s, run_s
        if record.queue_seconds is None:
            record.queue_seconds = time.monotonic() - started
        record.billable_units = fetched.billable_units
        values = done.values()
        duration = values.get("duration")
        for name, stored in done.files.items():
            # probing opens the file (milliseconds): off the event loop, where other steps poll
            kind = self.kinds[output_field(name)]
            await asyncio.to_thread(describe_output, record, stored, kind, duration=duration)
            record.output_url = record.output_url or done.urls[name]
        info = get_endpoint(self.endpoint)
        record.outputs = {
            **record.outputs,
            **step_outputs(info, done.files, {**values, "duration": record.duration_s}),
        }
        ctx.journal.record_done(
            self.key,
            endpoint=self.endpoint,
            backend=record.backend,
            request_id=handle.request_id,
            submitted_at=record.submitted_at,
            values={**values, "duration": record.duration_s},
            outputs=done.output_records(),
        )

    async def cancel(self, handle: RequestHandle) -> str | None:
        """Cancel a request nobody will wait for (retried like any free call); fal's answer, or None."""
        try:
            return await self.free("cancel", lambda: self.ctx.backend.cancel(handle))
        except BackendError as exc:
            self.log(f"{self.record.step_id}: could not cancel request {handle.request_id}: {exc.message}")
            return None

    async def submit(self) -> RequestHandle:
        """Upload, journal the submit as ``interrupted``, send it once, and settle its outcome."""
        ctx, record, backend = self.ctx, self.record, self.ctx.backend
        prepared = await self.free(
            "upload", lambda: backend.prepare(self.endpoint, self.body, base_dir=ctx.base_dir)
        )
        digest = payload_digest(prepared)
        while True:
            if ctx.stop.requested:
                raise asyncio.CancelledError  # stopping: no new submit leaves
            entry = ctx.journal.record_interrupted(
                self.key, endpoint=self.endpoint, backend=record.backend, payload_digest=digest
            )
            record.attempts += 1
            try:
                handle = await self.free("submit", lambda: finish_despite_stop(self.send(prepared, digest)))
            except SubmitAmbiguous as exc:
                self.log(f"{record.step_id}: {exc.message}; asking fal's request history before paying again")
                found = await self.reconcile(entry)
                if found is None:
                    continue
                return found
            except BackendError as exc:
                ctx.journal.forget(self.key)  # rejected or never sent: nothing was accepted
                raise self.fail(str(exc), exc) from exc
            return handle

    async def send(self, prepared: dict[str, Any], digest: str) -> RequestHandle:
        """Send the submit once and journal its request id, unless a stop came first.

        Runs shielded (:func:`finish_despite_stop`): once it is on the wire, its answer is waited
        for, so a stop leaves a ``submitted`` entry the next run polls, not an unknown outcome.
        """
        ctx, record = self.ctx, self.record
        if ctx.stop.requested:
            ctx.journal.forget(self.key)  # never sent: nothing for the next run to reconcile
            raise asyncio.CancelledError
        handle = await ctx.backend.submit(self.endpoint, prepared)
        record.submitted_at = datetime.now(UTC)
        ctx.journal.record_submitted(
            self.key,
            endpoint=self.endpoint,
            backend=record.backend,
            request_id=handle.request_id,
            payload_digest=digest,
            submitted_at=record.submitted_at,
        )
        self.opened(handle.request_id)
        return handle

    def opened(self, request_id: str) -> None:
        """Note a request this run waits for: a stop names it among those still running at fal."""
        self.ctx.open_requests[self.key] = OpenRequest(
            label=self.record.step_label, endpoint=self.endpoint, request_id=request_id, key=self.key
        )

    async def reconcile(self, entry: JournalEntry) -> RequestHandle | None:
        """Find the request a submit with an unknown outcome created; None means: submit again.

        ``reconcile`` asks fal's request history for a request with this body, sent since the
        entry's time, for up to ``reconcile_grace`` seconds; ``fail`` stops the step (the entry
        stays for ``klingflow recover``); ``resubmit`` pays again at once. A second submit is
        always flagged ``possible_duplicate`` in the ledger.
        """
        from klingflow.backends.platform import find_request

        ctx, record = self.ctx, self.record
        first = entry.submitted_at or datetime.now(UTC)
        if self.policy == "fail":
            raise self.fail(
                f"a submit sent at {first:%H:%M:%S} UTC may have been accepted by fal, and the step's "
                "policy is on_ambiguous_submit: fail; `klingflow recover` finds it once fal lists it"
            )
        if self.policy == "reconcile" and entry.payload_digest:
            deadline = time.monotonic() + ctx.retry.reconcile_grace
            since = first - timedelta(seconds=5)
            while True:
                try:
                    found = await find_request(ctx.backend, self.endpoint, entry.payload_digest, since)
                except BackendError as exc:
                    self.log(f"{record.step_id}: fal's request history did not answer ({exc.message})")
                    found = None
                if found is not None:
                    self.log(
                        f"{record.step_id}: fal had accepted the submit; adopting request {found.request_id}"
                    )
                    record.submitted_at = found.sent_at or first
                    ctx.journal.record_submitted(
                        self.key,
                        endpoint=self.endpoint,
                        backend=record.backend,
                        request_id=found.request_id,
                        payload_digest=entry.payload_digest,
                        submitted_at=record.submitted_at,
                    )
                    return RequestHandle(endpoint=self.endpoint, request_id=found.request_id)
                if time.monotonic() >= deadline:
                    break
                await asyncio.sleep(ctx.retry.reconcile_poll)
        record.billing_note = _note(
            "possible_duplicate",
            f"a submit sent at {first.isoformat()} may have been accepted; sent again at "
            f"{datetime.now(UTC).isoformat()}",
        )
        self.log(f"{record.step_id}: no trace of the earlier submit in fal's history; submitting again")
        ctx.journal.forget(self.key)
        return None


def _note(kind: str, text: str) -> str:
    """A ledger billing note: its kind first, so ``billing_note.str.startswith(kind)`` selects it."""
    return f"{kind}: {text}"
