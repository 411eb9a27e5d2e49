"""fal's storage protocol, so the unmodified ``fal_client`` uploads work against the emulator.

fal_client 1.0.3 hard-codes its upload hosts (``REST_URL = https://rest.fal.ai``,
``CDN_URL = https://v3.fal.media``); the emulator's CONNECT tunnel (``HTTPS_PROXY``) brings both to
the emulator's queue socket, whose certificate names them. The calls it makes, all served here:

1. ``POST rest.fal.ai/storage/auth/token?storage_type=fal-cdn-v3`` (``Authorization: Key``) ->
   ``{"token", "token_type", "base_url", "expires_at"}``: a CDN token, cached by the client.
2. Small files (<= 100 MB), repository ``fal_v3`` (the default):
   ``POST v3.fal.media/files/upload`` (``Authorization: Bearer <token>``, ``Content-Type``,
   ``X-Fal-File-Name``, body = the bytes) -> ``{"access_url"}``.
3. Large files (> 100 MB): ``POST {base_url}/files/upload/multipart`` -> ``{"access_url",
   "uploadId"}``; ``PUT {access_url}/multipart/{uploadId}/{n}`` per 10 MB part (answers an
   ``ETag``); ``POST {access_url}/multipart/{uploadId}/complete`` with ``{"parts": [...]}``.
4. Fallback repository ``fal`` (used when the v3 attempt fails): ``POST
   rest.fal.ai/storage/upload/initiate?storage_type=gcs`` with ``{"file_name", "content_type"}`` ->
   ``{"upload_url", "file_url"}``, then ``PUT upload_url`` with the bytes.

Lifecycle headers (``X-Fal-Object-Lifecycle`` / ``-Preference``:
``{"expiration_duration_seconds": N}``) set how long the file is served. Files land under
``/files/uploads/<id>/<name>`` and are served byte-identical, at the emulator's own loopback
address (fal answers ``v3.fal.media`` URLs): such URLs work for any client that trusts the
emulator's CA, through the tunnel or not.
"""

from __future__ import annotations

import hashlib
import json
import mimetypes
import re
import secrets
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from klingflow._files import atomic_write
from klingflow.emulator.responses import error, fault_response
from klingflow.emulator.state import EmulatorState, StoredUpload

__all__ = ["add_storage_routes", "lifecycle_seconds"]

_TOKEN_LIFETIME = timedelta(hours=1)
_PART = re.compile(
    r"^uploads/(?P<id>[0-9a-f]{32})/[^/]+/multipart/(?P<upload>[0-9a-f]{32})/(?P<part>\d+|complete)$"
)
_LIFECYCLE_HEADERS = ("x-fal-object-lifecycle-preference", "x-fal-object-lifecycle")


def lifecycle_seconds(request: Request) -> float | None:
    """``expiration_duration_seconds`` from fal's lifecycle headers, or None (absent or malformed)."""
    for name in _LIFECYCLE_HEADERS:
        raw = request.headers.get(name)
        if not raw:
            continue
        try:
            seconds = json.loads(raw).get("expiration_duration_seconds")
        except (ValueError, AttributeError):
            return None
        return float(seconds) if isinstance(seconds, int | float) and seconds > 0 else None
    return None


def _safe_name(name: str | None, content_type: str) -> str:
    base = PurePosixPath((name or "").replace("\\", "/")).name
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._")
    if not base:
        base = "upload" + (mimetypes.guess_extension(content_type.split(";")[0].strip()) or ".bin")
    return base[:120]


class _Multipart:
    def __init__(self, upload_id: str, name: str, ttl: float | None) -> None:
        self.upload_id, self.name, self.ttl = upload_id, name, ttl
        self.parts: dict[int, tuple[bytes, str]] = {}


