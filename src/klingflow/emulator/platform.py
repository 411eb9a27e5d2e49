"""fal's Platform API v1, the parts klingflow needs: request history and unit prices.

Served on the queue socket, and reached as ``https://api.fal.ai`` through the emulator's tunnel.

``GET /v1/models/requests/by-endpoint`` (fal docs: Platform APIs > Models > Requests by endpoint)
lists the requests this key made to ``endpoint_id`` (one, or several comma-separated/repeated),
``start`` <= ended_at < ``end`` (ISO 8601; defaults: the last 24 hours), optionally ``status``
(``success`` 2xx, ``user_error`` 4xx, ``error`` 5xx) and ``request_id``; ``sort_by`` ``ended_at``
(default) or ``duration``, both **newest/longest first**; ``limit`` 1..100 (default 50) with
``cursor`` = base64 of the page number, as fal's ("Mg==" is page 2). Answer::

    {"items": [{"request_id", "endpoint_id", "sent_at", "started_at", "ended_at",
                "status_code", "duration", "json_input", "json_output"}],
     "next_cursor": "Mg==" | null, "has_more": bool}

``json_input``/``json_output`` only with ``expand=payloads``. Every request the queue (or the run
host) accepted is listed once it has ended, whether or not its submit answer reached the client:
this is the record of what was accepted, and billed. ``json_input`` is the body exactly as
received; ``json_output`` is what the result fetch answers (the output, or the error body).
Requests still queued or running are not listed (fal sorts by end time; its docs do not say it
lists unfinished ones), and a request refused at submit never is.

``GET /v1/models/pricing?endpoint_id=...`` (one or several) answers fal's public unit prices from
klingflow's endpoint table (``EndpointInfo.unit_price``/``price_unit``, not the ``KLINGFLOW_PRICES``
overrides, which are klingflow's belief, not fal's)::

    {"prices": [{"endpoint_id", "unit_price", "unit", "currency": "USD"}],
     "next_cursor": null, "has_more": false}
"""

from __future__ import annotations

import base64
import binascii
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from klingflow.emulator.queue import EmulatedRequest
from klingflow.emulator.responses import error
from klingflow.emulator.state import EmulatorState
from klingflow.emulator.webhooks import error_body
from klingflow.endpoints import ENDPOINTS

__all__ = ["add_platform_routes", "iso"]

_DEFAULT_WINDOW = timedelta(hours=24).total_seconds()
_STATUS_CLASSES = {"success": range(200, 300), "user_error": range(400, 500), "error": range(500, 600)}


def iso(stamp: float | None) -> str | None:
    """A Unix time as fal's ISO 8601 UTC form (``2025-01-01T00:00:05.123Z``)."""
    if stamp is None:
        return None
    return datetime.fromtimestamp(stamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _parse_time(value: str) -> float:
    text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _many(request: Request, name: str) -> list[str]:
    return [
        part.strip()
        for value in request.query_params.getlist(name)
        for part in value.split(",")
        if part.strip()
    ]


def _detail(loc: str, msg: str) -> list[dict[str, Any]]:
    return [{"loc": ["query", loc], "msg": msg, "type": "value_error"}]


def _item(req: EmulatedRequest, payloads: bool) -> dict[str, Any]:
    started = req.started_at or req.completed_at
    item: dict[str, Any] = {
        "request_id": req.id,
        "endpoint_id": req.endpoint_id,
        "sent_at": iso(req.submitted_at),
        "started_at": iso(started),
        "ended_at": iso(req.completed_at),
        "status_code": req.status_code,
        "duration": round((req.completed_at or 0) - (started or 0), 3),
    }
    if payloads:
        item["json_input"] = req.raw_input
        item["json_output"] = req.result if req.status_code == 200 else error_body(req)
    return item


def add_platform_routes(app: FastAPI, state: EmulatorState) -> None:
    """Register ``/v1/models/requests/by-endpoint`` and ``/v1/models/pricing`` on ``app``."""

    def key_ok(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Key {state.key}"

    @app.get("/v1/models/requests/by-endpoint")
    async def requests_by_endpoint(request: Request) -> Response:
        if not key_ok(request):
            return error(401, "Invalid or missing API key")
        state.counts["platform_requests"] += 1
        endpoints = set(_many(request, "endpoint_id"))
        if not endpoints:
            return error(422, _detail("endpoint_id", "Field required"))
        query = request.query_params
        now = time.time()
        try:
            start = _parse_time(query["start"]) if "start" in query else now - _DEFAULT_WINDOW
            end = _parse_time(query["end"]) if "end" in query else now + 1e-3
        except ValueError as exc:
            return error(422, _detail("start/end", f"not an ISO 8601 date: {exc}"))
        try:
            limit = int(query.get("limit", "50"))
            page = int(base64.b64decode(query["cursor"], validate=True).decode()) if "cursor" in query else 1
        except (ValueError, binascii.Error):
            return error(422, _detail("limit/cursor", "limit must be an integer, cursor one we gave"))
        if not 1 <= limit <= 100 or page < 1:
            return error(422, _detail("limit", "limit must be between 1 and 100"))
        wanted = query.get("status")
        if wanted is not None and wanted not in _STATUS_CLASSES:
            return error(422, _detail("status", f"must be one of {', '.join(_STATUS_CLASSES)}"))
        sort_by = query.get("sort_by", "ended_at")
        if sort_by not in ("ended_at", "duration"):
            return error(422, _detail("sort_by", "must be ended_at or duration"))
        only_id = query.get("request_id")
        payloads = "payloads" in _many(request, "expand")
        chosen = [
            req
            for req in list(state.queue.requests.values())
            if req.endpoint_id in endpoints
            and req.completed_at is not None
            and start <= req.completed_at < end
            and (wanted is None or (req.status_code or 0) in _STATUS_CLASSES[wanted])
            and (only_id is None or req.id == only_id)
        ]
        if sort_by == "duration":
            chosen.sort(
                key=lambda r: (r.completed_at or 0) - (r.started_at or r.completed_at or 0), reverse=True
            )
        else:
            chosen.sort(key=lambda r: r.completed_at or 0, reverse=True)
        page_items = chosen[(page - 1) * limit : page * limit]
        has_more = len(chosen) > page * limit
        return JSONResponse(
            {
                "items": [_item(req, payloads) for req in page_items],
                "next_cursor": base64.b64encode(str(page + 1).encode()).decode() if has_more else None,
                "has_more": has_more,
            }
        )

    @app.get("/v1/models/pricing")
    async def pricing(request: Request) -> Response:
        if not key_ok(request):
            return error(401, "Invalid or missing API key")
        state.counts["platform_requests"] += 1
        wanted = _many(request, "endpoint_id")
        if not wanted:
            return error(422, _detail("endpoint_id", "Field required"))
        unknown = [name for name in wanted if name not in ENDPOINTS]
        if unknown:
            return error(404, f"Unknown endpoint id(s): {', '.join(unknown)}")
        prices = [
            {
                "endpoint_id": name,
                "unit_price": ENDPOINTS[name].unit_price,
                "unit": ENDPOINTS[name].price_unit,
                "currency": "USD",
            }
            for name in dict.fromkeys(wanted)
        ]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})
