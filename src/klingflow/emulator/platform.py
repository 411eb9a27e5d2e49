"""fal's Platform API v1, the parts klingflow needs: request history and unit prices.

Served on the queue socket, and reached as ``https://api.fal.ai`` through the emulator's tunnel.

``GET /v1/models?endpoint_id=ID[&endpoint_id=ID...]&expand=openapi-3.0`` (fal docs: Platform APIs >
Models > Model search, find mode: 1 to 50 ids, repeated or comma-separated; the key is optional)
answers each endpoint the registry knows with a schema, in fal's shape::

    {"models": [{"endpoint_id", "metadata": {"display_name", "category", "status", ...},
                 "openapi": {OpenAPI 3.0 queue document}}],
     "next_cursor": null, "has_more": false}

The document is built from the registry's JSON Schemas (``klingflow.endpoints.openapi_document``:
submit, status, cancel and result paths, the schemas under ``components/schemas``), so a refresh
against the emulator gives back exactly the schemas it has. An id without a schema carries fal's
``{"error": {"code": "expansion_failed"}}`` instead; an unknown id is left out. Without
``endpoint_id`` the route lists every endpoint (list mode: ``limit``, ``cursor``) without documents.

Tests make the emulator answer what fal might answer after a change with ``POST /_emulator/models``
(admin, with the emulator's key): ``{ID: {"input": PATCH, "output": PATCH, "unit_price": USD,
"unit": UNIT, "metadata": {...}}}``, each PATCH a JSON merge patch (RFC 7386) onto that schema; an id
the registry does not know becomes a new endpoint (its ``input`` and ``output`` are then the whole
schemas). The body replaces every earlier change, ``{}`` clears them, and so does
``POST /_emulator/reset``. The pricing route answers the changed prices too.

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
each endpoint's price rule in the registry (``EndpointInfo.price``: ``usd`` as ``unit_price``, its
``unit`` -- ``second``, ``output-second``, ``input-second``, ``image``, ``request``), not the
``KLINGFLOW_PRICES`` overrides, which are klingflow's belief, not fal's::

    {"prices": [{"endpoint_id", "unit_price", "unit", "currency": "USD"}],
     "next_cursor": null, "has_more": false}

An endpoint with no known price rule is left out of ``prices`` (the emulator would rather say
nothing than state a price fal never published); an id the registry does not know answers 404.
"""

from __future__ import annotations

import base64
import binascii
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from klingflow.emulator.queue import EmulatedRequest
from klingflow.emulator.responses import error, validation_detail
from klingflow.emulator.state import EmulatorState
from klingflow.emulator.webhooks import error_body
from klingflow.endpoints import ENDPOINTS, EndpointRecord, openapi_document

__all__ = ["ModelChange", "add_models_routes", "add_platform_routes", "iso"]

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
    add_models_routes(app, state)

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
        unknown = [name for name in wanted if not _known(state, name)]
        if unknown:
            return error(404, f"Unknown endpoint id(s): {', '.join(unknown)}")
        prices = [entry for name in dict.fromkeys(wanted) if (entry := _price(state, name)) is not None]
        return JSONResponse({"prices": prices, "next_cursor": None, "has_more": False})


_MAX_IDS = 50


