"""HTTP answers shared by the emulator's routes: fal's error shapes and the injected faults."""

from __future__ import annotations

from typing import Any

from fastapi import Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import ValidationError

__all__ = [
    "FLAGGED_WORD",
    "DroppedResponse",
    "error",
    "fault_response",
    "moderation_detail",
    "request_error",
    "validation_detail",
]

_NGINX_REASONS = {502: "Bad Gateway", 503: "Service Temporarily Unavailable", 504: "Gateway Time-out"}


def error(status: int, detail: Any, request_id: str | None = None, **headers: str) -> JSONResponse:
    """``{"detail": ...}`` with ``status``; ``x-fal-request-id`` when the app (not the ingress) answers."""
    if request_id:
        headers["x-fal-request-id"] = request_id
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def request_error(status: int, detail: str, error_type: str, request_id: str | None = None) -> JSONResponse:
    """fal's infrastructure ("request") error: flat ``detail`` + ``error_type``, and the same type in
    the ``X-Fal-Error-Type`` header (fal docs, Request Error Types)."""
    headers = {"X-Fal-Error-Type": error_type}
    if request_id:
        headers["x-fal-request-id"] = request_id
    return JSONResponse({"detail": detail, "error_type": error_type}, status_code=status, headers=headers)


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """pydantic errors in fal's (FastAPI's) 422 shape: ``[{"loc": ["body", ...], "msg", "type"}]``."""
    return [{"loc": ["body", *err["loc"]], "msg": err["msg"], "type": err["type"]} for err in exc.errors()]


FLAGGED_WORD = "flagged-by-moderation"
"""A prompt holding this word is refused as fal refuses content its safety checker flags: the
request is accepted, runs, and its result answers 422 with the error type
``content_policy_violation`` (fal's documented model error). It lets a test make one row of a
batch fail at fal with an input klingflow itself finds valid."""


def moderation_detail(arguments: Any) -> list[dict[str, Any]] | None:
    """fal's 422 detail for a flagged prompt, or None when the prompt passes."""
    prompt = arguments.get("prompt") if isinstance(arguments, dict) else None
    if isinstance(prompt, str) and FLAGGED_WORD in prompt:
        return [
            {
                "loc": ["body", "prompt"],
                "msg": "The content could not be processed because it was flagged by a content checker.",
                "type": "content_policy_violation",
            }
        ]
    return None


class DroppedResponse(Response):
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


def fault_response(fault: str, retry_after: float) -> Response:
    """The answer of a fault that acts on the HTTP exchange (429, app 5xx, ingress 5xx, drop, lost)."""
    if fault == "429":
        return error(429, "Rate limit exceeded (fault injected)", **{"Retry-After": f"{retry_after:g}"})
    if fault in ("drop", "lost"):
        return DroppedResponse()
    if fault.startswith("ingress-"):
        status = int(fault.removeprefix("ingress-"))
        title = f"{status} {_NGINX_REASONS[status]}"
        body = (
            f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
        )
        return HTMLResponse(body, status_code=status)
    return error(int(fault), f"Emulated server error {fault} (fault injected)", request_id="fault")
