"""The one path to a Kling endpoint: ``fal_client.AsyncClient``, against real fal or the emulator.

This is the only module that imports fal_client. It submits, follows the status with logs (fal's
status stream, polls when it fails; queue position and new log lines go to a callback), fetches
the result, cancels, uploads local inputs, and downloads outputs into the content-addressed store.
fal_client and httpx failures are translated here (:func:`_translated`), like httpx's
``map_httpcore_exceptions``: an HTTP status goes through :func:`klingflow.errors.error_for_status`,
a timeout or transport error becomes :class:`~klingflow.errors.ConnectionLost`, each tagged with
the phase it happened in (upload, submit, status, result, cancel). Which of them a retry may fix
is decided in one place, :func:`klingflow.errors.is_transient`.

A submit is sent once, never resent behind our back: fal_client's own ``submit`` retries the POST
on transport errors, read timeouts and gateway 5xx (up to 10 times, silently), and each resend
fal accepted is paid again. :meth:`FalBackend.submit` therefore posts the body itself, through the
HTTP client fal_client configured (its key, headers and backup-domain transport; taken from a
public request handle), and classifies the outcome: accepted (a request id), rejected (4xx:
nothing is billed), not sent (the connection never opened), or :class:`~klingflow.errors.SubmitAmbiguous`.
The result is fetched the same way so its ``x-fal-billable-units`` header can be read, and so is
fal's status stream (``.../status/stream``, server-sent events read with httpx-sse, fal_client's own
dependency; fal_client 1.0 has no call for it): :meth:`FalBackend.wait` sees COMPLETED the moment
fal sends it, and polls when the stream cannot be had or drops. Streams are read with fal_client's
headers and transport over a connection pool of their own (:meth:`FalBackend._stream_client`): each
holds a connection for its request's whole life. Every other call (status polls,
cancel, upload) is fal_client's own.

Local files given as media inputs are uploaded first, through fal_client's own upload on both
backends: fal's storage protocol (a token from ``rest.fal.ai``, then the upload to the URL it
returns). fal_client hard-codes that host; the emulator is reached there through the same
CONNECT tunnel (``HTTPS_PROXY``) the embedded default and ``klingflow emulator env`` set up.
"""

from __future__ import annotations

import asyncio
import functools
import ssl
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import fal_client
import httpx
from httpx_sse import aconnect_sse
from pydantic import BaseModel, ConfigDict

from klingflow.backends.handles import BackendConfig, QueueEvent, RequestHandle
from klingflow.cache import OutputRecord, Store, StoredFile
from klingflow.endpoints import (
    canonical_arguments,
    get_endpoint,
    is_url,
    media_inputs,
    output_files,
    parse_output,
    set_media_input,
    validate_input,
)
from klingflow.errors import (
    BackendError,
    ConnectionLost,
    KlingflowError,
    Phase,
    RequestCancelled,
    RequestFailed,
    ResultTimeout,
    SubmitAmbiguous,
    error_for_status,
)

__all__ = ["EndpointResult", "FalBackend", "FetchedResult", "QueueEvent", "RequestHandle", "fal_hosts"]

EventCallback = Callable[["QueueEvent"], Awaitable[None] | None]
_HINTS = {
    401: "check the key: set FAL_KEY, or for the emulator use the key `klingflow emulator env` prints",
    403: "this key may not call this endpoint",
    404: "check the endpoint id (or the request id, if resuming an old request)",
    422: "fix the arguments named above",
}


_CANCELLED = ("request_cancelled", "client_cancelled")
"""fal's error types for a request that was cancelled: it will not run again by itself."""


def fal_hosts() -> tuple[str, str]:
    """(queue host, run host) that fal_client fixed when it was imported."""
    from fal_client import client

    return urlparse(client.QUEUE_URL_FORMAT).netloc, urlparse(client.RUN_URL_FORMAT).netloc


class FetchedResult(BaseModel):
    """A completed request's output JSON and what fal says it bills for it."""

    raw: dict[str, Any]
    billable_units: float | None = None


