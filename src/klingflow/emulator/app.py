"""HTTP routes of fal's protocols, served by the emulator.

Two listening sockets share this one app: requests arriving on the *queue* socket follow fal's
queue protocol (submit, status with logs, the status stream, result, cancel), requests on the
*run* socket follow the direct-run protocol (``POST {run host}/{endpoint id}`` answers the output
JSON). The routes accept both URL shapes fal_client uses: the full endpoint id, and owner/alias
only (``fal-ai/kling-video/requests/{id}/status``).

Besides the model routes the app serves fal's storage protocol (:mod:`~klingflow.emulator.storage`),
the Platform API's request history and prices (:mod:`~klingflow.emulator.platform`), the files
it rendered or received (``/files/...``, public like fal's CDN), and admin routes under
``/_emulator/`` for tests: ``stats``, ``reset``, ``faults``, ``config`` (see
:mod:`~klingflow.emulator.options`). What each fal behaviour is, and its source, is in
``docs/emulator.md``.
"""

from __future__ import annotations

import asyncio
import mimetypes
import re
from pathlib import PurePosixPath
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from klingflow.emulator.faults import SLOW_FILE_SECONDS, SUBMIT_FAULTS, FaultPlan
from klingflow.emulator.options import EmulatorOptions
from klingflow.emulator.platform import add_platform_routes
from klingflow.emulator.queue import EmulatedRequest
from klingflow.emulator.responses import (
    DroppedResponse,
    error,
    fault_response,
    moderation_detail,
    request_error,
    validation_detail,
)
from klingflow.emulator.state import EmulatorState
from klingflow.emulator.status_stream import status_body, status_stream
from klingflow.emulator.storage import add_storage_routes, lifecycle_seconds
from klingflow.emulator.webhooks import error_body
from klingflow.endpoints import ENDPOINTS, canonical_arguments, validate_input

__all__ = ["EmulatorState", "create_app"]

_REQUEST_PATH = re.compile(
    r"^(?P<app>.+?)/requests/(?P<id>[^/]+)(?P<action>/status/stream|/status|/cancel)?/?$"
)
_TIMEOUT_HEADER = "x-fal-request-timeout"
_TIMEOUT_TYPE_HEADER = "X-Fal-Request-Timeout-Type"
_BILLABLE_HEADER = "x-fal-billable-units"
_CANCEL_CODES = {"OK": 200, "CANCELLATION_REQUESTED": 202, "ALREADY_COMPLETED": 400, "NOT_FOUND": 404}


def _result_response(req: EmulatedRequest) -> Response:
    """What the result fetch (or the direct run) answers for a completed request."""
    if req.status_code == 200:
        headers = {"x-fal-request-id": req.id}
        if req.billable_units is not None:
            headers[_BILLABLE_HEADER] = f"{req.billable_units:g}"
        return JSONResponse(req.result, headers=headers)
    if req.status_code == 422:
        return JSONResponse(error_body(req), status_code=422, headers={"x-fal-request-id": req.id})
    response = request_error(
        req.status_code or 500, req.error or "", req.error_type or "internal_error", req.id
    )
    if req.timed_out:
        response.headers[_TIMEOUT_TYPE_HEADER] = "user"
    return response


