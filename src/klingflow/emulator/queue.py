"""The emulator's request queue: IN_QUEUE -> IN_PROGRESS -> COMPLETED, like fal's.

A fixed number of workers take requests in order; each spends the configured latency "running"
(emitting log lines as fal apps do) and then renders the output with ffmpeg in a thread. Queue
positions, cancellation, start timeouts (``X-Fal-Request-Timeout``) and the faults that act after
submission (stuck, error) are handled here. Everything runs on the server's event loop; the
counters are what tests read to prove "one submit per step".
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["EmulatedRequest", "RequestQueue", "Renderer"]

Status = Literal["IN_QUEUE", "IN_PROGRESS", "COMPLETED"]
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
        self, *, result: dict[str, Any] | None = None, error: str | None = None, error_type: str | None = None
    ) -> None:
        """Move to COMPLETED with a result or an error, and wake anyone waiting."""
        if self.status == "COMPLETED":
            return
        self.status, self.result, self.error, self.error_type = "COMPLETED", result, error, error_type
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
    ) -> EmulatedRequest:
        """Accept a request and queue it."""
        request = EmulatedRequest(
            id=str(uuid.uuid4()),
            endpoint_id=endpoint_id,
            arguments=arguments,
            base_url=base_url,
            fault=fault,
            start_deadline=time.monotonic() + start_timeout if start_timeout else None,
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
            )
        return request

    def position(self, request: EmulatedRequest) -> int:
        """0-based position among waiting requests; a stuck request stays behind all of them."""
        if request in self._waiting:
            return self._waiting.index(request)
        return len(self._waiting)

    def cancel(self, request: EmulatedRequest) -> bool:
        """Cancel a request that has not completed; False if it already had."""
        if request.status == "COMPLETED":
            return False
        request.cancelled = True
        if request in self._waiting:
            self._waiting.remove(request)
        request.log("Request cancelled by the client")
        request.finish(error="Request was cancelled", error_type="request_cancelled")
        return True

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
        request.status, request.started_at = "IN_PROGRESS", time.time()
        request.log(f"Starting {request.endpoint_id} on the klingflow emulator")
        for step in range(1, _PROGRESS_STEPS + 1):
            await asyncio.sleep(self.latency / _PROGRESS_STEPS)
            if request.cancelled:
                return
            request.log(f"Generating: {100 * step // _PROGRESS_STEPS}%")
        if request.fault == "error":
            request.log("Emulated model failure", level="ERROR")
            request.finish(error="Emulated model failure (fault injected)", error_type="runner_error")
            return
        try:
            result = await self._render(request)
        except Exception as exc:  # a render failure is reported to the client, as fal does
            request.log(f"Render failed: {exc}", level="ERROR")
            request.finish(error=f"Render failed: {exc}", error_type="runner_error")
            return
        if not request.cancelled:
            request.log("Done: output uploaded")
            request.finish(result=result)