class ModelChange(BaseModel):
    """What the platform API answers differently for one endpoint (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    input: dict[str, Any] | None = None
    output: dict[str, Any] | None = None
    unit_price: float | None = Field(None, ge=0)
    unit: str | None = None
    metadata: dict[str, Any] = {}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, ``null`` removes a key, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = _merge_patch(merged.get(key), value)
    return merged


def _changed_price(state: EmulatorState, endpoint_id: str) -> tuple[float, str] | None:
    """(unit price, unit) a test set for ``endpoint_id`` with ``POST /_emulator/models``, if any."""
    change = state.model_changes.get(endpoint_id) or {}
    if change.get("unit_price") is None:
        return None
    info = ENDPOINTS.get(endpoint_id)
    unit = change.get("unit") or (info.price.unit if info is not None and info.price else "request")
    return float(change["unit_price"]), str(unit)


def _price(state: EmulatorState, endpoint_id: str) -> dict[str, Any] | None:
    """One ``prices`` entry: a test's changed price, else the registry's rule; None when neither is known."""
    changed = _changed_price(state, endpoint_id)
    if changed is None:
        info = ENDPOINTS.get(endpoint_id)
        if info is None or info.price is None:
            return None
        changed = info.price.usd, info.price.unit
    return {"endpoint_id": endpoint_id, "unit_price": changed[0], "unit": changed[1], "currency": "USD"}


def _known(state: EmulatorState, endpoint_id: str) -> bool:
    return endpoint_id in state.model_changes or endpoint_id in ENDPOINTS


def _schema(record: EndpointRecord | None, patch: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    """The registry's input or output schema with a test's merge patch applied."""
    base: dict[str, Any] | None = getattr(record, name) if record is not None else None
    return base if patch is None else _merge_patch(base or {}, patch)


def _model(state: EmulatorState, endpoint_id: str, expand: bool) -> dict[str, Any]:
    """One ``models`` entry: fal's metadata and, expanded, the OpenAPI document (or fal's error)."""
    info = ENDPOINTS.get(endpoint_id)
    record = info.record if info is not None else None
    change = state.model_changes.get(endpoint_id) or {}
    metadata: dict[str, Any] = {
        "display_name": record.title if record else endpoint_id,
        "category": (record.mode if record else "").split("/")[0] or "video",
        "status": "active" if record is None or record.live else "deprecated",
        "tags": [],
        "updated_at": str((record.source if record else {}).get("date") or ""),
        "model_url": f"https://fal.run/{endpoint_id}",
        **change.get("metadata", {}),
    }
    entry: dict[str, Any] = {"endpoint_id": endpoint_id, "metadata": metadata}
    if expand:
        schemas = [_schema(record, change.get(name), name) for name in ("input", "output")]
        if schemas[0] and schemas[1]:
            entry["openapi"] = openapi_document(endpoint_id, schemas[0], schemas[1])
        else:
            entry["openapi"] = {
                "error": {"code": "expansion_failed", "message": "no OpenAPI document for this endpoint"}
            }
    return entry


def add_models_routes(app: FastAPI, state: EmulatorState) -> None:
    """Register ``GET /v1/models`` and the test hook ``GET|POST /_emulator/models`` on ``app``."""

    def key_ok(request: Request, *, optional: bool) -> bool:
        given = request.headers.get("authorization")
        return (optional and given is None) or given == f"Key {state.key}"

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        if not key_ok(request, optional=True):
            return error(401, "Invalid API key")
        state.counts["platform_requests"] += 1
        wanted = list(dict.fromkeys(_many(request, "endpoint_id")))
        expand = "openapi-3.0" in _many(request, "expand")
        if len(wanted) > _MAX_IDS:
            return error(422, _detail("endpoint_id", f"at most {_MAX_IDS} endpoint ids per request"))
        if wanted:
            found = [_model(state, name, expand) for name in wanted if _known(state, name)]
            return JSONResponse({"models": found, "next_cursor": None, "has_more": False})
        query = request.query_params
        try:
            limit = int(query.get("limit", "50"))
            page = int(base64.b64decode(query["cursor"], validate=True).decode()) if "cursor" in query else 1
        except (ValueError, binascii.Error):
            return error(422, _detail("limit/cursor", "limit must be an integer, cursor one we gave"))
        if not 1 <= limit <= 100 or page < 1:
            return error(422, _detail("limit", "limit must be between 1 and 100"))
        every = sorted({*ENDPOINTS, *state.model_changes})
        chosen = every[(page - 1) * limit : page * limit]
        has_more = len(every) > page * limit
        return JSONResponse(
            {
                "models": [_model(state, name, expand) for name in chosen],
                "next_cursor": base64.b64encode(str(page + 1).encode()).decode() if has_more else None,
                "has_more": has_more,
            }
        )

    @app.get("/_emulator/models")
    async def get_changes(request: Request) -> Response:
        if not key_ok(request, optional=False):
            return error(401, "Invalid or missing API key")
        return JSONResponse(state.model_changes)

    @app.post("/_emulator/models")
    async def set_changes(request: Request) -> Response:
        if not key_ok(request, optional=False):
            return error(401, "Invalid or missing API key")
        try:
            body = await request.json()
            changes = {str(name): ModelChange.model_validate(change) for name, change in dict(body).items()}
        except ValidationError as exc:
            return error(422, validation_detail(exc))
        except (ValueError, TypeError):
            return error(422, [{"loc": ["body"], "msg": "expected a JSON object of endpoint id -> change",
                                "type": "json_invalid"}])  # fmt: skip
        new = [
            name
            for name, change in changes.items()
            if name not in ENDPOINTS and not (change.input and change.output)
        ]
        if new:
            return error(
                422, _detail("body", f"a new endpoint needs whole input and output schemas: {', '.join(new)}")
            )
        state.model_changes = {name: change.model_dump(exclude_none=True) for name, change in changes.items()}
        return JSONResponse(state.model_changes)