class EndpointResult(BaseModel):
    """A finished request: the raw JSON, the parsed output model and the downloaded files."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    handle: RequestHandle
    raw: dict[str, Any]
    output: BaseModel
    files: dict[str, StoredFile]
    """Every output file by name: ``video``, ``audio``, ``images[0]``, ..."""
    urls: dict[str, str] = {}
    """Where fal served each of them."""

    def output_records(self) -> dict[str, OutputRecord]:
        """What the journal keeps of each stored output: enough to find and verify it later."""
        return {
            name: OutputRecord(sha256=f.sha256, suffix=f.path.suffix, bytes=f.bytes, url=self.urls[name])
            for name, f in self.files.items()
        }

    def values(self) -> dict[str, Any]:
        """The output's values that are not files (``duration``, ``voice_id``), as fal sent them."""
        info = get_endpoint(self.handle.endpoint)
        return {name: self.raw.get(name) for name in info.values if self.raw.get(name) is not None}


def _detail(message: Any) -> str:
    """fal's error detail as one line: a 422's list of ``{"loc", "msg"}`` becomes ``field: message; ...``."""
    if isinstance(message, list):  # a 422 body: [{"loc": [...], "msg": ..., "type": ...}]
        parts = []
        for item in message:
            loc = (
                ".".join(str(p) for p in item.get("loc", []) if p != "body") if isinstance(item, dict) else ""
            )
            msg = item.get("msg", item) if isinstance(item, dict) else item
            parts.append(f"{loc}: {msg}" if loc else str(msg))
        return "; ".join(parts)
    return str(message)


