"""Running one step: the cache decision, resume, retries and the concurrency cap, without Prefect.

Prefect's own task cache would return a stored value without knowing whether the media file
behind it still exists, and a plain Python call must cache the same way, so the decision lives
here (store + journal) and the Prefect task only calls it. For a generation:

1. key = endpoint + canonical arguments (media replaced by content sha256) + backend identity;
2. journal says ``done`` and every stored file re-hashes correctly -> cached, nothing submitted;
   a missing or corrupt file -> forget and regenerate;
3. journal says ``submitted`` -> poll that request id (resume after a crash or retry);
4. otherwise submit, write the request id to the journal *before* polling, wait, download.

Transient errors (429, 5xx, connection errors, truncated downloads) are retried with exponential
backoff and jitter, never less than the server's Retry-After. A retry polls the request it
already has; only a request that failed on fal's side (or that fal no longer knows) is submitted
again. Permanent errors (401/403/404/422) fail at once with fal's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ValidationError

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend

from klingflow.backends.handles import QueueEvent, RequestHandle
from klingflow.cache import canonical_json, generation_key, media_digest
from klingflow.claims import DEFAULT_TTL, Claims, FileClaims, new_owner
from klingflow.endpoints import (
    canonical_arguments,
    estimate_cost,
    get_endpoint,
    is_url,
    media_inputs,
    set_media_input,
    validate_input,
)
from klingflow.errors import BackendError, EndpointError, KlingflowError, ResultTimeout, SubmitError
from klingflow.journal import Journal, JournalEntry, OutputRecord
from klingflow.media import probe
from klingflow.store import Store, StoredFile

__all__ = [
    "RetryPolicy",
    "StepContext",
    "StepFailed",
    "StepRecord",
    "cached_files",
    "generation_key_for",
    "run_generation",
]

Logger = Callable[[str], None]


class RetryPolicy(BaseModel):
    """Backoff for transient errors: ``base_delay * 2**(attempt-1)`` with jitter, capped, >= Retry-After."""

    retries: int = 3
    base_delay: float = 1.0
    max_delay: float = 60.0
    jitter: float = 0.25

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        backoff *= 1 + random.uniform(-self.jitter, self.jitter)
        return max(backoff, retry_after or 0.0)


class StepRecord(BaseModel):
    """One step execution (or one foreach item): becomes one ledger row."""

    step_id: str
    item_index: int | None = None
    kind: str
    endpoint: str
    backend: str
    status: str = "completed"
    request_id: str | None = None
    cache_key: str | None = None
    attempts: int = 0
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    queue_seconds: float | None = None
    run_seconds: float | None = None
    estimated_cost_usd: float = 0.0
    prompt: str | None = None
    arguments: str = "{}"
    output_path: str | None = None
    output_url: str | None = None
    sha256: str | None = None
    bytes: int | None = None
    duration_s: float | None = None
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    has_audio: bool | None = None
    error: str | None = None
    outputs: dict[str, Any] = {}


class StepFailed(KlingflowError):
    """A step failed; ``record`` is its ledger row (status failed, with the error)."""

    reference = "step-failed"

    def __init__(self, record: StepRecord) -> None:
        super().__init__(record.error or "step failed", context=f"step '{record.step_id}'")
        self.record = record


@dataclass
class StepContext:
    """What every step of one run shares."""

    store: Store
    journal: Journal
    backend_identity: str
    backend_factory: Callable[[], FalBackend]
    claims: Claims = field(default_factory=FileClaims)
    owner: str = field(default_factory=new_owner)
    claim_ttl: float = DEFAULT_TTL
    concurrency: int = 4
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    refresh: bool = False
    base_dir: Path | None = None
    prices: dict[str, float] | None = None
    _backend: FalBackend | None = None
    _limiter: asyncio.Semaphore | None = None

    @property
    def backend(self) -> FalBackend:
        """The backend, created on first use (so a fully cached run never starts one)."""
        if self._backend is None:
            self._backend = self.backend_factory()
        return self._backend

    @property
    def limiter(self) -> asyncio.Semaphore:
        """Caps requests in flight (submitted, not yet downloaded) for this run's backend."""
        if self._limiter is None:
            self._limiter = asyncio.Semaphore(self.concurrency)
        return self._limiter


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _shown_arguments(body: dict[str, Any]) -> str:
    """Arguments for the ledger: data URIs shortened (they can be megabytes)."""

    def shorten(value: Any) -> Any:
        if isinstance(value, str) and value.startswith("data:") and len(value) > 80:
            return value[:40] + f"...({len(value)} chars)"
        if isinstance(value, dict):
            return {k: shorten(v) for k, v in value.items()}
        if isinstance(value, list):
            return [shorten(v) for v in value]
        return value

    return canonical_json(shorten(body))


def _prompt(body: dict[str, Any]) -> str | None:
    for name in ("prompt", "text", "effect_scene"):
        if isinstance(body.get(name), str):
            return body[name]
    return None