def add_storage_routes(app: FastAPI, state: EmulatorState) -> None:
    """Register the storage routes on ``app`` (before its catch-all queue routes)."""
    pending_puts: dict[str, tuple[str, str, float | None]] = {}
    multiparts: dict[str, _Multipart] = {}

    def base(request: Request) -> str:
        return state.files_base or f"https://{request.headers.get('host', 'localhost')}"

    def key_ok(request: Request) -> bool:
        return request.headers.get("authorization", "") == f"Key {state.key}"

    def token_ok(request: Request) -> bool:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and token in state.cdn_tokens

    def unauthorised() -> JSONResponse:
        return error(401, "Invalid or missing credentials")

    def store(upload_id: str, name: str, data: bytes, ttl: float | None) -> str:
        target = state.data_dir / "files" / "uploads" / upload_id / name
        atomic_write(target, data, durable=False)
        state.uploads[upload_id] = StoredUpload(path=target, created_at=time.time(), ttl=ttl)
        state.counts["uploads"] += 1
        return f"/files/uploads/{upload_id}/{name}"

    def upload_fault() -> Response | None:
        fault = state.faults.choose_for_upload()
        return None if fault is None else fault_response(fault, state.faults.plan.retry_after)

    @app.post("/storage/auth/token")
    async def cdn_token(request: Request) -> Response:
        if not key_ok(request):
            return unauthorised()
        token = secrets.token_urlsafe(24)
        state.cdn_tokens.add(token)
        state.counts["storage_tokens"] += 1
        return JSONResponse(
            {
                "token": token,
                "token_type": "Bearer",
                "base_url": base(request),
                "expires_at": (datetime.now(UTC) + _TOKEN_LIFETIME).isoformat(),
            }
        )

    @app.post("/storage/upload/initiate")
    async def initiate(request: Request) -> Response:
        if not key_ok(request):
            return unauthorised()
        try:
            body = await request.json()
            content_type = str(body.get("content_type") or "application/octet-stream")
            name = _safe_name(body.get("file_name"), content_type)
        except (ValueError, AttributeError):
            return error(
                422, [{"loc": ["body"], "msg": "expected {file_name, content_type}", "type": "json"}]
            )
        upload_id = uuid.uuid4().hex
        pending_puts[upload_id] = (name, content_type, lifecycle_seconds(request))
        state.counts["upload_initiates"] += 1
        return JSONResponse(
            {
                "upload_url": f"{base(request)}/storage/upload/put/{upload_id}"
                f"?signature={secrets.token_hex(8)}",
                "file_url": f"{base(request)}/files/uploads/{upload_id}/{name}",
            }
        )

    @app.put("/storage/upload/put/{upload_id}")
    async def signed_put(upload_id: str, request: Request) -> Response:
        if upload_id not in pending_puts:
            return error(404, "Unknown or used upload URL")
        if (fault := upload_fault()) is not None:
            return fault
        name, _content_type, ttl = pending_puts.pop(upload_id)
        store(upload_id, name, await request.body(), ttl)
        return Response(status_code=200)

    @app.post("/files/{path:path}")
    async def cdn_post(path: str, request: Request) -> Response:
        if path in ("upload", "upload/multipart"):
            if not token_ok(request):
                return unauthorised()
            content_type = request.headers.get("content-type", "application/octet-stream")
            name = _safe_name(request.headers.get("x-fal-file-name"), content_type)
            upload_id, ttl = uuid.uuid4().hex, lifecycle_seconds(request)
            if path == "upload":
                if (fault := upload_fault()) is not None:
                    return fault
                url = base(request) + store(upload_id, name, await request.body(), ttl)
                return JSONResponse({"access_url": url, "content_type": content_type, "file_name": name})
            started = _Multipart(uuid.uuid4().hex, name, ttl)
            multiparts[started.upload_id] = started
            state.counts["upload_initiates"] += 1
            return JSONResponse(
                {
                    "access_url": f"{base(request)}/files/uploads/{upload_id}/{name}",
                    "uploadId": started.upload_id,
                }
            )
        match = _PART.match(path)
        if match is None or match["part"] != "complete":
            return error(404, f"Not found: /files/{path}")
        if not token_ok(request):
            return unauthorised()
        multipart = multiparts.get(match["upload"])
        if multipart is None:
            return error(404, "Unknown multipart upload")
        try:
            listed = [(int(p["partNumber"]), str(p["etag"])) for p in (await request.json())["parts"]]
        except (ValueError, KeyError, TypeError):
            return error(
                422, [{"loc": ["body", "parts"], "msg": "expected a list of parts", "type": "value"}]
            )
        listed.sort()
        if [n for n, _ in listed] != sorted(multipart.parts) or any(
            multipart.parts[n][1] != etag for n, etag in listed
        ):
            return error(400, "The listed parts do not match the uploaded parts")
        data = b"".join(multipart.parts[n][0] for n, _ in listed)
        del multiparts[multipart.upload_id]
        url = base(request) + store(match["id"], multipart.name, data, multipart.ttl)
        return JSONResponse({"access_url": url})

    @app.put("/files/{path:path}")
    async def cdn_put(path: str, request: Request) -> Response:
        match = _PART.match(path)
        if match is None or match["part"] == "complete":
            return error(404, f"Not found: /files/{path}")
        if not token_ok(request):
            return unauthorised()
        multipart = multiparts.get(match["upload"])
        if multipart is None:
            return error(404, "Unknown multipart upload")
        if (fault := upload_fault()) is not None:
            return fault
        data = await request.body()
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        multipart.parts[int(match["part"])] = (data, etag)
        state.counts["upload_parts"] += 1
        return Response(status_code=200, headers={"ETag": etag})
