"""One generation: the cache decision, claim or join, submit or resume, poll, download, retries.

Prefect's own task cache would return a stored value without knowing whether the media file
behind it still exists, and a plain Python call must cache the same way, so the decision lives
here (store + journal) and the Prefect task only calls it. For a generation:

1. key = endpoint + canonical arguments (media replaced by content sha256) + backend identity;
2. journal says ``done`` and every stored file re-hashes correctly -> cached, nothing submitted;
   a missing or corrupt file -> forget and regenerate;
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
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

from klingflow.backends.handles import QueueEvent, RequestHandle
from klingflow.cache import JournalEntry, OutputRecord, generation_key, media_digest
from klingflow.endpoints import (
    canonical_arguments,
    estimate_cost,
    get_endpoint,
    is_url,
    media_inputs,
    set_media_input,
    validate_input,
)
from klingflow.engine.context import StepContext, describe_output, plain, prompt_of, shown_arguments
from klingflow.engine.hooks import Logger
from klingflow.errors import (
    BackendError,
    RequestFailed,
    RequestGone,
    ResultLost,
    ResultTimeout,
    StepFailed,
    is_transient,
)
from klingflow.ledger import Status, StepRecord

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend

__all__ = ["generation_key_for", "run_generation"]


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
    log: Logger = print,
) -> StepRecord:
    """Run (or reuse) one generation; raise StepFailed with the failed record on error."""
    info = get_endpoint(endpoint)
    body = plain(arguments)
    backend_id = ctx.backend_identity
    record = StepRecord(
        step_id=step_id,
        item_index=item_index,
        kind="endpoint",
        endpoint=info.id,
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
    record.cache_key = key
    kinds = dict(info.produces)
    entry = ctx.journal.get(key)
    if entry is not None and (refresh or ctx.refresh or (entry.status == "done" and not use_cache)):
        ctx.journal.forget(key)
        entry = None
    if entry is not None and entry.status == "done":
        if ctx.reuse(entry, record, kinds, log):
            record.finished_at = datetime.now(UTC)
            return record
        ctx.journal.forget(key)
        entry = None
    generation = _Generation(
        ctx,
        record,
        info.id,
        body,
        kinds,
        ctx.retry.retries if retries is None else retries,
        timeout,
        on_event,
        log,
    )
    while True:
        # Capacity first, then the claim: a worker claims only what it can start now, so the keys it
        # cannot reach yet stay free for another worker to generate instead of waiting behind it.
        async with ctx.limiter:
            held = ctx.claims.acquire(key, ctx.owner, ctx.claim_ttl)
            if held:
                try:
                    entry = ctx.journal.get(key)  # a dead holder may have left a request id: resume it
                    if not (
                        entry is not None and entry.status == "done" and ctx.reuse(entry, record, kinds, log)
                    ):
                        async with _renewing(ctx, key, log):
                            await generation.run(entry, may_submit=True)
                        record.estimated_cost_usd = estimate_cost(
                            info.id, model, output_seconds=record.duration_s, prices=ctx.prices
                        )
                finally:
                    ctx.claims.release(key, ctx.owner)
        if held:
            break
        entry = ctx.journal.get(key)
        if entry is not None and entry.status == "done" and ctx.reuse(entry, record, kinds, log):
            break
        if entry is not None and entry.status == "submitted" and entry.request_id:
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
    """Submit-or-resume, poll, download and journal one generation, retrying what is transient."""

    ctx: StepContext
    record: StepRecord
    endpoint: str
    body: dict[str, Any]
    kinds: dict[str, str]
    retries: int
    timeout: float | None
    on_event: Callable[[QueueEvent], None] | None
    log: Logger

    async def run(self, entry: JournalEntry | None, *, may_submit: bool) -> None:
        """Poll ``entry``'s request (or submit one, if allowed) until its outputs are stored."""
        ctx, record, endpoint, log = self.ctx, self.record, self.endpoint, self.log
        backend, key = ctx.backend, record.cache_key or ""
        handle = (
            RequestHandle(endpoint=endpoint, request_id=entry.request_id)
            if entry and entry.request_id
            else None
        )
        resumed = handle is not None
        if resumed and may_submit:
            log(f"{record.step_id}: resuming request {handle.request_id} instead of submitting again")
        if resumed:
            record.submitted_at = entry.submitted_at if entry else None
        while True:
            record.attempts += 1
            try:
                if handle is None:
                    if not may_submit:
                        raise _JoinedRequestEnded
                    prepared = await backend.prepare(endpoint, self.body, base_dir=ctx.base_dir)
                    handle = await backend.submit(endpoint, prepared)
                    record.submitted_at = datetime.now(UTC)
                    ctx.journal.record_submitted(
                        key, endpoint=endpoint, backend=record.backend, request_id=handle.request_id
                    )
                record.request_id = handle.request_id
                started = time.monotonic()
                result, queue_s, run_s = await backend.wait(
                    handle, on_event=self.on_event, timeout=self.timeout
                )
                done = await backend.download(handle, result)
                break
            except ResultTimeout as exc:
                if may_submit:
                    await _give_up(ctx, backend, handle, key, log)
                record.status = Status.FAILED
                record.error = (
                    f"did not finish within {self.timeout:g} s (step timeout); the request was cancelled"
                )
                raise StepFailed(record) from exc
            except BackendError as exc:
                if isinstance(exc, RequestGone) and resumed:
                    # fal no longer knows the request an earlier run left: submit anew, no retry spent
                    if not may_submit:
                        raise _JoinedRequestEnded from exc
                    log(f"{record.step_id}: fal no longer knows request {record.request_id}; submitting anew")
                    ctx.journal.forget(key)
                    handle, resumed = None, False
                    continue
                if isinstance(exc, RequestFailed | ResultLost):
                    # this request is spent: a later attempt (or run) must submit a new one
                    if not may_submit:
                        raise _JoinedRequestEnded from exc
                    ctx.journal.forget(key)
                    handle = None
                if not is_transient(exc) or record.attempts > self.retries:
                    record.status, record.error = Status.FAILED, str(exc)
                    raise StepFailed(record) from exc
                wait = ctx.retry.delay(record.attempts, exc.retry_after)
                log(
                    f"{record.step_id}: {exc.message} (transient); "
                    f"retry {record.attempts}/{self.retries} in {wait:.1f} s"
                )
                await asyncio.sleep(wait)
        record.queue_seconds, record.run_seconds = queue_s, run_s
        if record.queue_seconds is None:
            record.queue_seconds = time.monotonic() - started
        duration = getattr(done.output, "duration", None)
        for name, stored in done.files.items():
            describe_output(record, stored, self.kinds[name], duration=duration)
            record.output_url = getattr(done.output, name).url
        ctx.journal.record_done(
            key,
            endpoint=endpoint,
            backend=record.backend,
            request_id=handle.request_id,
            submitted_at=record.submitted_at,
            values={"duration": record.duration_s},
            outputs={
                name: OutputRecord(
                    sha256=f.sha256, suffix=f.path.suffix, bytes=f.bytes, url=getattr(done.output, name).url
                )
                for name, f in done.files.items()
            },
        )


async def _give_up(
    ctx: StepContext, backend: FalBackend, handle: RequestHandle | None, key: str, log: Logger
) -> None:
    if handle is not None:
        try:
            await backend.cancel(handle)
        except BackendError as exc:
            log(f"could not cancel request {handle.request_id}: {exc.message}")
    ctx.journal.forget(key)