def describe_output(
    record: StepRecord, stored: StoredFile, kind: str, *, duration: float | None = None
) -> None:
    """Fill the record's file and media columns from the stored file (probed, not assumed)."""
    record.output_path, record.sha256, record.bytes = str(stored.path), stored.sha256, stored.bytes
    record.outputs[kind] = stored.path
    if kind == "image":
        return
    info = probe(stored.path)
    record.duration_s = duration if duration is not None else info.duration
    record.width, record.height, record.fps, record.has_audio = (
        info.width,
        info.height,
        info.fps,
        info.has_audio,
    )
    record.outputs["duration"] = record.duration_s


def _stored(store: Store, output: OutputRecord) -> StoredFile | None:
    candidate = StoredFile(
        sha256=output.sha256, path=store.path_for(output.sha256, output.suffix), bytes=output.bytes
    )
    return candidate if store.verify(candidate) else None


def _cache_hit(
    ctx: StepContext, entry: JournalEntry, record: StepRecord, kinds: dict[str, str], log: Logger
) -> bool:
    files = cached_files(ctx, entry)
    if files is None:
        log(f"{record.step_id}: cached output is missing or corrupt; regenerating")
        return False
    for name, stored in files.items():
        describe_output(record, stored, kinds[name], duration=entry.values.get("duration"))
        record.output_url = entry.outputs[name].url
    record.status, record.request_id = "cached", entry.request_id
    return True


def generation_key_for(ctx: StepContext, endpoint_id: str, body: dict[str, Any]) -> tuple[BaseModel, str]:
    """Validate a generation's arguments and compute its cache key (media keyed by content)."""
    model = validate_input(endpoint_id, body)
    keyed = canonical_arguments(model)
    for path, value, _kind in media_inputs(endpoint_id, model):
        local = ctx.base_dir / value if ctx.base_dir and not is_url(value) else Path(value)
        set_media_input(keyed, path, media_digest(value if is_url(value) else local, ctx.store))
    return model, generation_key(endpoint_id, keyed, ctx.backend_identity)


def cached_files(ctx: StepContext, entry: JournalEntry | None) -> dict[str, StoredFile] | None:
    """The verified stored outputs of a ``done`` journal entry, or None if any is missing or corrupt."""
    if entry is None or entry.status != "done" or not entry.outputs:
        return None
    files = {name: _stored(ctx.store, out) for name, out in entry.outputs.items()}
    return None if any(f is None for f in files.values()) else files  # type: ignore[return-value]


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
    body = _plain(arguments)
    backend_id = ctx.backend_identity
    record = StepRecord(
        step_id=step_id,
        item_index=item_index,
        kind="endpoint",
        endpoint=info.id,
        backend=backend_id,
        arguments=_shown_arguments(body),
        prompt=_prompt(body),
        started_at=datetime.now(UTC),
    )
    try:
        model, key = generation_key_for(ctx, info.id, body)
    except ValidationError as exc:
        record.status, record.error = "failed", f"invalid arguments: {exc}"
        raise StepFailed(record) from exc
    record.cache_key = key
    kinds = dict(info.produces)
    entry = ctx.journal.get(key)
    if entry is not None and (refresh or ctx.refresh or (entry.status == "done" and not use_cache)):
        ctx.journal.forget(key)
        entry = None
    if entry is not None and entry.status == "done":
        if _cache_hit(ctx, entry, record, kinds, log):
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
                        entry is not None
                        and entry.status == "done"
                        and _cache_hit(ctx, entry, record, kinds, log)
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
        if entry is not None and entry.status == "done" and _cache_hit(ctx, entry, record, kinds, log):
            break
        if entry is not None and entry.status == "submitted" and entry.request_id:
            log(f"{step_id}: joining request {entry.request_id}, in flight for {ctx.claims.holder(key)}")
            try:
                await generation.run(entry, may_submit=False)
            except _RequestGone:
                continue
            record.status = "joined"
            break
        await asyncio.sleep(0.2)  # the holder is submitting; its request id is about to appear
    record.finished_at = datetime.now(UTC)
    return record


class _RequestGone(Exception):
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
                        raise _RequestGone
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
                record.status = "failed"
                record.error = (
                    f"did not finish within {self.timeout:g} s (step timeout); the request was cancelled"
                )
                raise StepFailed(record) from exc
            except BackendError as exc:
                request_dead = isinstance(exc, EndpointError) and (
                    exc.status_code is None or (resumed and exc.status_code == 404)
                )
                file_lost = (
                    type(exc) is BackendError and not exc.transient
                )  # the result file is gone for good
                if request_dead or file_lost or isinstance(exc, SubmitError):
                    if not may_submit:
                        raise _RequestGone from exc
                    ctx.journal.forget(key)
                    handle = None
                if request_dead and resumed and exc.status_code == 404:
                    log(f"{record.step_id}: fal no longer knows request {record.request_id}; submitting anew")
                    resumed = False
                    continue
                if not exc.transient or record.attempts > self.retries:
                    record.status, record.error = "failed", str(exc)
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
