"""Running the emulator: in the foreground (``klingflow emulator serve``) or in a background thread.

One uvicorn server listens on two TLS sockets, the *queue* port and the *run* port, because fal
has two hosts (``queue.fal.run`` and ``fal.run``) that share URL paths with different meanings.
Beside it runs a CONNECT tunnel (:mod:`~klingflow.emulator.tunnel`) that joins fal's fixed host
names (:data:`~klingflow.emulator.tls.FAL_HOSTS`: the upload hosts fal_client hard-codes, the
Platform API, and the model hosts) to those sockets; ``HTTPS_PROXY`` points clients at it.

A running server writes ``<home>/emulator/server.json`` so that ``klingflow emulator env`` (from
any shell) can print the lines that point an unmodified fal_client, or curl, at it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
from pathlib import Path

import uvicorn

from klingflow.emulator.app import create_app
from klingflow.emulator.faults import FaultPlan
from klingflow.emulator.options import EmulatorOptions, RenderMode, Validation
from klingflow.emulator.state import EmulatorState
from klingflow.emulator.tls import FAL_HOSTS, EmulatorIdentity, emulator_identity, issue_server_cert
from klingflow.emulator.tunnel import ConnectTunnel, Upstream
from klingflow.errors import ConfigError
from klingflow.settings import klingflow_home

__all__ = ["EmulatorServer", "client_environment", "read_server_file", "running_environment"]

_STARTUP_TIMEOUT = 30.0


class _PromptServer(uvicorn.Server):
    """Exits at once when told to: fal_client keeps idle keep-alive connections open, and waiting for
    them only delays the stop (and ends in an error line). In-flight requests are abandoned, as in a
    crash; a client resumes them from its journal.

    Since Python 3.12 asyncio's ``Server.wait_closed``, which uvicorn's shutdown awaits, waits for every
    connection to end, and a TLS connection closed from this side waits for the peer's close_notify.
    An idle keep-alive client never sends one (the embedded emulator's client is a loop that has
    already ended), so uvicorn gave up after ``timeout_graceful_shutdown`` and printed ``ERROR: Cancel 0
    running task(s), timeout graceful shutdown exceeded`` on the user's console. A forced exit
    therefore aborts the connections (no TLS goodbye) before uvicorn's own shutdown runs.
    """

    def handle_exit(self, sig: int, frame: object) -> None:
        self.force_exit = True
        super().handle_exit(sig, frame)  # type: ignore[arg-type]

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.force_exit:
            for connection in list(self.server_state.connections):
                connection.transport.abort()
            if sys.version_info >= (3, 13):  # also those uvicorn closed (keep-alive timeout) still closing
                for server in self.servers:
                    server.abort_clients()
        await super().shutdown(sockets)


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(
            f"cannot listen on {host}:{port} ({exc.strerror})",
            hint="choose another port with --port, or 0 for any free port",
        ) from exc
    return sock


def client_environment(
    queue_host: str,
    run_host: str,
    key: str,
    ca_bundle: Path,
    *,
    tunnel_port: int | None = None,
    home: Path | None = None,
) -> dict[str, str]:
    """Environment lines that point an unmodified fal_client (and curl) at an emulator.

    ``HTTPS_PROXY`` names the emulator's tunnel, which fal_client's fixed upload hosts need; without
    ``tunnel_port`` it is taken from the running server's ``server.json`` when that server is the one
    at ``queue_host`` (so callers that predate the tunnel still print it).
    """
    if tunnel_port is None:
        tunnel_port = _advertised_tunnel_port(queue_host, home)
    no_proxy = ",".join(
        sorted(
            {
                "127.0.0.1",
                "localhost",
                "::1",
                *(os.environ.get("NO_PROXY", "").split(",") if os.environ.get("NO_PROXY") else []),
            }
        )
    )
    environment = {
        "FAL_KEY": key,
        "FAL_RUN_HOST": run_host,
        "FAL_QUEUE_RUN_HOST": queue_host,
        "SSL_CERT_FILE": str(ca_bundle),
        "CURL_CA_BUNDLE": str(ca_bundle),
        "NO_PROXY": no_proxy,
    }
    if tunnel_port:
        environment["HTTPS_PROXY"] = f"http://127.0.0.1:{tunnel_port}"
    return environment


def _advertised_tunnel_port(queue_host: str, home: Path | None) -> int | None:
    try:
        info = read_server_file(home)
    except ConfigError:
        return None
    port = info.get("tunnel_port")
    return int(port) if info.get("queue_host") == queue_host and isinstance(port, int) else None


def running_environment(port: int | None = None, home: Path | None = None) -> dict[str, str]:
    """The client environment of the running foreground emulator (or of the one at queue ``port``)."""
    identity = emulator_identity(home)
    if port is None:
        info = read_server_file(home)
        queue_host, run_host = str(info["queue_host"]), str(info["run_host"])
    else:
        queue_host, run_host = f"127.0.0.1:{port}", f"127.0.0.1:{port + 1}"
    return client_environment(queue_host, run_host, identity.key, identity.ca_bundle, home=home)


def read_server_file(home: Path | None = None) -> dict[str, object]:
    """The running foreground emulator's address, or ConfigError if none is running."""
    path = (home or klingflow_home()) / "emulator" / "server.json"
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (FileNotFoundError, ValueError, KeyError, ProcessLookupError, PermissionError):
        raise ConfigError(
            "no klingflow emulator is running",
            hint="start one with `klingflow emulator serve` (or pass --port)",
        ) from None
    return info


