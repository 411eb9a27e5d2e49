"""Paid requests that no cache entry holds: find them, fetch what fal still keeps, say what is lost.

A journal entry that never became ``done`` stands for money that may have been spent:

* ``submitted``: fal accepted the request (its id is known) but the run ended before its outputs
  were stored (a crash, ``kill -9``, a result fetch that kept failing);
* ``interrupted``: a submit left and its answer never arrived; fal's request history tells whether
  it was accepted (a request with exactly this body).

:func:`recover` looks at each one: a request fal still keeps (results are kept 1 hour after they
complete, 6 minutes when large) is fetched into the store and the journal becomes ``done``, so the
next run is a cache hit; a request fal no longer knows is reported lost, with what fal billed
for it when fal said; an interrupted submit fal never listed is reported as not accepted.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import BaseModel

from klingflow.backends.handles import RequestHandle
from klingflow.backends.platform import find_request
from klingflow.cache import JournalEntry
from klingflow.endpoints import billed_cost
from klingflow.engine.context import StepContext
from klingflow.errors import BackendError, RequestFailed, RequestGone

__all__ = ["Recovered", "open_entries", "recover", "recover_entry"]

Outcome = Literal["recovered", "lost", "pending", "not accepted", "unreachable"]


class Recovered(BaseModel):
    """What happened to one paid request no cache entry held."""

    key: str
    endpoint: str
    request_id: str | None
    outcome: Outcome
    detail: str = ""
    billable_units: float | None = None
    cost_usd: float | None = None


def open_entries(ctx: StepContext) -> list[JournalEntry]:
    """Journal entries of this backend that stand for money spent but not stored."""
    return [
        e
        for e in ctx.journal.entries()
        if e.status in ("submitted", "interrupted") and e.backend == ctx.backend_identity
    ]


async def _locate(ctx: StepContext, entry: JournalEntry) -> str | None:
    """The request id of an entry: recorded, or found in fal's history for an interrupted submit."""
    if entry.request_id:
        return entry.request_id
    if not entry.payload_digest or entry.submitted_at is None:
        return None
    since = entry.submitted_at - timedelta(seconds=5)
    found = await find_request(ctx.backend, entry.endpoint, entry.payload_digest, since)
    return found.request_id if found else None


async def recover_entry(ctx: StepContext, entry: JournalEntry) -> Recovered:
    """Collect one open entry's request: fetched into the store and journaled ``done`` if fal keeps it."""
    result = Recovered(key=entry.key, endpoint=entry.endpoint, request_id=entry.request_id, outcome="pending")
    try:
        request_id = await _locate(ctx, entry)
    except BackendError as exc:
        result.outcome, result.detail = "unreachable", f"fal's request history did not answer: {exc.message}"
        return result
    if request_id is None:
        result.outcome = "not accepted"
        result.detail = "fal's history lists no request with this body: nothing was paid, or not yet listed"
        return result
    result.request_id = request_id
    handle = RequestHandle(endpoint=entry.endpoint, request_id=request_id)
    backend = ctx.backend
    try:
        status = await backend.status(handle)
        if status != "COMPLETED":
            result.detail = (
                f"fal reports it {status}; run the pipeline again (or recover later) to collect it"
            )
            return result
        fetched = await backend.fetch_result(handle)
        done = await backend.download(handle, fetched.raw)
    except RequestGone:
        result.outcome = "lost"
        result.detail = "fal no longer keeps this request's result (kept 1 hour after it completes)"
        ctx.journal.forget(entry.key)
        return result
    except RequestFailed as exc:
        result.outcome, result.detail = "lost", f"fal finished it with an error: {exc.message}"
        ctx.journal.forget(entry.key)
        return result
    except BackendError as exc:
        result.outcome, result.detail = "unreachable", str(exc)
        return result
    result.billable_units = fetched.billable_units
    if fetched.billable_units is not None:
        price = await ctx.unit_price(entry.endpoint)
        result.cost_usd = billed_cost(entry.endpoint, None, fetched.billable_units, price)
    values = done.values()
    ctx.journal.record_done(
        entry.key,
        endpoint=entry.endpoint,
        backend=entry.backend,
        request_id=request_id,
        submitted_at=entry.submitted_at,
        values=values,
        outputs=done.output_records(),
    )
    result.outcome = "recovered"
    result.detail = ", ".join(str(f.path) for f in done.files.values())
    return result


async def recover(ctx: StepContext) -> list[Recovered]:
    """Look at every open journal entry of this backend; fetch what fal still keeps into the cache."""
    try:
        return [await recover_entry(ctx, entry) for entry in open_entries(ctx)]
    finally:
        await ctx.aclose()
