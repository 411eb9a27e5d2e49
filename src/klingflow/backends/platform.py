"""fal's Platform API: an account's request history and unit prices.

fal documents no idempotency key, so the only way to learn whether a submit whose answer was lost
was accepted is to ask which requests the account made: ``GET {api}/models/requests/by-endpoint``
(``endpoint_id``, ``start``, ``expand=payloads``, cursor-paginated; newest first, requests that
have ended). :func:`find_request` looks for one whose input is exactly the body klingflow sent
(compared by :func:`payload_digest`). ``GET {api}/models/pricing`` gives unit prices, so a ledger
row's cost can be fal's billable units times fal's price rather than an estimate.

``GET {api}/models?endpoint_id=...&expand=openapi-3.0`` (1 to 50 ids a call) gives each endpoint's
metadata and queue OpenAPI document: :func:`refresh_endpoints` turns those and fal's prices into
endpoint records (:func:`klingflow.endpoints.refreshed_record`) and stores them in the home, which
is what ``klingflow endpoints refresh`` and a pipeline naming an endpoint klingflow has not
vendored use.

fal_client has no call for these, so they go through the HTTP client fal_client configured for the
key (:meth:`~klingflow.backends.fal.FalBackend.http`); ``api.fal.ai`` is reached like fal's other
fixed hosts (through the emulator's tunnel when the emulator is the backend).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import httpx
from pydantic import BaseModel, field_validator

from klingflow.endpoints import (
    EndpointRecord,
    forget_endpoint,
    record_of,
    refreshed_record,
    store_refreshed,
)
from klingflow.errors import ConnectionLost, NotFound, ServerError, error_for_status

if TYPE_CHECKING:
    from klingflow.backends.fal import FalBackend

__all__ = [
    "PLATFORM_URL",
    "FalPrice",
    "HistoryItem",
    "Refreshed",
    "endpoint_models",
    "find_request",
    "payload_digest",
    "prices",
    "refresh_endpoints",
    "request_history",
    "unit_prices",
]

PLATFORM_URL = "https://api.fal.ai/v1"
_PAGE = 50
_IDS_PER_CALL = 50
"""fal's models and pricing APIs take at most 50 endpoint ids a call."""


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


def _batches(endpoint_ids: Sequence[str]) -> Iterator[list[str]]:
    unique = list(dict.fromkeys(endpoint_ids))
    for start in range(0, len(unique), _IDS_PER_CALL):
        yield unique[start : start + _IDS_PER_CALL]


@dataclass(frozen=True)
class FalPrice:
    """fal's price of one endpoint: USD per billable unit, and the unit as fal names it."""

    unit_price: float
    unit: str | None


async def prices(backend: FalBackend, endpoint_ids: Sequence[str]) -> dict[str, FalPrice]:
    """fal's price of each endpoint it prices (those it does not are left out)."""
    found: dict[str, FalPrice] = {}
    for batch in _batches(endpoint_ids):
        page = await _get(backend, "/models/pricing", {"endpoint_id": batch})
        for entry in page.get("prices", []):
            if entry.get("unit_price") is not None:
                unit = entry.get("unit")
                found[str(entry["endpoint_id"])] = FalPrice(float(entry["unit_price"]), unit and str(unit))
    return found


async def unit_prices(backend: FalBackend, endpoint_ids: list[str]) -> dict[str, float]:
    """fal's unit price (USD per billable unit) of each endpoint it knows."""
    return {
        endpoint_id: price.unit_price for endpoint_id, price in (await prices(backend, endpoint_ids)).items()
    }


async def endpoint_models(backend: FalBackend, endpoint_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """fal's model entry (``metadata``, ``openapi``) of each id it lists; unknown ids are left out."""
    found: dict[str, dict[str, Any]] = {}
    for batch in _batches(endpoint_ids):
        cursor: str | None = None
        while True:
            params: dict[str, str | list[str]] = {"endpoint_id": batch, "expand": "openapi-3.0"}
            if cursor:
                params["cursor"] = cursor
            page = await _get(backend, "/models", params)
            for model in page.get("models", []):
                if isinstance(model, dict) and model.get("endpoint_id") in batch:
                    found[str(model["endpoint_id"])] = model
            cursor = page.get("next_cursor")
            if not page.get("has_more") or not cursor:
                break
    return found


@dataclass(frozen=True)
class Refreshed:
    """What a refresh found for one endpoint id: the stored record and the one it replaced, or why not."""

    endpoint_id: str
    record: EndpointRecord | None
    previous: EndpointRecord | None
    problem: str = ""

    @property
    def changed(self) -> bool:
        """Whether the schemas differ from the ones klingflow used before (a new endpoint counts)."""
        return self.record is not None and (
            self.previous is None or self.previous.sha256 != self.record.sha256
        )


async def refresh_endpoints(backend: FalBackend, endpoint_ids: Sequence[str]) -> list[Refreshed]:
    """Fetch the schemas and prices of ``endpoint_ids`` from fal now and store them in the home.

    One models call and one pricing call per 50 ids. An id fal does not list, or lists without a
    usable OpenAPI document, is reported with its problem and nothing is stored for it (the record
    used until now stays). Each record names the backend it came from (``emulator`` or fal's host).
    """
    models = await endpoint_models(backend, endpoint_ids)
    try:
        priced = await prices(backend, list(models)) if models else {}
    except NotFound:  # an id fal's models API lists but its pricing API does not know
        priced = {}
    fetched_at = time.time()
    source = {"what": "fal's platform API (GET /v1/models, expand=openapi-3.0)", "backend": backend.identity}
    results = []
    for endpoint_id in dict.fromkeys(endpoint_ids):
        previous = record_of(endpoint_id)
        model = models.get(endpoint_id)
        if model is None:
            results.append(Refreshed(endpoint_id, None, previous, "fal does not list this endpoint id"))
            continue
        price = priced.get(endpoint_id)
        try:
            record = refreshed_record(
                model,
                known=previous,
                unit_price=price.unit_price if price else None,
                unit=price.unit if price else None,
                fetched_at=fetched_at,
                source=source,
            )
        except ValueError as exc:
            results.append(Refreshed(endpoint_id, None, previous, str(exc)))
            continue
        store_refreshed(record)
        forget_endpoint(endpoint_id)
        results.append(Refreshed(endpoint_id, record, previous))
    return results