def _retry_after(headers: dict[str, str]) -> float | None:
    value = {k.lower(): v for k, v in headers.items()}.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _float(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _answer_error(
    response: httpx.Response, endpoint: str, request_id: str | None, phase: Phase
) -> BackendError:
    """The typed error for an HTTP error answer we read ourselves (same table as fal_client's)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    detail = body.get("detail", response.text) if isinstance(body, dict) else response.text
    error_type = (body.get("error_type") if isinstance(body, dict) else None) or response.headers.get(
        "x-fal-error-type"
    )
    message = _detail(detail)
    error = error_for_status(response.status_code, request_known=request_id is not None)
    return error(
        message,
        endpoint=endpoint,
        request_id=request_id,
        status_code=response.status_code,
        retry_after=_retry_after(dict(response.headers)),
        phase=phase,
        error_type=error_type,
        hint=_HINTS.get(response.status_code, ""),
    )


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.ProxyError, httpx.PoolTimeout)
"""Transport failures that happen before a request's body leaves: the request provably never reached fal."""


@contextmanager
def _translated(endpoint: str, request_id: str | None, phase: Phase) -> Iterator[None]:
    """Translate fal_client/httpx failures into klingflow's typed errors at the seam."""
    try:
        yield
    except KlingflowError:
        raise
    except fal_client.client.FalClientHTTPError as exc:
        status = exc.status_code
        error = error_for_status(status, request_known=request_id is not None)
        raise error(
            _detail(exc.message),
            endpoint=endpoint,
            request_id=request_id,
            status_code=status,
            retry_after=_retry_after(exc.response_headers),
            phase=phase,
            hint=_HINTS.get(status, ""),
        ) from exc
    except (httpx.TimeoutException, fal_client.client.FalClientTimeoutError) as exc:
        raise ConnectionLost(
            f"timed out talking to fal ({type(exc).__name__})",
            endpoint=endpoint,
            request_id=request_id,
            phase=phase,
        ) from exc
    except httpx.TransportError as exc:
        raise ConnectionLost(
            f"connection to fal failed ({type(exc).__name__}: {exc})",
            endpoint=endpoint,
            request_id=request_id,
            phase=phase,
            hint="is the emulator running? `klingflow emulator serve`",
        ) from exc


def _raise_if_failed(status: Any, handle: RequestHandle) -> None:
    """Raise when fal finished the request with an error (cancelled, or failed on its side)."""
    if getattr(status, "error", None):
        error = RequestCancelled if status.error_type in _CANCELLED else RequestFailed
        raise error(
            status.error,
            error_type=status.error_type,
            endpoint=handle.endpoint,
            request_id=handle.request_id,
            phase="status",
            hint="the request failed on fal; a retry submits it again",
        )


LOGS_EVERY = 1.0
"""Seconds between status polls that ask fal for the request's log lines (see :meth:`FalBackend.wait`)."""
STREAM_IDLE = 30.0
"""Seconds a status stream may stay silent before it counts as dropped (fal-js gives up after 15)."""


def _status_from(data: dict[str, Any]) -> fal_client.Status:
    """A status stream event as the fal_client status its polls return (same JSON as a status poll)."""
    state = data["status"]
    if state == "IN_QUEUE":
        return fal_client.Queued(position=int(data.get("queue_position") or 0))
    if state == "IN_PROGRESS":
        return fal_client.InProgress(logs=data.get("logs"))
    if state == "COMPLETED":
        return fal_client.Completed(
            logs=data.get("logs"),
            metrics=data.get("metrics") or {},
            error=data.get("error"),
            error_type=data.get("error_type"),
        )
    raise ValueError(f"unknown status {state!r}")


class _Watch:
    """What one wait has seen of a request: the events it forwarded, its log lines, when it ran.

    Polls answer every log line so far, stream events only the new ones (as fal-js reads them):
    lines are told apart by timestamp and text, so each is forwarded once either way.
    """

    def __init__(self, handle: RequestHandle, on_event: EventCallback | None, timeout: float | None) -> None:
        self.handle, self.on_event, self.timeout = handle, on_event, timeout
        self.started = time.monotonic()
        self.began_running: float | None = None
        self.finished: float | None = None
        self.final: fal_client.Completed | None = None
        self.logs_at = -LOGS_EVERY  # the first poll asks for logs
        self._lines: set[tuple[str, str]] = set()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def remaining(self) -> float | None:
        return None if self.timeout is None else max(0.0, self.timeout - self.elapsed())

    def overdue(self) -> bool:
        return self.timeout is not None and self.elapsed() > self.timeout

    def _new_lines(self, logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        new = []
        for line in logs:
            key = (str(line.get("timestamp", "")), str(line.get("message", "")))
            if key not in self._lines:
                self._lines.add(key)
                new.append(line)
        return new

    async def seen(self, status: fal_client.Status) -> None:
        """Note one status (from a poll or the stream) and forward it as a :class:`QueueEvent`."""
        request_id = self.handle.request_id
        if isinstance(status, fal_client.Queued):
            event = QueueEvent(request_id=request_id, status="IN_QUEUE", queue_position=status.position)
        else:
            self.began_running = self.began_running or time.monotonic()
            name = "COMPLETED" if isinstance(status, fal_client.Completed) else "IN_PROGRESS"
            logs = self._new_lines(list(getattr(status, "logs", None) or []))
            event = QueueEvent(request_id=request_id, status=name, logs=logs)
        if isinstance(status, fal_client.Completed):
            self.final, self.finished = status, time.monotonic()
        if self.on_event is not None:
            maybe = self.on_event(event)
            if asyncio.iscoroutine(maybe):
                await maybe

    def durations(self) -> tuple[float, float]:
        """(seconds queued, seconds running), as fal's statuses showed them to this wait."""
        finished = self.finished or time.monotonic()
        began = self.began_running or finished
        return began - self.started, finished - began


class FalBackend:
    """Calls Kling endpoints through fal_client with one resolved :class:`BackendConfig`."""

    def __init__(
        self,
        config: BackendConfig,
        store: Store | None = None,
        *,
        poll_interval: tuple[float, float] = (0.1, 2.0),
        submit_timeout: float = 120.0,
    ) -> None:
        self.config = config
        self.store = store or Store()
        self.poll_interval = poll_interval
        """(first, longest) seconds between status polls: see :meth:`_next_poll`."""
        self.submit_timeout = submit_timeout
        self._client = fal_client.AsyncClient(key=config.key.get_secret_value())
        self._downloads: httpx.AsyncClient | None = None
        self._streams: httpx.AsyncClient | None = None

    @property
    def identity(self) -> str:
        """What cache keys record about this backend (never the key)."""
        return self.config.identity

    @functools.cached_property
    def _verify(self) -> bool | ssl.SSLContext:
        """Made once: parsing a CA bundle costs ~10 ms of CPU, which a profile found paid per download."""
        if self.config.ca_bundle is None:
            return True
        return ssl.create_default_context(cafile=str(self.config.ca_bundle))

    def _download_client(self) -> httpx.AsyncClient:
        """One keep-alive client for output files (no fal key: the URLs are public CDN links)."""
        if self._downloads is None:
            self._downloads = httpx.AsyncClient(verify=self._verify, timeout=300.0, follow_redirects=True)
        return self._downloads

    def _stream_client(self, fal_http: httpx.AsyncClient) -> httpx.AsyncClient:
        """The client status streams are read with: ``fal_http``'s headers (its key) and fal_client's
        backup-domain transport, over a connection pool of its own with no size limit.

        A stream holds its connection for the request's whole life. fal_client's client has httpx's
        default pool, 100 connections shared by every submit, poll and result fetch: with more than
        100 requests followed at once (a cap above 100, joined requests), the streams would take every
        connection, and the next submit, poll or stream would wait for one until a request ended or
        its pool timeout ran out. The run's concurrency cap is what bounds the streams.
        """
        if self._streams is None:
            unbounded = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            self._streams = httpx.AsyncClient(
                headers=fal_http.headers,
                timeout=fal_http.timeout,
                transport=fal_client.client.AsyncBackupDomainTransport(
                    transport=httpx.AsyncHTTPTransport(limits=unbounded)
                ),
            )
        return self._streams

    async def aclose(self) -> None:
        """Close the download and stream connections (fal_client's own clients are left to fal_client)."""
        for client in (self._downloads, self._streams):
            if client is not None:
                await client.aclose()
        self._downloads = self._streams = None

    async def upload(self, path: Path) -> str:
        """Upload a local file with fal_client's own upload and return a URL the endpoint can read."""
        with _translated("", None, "upload"):
            return str(await self._client.upload_file(path))

    async def prepare(
        self, endpoint: str, arguments: dict[str, Any], *, base_dir: Path | None = None
    ) -> dict[str, Any]:
        """Validate arguments and upload local media files; return the JSON body to submit."""
        info = get_endpoint(endpoint)
        model = validate_input(info.id, arguments)
        body = canonical_arguments(model)
        for path, value, _kind in media_inputs(info.id, model):
            if is_url(value):
                continue
            local = Path(value) if base_dir is None else base_dir / value
            if not local.is_file():
                raise BackendError(
                    f"media input {path} is neither a URL nor an existing file: {value}",
                    endpoint=info.id,
                    phase="upload",
                )
            set_media_input(body, path, await self.upload(local))
        return body

    async def http(self) -> httpx.AsyncClient:
        """The HTTP client fal_client configured for this key (auth, headers, backup domains).

        Taken from a public request handle, so the key never leaves fal_client's hands.
        """
        handle = await self._client.get_handle("fal-ai/kling-video", "client")
        return handle.client

    async def submit(self, endpoint: str, body: dict[str, Any]) -> RequestHandle:
        """POST a prepared body to the queue once and classify the outcome.

        Returns the accepted request's handle. Raises :class:`~klingflow.errors.ConnectionLost`
        when the connection never opened (safe to send again), a rejection (429, 4xx: nothing is
        billed), or :class:`~klingflow.errors.SubmitAmbiguous` when fal may have accepted it.
        """
        endpoint_id = get_endpoint(endpoint).id
        client = await self.http()
        url = fal_client.client.QUEUE_URL_FORMAT + endpoint_id
        try:
            response = await client.post(url, json=body, timeout=self.submit_timeout)
        except _NOT_SENT as exc:
            raise ConnectionLost(
                f"could not connect to fal ({type(exc).__name__}: {exc}); nothing was sent",
                endpoint=endpoint_id,
                phase="submit",
            ) from exc
        except httpx.HTTPError as exc:
            raise SubmitAmbiguous(
                f"the submit was sent but its answer was lost ({type(exc).__name__}: {exc})",
                endpoint=endpoint_id,
                phase="submit",
            ) from exc
        if response.status_code >= 500:
            raise SubmitAmbiguous(
                f"the submit was answered with HTTP {response.status_code}: fal may have accepted it",
                endpoint=endpoint_id,
                status_code=response.status_code,
                phase="submit",
            )
        if response.status_code >= 400:
            raise _answer_error(response, endpoint_id, None, "submit")
        try:
            request_id = str(response.json()["request_id"])
        except (ValueError, KeyError, TypeError) as exc:
            raise SubmitAmbiguous(
                "the submit's answer carried no request id", endpoint=endpoint_id, phase="submit"
            ) from exc
        return RequestHandle(endpoint=endpoint_id, request_id=request_id)

    async def wait(
        self, handle: RequestHandle, *, on_event: EventCallback | None = None, timeout: float | None = None
    ) -> tuple[float, float]:
        """Follow the request until COMPLETED, forwarding events; return (seconds queued, seconds running).

        fal's status stream tells the moment the request changes; when it cannot be opened, or drops,
        the request is polled (:meth:`_next_poll`'s pace) and the stream opened again after each poll,
        as long as streams of this request deliver events. Raises :class:`~klingflow.errors.RequestFailed`
        (or ``RequestCancelled``) when fal finished the request with an error, and ``ResultTimeout``
        after ``timeout`` seconds.
        """
        fal_handle = await self._client.get_handle(handle.endpoint, handle.request_id)
        watch = _Watch(handle, on_event, timeout)
        streaming, polled = True, False
        while True:
            if streaming:
                streaming = await self._follow_stream(fal_handle, watch)
                if watch.final is not None:
                    break
            if polled and not watch.overdue():
                await asyncio.sleep(self._next_poll(watch.elapsed()))
            # the deadline is judged after a poll, as before streams: a request fal completed in
            # time is kept even when the answer saying so was late
            await self._poll(fal_handle, watch)
            polled = True
            if watch.final is not None:
                break
            if watch.overdue():
                raise ResultTimeout(
                    f"request did not complete within {timeout:g} s",
                    endpoint=handle.endpoint,
                    request_id=handle.request_id,
                    phase="status",
                )
        _raise_if_failed(watch.final, handle)
        return watch.durations()

    async def _follow_stream(self, fal_handle: fal_client.AsyncRequestHandle, watch: _Watch) -> bool:
        """Read the request's status stream until COMPLETED or until it breaks; whether it delivered events.

        A stream that delivered nothing (refused, not a stream, cut at once) is not worth opening again
        for this request; one that dropped after events is opened again after the next poll.
        """
        delivered = False
        try:
            async with asyncio.timeout(watch.remaining()):
                async with aconnect_sse(
                    self._stream_client(fal_handle.client),
                    "GET",
                    fal_handle.status_url + "/stream",
                    params={"logs": "1"},
                    timeout=httpx.Timeout(self.submit_timeout, read=STREAM_IDLE),
                ) as source:
                    if source.response.status_code != 200:
                        return False
                    async for event in source.aiter_sse():
                        if not event.data:
                            continue
                        await watch.seen(_status_from(event.json()))
                        delivered = True
                        if watch.final is not None:
                            return True
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return delivered
        except TimeoutError:  # the wait's deadline (a silent stream is httpx's ReadTimeout): poll
            return False
        return delivered

    async def _poll(self, fal_handle: fal_client.AsyncRequestHandle, watch: _Watch) -> None:
        """One status poll, asking for the log lines at most once a second (and at the end)."""
        handle = watch.handle
        with_logs = time.monotonic() - watch.logs_at >= LOGS_EVERY
        with _translated(handle.endpoint, handle.request_id, "status"):
            status = await fal_handle.status(with_logs=with_logs)
            if isinstance(status, fal_client.Completed) and not with_logs:
                status, with_logs = await fal_handle.status(with_logs=True), True
        if with_logs:
            watch.logs_at = time.monotonic()
        await watch.seen(status)

    def _next_poll(self, waited: float) -> float:
        """Seconds to the next status poll: fal_client's own 0.1 s at first, then 1/40 of the wait so far.

        A short request is seen done within 0.1 s (as ``handle.get()`` sees it); a Kling generation
        of minutes is polled every 2 s, not 600 times a minute, and is seen at most 2.5 % late.
        """
        first, longest = self.poll_interval
        return min(longest, max(first, waited / 40))

    async def status(self, handle: RequestHandle) -> str:
        """One status poll: IN_QUEUE, IN_PROGRESS or COMPLETED (a failed request raises)."""
        fal_handle = await self._client.get_handle(handle.endpoint, handle.request_id)
        with _translated(handle.endpoint, handle.request_id, "status"):
            status = await fal_handle.status(with_logs=False)
        if isinstance(status, fal_client.Completed):
            _raise_if_failed(status, handle)
            return "COMPLETED"
        return "IN_QUEUE" if isinstance(status, fal_client.Queued) else "IN_PROGRESS"

    async def fetch_result(self, handle: RequestHandle) -> FetchedResult:
        """GET a completed request's output once, with fal's ``x-fal-billable-units``.

        404 means fal no longer keeps the result (:class:`~klingflow.errors.RequestGone`), 422 that
        the model refused the input (:class:`~klingflow.errors.InvalidInput`, which fal may bill).
        """
        fal_handle = await self._client.get_handle(handle.endpoint, handle.request_id)
        try:
            response = await fal_handle.client.get(fal_handle.response_url, timeout=self.submit_timeout)
        except httpx.HTTPError as exc:
            raise ConnectionLost(
                f"fetching the result failed ({type(exc).__name__}: {exc})",
                endpoint=handle.endpoint,
                request_id=handle.request_id,
                phase="result",
            ) from exc
        if response.status_code >= 400:
            raise _answer_error(response, handle.endpoint, handle.request_id, "result")
        return FetchedResult(
            raw=response.json(), billable_units=_float(response.headers.get("x-fal-billable-units"))
        )

    async def cancel(self, handle: RequestHandle) -> str:
        """Ask fal to cancel a request (so a request nobody will use stops costing money).

        Returns fal's answer: ``OK`` (a queued request was removed), ``CANCELLATION_REQUESTED`` (a
        running one was signalled), ``ALREADY_COMPLETED`` (too late: it is done, and paid for) or
        ``NOT_FOUND``. Read from the answer's body, which fal_client's own cancel discards.
        """
        fal_handle = await self._client.get_handle(handle.endpoint, handle.request_id)
        try:
            response = await fal_handle.client.put(fal_handle.cancel_url, timeout=self.submit_timeout)
        except httpx.HTTPError as exc:
            raise ConnectionLost(
                f"cancelling failed ({type(exc).__name__}: {exc})",
                endpoint=handle.endpoint,
                request_id=handle.request_id,
                phase="cancel",
            ) from exc
        try:
            answer = str(response.json().get("status", ""))
        except (ValueError, AttributeError):
            answer = ""
        if answer in ("OK", "CANCELLATION_REQUESTED", "ALREADY_COMPLETED", "NOT_FOUND"):
            return answer
        if response.status_code >= 400:
            raise _answer_error(response, handle.endpoint, handle.request_id, "cancel")
        return "OK"

    async def download(self, handle: RequestHandle, result: dict[str, Any]) -> EndpointResult:
        """Parse the output and download every output file into the store (size-checked)."""
        info = get_endpoint(handle.endpoint)
        output = parse_output(info.id, result)
        files: dict[str, StoredFile] = {}
        urls: dict[str, str] = {}
        for name, _field, file in output_files(info.id, output):
            suffix = Path(file.file_name or urlparse(file.url).path).suffix
            try:
                files[name] = await self.store.download(
                    file.url, self._download_client(), suffix=suffix, expected_size=file.file_size
                )
            except BackendError as exc:
                exc.endpoint, exc.request_id = info.id, handle.request_id
                raise
            urls[name] = file.url
        return EndpointResult(handle=handle, raw=result, output=output, files=files, urls=urls)
