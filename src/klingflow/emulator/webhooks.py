"""Webhooks: ``?fal_webhook=URL`` on a queue submit makes the emulator POST the outcome there.

The body is fal's (docs: Model APIs > Webhooks)::

    {"request_id": ..., "gateway_request_id": ..., "status": "OK" | "ERROR",
     "payload": <result JSON, or the error body>, "error": null | "Invalid status code: 422",
     "payload_error": null}

``gateway_request_id`` equals ``request_id`` (the emulator never re-routes a request). A delivery
counts when the receiver answers 2xx; otherwise it is tried again ``webhook_attempts`` times in all,
waiting ``webhook_backoff`` seconds and doubling (fal: 10 tries over 2 hours). Headers carry
``X-Fal-Webhook-Request-Id``, ``X-Fal-Webhook-User-Id`` and ``X-Fal-Webhook-Timestamp`` like
fal's, but **no** ``X-Fal-Webhook-Signature``: the emulator does not sign (fal signs with ED25519
keys from its JWKS endpoint), so a receiver's signature check cannot be tested against it.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from klingflow.emulator.options import EmulatorOptions
    from klingflow.emulator.queue import EmulatedRequest

__all__ = ["WebhookSender", "error_body", "webhook_payload"]

_TIMEOUT = httpx.Timeout(10.0, connect=3.0)


def error_body(request: EmulatedRequest) -> dict[str, Any]:
    """The JSON a failed request's result fetch answers (also the webhook's error payload)."""
    if request.status_code == 422 and request.result is not None:
        return request.result
    return {"detail": request.error, "error_type": request.error_type}


def webhook_payload(request: EmulatedRequest) -> dict[str, Any]:
    """fal's webhook body for a completed request."""
    ok = request.status_code == 200
    return {
        "request_id": request.id,
        "gateway_request_id": request.id,
        "status": "OK" if ok else "ERROR",
        "payload": request.result if ok else error_body(request),
        "error": None if ok else f"Invalid status code: {request.status_code}",
        "payload_error": None,
    }


class WebhookSender:
    """Delivers webhooks in background tasks on the server's loop, with retries."""

    def __init__(self, options: Callable[[], EmulatorOptions]) -> None:
        self.options = options
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()

    def schedule(self, request: EmulatedRequest) -> None:
        """Deliver ``request``'s outcome to its webhook URL once it completes."""
        task = asyncio.create_task(self._deliver_when_done(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        """Abandon pending deliveries (the server is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _deliver_when_done(self, request: EmulatedRequest) -> None:
        await request.done.wait()
        assert request.webhook_url is not None
        body = webhook_payload(request)
        cafile = os.environ.get("SSL_CERT_FILE")
        verify: ssl.SSLContext | bool = ssl.create_default_context(cafile=cafile) if cafile else True
        options = self.options()
        async with httpx.AsyncClient(verify=verify, timeout=_TIMEOUT, trust_env=False) as client:
            for attempt in range(1, options.webhook_attempts + 1):
                self.counts["attempts"] += 1
                try:
                    response = await client.post(
                        request.webhook_url,
                        json=body,
                        headers={
                            "X-Fal-Webhook-Request-Id": request.id,
                            "X-Fal-Webhook-User-Id": "klingflow-emulator",
                            "X-Fal-Webhook-Timestamp": str(int(time.time())),
                        },
                    )
                    if response.is_success:
                        self.counts["delivered"] += 1
                        request.log(f"Webhook delivered (attempt {attempt})")
                        return
                    reason = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    reason = type(exc).__name__
                request.log(f"Webhook attempt {attempt} failed ({reason})", level="WARNING")
                if attempt < options.webhook_attempts:
                    await asyncio.sleep(options.webhook_backoff * 2 ** (attempt - 1))
        self.counts["failed"] += 1
