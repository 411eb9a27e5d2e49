"""A request's status as fal pushes it: ``GET .../requests/{id}/status/stream`` (server-sent events).

fal's queue keeps this connection open and sends one ``data:`` event (the status JSON, the same
shape the status route answers) whenever the request changes, ending with its COMPLETED event,
after which the stream ends. This is what ``@fal-ai/client``'s ``streamStatus`` (``mode:
"streaming"``) reads: it adds up the ``logs`` of every event, so an event carries only the log
lines that are new since the one before (the first carries every line so far). A new GET is a new
stream: it starts with the request's current status, so a client that lost its stream reconnects
and misses nothing but old log lines.

**Choices** where fal's docs are silent: a comment line (``: keep-alive``) every
:data:`KEEP_ALIVE` seconds on a quiet stream, so proxies do not close it as idle (fal-js gives up on
a stream after 15 s without a chunk); and the fault ``stream_cut``, which cuts a request's first
stream after its first event, as a network hiccup would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Response
from fastapi.responses import StreamingResponse

from klingflow.emulator.queue import EmulatedRequest
from klingflow.emulator.state import EmulatorState

__all__ = ["KEEP_ALIVE", "status_body", "status_stream"]

KEEP_ALIVE = 5.0
"""Seconds of silence after which a stream gets a comment line."""
_SSE = "text/event-stream"
_TICK = 0.05
"""Seconds between looks at a request's queue position and log lines (completion wakes it at once)."""


def status_body(state: EmulatorState, req: EmulatedRequest, base: str, with_logs: bool) -> dict[str, Any]:
    """The status JSON of one request, as the status route and every stream event carry it."""
    body: dict[str, Any] = {"status": req.status, "request_id": req.id, "response_url": base}
    if req.status == "IN_QUEUE":
        body["queue_position"] = state.queue.position(req)
    else:
        body["logs"] = list(req.logs) if with_logs else None
    if req.status == "COMPLETED":
        started = req.started_at or req.submitted_at
        body["metrics"] = {"inference_time": round((req.completed_at or started) - started, 3)}
        if req.error:  # an input the model refused (422) carries no error here: the result tells
            body["error"], body["error_type"] = req.error, req.error_type
    return body


def _event(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body)}\n\n".encode()


async def _events(
    state: EmulatorState, req: EmulatedRequest, base: str, with_logs: bool
) -> AsyncIterator[bytes]:
    """The stream's chunks: the current status, then every change, until COMPLETED."""
    sent_logs = 0
    last: tuple[str, int | None] | None = None
    quiet_since = time.monotonic()
    while True:
        state.queue.refresh(req)
        body = status_body(state, req, base, with_logs)
        if with_logs and body.get("logs") is not None:
            body["logs"], sent_logs = body["logs"][sent_logs:], len(body["logs"])
        shape = (body["status"], body.get("queue_position"))
        if shape != last or body.get("logs") or req.status == "COMPLETED":
            last, quiet_since = shape, time.monotonic()
            yield _event(body)
        elif time.monotonic() - quiet_since >= KEEP_ALIVE:
            quiet_since = time.monotonic()
            yield b": keep-alive\n\n"
        if req.status == "COMPLETED":
            return
        try:
            await asyncio.wait_for(req.done.wait(), timeout=_TICK)
        except TimeoutError:
            pass


class _CutStream(Response):
    """Sends the stream's first event, then leaves the body unfinished: the connection is closed."""

    def __init__(self, events: AsyncIterator[bytes], headers: dict[str, str]) -> None:
        super().__init__()
        self._events = events
        self._head = [(k.encode(), v.encode()) for k, v in {**headers, "content-type": _SSE}.items()]

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self._head})
        async for chunk in self._events:
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
            break
        # returning with the body unfinished: the server closes the connection (and logs one line)


def status_stream(state: EmulatorState, req: EmulatedRequest, base: str, with_logs: bool) -> Response:
    """The streaming answer for one request (its ``stream_cut`` fault cuts the first one, once)."""
    state.counts["status_streams"] += 1
    headers = {"x-fal-request-id": req.id, "cache-control": "no-cache"}
    events = _events(state, req, base, with_logs)
    if req.fault == "stream_cut":
        req.fault = None
        state.counts["status_streams_cut"] += 1
        return _CutStream(events, headers)
    return StreamingResponse(events, media_type=_SSE, headers=headers)