class EmulatorServer:
    """A fal-compatible server on loopback (TLS on a queue port and a run port)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        run_port: int | None = None,
        workers: int = 2,
        latency: float = 0.5,
        faults: FaultPlan | None = None,
        data_dir: Path | None = None,
        fetch_remote: bool = True,
        extra_hostnames: tuple[str, ...] = (),
        home: Path | None = None,
        validation: Validation | None = None,
        result_retention: float | None = None,
        large_result_retention: float | None = None,
        media_expiry: float | None = None,
        render: RenderMode | None = None,
        options: EmulatorOptions | None = None,
        tunnel_port: int = 0,
        own_logging: bool = True,
    ) -> None:
        """Bind the sockets (queue, run, tunnel) and prepare the app.

        ``own_logging``: uvicorn sets up its loggers' console handlers (a server of its own, ``klingflow
        emulator serve``); an embedded one leaves them to the process it lives in, whose command
        decides where log lines go (``klingflow run`` keeps them in the run's log file).

        The fal behaviours (``validation``, ``result_retention``, ``large_result_retention``,
        ``media_expiry``, ``render``; see :mod:`~klingflow.emulator.options`) default to the
        ``KLINGFLOW_EMULATOR_*`` variables, then to fal's behaviour; ``options`` gives them all at once.
        """
        self.home = home or klingflow_home()
        self.identity: EmulatorIdentity = emulator_identity(self.home)
        self.host = host
        self.options = options or EmulatorOptions.from_env(
            validation=validation,
            result_retention=result_retention,
            large_result_retention=large_result_retention,
            media_expiry=media_expiry,
            render=render,
        )
        self._queue_sock = _bind(host, port)
        self._run_sock = _bind(host, run_port if run_port is not None else (port + 1 if port else 0))
        self._tunnel_sock = _bind("127.0.0.1", tunnel_port)
        self.queue_port = self._queue_sock.getsockname()[1]
        self.run_port = self._run_sock.getsockname()[1]
        self.tunnel_port = self._tunnel_sock.getsockname()[1]
        self.data_dir = data_dir or self.home / "emulator" / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state = EmulatorState(
            key=self.identity.key,
            data_dir=self.data_dir,
            run_ports={self.run_port},
            workers=workers,
            latency=latency,
            faults=faults or FaultPlan(),
            fetch_remote=fetch_remote,
            options=self.options,
            files_base=f"https://{self.queue_host}",
        )
        hostnames = tuple(dict.fromkeys((*self._default_hostnames(), *extra_hostnames)))
        self._cert = issue_server_cert(self.identity, hostnames)
        config = uvicorn.Config(
            create_app(self.state),
            ssl_certfile=str(self._cert),
            ssl_keyfile=str(self._cert),
            log_level="warning",
            log_config=uvicorn.config.LOGGING_CONFIG if own_logging else None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        self._server = _PromptServer(config)
        self._upstream_proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
        self._thread: threading.Thread | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.tunnel: ConnectTunnel | None = None

    def _default_hostnames(self) -> tuple[str, ...]:
        return (self.host, "127.0.0.1", "localhost", "::1", *FAL_HOSTS)

    @property
    def queue_host(self) -> str:
        return f"{self._netloc_host()}:{self.queue_port}"

    @property
    def run_host(self) -> str:
        return f"{self._netloc_host()}:{self.run_port}"

    def _netloc_host(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"[{host}]" if ":" in host else host

    @property
    def proxy_url(self) -> str:
        """The tunnel's address, as ``HTTPS_PROXY`` names it."""
        return f"http://127.0.0.1:{self.tunnel_port}"

    def environment(self) -> dict[str, str]:
        """The client environment for this server (see :func:`client_environment`)."""
        return client_environment(
            self.queue_host,
            self.run_host,
            self.identity.key,
            self.identity.ca_bundle,
            tunnel_port=self.tunnel_port,
        )

    async def _serve(self, tunnel_routes: dict[str, str] | None) -> None:
        self.loop = asyncio.get_running_loop()
        ports = {"queue": self.queue_port, "run": self.run_port}
        routes = {**FAL_HOSTS, **(tunnel_routes or {})}
        self.tunnel = ConnectTunnel(
            {name.lower(): ("127.0.0.1", ports[kind]) for name, kind in routes.items()},
            upstream=Upstream.from_url(self._upstream_proxy),
        )
        await self.tunnel.start(sock=self._tunnel_sock)
        self.state.queue.start()
        try:
            await self._server.serve(sockets=[self._queue_sock, self._run_sock])
        finally:
            await self.state.queue.stop()
            await self.state.webhooks.stop()
            await self.tunnel.stop()

    def serve_forever(self) -> None:
        """Serve in the foreground until interrupted, advertising the address in server.json."""
        info = self.home / "emulator" / "server.json"
        info.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "queue_host": self.queue_host,
                    "run_host": self.run_host,
                    "tunnel_port": self.tunnel_port,
                }
            )
        )
        try:
            asyncio.run(self._serve(None))
        finally:
            info.unlink(missing_ok=True)
            self._cert.unlink(missing_ok=True)

    def start_in_thread(self, *, tunnel_routes: dict[str, str] | None = None) -> EmulatorServer:
        """Start serving on a daemon thread and return once it accepts connections.

        The tunnel always routes fal's fixed hosts; ``tunnel_routes`` (host name -> "queue" | "run")
        adds more (e.g. the hosts an already imported fal_client was given).
        """
        self._thread = threading.Thread(
            target=asyncio.run, args=(self._serve(tunnel_routes),), name="klingflow-emulator", daemon=True
        )
        self._thread.start()
        deadline = threading.Event()
        for _ in range(int(_STARTUP_TIMEOUT / 0.05)):
            if self._server.started:
                return self
            if not self._thread.is_alive():
                break
            deadline.wait(0.05)
        raise ConfigError(
            "the embedded emulator did not start",
            hint="run `klingflow emulator serve` in a terminal to see why",
        )

    def stop(self) -> None:
        """Stop a server started with :meth:`start_in_thread`."""
        self._server.force_exit = self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._cert.unlink(missing_ok=True)
