"""HTTP routes of fal's protocols, served by the emulator.

Two listening sockets share this one app: requests arriving on the *queue* socket follow fal's
queue protocol (submit, status with logs, result, cancel), requests on the *run* socket follow
the direct-run protocol (``POST {run host}/{endpoint id}`` answers the output JSON). The routes
accept both URL shapes fal_client uses: the full endpoint id, and owner/alias only
(``fal-ai/kling-video/requests/{id}/status``).

Besides fal's routes the app serves the files it rendered (``/files/...``, public like fal's CDN),
an upload route of its own (``POST /storage/upload``; fal_client's upload host is a hard-coded
constant that cannot be pointed here), and admin routes under ``/_emulator/`` (counters and
fault injection) for tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import re
from collections import Counter
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from pydantic import ValidationError

from klingflow.emulator.faults import SUBMIT_FAULTS, FaultPlan, Faults
from klingflow.emulator.jobs import JobRunner
from klingflow.emulator.queue import EmulatedRequest, RequestQueue
from klingflow.endpoints import ENDPOINTS, validate_input

__all__ = ["EmulatorState", "create_app"]

_REQUEST_PATH = re.compile(r"^(?P<app>.+?)/requests/(?P<id>[^/]+)(?P<action>/status|/cancel)?/?$")
_TIMEOUT_HEADER = "x-fal-request-timeout"
_TIMEOUT_TYPE_HEADER = "X-Fal-Request-Timeout-Type"


class EmulatorState:
    """Everything the routes share: key, queue, faults, counters and where files live."""

    def __init__(
        self,
        *,
        key: str,
        data_dir: Path,
        run_ports: set[int],
        workers: int,
        latency: float,
        faults: FaultPlan,
        fetch_remote: bool,
    ) -> None:
        self.key = key
        self.data_dir = data_dir
        self.run_ports = run_ports
        self.jobs = JobRunner(data_dir, fetch_remote=fetch_remote)
        self.queue = RequestQueue(render=self.jobs, workers=workers, latency=latency)
        self.faults = Faults(faults)
        self.submits: Counter[str] = Counter()
        self.runs: Counter[str] = Counter()
        self.cancels = 0
        self.uploads = 0

    def stats(self) -> dict[str, Any]:
        """Counters tests read to prove what the emulator received."""
        return {
            "submits": dict(self.submits),
            "runs": dict(self.runs),
            "total_submits": sum(self.submits.values()) + sum(self.runs.values()),
            "cancels": self.cancels,
            "uploads": self.uploads,
            "faults_injected": dict(self.faults.injected),
            "open": self.queue.open_count(),
            "max_open": self.queue.max_open,
            "completed": sum(1 for r in self.queue.requests.values() if r.status == "COMPLETED"),
        }

    def reset(self) -> None:
        """Zero the counters and forget finished requests (files stay)."""
        self.submits.clear()
        self.runs.clear()
        self.cancels = self.uploads = 0
        self.faults.injected.clear()
        self.queue.max_open = self.queue.open_count()


def _error(status: int, detail: Any, request_id: str | None = None, **headers: str) -> JSONResponse:
    if request_id:
        headers["x-fal-request-id"] = request_id
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


class _DroppedResponse(Response):
    """Promises a body and closes the connection early: the client sees a dropped connection."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", b"4096")],
            }
        )
        await send({"type": "http.response.body", "body": b'{"request_id": ', "more_body": False})


def _submit_fault_response(fault: str, retry_after: float) -> Response:
    if fault == "429":
        return _error(429, "Rate limit exceeded (fault injected)", **{"Retry-After": f"{retry_after:g}"})
    if fault == "drop":
        return _DroppedResponse()
    return _error(int(fault), f"Emulated server error {fault} (fault injected)", request_id="fault")


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]


def _status_body(state: EmulatorState, req: EmulatedRequest, base: str, with_logs: bool) -> dict[str, Any]:
    state.queue.refresh(req)
    body: dict[str, Any] = {"status": req.status, "request_id": req.id, "response_url": base}
    if req.status == "IN_QUEUE":
        body["queue_position"] = state.queue.position(req)
    else:
        body["logs"] = list(req.logs) if with_logs else None
    if req.status == "COMPLETED":
        started = req.started_at or req.submitted_at
        body["metrics"] = {"inference_time": round((req.completed_at or started) - started, 3)}
        if req.error:
            body["error"], body["error_type"] = req.error, req.error_type
    return body


