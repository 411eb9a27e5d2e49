"""The emulator's request queue: IN_QUEUE -> IN_PROGRESS -> COMPLETED, like fal's.

A fixed number of workers take requests in order; each spends the configured latency "running"
(emitting log lines as fal apps do) and then renders the output with ffmpeg in a thread. Queue
positions, cancellation, start timeouts (``X-Fal-Request-Timeout``) and the faults that act after
submission (stuck, infrastructure errors) are handled here. Everything runs on the server's event
loop; the counters are what tests read to prove "one submit per step".

As on fal, nothing ever ends FAILED: a request ends COMPLETED, and ``status_code`` says what its
result fetch answers (200; 422 for input the model refused; 499/503/504/500 with an ``error_type``
for cancellations and infrastructure errors).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from klingflow.emulator.faults import INFRA_ERRORS

__all__ = ["CancelOutcome", "EmulatedRequest", "RequestQueue", "Renderer"]

Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
CancelOutcome = Literal["OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED"]
Renderer = Callable[["EmulatedRequest"], Awaitable[dict[str, Any]]]

_PROGRESS_STEPS = 4


@dataclass
class EmulatedRequest:
    """One request's state, as the status and result routes report it."""

    id: str
    endpoint_id: str
    arguments: dict[str, Any]
    base_url: str
    fault: str | None = None
    start_deadline: float | None = None
    raw_input: Any = None
    invalid: list[dict[str, Any]] | None = None
    direct: bool = False
    webhook_url: str | None = None
    media_ttl: float | None = None
    billable_units: float | None = None
    status_code: int | None = None
    cancel_requested: bool = False
    status: Status = "IN_QUEUE"
    logs: list[dict[str, Any]] = field(default_factory=list)
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    completed_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    error_type: str | None = None
    cancelled: bool = False
    timed_out: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def log(self, message: str, level: str = "INFO") -> None:
        """Append a log line in fal's shape (message, level, source, timestamp)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{int(time.time() * 1e6) % 10**6:06d}"
        self.logs.append({"message": message, "level": level, "source": "user", "timestamp": stamp})

    def finish(
        self,
        *,
        result: dict[str, Any] | None = None,
        error: str | None = None,
        error_type: str | None = None,
        status_code: int = 200,
    ) -> None:
        """Move to COMPLETED with a result or an error, and wake anyone waiting."""
        if self.status == "COMPLETED":
            return
        self.status, self.result, self.error, self.error_type = "COMPLETED", result, error, error_type
        self.status_code = status_code
        self.completed_at = time.time()
        self.done.set()


class RequestQueue:
    """Runs requests through ``workers`` concurrent slots with ``latency`` seconds each."""

    def __init__(self, *, render: Renderer, workers: int = 2, latency: float = 0.5) -> None:
        self._render = render
        self.workers = workers
        self.latency = latency
        self.requests: dict[str, EmulatedRequest] = {}
        self._waiting: list[EmulatedRequest] = []
        self._wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.max_open = 0

    def start(self) -> None:
        """Start the worker tasks on the running loop."""
        self._tasks = [asyncio.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        """Cancel the workers (requests in flight are abandoned, as in a crash)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def open_count(self) -> int:
        """Requests submitted and not yet completed (what a concurrency cap limits)."""
        return sum(1 for r in self.requests.values() if r.status != "COMPLETED")

    def submit(
        self,
        endpoint_id: str,
        arguments: dict[str, Any],
        *,
        base_url: str,
        fault: str | None = None,
        start_timeout: float | None = None,
        **details: Any,
    ) -> EmulatedRequest:
        """Accept a request and queue it (``details`` are further :class:`EmulatedRequest` fields)."""
        request = EmulatedRequest(
            id=str(uuid.uuid4()),
            endpoint_id=endpoint_id,
            arguments=arguments,
            base_url=base_url,
            fault=fault,
            start_deadline=time.monotonic() + start_timeout if start_timeout else None,
            **details,
        )
        self.requests[request.id] = request
        if fault != "stuck":
            self._waiting.append(request)
            self._wakeup.set()
        self.max_open = max(self.max_open, self.open_count())
        return request

    def refresh(self, request: EmulatedRequest) -> EmulatedRequest:
        """Apply a start timeout that expired while the request waited, then return it."""
        if (
            request.status == "IN_QUEUE"
            and request.start_deadline is not None
            and time.monotonic() > request.start_deadline
        ):
            request.timed_out = True
            if request in self._waiting:
                self._waiting.remove(request)
            request.finish(
                error="Request timed out before it started (X-Fal-Request-Timeout)",
                error_type="request_timeout",
                status_code=504,
            )
        return request

    def position(self, request: EmulatedRequest) -> int:
        """0-based position among waiting requests; a stuck request stays behind all of them."""
        if request in self._waiting:
            return self._waiting.index(request)
        return len(self._waiting)

    def cancel(self, request: EmulatedRequest) -> CancelOutcome:
        """Cancel a request, as fal does: a queued one is removed at once ("OK"), a running one is
        signalled and stops at its next step ("CANCELLATION_REQUESTED")."""
        self.refresh(request)
        if request.status == "COMPLETED":
            return "ALREADY_COMPLETED"
        if request.status == "IN_PROGRESS":
            request.cancel_requested = True
            request.log("Cancellation requested by the client")
            return "CANCELLATION_REQUESTED"
        if request in self._waiting:
            self._waiting.remove(request)
        self._cancelled(request)
        return "OK"

    @staticmethod
    def _cancelled(request: EmulatedRequest) -> None:
        request.cancelled = True
        request.log("Request cancelled by the client")
        request.finish(error="Request was cancelled", error_type="client_cancelled", status_code=499)

    async def _work(self) -> None:
        while True:
            while not self._waiting:
                self._wakeup.clear()
                await self._wakeup.wait()
            request = self.refresh(self._waiting[0])
            if request.status == "COMPLETED":
                continue
            self._waiting.pop(0)
            await self._process(request)

    async def _process(self, request: EmulatedRequest) -> None:
        if request.fault in ("startup_timeout", "runner_scheduling_failure"):
            await asyncio.sleep(self.latency / _PROGRESS_STEPS)
            self._infra_error(request)
            return
        request.status, request.started_at = "IN_PROGRESS", time.time()
        request.log(f"Starting {request.endpoint_id} on the klingflow emulator")
        if request.invalid is not None:
            await asyncio.sleep(self.latency / _PROGRESS_STEPS)
            request.log("Input validation failed (the result answers 422)", level="ERROR")
            request.finish(result={"detail": request.invalid}, status_code=422)
            return
        for step in range(1, _PROGRESS_STEPS + 1):
            await asyncio.sleep(self.latency / _PROGRESS_STEPS)
            if request.cancel_requested:
                self._cancelled(request)
                return
            request.log(f"Generating: {100 * step // _PROGRESS_STEPS}%")
        if request.fault in INFRA_ERRORS:
            self._infra_error(request)
            return
        try:
            result = await self._render(request)
        except Exception as exc:  # a render failure is reported to the client, as fal does
            request.log(f"Render failed: {exc}", level="ERROR")
            request.finish(error=f"Render failed: {exc}", error_type="runner_server_error", status_code=500)
            return
        if request.cancel_requested:
            self._cancelled(request)
            return
        request.log("Done: output uploaded")
        request.finish(result=result)

    @staticmethod
    def _infra_error(request: EmulatedRequest) -> None:
        status_code, error_type = INFRA_ERRORS[str(request.fault)]
        message = f"Emulated {error_type} (fault injected)"
        if request.fault == "error":
            message = "Emulated model failure (fault injected)"
        request.log(message, level="ERROR")
        request.finish(error=message, error_type=error_type, status_code=status_code)
