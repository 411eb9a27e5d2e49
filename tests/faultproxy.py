"""A fault-injecting TLS reverse proxy between fal_client and the emulator, owned by the tests.

klingflow promises "never pay twice, never lose a paid clip". That promise must hold against faults
it cannot see coming, so they are injected here, outside klingflow and outside the emulator: the
proxy sits on the wire, counts the submits the emulator *accepted* (2xx with a ``request_id``,
whatever the client then received) and injects at most one fault per request, chosen by phase.

    client (unmodified fal_client, klingflow, httpx)
        --https--> FaultProxy (own trustme CA, 127.0.0.1:<free port>)
        --https--> emulator queue host (its CA verified)

* Phases, from method + path: ``upload`` (``/storage/...``, a POST/PUT under ``/files/``),
  ``submit`` (POST to an endpoint id on the queue host), ``status`` (a poll, or a GET of fal's
  status stream), ``result``, ``download``
  (GET ``/files/...``), ``cancel``, ``run`` (POST on the run host: fal's direct-run protocol),
  ``platform`` (fal's platform API under ``/v1/``: request history, pricing) and ``other`` (admin
  routes, anything else).
* An answer is read whole before it is passed on (so a fault can cut or replace it), except an event
  stream (fal's status stream), which is passed on event by event as it arrives.
* The emulator writes absolute URLs with its own host:port (``response_url``, ``status_url``, file
  URLs): the proxy rewrites them in JSON/text bodies and ``Location`` headers to its own, so every
  later call (status, result, download) comes through it too.
* Faults are one-shot and queued per phase (``inject("submit", Fault.DROP_AFTER)``), optionally
  only for the N-th request of that phase (``at=N``) or for one endpoint (``endpoint="text-to-video"``;
  status/result/cancel/download requests are matched through the request ids the proxy saw accepted).
* A CONNECT listener (``HTTPS_PROXY`` in :meth:`FaultProxy.environment`) intercepts fal's fixed host
  names (``rest.fal.ai``, ``fal.run``, ``queue.fal.run``, the CDN hosts): their TLS ends here and the
  requests go through the same phases and faults to the emulator, so an unmodified fal_client whose
  upload host is a hard-coded constant is still observed (and never reaches the real fal). Other
  hosts are tunnelled unchanged.

Use the ``fault_proxy`` fixture (needs the ``emulator`` fixture of conftest), or
``with FaultProxy.for_emulator(server) as proxy: ...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import http
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11
import httpx
import pytest
import trustme

__all__ = [
    "PHASES",
    "Accepted",
    "Exchange",
    "Fault",
    "FaultProxy",
    "Injection",
    "classify",
    "fault_proxy",
]

PHASES = ("upload", "submit", "status", "result", "download", "cancel", "run", "platform", "other")

INTERCEPTED_HOSTS = {
    "rest.fal.ai": "queue",
    "api.fal.ai": "queue",  # the platform API (request history, pricing): never the real fal
    "queue.falrun.com": "queue",
    "falrun.com": "run",
    "queue.fal.run": "queue",
    "fal.run": "run",
    "fal.media": "queue",
    "v3.fal.media": "queue",
    "v3b.fal.media": "queue",
}
CLIENT_VARIABLES = (
    "FAL_KEY",
    "FAL_KEY_ID",
    "FAL_KEY_SECRET",
    "FAL_RUN_HOST",
    "FAL_QUEUE_RUN_HOST",
    "SSL_CERT_FILE",
    "CURL_CA_BUNDLE",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
)

_REQUEST_PATH = re.compile(
    r"^/(?P<app>.+?)/requests/(?P<id>[^/]+)(?P<action>/status/stream|/status|/cancel)?/?$"
)
_FILE_PATH = re.compile(r"^/files/(?P<id>[^/]+)/")
_HOP_BY_HOP = frozenset(
    {
        "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
        "transfer-encoding", "upgrade", "host", "content-length", "accept-encoding", "content-encoding",
    }
)  # fmt: skip
_INGRESS_HTML = (
    "<html>\r\n<head><title>{code} {reason}</title></head>\r\n<body>\r\n"
    "<center><h1>{code} {reason}</h1></center>\r\n<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)


class Fault(enum.StrEnum):
    """One fault, applied to one request. ``_before``: not forwarded; ``_after``: forwarded upstream,
    then the real answer is replaced. ``ingress`` 5xx look like fal's nginx (HTML, no
    ``x-fal-request-id``: fal_client resends); ``app`` 5xx carry ``x-fal-request-id`` (it does not)."""

    RATE_LIMIT = "429"  # 429 + Retry-After (inject(..., retry_after=N)), not forwarded
    ERROR_500_BEFORE = "500_before"
    ERROR_500_AFTER = "500_after"  # accepted upstream, then a 500 from "the gateway"
    INGRESS_502_BEFORE = "502_ingress_before"
    INGRESS_502_AFTER = "502_ingress_after"
    APP_502_BEFORE = "502_app_before"
    APP_502_AFTER = "502_app_after"
    INGRESS_503_BEFORE = "503_ingress_before"
    INGRESS_503_AFTER = "503_ingress_after"
    APP_503_BEFORE = "503_app_before"
    APP_503_AFTER = "503_app_after"
    INGRESS_504_BEFORE = "504_ingress_before"
    INGRESS_504_AFTER = "504_ingress_after"
    DROP_BEFORE = "drop_before"  # connection closed, nothing forwarded
    DROP_AFTER = "drop_after"  # forwarded, then the connection closed with no answer
    TRUNCATE = "truncate"  # forwarded, headers with the full Content-Length, half the body, close
    # (an event stream: its first event, then close)
    SLOW = "slow"  # forwarded, the answer held back `delay` seconds

    @property
    def forwards(self) -> bool:
        return self.value.endswith("_after") or self in (Fault.DROP_AFTER, Fault.TRUNCATE, Fault.SLOW)


@dataclass
class Injection:
    """A queued fault: the next ``times`` requests of ``phase`` that match get it."""

    phase: str
    fault: Fault
    times: int = 1
    endpoint: str | None = None
    at: int | None = None
    delay: float = 5.0
    retry_after: float = 1.0


@dataclass(frozen=True)
class Accepted:
    """A submit (or direct run) the emulator answered 2xx with a request id."""

    request_id: str
    endpoint: str
    phase: str
    exchange: int


@dataclass
class Exchange:
    """What happened to one request that reached the proxy."""

    number: int  # global, from 1
    phase: str
    phase_number: int  # n-th request of this phase, from 1 (what `at=` matches)
    method: str
    path: str
    endpoint: str | None
    fault: Fault | None = None
    forwarded: bool = False
    upstream_status: int | None = None
    request_id: str | None = None
    outcome: str = "pending"  # answered NNN | dropped | truncated | client gone | upstream error
    notes: list[str] = field(default_factory=list)


def classify(method: str, path: str, *, run_host: bool = False) -> str:
    """The phase of a request from its method and path (query excluded)."""
    method = method.upper()
    if path.startswith("/storage/") or path == "/storage":
        return "upload"
    if path.startswith("/files/"):
        return "download" if method in ("GET", "HEAD") else "upload"
    if path.startswith("/_emulator/"):
        return "other"
    if path.startswith("/v1/"):  # before the request pattern: /v1/models/requests/by-endpoint is no result
        return "platform"
    match = _REQUEST_PATH.match(path)
    if match is not None:
        action = match["action"]
        if action == "/cancel" and method == "PUT":
            return "cancel"
        if action in ("/status", "/status/stream") and method == "GET":
            return "status"  # a poll or fal's status stream: a status fault meets either
        if action is None and method == "GET":
            return "result"
        return "other"
    if method == "POST" and path.strip("/"):
        return "run" if run_host else "submit"
    return "other"


def _endpoint_matches(wanted: str, endpoint: str | None) -> bool:
    if endpoint is None:
        return False
    wanted = wanted.strip("/")
    return endpoint == wanted or endpoint.endswith("/" + wanted)


@dataclass
class _Route:
    """One listener: where it forwards, and which netloc the answers are rewritten to."""

    kind: str  # "queue" | "run"
    upstream: str  # host:port of the emulator socket
    public: str = ""  # host:port of this listener


class FaultProxy:
    """The proxy: one TLS listener per emulator socket (queue, run) plus a CONNECT listener."""

    def __init__(
        self,
        queue_host: str,
        *,
        ca_bundle: Path | str,
        key: str,
        run_host: str | None = None,
        upstream_timeout: float = 120.0,
    ) -> None:
        self.key = key
        self.upstream_ca_bundle = Path(ca_bundle)
        self._upstream_timeout = upstream_timeout
        self._routes = {"queue": _Route("queue", queue_host)}
        if run_host:
            self._routes["run"] = _Route("run", run_host)
        self._dir = Path(tempfile.mkdtemp(prefix="faultproxy-"))
        self.ca = trustme.CA(organization_name="klingflow tests fault proxy")
        cert = self.ca.issue_cert("127.0.0.1", "localhost", *INTERCEPTED_HOSTS)
        self._server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self._server_ssl)
        self.ca_bundle = self._dir / "ca-bundle.pem"
        self.ca_bundle.write_bytes(self.upstream_ca_bundle.read_bytes() + b"\n" + self.ca.cert_pem.bytes())

        self._lock = threading.Lock()
        self._injections: list[Injection] = []
        self._seen: Counter[str] = Counter()
        self._forwarded: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._accepted: list[Accepted] = []
        self._owners: dict[str, str] = {}  # request id -> endpoint id (kept across reset)
        self._exchanges: list[Exchange] = []
        self.loop_errors: list[str] = []

        self._loop = asyncio.new_event_loop()
        self._loop.set_exception_handler(self._loop_error)
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._client: httpx.AsyncClient | None = None
        self.connect_port = 0
        self._closed = False
        self._start()

    @classmethod
    def for_emulator(cls, server: Any, **options: Any) -> FaultProxy:
        """A proxy in front of an ``EmulatorServer`` (queue and run sockets)."""
        return cls(
            server.queue_host,
            run_host=server.run_host,
            ca_bundle=server.identity.ca_bundle,
            key=server.identity.key,
            **options,
        )

    # ---- public API ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """host:port of the queue listener (what ``FAL_QUEUE_RUN_HOST`` is set to)."""
        return self._routes["queue"].public

    @property
    def run_host(self) -> str | None:
        """host:port of the run listener (``FAL_RUN_HOST``), if the emulator's run socket is proxied."""
        route = self._routes.get("run")
        return route.public if route else None

    @property
    def port(self) -> int:
        return int(self.host.rsplit(":", 1)[1])

    @property
    def ports(self) -> list[int]:
        """Every port the proxy listens on (for checking they are free again after close)."""
        return [int(r.public.rsplit(":", 1)[1]) for r in self._routes.values()] + [self.connect_port]

    def variables(self) -> dict[str, str]:
        """The variables that point an unmodified fal_client (and klingflow, curl) at the proxy."""
        return {
            "FAL_KEY": self.key,
            "FAL_QUEUE_RUN_HOST": self.host,
            "FAL_RUN_HOST": self.run_host or self.host,
            "SSL_CERT_FILE": str(self.ca_bundle),
            "CURL_CA_BUNDLE": str(self.ca_bundle),
            "HTTPS_PROXY": f"http://127.0.0.1:{self.connect_port}",
            "NO_PROXY": "127.0.0.1,localhost,::1",
        }

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """A full environment for a subprocess: ``base`` (default ``os.environ``) without any other fal
        client settings, plus :meth:`variables`."""
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in CLIENT_VARIABLES}
        return {**env, **self.variables()}

    def inject(
        self,
        phase: str,
        fault: Fault | str,
        times: int = 1,
        *,
        endpoint: str | None = None,
        at: int | None = None,
        delay: float = 5.0,
        retry_after: float = 1.0,
    ) -> Injection:
        """Queue ``fault`` for the next ``times`` requests of ``phase`` (that are its ``at``-th request
        since the last reset, and/or go to ``endpoint``: an endpoint id or its tail, e.g.
        ``"text-to-video"``). ``delay`` is for SLOW, ``retry_after`` for RATE_LIMIT."""
        if phase not in PHASES:
            raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")
        if times < 1:
            raise ValueError("times must be >= 1")
        injection = Injection(phase, Fault(fault), times, endpoint, at, delay, retry_after)
        with self._lock:
            self._injections.append(injection)
        return injection

    def pending(self) -> list[Injection]:
        """Injections not (fully) used yet."""
        with self._lock:
            return [Injection(**vars(i)) for i in self._injections]

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """Per phase: requests ``seen``, ``forwarded`` upstream, ``faulted``; ``accepted`` for submit/run."""
        with self._lock:
            result = {
                phase: {
                    "seen": self._seen[phase],
                    "forwarded": self._forwarded[phase],
                    "faulted": self._faulted[phase],
                }
                for phase in PHASES
            }
            for phase in ("submit", "run"):
                result[phase]["accepted"] = sum(1 for a in self._accepted if a.phase == phase)
            return result

    @property
    def accepted_submits(self) -> list[str]:
        """Request ids of the queue submits the emulator accepted (2xx + request_id), in order."""
        with self._lock:
            return [a.request_id for a in self._accepted if a.phase == "submit"]

    @property
    def accepted(self) -> list[Accepted]:
        """Every accepted submit and direct run, with its endpoint."""
        with self._lock:
            return list(self._accepted)

    @property
    def exchanges(self) -> list[Exchange]:
        """One record per request, in arrival order (copies)."""
        with self._lock:
            return [Exchange(**{**vars(e), "notes": list(e.notes)}) for e in self._exchanges]

    def reset(self) -> None:
        """Forget counters, exchanges, accepted submits and pending injections."""
        with self._lock:
            self._injections.clear()
            self._seen.clear()
            self._forwarded.clear()
            self._faulted.clear()
            self._accepted.clear()
            self._exchanges.clear()
            self.loop_errors.clear()

    def close(self) -> None:
        """Stop listening, abort open connections, stop the thread and remove the CA files."""
        if self._closed:
            return
        self._closed = True
        if self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=15)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=15)
        if not self._loop.is_running():
            self._loop.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- lifecycle ----------------------------------------------------------------------------

    def _start(self) -> None:
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.call_soon(started.set)
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, name="faultproxy", daemon=True)
        self._thread.start()
        started.wait(10)
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=15)
        except BaseException:
            self.close()
            raise

    async def _listen(self) -> None:
        upstream_ssl = ssl.create_default_context(cafile=str(self.upstream_ca_bundle))
        self._client = httpx.AsyncClient(
            verify=upstream_ssl, timeout=self._upstream_timeout, trust_env=False, follow_redirects=False
        )
        for route in self._routes.values():
            server = await asyncio.start_server(
                lambda r, w, route=route: self._serve_connection(r, w, route),
                "127.0.0.1",
                0,
                ssl=self._server_ssl,
            )
            self._servers.append(server)
            route.public = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        tunnel = await asyncio.start_server(self._serve_connect, "127.0.0.1", 0)
        self._servers.append(tunnel)
        self.connect_port = tunnel.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)
        if self._client is not None:
            await self._client.aclose()

    def _loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Clients that vanish mid-TLS are part of the job; keep the messages for debugging only.
        self.loop_errors.append(str(context.get("exception") or context.get("message")))

    # ---- the downstream leg -------------------------------------------------------------------

    def _track(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: _Route
    ) -> None:
        self._track()
        graceful = False
        try:
            await self._serve_http(reader, writer, route)
            graceful = True
        except (ConnectionError, ssl.SSLError, h11.ProtocolError, asyncio.IncompleteReadError):
            pass
        finally:
            if graceful:
                await _close(writer)
            else:
                _abort(writer)

    async def _serve_http(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, route: _Route
    ) -> None:
        conn = h11.Connection(h11.SERVER)
        while True:
            received = await _read_request(conn, reader)
            if received is None:
                return
            request, body = received
            keep_open = await self._exchange(conn, writer, route, request, body)
            if not keep_open or conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                return
            conn.start_next_cycle()

    async def _serve_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """HTTPS_PROXY: intercept fal's host names (TLS ends here), tunnel anything else as is."""
        self._track()
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.decode("latin-1").partition(" ")
            target = rest.partition(" ")[0]
            host, _, port = target.rpartition(":")
            host = host.strip("[]").lower()
            if method != "CONNECT" or not host:
                writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
                return
            kind = INTERCEPTED_HOSTS.get(host)
            if kind is None:
                await _tunnel(reader, writer, host, int(port or 443))
                return
            route = self._routes.get(kind) or self._routes["queue"]
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
            await writer.drain()
            await writer.start_tls(self._server_ssl)
            await self._serve_http(reader, writer, route)
            await _close(writer)
        except (ConnectionError, ssl.SSLError, h11.ProtocolError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError):  # fmt: skip
            pass
        finally:
            _abort(writer)

    # ---- one request --------------------------------------------------------------------------

    def _begin(self, route: _Route, method: str, target: str) -> tuple[Exchange, Injection | None]:
        path = target.split("?", 1)[0]
        phase = classify(method, path, run_host=route.kind == "run")
        with self._lock:
            self._seen[phase] += 1
            endpoint = self._endpoint_of(phase, path)
            exchange = Exchange(
                number=len(self._exchanges) + 1,
                phase=phase,
                phase_number=self._seen[phase],
                method=method,
                path=target,
                endpoint=endpoint,
            )
            self._exchanges.append(exchange)
            chosen = None
            for injection in self._injections:
                if injection.phase != phase:
                    continue
                if injection.at is not None and injection.at != exchange.phase_number:
                    continue
                if injection.endpoint is not None and not _endpoint_matches(injection.endpoint, endpoint):
                    continue
                chosen = Injection(**vars(injection))
                injection.times -= 1
                if injection.times <= 0:
                    self._injections.remove(injection)
                break
            if chosen is not None:
                exchange.fault = chosen.fault
                self._faulted[phase] += 1
        return exchange, chosen

    def _endpoint_of(self, phase: str, path: str) -> str | None:
        if phase in ("submit", "run"):
            return path.strip("/")
        match = _REQUEST_PATH.match(path) or _FILE_PATH.match(path)
        return self._owners.get(match["id"]) if match else None

    async def _exchange(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        route: _Route,
        request: h11.Request,
        body: bytes,
    ) -> bool:
        """Handle one request; return whether the connection may serve another.

        ``exchange.outcome`` is set before the answer is written (a client may act on the answer at once).
        """
        method = request.method.decode("ascii")
        target = request.target.decode("latin-1")
        exchange, injection = self._begin(route, method, target)
        fault = injection.fault if injection else None

        if fault is not None and not fault.forwards:
            if fault is Fault.DROP_BEFORE:
                exchange.outcome = "dropped"
                return False
            status, headers, payload = _fault_answer(fault, injection, exchange, None)
            exchange.outcome = f"answered {status}"
            await _send(conn, writer, method, status, headers, payload)
            return True

        try:
            upstream = await self._forward(route, method, target, request.headers, body)
        except httpx.HTTPError as exc:
            exchange.outcome = "upstream error"
            exchange.notes.append(repr(exc))
            payload = f"faultproxy: upstream error {exc!r}".encode()
            await _send(conn, writer, method, 502, [("content-type", "text/plain")], payload)
            return False
        try:
            return await self._answer(conn, writer, method, exchange, injection, upstream)
        finally:
            await upstream.aclose()  # an event stream is still open upstream when its client went away

    async def _answer(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        method: str,
        exchange: Exchange,
        injection: Injection | None,
        upstream: httpx.Response,
    ) -> bool:
        """Pass ``upstream``'s answer on (rewritten, with the fault an after-fault makes of it)."""
        fault = injection.fault if injection else None
        exchange.forwarded = True
        exchange.upstream_status = upstream.status_code
        with self._lock:
            self._forwarded[exchange.phase] += 1
        status, headers = upstream.status_code, self._rewrite_headers(upstream)
        self._record_acceptance(exchange, upstream)
        streaming = _is_event_stream(upstream)
        if streaming and fault in (None, Fault.SLOW, Fault.TRUNCATE):
            return await self._stream(conn, writer, exchange, injection, status, headers, upstream)
        payload = b"" if streaming else self._swap_hosts(upstream.content, upstream)

        if fault is Fault.DROP_AFTER:
            exchange.outcome = "dropped"
            return False
        if fault is Fault.TRUNCATE:
            exchange.outcome = "truncated"
            writer.write(conn.send(_response(status, headers, len(payload))))
            writer.write(conn.send(h11.Data(data=payload[: len(payload) // 2])))
            await writer.drain()
            return False
        if fault is Fault.SLOW:
            exchange.outcome = f"held {injection.delay:g}s"
            await asyncio.sleep(injection.delay)
            exchange.outcome = f"answered {status} late"
        elif fault is not None:
            status, headers, payload = _fault_answer(fault, injection, exchange, upstream)
            exchange.outcome = f"answered {status}"
        else:
            exchange.outcome = f"answered {status}"
        try:
            await _send(conn, writer, method, status, headers, payload)
        except (ConnectionError, ssl.SSLError, RuntimeError):
            exchange.outcome = "client gone"
            return False
        return True

    async def _forward(
        self, route: _Route, method: str, target: str, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> httpx.Response:
        assert self._client is not None
        forwarded = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in headers
            if name.decode("latin-1").lower() not in _HOP_BY_HOP
        ]
        forwarded.append(("accept-encoding", "identity"))
        outgoing = self._client.build_request(
            method, f"https://{route.upstream}{target}", headers=forwarded, content=body
        )
        upstream = await self._client.send(outgoing, stream=True)
        if not _is_event_stream(upstream):  # read whole, so a fault can cut or replace it
            try:
                await upstream.aread()
            finally:
                await upstream.aclose()
        return upstream

    async def _stream(
        self,
        conn: h11.Connection,
        writer: asyncio.StreamWriter,
        exchange: Exchange,
        injection: Injection | None,
        status: int,
        headers: list[tuple[str, str]],
        upstream: httpx.Response,
    ) -> bool:
        """Pass a server-sent event stream (fal's status stream) on event by event, as it arrives.

        Read whole first, every event would reach the client only once the request completed: no
        progress on the way, and a client's idle timeout would fire on a long request. ``SLOW``
        holds the stream back before its first byte; ``TRUNCATE`` cuts it after its first event.
        """
        fault = injection.fault if injection else None
        exchange.outcome = "truncated" if fault is Fault.TRUNCATE else f"answered {status}"
        if fault is Fault.SLOW and injection is not None:
            exchange.outcome = f"held {injection.delay:g}s"
            await asyncio.sleep(injection.delay)
            exchange.outcome = f"answered {status} late"
        pending = b""
        try:
            writer.write(conn.send(_response(status, headers, None)))  # no length: chunked
            await writer.drain()
            async for chunk in upstream.aiter_raw():
                pending += chunk
                events, end, pending = pending.rpartition(b"\n\n")
                if not end:  # no whole event yet (a host:port is only rewritten whole)
                    pending = events
                    continue
                writer.write(conn.send(h11.Data(data=self._swap_hosts(events + end, upstream))))
                await writer.drain()
                if fault is Fault.TRUNCATE:
                    return False
            if pending:
                writer.write(conn.send(h11.Data(data=self._swap_hosts(pending, upstream))))
            writer.write(conn.send(h11.EndOfMessage()))
            await writer.drain()
        except httpx.HTTPError as exc:  # cut upstream: cut here too, as the client would see it
            exchange.notes.append(f"upstream cut mid-stream: {exc!r}")
            return False
        except (ConnectionError, ssl.SSLError, RuntimeError):
            exchange.outcome = "client gone"
            return False
        return True

    def _swap_hosts(self, payload: bytes, upstream: httpx.Response) -> bytes:
        """``payload`` (JSON or text) with every emulator host:port replaced by the matching listener's."""
        content_type = upstream.headers.get("content-type", "")
        if "json" in content_type or content_type.startswith("text/"):
            for route in self._routes.values():
                payload = payload.replace(route.upstream.encode(), route.public.encode())
        return payload

    def _rewrite_headers(self, upstream: httpx.Response) -> list[tuple[str, str]]:
        """The upstream answer's headers, hop-by-hop ones left out and ``Location`` pointed here."""
        swaps = [(r.upstream, r.public) for r in self._routes.values()]
        headers = []
        for name, value in upstream.headers.multi_items():
            if name.lower() in _HOP_BY_HOP:
                continue
            if name.lower() == "location":
                for old, new in swaps:
                    value = value.replace(old, new)
            headers.append((name, value))
        return headers

    def _record_acceptance(self, exchange: Exchange, upstream: httpx.Response) -> None:
        if exchange.phase not in ("submit", "run") or not 200 <= upstream.status_code < 300:
            return
        request_id = None
        if exchange.phase == "submit":
            with contextlib.suppress(ValueError, AttributeError, TypeError):
                request_id = upstream.json().get("request_id")
        request_id = request_id or upstream.headers.get("x-fal-request-id")
        if not request_id:
            return
        exchange.request_id = str(request_id)
        with self._lock:
            self._accepted.append(
                Accepted(str(request_id), exchange.endpoint or "", exchange.phase, exchange.number)
            )
            self._owners[str(request_id)] = exchange.endpoint or ""


# ---- HTTP helpers ---------------------------------------------------------------------------------


async def _read_request(
    conn: h11.Connection, reader: asyncio.StreamReader
) -> tuple[h11.Request, bytes] | None:
    request: h11.Request | None = None
    body = bytearray()
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(await reader.read(65536))
        elif isinstance(event, h11.Request):
            request = event
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            assert request is not None
            return request, bytes(body)
        elif isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
            return None


def _response(status: int, headers: list[tuple[str, str]], length: int | None) -> h11.Response:
    """The response head; ``length`` None for a body sent as it comes (h11 chunks it)."""
    try:
        reason = http.HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b""
    headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
    if length is not None:
        headers.append(("content-length", str(length)))
    return h11.Response(status_code=status, headers=headers, reason=reason)


def _is_event_stream(upstream: httpx.Response) -> bool:
    return upstream.headers.get("content-type", "").startswith("text/event-stream")


async def _send(
    conn: h11.Connection,
    writer: asyncio.StreamWriter,
    method: str,
    status: int,
    headers: list[tuple[str, str]],
    payload: bytes,
) -> None:
    writer.write(conn.send(_response(status, headers, len(payload))))
    if method != "HEAD" and payload:
        writer.write(conn.send(h11.Data(data=payload)))
    writer.write(conn.send(h11.EndOfMessage()))
    await writer.drain()


def _fault_answer(
    fault: Fault, injection: Injection | None, exchange: Exchange, upstream: httpx.Response | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    assert injection is not None
    if fault is Fault.RATE_LIMIT:
        body = json.dumps({"detail": "Rate limit exceeded (faultproxy)"}).encode()
        return (
            429,
            [("content-type", "application/json"), ("retry-after", f"{injection.retry_after:g}")],
            body,
        )
    code = int(fault.value[:3])
    if "ingress" in fault.value:
        reason = http.HTTPStatus(code).phrase
        body = _INGRESS_HTML.format(code=code, reason=reason).encode()
        return code, [("content-type", "text/html"), ("server", "nginx")], body
    headers = [("content-type", "application/json")]
    if "app" in fault.value:
        request_id = (upstream.headers.get("x-fal-request-id") if upstream is not None else None) or (
            f"faultproxy-{exchange.number}"
        )
        headers.append(("x-fal-request-id", request_id))
    detail = f"{http.HTTPStatus(code).phrase} (faultproxy {fault.value})"
    return code, headers, json.dumps({"detail": detail}).encode()


async def _close(writer: asyncio.StreamWriter) -> None:
    """Flush what was written (a truncated body must arrive whole up to the cut), then close."""
    try:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)
    except Exception:  # TimeoutError included
        _abort(writer)


def _abort(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        writer.transport.abort()


async def _tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(host, port)
    except OSError:
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return
    writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
    await writer.drain()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        _abort(dst)

    try:
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
    finally:
        _abort(up_writer)


# ---- pytest -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def running_proxy(server: Any, **options: Any) -> Iterator[FaultProxy]:
    """``with running_proxy(emulator.server) as proxy:`` — closed on exit."""
    proxy = FaultProxy.for_emulator(server, **options)
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture
def fault_proxy(emulator: Any) -> Iterator[FaultProxy]:
    """A fresh proxy in front of the session emulator (reset, no faults); closed after the test."""
    with running_proxy(emulator.server) as proxy:
        yield proxy