def _result_response(req: EmulatedRequest) -> Response:
    if req.status != "COMPLETED":
        return _error(400, "Request is still in progress", req.id)
    if req.timed_out:
        return _error(504, req.error, req.id, **{_TIMEOUT_TYPE_HEADER: "user"})
    if req.cancelled:
        return _error(400, req.error, req.id)
    if req.error:
        return JSONResponse(
            {"detail": req.error, "error_type": req.error_type},
            status_code=500,
            headers={"x-fal-request-id": req.id},
        )
    return JSONResponse(req.result, headers={"x-fal-request-id": req.id})


def create_app(state: EmulatorState) -> FastAPI:
    """Build the FastAPI app over ``state`` (whoever serves it starts and stops ``state.queue``)."""

    app = FastAPI(title="klingflow fal emulator", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.emulator = state

    def authorised(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Key {state.key}"

    def unauthorised() -> JSONResponse:
        return _error(
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
            return _error(422, _validation_detail(exc))
        state.faults.configure(plan)
        return JSONResponse(plan.model_dump())

    @app.post("/storage/upload")
    async def upload(request: Request, file_name: str = "upload.bin") -> Response:
        if not authorised(request):
            return unauthorised()
        data = await request.body()
        suffix = (
            Path(file_name).suffix
            or mimetypes.guess_extension(request.headers.get("content-type", ""))
            or ".bin"
        )
        relative = Path("uploads") / f"{hashlib.sha256(data).hexdigest()}{suffix}"
        target = state.data_dir / "files" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.is_file():
            tmp = target.with_name(target.name + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
        state.uploads += 1
        return JSONResponse({"url": f"{base_url(request)}/files/{relative.as_posix()}"})

    @app.get("/files/{path:path}")
    async def files(path: str) -> Response:
        target = state.data_dir / "files" / path
        if ".." in Path(path).parts or not target.is_file():
            return _error(404, "File not found")
        owner = state.queue.requests.get(Path(path).parts[0])
        fault = owner.fault if owner else None
        if fault == "result_404":
            return _error(404, "File not found (fault injected)")
        if fault == "truncated":  # once: a re-download gets the whole file, as after a network hiccup
            owner.fault = None
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
            return _error(404, f"Request not found: {path}")
        base = f"{base_url(request)}/{match['app']}/requests/{req.id}"
        if match["action"] == "/status":
            return JSONResponse(
                _status_body(state, req, base, logs.lower() in ("1", "true")),
                headers={"x-fal-request-id": req.id},
            )
        return _result_response(state.queue.refresh(req))

    @app.put("/{path:path}")
    async def cancel(path: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        match = _REQUEST_PATH.match(path)
        req = state.queue.requests.get(match["id"]) if match else None
        if match is None or req is None or match["action"] != "/cancel":
            return _error(404, f"Request not found: {path}")
        state.cancels += 1
        if state.queue.cancel(req):
            return JSONResponse({"status": "CANCELLATION_REQUESTED"}, status_code=202)
        return JSONResponse({"status": "ALREADY_COMPLETED"}, status_code=400)

    @app.post("/{path:path}")
    async def submit_or_run(path: str, request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        endpoint_id = path.strip("/")
        if endpoint_id not in ENDPOINTS:
            return _error(404, f"Application '{endpoint_id}' not found")
        direct = request.scope["server"][1] in state.run_ports
        (state.runs if direct else state.submits)[endpoint_id] += 1
        fault = state.faults.choose(endpoint_id, ENDPOINTS[endpoint_id].alias)
        if fault in SUBMIT_FAULTS:
            return _submit_fault_response(fault, state.faults.plan.retry_after)
        try:
            arguments = validate_input(endpoint_id, await request.json()).model_dump(
                mode="json", exclude_none=True
            )
        except ValidationError as exc:
            return _error(422, _validation_detail(exc))
        except ValueError:
            return _error(422, [{"loc": ["body"], "msg": "body is not valid JSON", "type": "json_invalid"}])
        timeout = request.headers.get(_TIMEOUT_HEADER)
        req = state.queue.submit(
            endpoint_id,
            arguments,
            base_url=base_url(request),
            fault=fault,
            start_timeout=float(timeout) if timeout else None,
        )
        if direct:
            return await _run_directly(state, req)
        owner_alias = "/".join(endpoint_id.split("/")[:2])
        base = f"{base_url(request)}/{owner_alias}/requests/{req.id}"
        return JSONResponse(
            {
                "request_id": req.id,
                "response_url": base,
                "status_url": f"{base}/status",
                "cancel_url": f"{base}/cancel",
                "queue_position": state.queue.position(req),
            },
            headers={"x-fal-request-id": req.id},
        )

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
