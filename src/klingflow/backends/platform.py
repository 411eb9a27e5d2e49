"""fal's Platform API: an account's request history and unit prices.

fal documents no idempotency key, so the only way to learn whether a submit whose answer was lost
was accepted is to ask which requests the account made: ``GET {api}/models/requests/by-endpoint``
(``endpoint_id``, ``start``, ``expand=payloads``, cursor-paginated; newest first, requests that
have ended). :func:`find_request` looks for one whose input is exactly the body klingflow sent
(compared by :func:`payload_digest`). ``GET {api}/models/pricing`` gives unit prices, so a ledger
row's cost can be fal's billable units times fal's price rather than an estimate.

fal_client has no call for these, so they go through the HTTP client fal_client configured for the
key (:meth:`~klingflow.backends.fal.FalBackend.http`); ``api.fal.ai`` is reached like fal's other
fixed hosts (through the emulator's tunnel when the emulator is the backend).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, field_validator

from klingflow.errors import ConnectionLost, ServerError, error_for_status

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend

__all__ = ["PLATFORM_URL", "HistoryItem", "find_request", "payload_digest", "request_history", "unit_prices"]

PLATFORM_URL = "https://api.fal.ai/v1"
_PAGE = 50


def payload_digest(body: dict[str, Any]) -> str:
    """sha256 of a request body as canonical JSON: equal bodies, equal digests."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


class HistoryItem(BaseModel):
    """One request fal's history lists."""

    request_id: str
    endpoint_id: str
    sent_at: datetime | None = None
    ended_at: datetime | None = None
    json_input: dict[str, Any] | None = None

    @field_validator("sent_at", "ended_at")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        """fal's times are UTC; a time without an offset is taken as UTC."""
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


async def _get(backend: FalBackend, path: str, params: Mapping[str, str | Sequence[str]]) -> dict[str, Any]:
    """GET a platform API page; a sequence value is sent as the key repeated, once per item."""
    client = await backend.http()
    try:
        response = await client.get(f"{PLATFORM_URL}{path}", params=params, timeout=30)
    except httpx.HTTPError as exc:
        raise ConnectionLost(f"fal's platform API did not answer ({type(exc).__name__}: {exc})") from exc
    if response.status_code >= 400:
        raise error_for_status(response.status_code)(
            f"fal's platform API answered {response.status_code}: {response.text[:300]}",
            status_code=response.status_code,
        )
    try:
        return dict(response.json())
    except ValueError as exc:
        raise ServerError("fal's platform API answered something that is not JSON") from exc


async def request_history(backend: FalBackend, endpoint_id: str, since: datetime) -> list[HistoryItem]:
    """Every request of this key's account for ``endpoint_id`` that ended since ``since``, with inputs."""
    items: list[HistoryItem] = []
    cursor: str | None = None
    while True:
        params = {
            "endpoint_id": endpoint_id,
            "start": since.isoformat(),
            "expand": "payloads",
            "limit": str(_PAGE),
        }
        if cursor:
            params["cursor"] = cursor
        page = await _get(backend, "/models/requests/by-endpoint", params)
        items += [HistoryItem.model_validate(item) for item in page.get("items", [])]
        cursor = page.get("next_cursor")
        if not page.get("has_more") or not cursor:
            return items


async def find_request(
    backend: FalBackend, endpoint_id: str, digest: str, since: datetime, *, exclude: Collection[str] = ()
) -> HistoryItem | None:
    """The request in fal's history whose input is the body with this digest, if fal lists one."""
    for item in await request_history(backend, endpoint_id, since):
        if item.request_id in exclude or item.json_input is None:
            continue
        if item.sent_at is not None and item.sent_at < since:
            continue  # an older request with the same body (fal filters on when requests ended)
        if payload_digest(item.json_input) == digest:
            return item
    return None


async def unit_prices(backend: FalBackend, endpoint_ids: list[str]) -> dict[str, float]:
    """fal's unit price (USD per billable unit) of each endpoint it knows."""
    page = await _get(backend, "/models/pricing", {"endpoint_id": endpoint_ids})
    return {
        str(p["endpoint_id"]): float(p["unit_price"]) for p in page.get("prices", []) if "unit_price" in p
    }
