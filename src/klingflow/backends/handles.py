"""What the rest of klingflow knows about a fal request, without importing fal_client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

__all__ = ["QueueEvent", "RequestHandle"]


class RequestHandle(BaseModel):
    """A submitted request: enough to poll, fetch or cancel it later, from any process."""

    endpoint: str
    request_id: str


class QueueEvent(BaseModel):
    """One status observation: queue position while queued, new log lines while running."""

    request_id: str
    status: str
    queue_position: int | None = None
    logs: list[dict[str, Any]] = []
