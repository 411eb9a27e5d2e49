"""The embedded emulator: started in-process when no fal key is configured.

Like Prefect's ephemeral server or LocalStack, it makes klingflow work out of the box: the first
call that needs a backend starts the emulator on free loopback ports in a daemon thread and points
fal_client at it. fal_client reads its hosts once, at import, so two cases are handled:

* fal_client not imported yet: ``FAL_RUN_HOST`` / ``FAL_QUEUE_RUN_HOST`` are set before it is,
  exactly as ``klingflow emulator env`` tells a shell to do.
* fal_client already imported (a notebook ran ``import fal_client`` first): its hosts are fixed,
  and the emulator's CONNECT tunnel also joins those host names to it.

In both cases ``HTTPS_PROXY`` points at the tunnel (see :mod:`klingflow.emulator.tunnel`), which
fal_client's hard-coded upload hosts (``rest.fal.ai``, ``v3.fal.media``) and the Platform API
(``api.fal.ai``) always need; other hosts pass through to their real destination, through the
proxy that was configured before, if any. ``SSL_CERT_FILE`` names a bundle of certifi's roots plus
the emulator's CA, and nothing inside fal_client is patched.

The ``KLINGFLOW_EMULATOR_*`` variables tune it: ``LATENCY`` (0.5 s), ``WORKERS`` (4), ``OFFLINE``,
and the fal behaviours of :mod:`klingflow.emulator.options` (e.g. ``RENDER=prerendered``).
"""

from __future__ import annotations

import atexit
import os
import sys
import threading
from pathlib import Path
from urllib.parse import urlparse

from klingflow.emulator.server import EmulatorServer
from klingflow.settings import settings

__all__ = ["embedded_emulator", "stop_embedded_emulator"]

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_lock = threading.Lock()
_server: EmulatorServer | None = None


def _imported_fal_hosts() -> tuple[str, str] | None:
    """(queue host, run host) fal_client fixed at import, or None if it is not imported yet."""
    client = sys.modules.get("fal_client.client")
    if client is None:
        return None
    return urlparse(client.QUEUE_URL_FORMAT).netloc, urlparse(client.RUN_URL_FORMAT).netloc


def _trust_bundle(bundle: Path) -> None:
    current = os.environ.get("SSL_CERT_FILE")
    if current and Path(current).resolve() != bundle.resolve() and Path(current).is_file():
        combined = bundle.with_name(f"ca-bundle-{os.getpid()}.pem")
        combined.write_bytes(Path(current).read_bytes() + b"\n" + bundle.read_bytes())
        bundle = combined
    os.environ["SSL_CERT_FILE"] = str(bundle)


def _add_no_proxy() -> None:
    hosts = [h for h in os.environ.get("NO_PROXY", "").split(",") if h]
    os.environ["NO_PROXY"] = ",".join(dict.fromkeys([*hosts, *_LOOPBACK]))


def embedded_emulator() -> EmulatorServer:
    """Start (once per process) and return the embedded emulator, with fal_client pointed at it."""
    global _server
    with _lock:
        if _server is not None:
            return _server
        configured = settings()
        latency, workers = configured.emulator_latency, configured.emulator_workers
        fetch_remote = not configured.emulator_offline
        imported = _imported_fal_hosts()
        extra = tuple(host.rsplit(":", 1)[0] for host in imported) if imported else ()
        server = EmulatorServer(
            latency=latency,
            workers=workers,
            fetch_remote=fetch_remote,
            extra_hostnames=extra,
            own_logging=False,  # its log lines go wherever this process sends its own
        )
        _trust_bundle(server.identity.ca_bundle)
        _add_no_proxy()
        if imported is None:
            os.environ["FAL_QUEUE_RUN_HOST"] = server.queue_host
            os.environ["FAL_RUN_HOST"] = server.run_host
            server.start_in_thread()
        else:  # its hosts are fixed: the tunnel joins them (loopback ones are never proxied)
            queue_name, run_name = (host.rsplit(":", 1)[0].strip("[]") for host in imported)
            names = {queue_name: "queue", run_name: "run"}
            server.start_in_thread(tunnel_routes={n: kind for n, kind in names.items() if n not in _LOOPBACK})
        os.environ.pop("https_proxy", None)
        os.environ["HTTPS_PROXY"] = server.proxy_url
        atexit.register(stop_embedded_emulator)
        _server = server
        return server


def stop_embedded_emulator() -> None:
    """Stop the embedded emulator if this process started one."""
    global _server
    with _lock:
        if _server is not None:
            _server.stop()
            _server = None