def create_app(state: EmulatorState) -> FastAPI:
    """Build the FastAPI app over ``state`` (whoever serves it starts and stops ``state.queue``)."""

    app = FastAPI(title="klingflow fal emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = state

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Key {state.key}"

    def unauthorised() -> JSONResponse:
        return error(
            401,
            "No user found for Key ID and Secret (the emulator's key is printed by `klingflow emulator env`)",
        )

    def base_url(request: Request) -> str:
        return f"https://{request.headers.get('host', 'localhost')}"

    @app.get("/_emulator/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "emulator": "klingflow"}

    @app.get("/_emulator/stats")
    async def stats(request: Request) -> Response:
        return JSONResponse(state.stats()) if authorised(request) else unauthorised()

    @app.post("/_emulator/reset")
    async def reset(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        state.reset()
        return JSONResponse(state.stats())

    @app.post("/_emulator/faults")
    async def set_faults(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        try:
            plan = FaultPlan.model_validate(await request.json())
        except ValidationError as exc:
            return error(422, validation_detail(exc))
        state.faults.configure(plan)
        return JSONResponse(plan.model_dump())

    @app.get("/_emulator/config")
    async def get_config(request: Request) -> Response:
        return JSONResponse(state.options.model_dump()) if authorised(request) else unauthorised()

    @app.post("/_emulator/config")
    async def set_config(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        try:
            changes = await request.json()
            state.options = EmulatorOptions.model_validate({**state.options.model_dump(), **changes})
        except ValidationError as exc:
            return error(422, validation_detail(exc))
        except (ValueError, TypeError):
            return error(422, [{"loc": ["body"], "msg": "expected a JSON object", "type": "json_invalid"}])
        return JSONResponse(state.options.model_dump())

    add_storage_routes(app, state)
    add_platform_routes(app, state)

    @app.get("/files/{path:path}")
    async def files(path: str) -> Response:
        relative = PurePosixPath(path)
        target = state.data_dir / "files" / relative
        if ".." in relative.parts or not target.is_file():
            return error(404, "File not found")
        if state.file_expired(relative):
            target.unlink(missing_ok=True)
            return error(404, "File not found (expired)")
        owner = state.queue.requests.get(relative.parts[0])
        fault = owner.fault if owner else None
        if fault == "result_404":
            return error(404, "File not found (fault injected)")
        if fault == "slow_file":  # once: a file slow to arrive, as from a busy CDN
            owner.fault = None  # type: ignore[union-attr]
            await asyncio.sleep(SLOW_FILE_SECONDS)
        if fault == "truncated":  # once: a re-download gets the whole file, as after a network hiccup
            owner.fault = None  # type: ignore[union-attr]
            data = target.read_bytes()
            return Response(data[: len(data) // 2], media_type=mimetypes.guess_type(target.name)[0])
        return FileResponse(target)

    @app.get("/{path:path}")
    async def status_or_result(path: str, request: Request, logs: str = "0") -> Response:
        if not authorised(request):
            return unauthorised()
        match = _REQUEST_PATH.match(path)
        req = state.queue.requests.get(match["id"]) if match else None
        if match is None or req is None or match["action"] == "/cancel":
            return error(404, f"Request not found: {path}")
        state.queue.refresh(req)
        if state.result_expired(req):
            return error(404, f"Request not found: {req.id} (its result expired)", req.id)
        base = f"{base_url(request)}/{match['app']}/requests/{req.id}"
        if match["action"] == "/status/stream":
            return status_stream(state, req, base, logs.lower() in ("1", "true"))
        if match["action"] == "/status":
            state.counts["status_polls"] += 1
            return JSONResponse(
                status_body(state, req, base, logs.lower() in ("1", "true")),
                status_code=200 if req.status == "COMPLETED" else 202,
                headers={"x-fal-request-id": req.id},
            )
        if req.status != "COMPLETED":
            return error(400, "Request is still in progress", req.id)
        return _result_response(req)

    @app.put("/{path:path}")
    async def cancel(path: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        match = _REQUEST_PATH.match(path)
        req = state.queue.requests.get(match["id"]) if match else None
        if match is None or match["action"] != "/cancel":
            return error(404, f"Not found: {path}")
        state.counts["cancels"] += 1
        outcome = "NOT_FOUND" if req is None or state.result_expired(req) else state.queue.cancel(req)
        return JSONResponse({"status": outcome}, status_code=_CANCEL_CODES[outcome])

    @app.post("/{path:path}")
    async def submit_or_run(path: str, request: Request, fal_webhook: str | None = None) -> Response:
        if not authorised(request):
            return unauthorised()
        endpoint_id = path.strip("/")
        info = ENDPOINTS.get(endpoint_id)
        if info is None or info.record.input is None or info.record.output is None:
            # no schema, no model to run: fal no longer serves the retired ids either
            return error(404, f"Application '{endpoint_id}' not found")
        direct = request.scope["server"][1] in state.run_ports
        (state.runs if direct else state.submits)[endpoint_id] += 1
        fault = state.faults.choose(endpoint_id, info.alias)
        if fault in SUBMIT_FAULTS:
            return fault_response(str(fault), state.faults.plan.retry_after)
        invalid: list[dict[str, Any]] | None = None
        try:
            raw = await request.json()
            arguments = canonical_arguments(validate_input(endpoint_id, raw))
            invalid = moderation_detail(arguments)
        except ValidationError as exc:
            invalid = validation_detail(exc)
            if direct or state.options.validation == "submit":
                return error(422, invalid)
            arguments = raw if isinstance(raw, dict) else {}
        except ValueError:
            return error(422, [{"loc": ["body"], "msg": "body is not valid JSON", "type": "json_invalid"}])
        timeout = request.headers.get(_TIMEOUT_HEADER)
        req = state.queue.submit(
            endpoint_id,
            arguments,
            base_url=base_url(request),
            fault=fault,
            start_timeout=float(timeout) if timeout else None,
            raw_input=raw,
            invalid=invalid,
            direct=direct,
            webhook_url=None if direct else fal_webhook,
            media_ttl=lifecycle_seconds(request),
        )
        if req.webhook_url:
            state.webhooks.schedule(req)
        if direct:
            answer = await _run_directly(state, req)
        else:
            owner_alias = "/".join(endpoint_id.split("/")[:2])
            base = f"{base_url(request)}/{owner_alias}/requests/{req.id}"
            answer = JSONResponse(
                {
                    "status": "IN_QUEUE",
                    "request_id": req.id,
                    "gateway_request_id": req.id,
                    "response_url": base,
                    "status_url": f"{base}/status",
                    "cancel_url": f"{base}/cancel",
                    "queue_position": state.queue.position(req),
                },
                headers={"x-fal-request-id": req.id},
            )
        return DroppedResponse() if fault == "lost" else answer

    return app


async def _run_directly(state: EmulatorState, req: EmulatedRequest) -> Response:
    """The direct-run protocol: hold the connection until the request completes."""
    while not req.done.is_set():
        state.queue.refresh(req)
        try:
            await asyncio.wait_for(req.done.wait(), timeout=0.2)
        except TimeoutError:
            continue
    return _result_response(req)
