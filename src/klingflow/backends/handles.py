"""What the rest of klingflow knows about fal, without importing fal_client.

fal_client fixes its hosts when it is imported, so code that only needs to *describe* a backend
or a request (the engine, the journal, the plan) must not import it. A resolved backend
(:class:`BackendConfig`), a submitted request (:class:`RequestHandle`) and one status observation
(:class:`QueueEvent`) live here.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from pydantic import BaseModel, SecretStr

__all__ = ["BackendConfig", "BackendKind", "QueueEvent", "RequestHandle", "is_loopback"]

BackendKind = Literal["fal", "emulator"]


def is_loopback(netloc: str) -> bool:
    """True when ``host[:port]`` names this machine (an emulator, never real fal)."""
    host = urlparse(f"//{netloc}").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BackendConfig(BaseModel):
    """A resolved backend: the key (secret), the hosts fal_client uses, what to trust, and its identity.

    ``identity`` is what cache keys record about the backend (``emulator`` or ``fal:<queue host>``,
    never the key), so an emulator render is never served as a real fal output.
    """

    kind: BackendKind
    key: SecretStr
    queue_host: str
    run_host: str
    identity: str
    ca_bundle: Path | None = None


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
