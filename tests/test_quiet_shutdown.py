"""A successful run ends quietly: no ERROR or WARNING line from an embedded server's shutdown.

Since Python 3.12, asyncio's ``Server.wait_closed`` waits for every open connection, and an idle
keep-alive TLS client whose loop has ended never answers the server's close_notify: uvicorn's shutdown
then printed ``ERROR: Cancel 0 running task(s), timeout graceful shutdown exceeded`` after every
run on the embedded emulator, and the tunnel's stop waited for connections nobody would close.
The emulator now hangs those connections up itself; the first two tests check that at the TCP
level (what fails on 3.11 too, where ``wait_closed`` does not wait), the last one the console of a
real ``klingflow run`` on the embedded emulator.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

from conftest import CLIENT_VARIABLES, KLINGFLOW, REPO
from klingflow.emulator.server import EmulatorServer
from klingflow.emulator.tunnel import ConnectTunnel


def _closed(raw: socket.socket) -> bool:
    """Whether the peer hung up: whatever it sent already is read, then end of stream or a reset."""
    raw.setblocking(False)
    try:
        while raw.recv(65536):
            pass
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    return True


def _idle_keep_alive_client(server: EmulatorServer) -> socket.socket:
    """A TCP connection to the queue port that made one HTTPS request and keeps the connection open.

    TLS runs in memory (``ssl.MemoryBIO``), so the test sees the TCP socket itself: the server's
    close_notify arrives as data, not as an end of stream.
    """
    raw = socket.create_connection(("127.0.0.1", server.queue_port), timeout=30)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    context = ssl.create_default_context(cafile=str(server.identity.ca_bundle))
    tls = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            raw.sendall(outgoing.read())
            incoming.write(raw.recv(65536))
    raw.sendall(outgoing.read())
    head = f"Host: {server.queue_host}\r\nAuthorization: Key {server.identity.key}\r\n"
    tls.write(f"GET /_emulator/stats HTTP/1.1\r\n{head}\r\n".encode())
    raw.sendall(outgoing.read())
    response = b""
    while b"\r\n\r\n" not in response:
        incoming.write(raw.recv(65536))
        try:
            response += tls.read(65536)
        except ssl.SSLWantReadError:
            continue
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    return raw


def test_stop_hangs_up_an_idle_keep_alive_tls_client(tmp_path: Path) -> None:
    server = EmulatorServer(home=tmp_path, latency=0.0, workers=1, fetch_remote=False).start_in_thread()
    raw = _idle_keep_alive_client(server)
    try:
        server.stop()
        assert not server._thread.is_alive(), "the emulator's thread was still stopping"  # type: ignore[union-attr]
        assert _closed(raw), "the connection was left open, waiting for the client's TLS goodbye"
    finally:
        raw.close()


async def test_tunnel_stop_ends_its_open_connections() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
        writer.close()

    destination = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = destination.sockets[0].getsockname()[1]
    tunnel = ConnectTunnel({"queue.fal.run": ("127.0.0.1", port)})
    await tunnel.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", tunnel.port)
    writer.write(b"CONNECT queue.fal.run:443 HTTP/1.1\r\nHost: queue.fal.run:443\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    writer.write(b"ping")
    assert await reader.readexactly(4) == b"ping"
    await asyncio.wait_for(tunnel.stop(), timeout=30)
    assert await asyncio.wait_for(reader.read(), timeout=30) == b"", "the tunnelled connection stayed open"
    writer.close()
    destination.close()
    await destination.wait_closed()


@pytest.mark.slow
def test_a_successful_run_prints_no_error_or_warning_line(
    tmp_path: Path, session_prefect: dict[str, str]
) -> None:
    """The embedded emulator (no fal variables at all), as in ``./scripts/main``, in a fresh home."""
    env = {k: v for k, v in os.environ.items() if k not in (*CLIENT_VARIABLES, "CURL_CA_BUNDLE")}
    env.update(session_prefect, KLINGFLOW_HOME=str(tmp_path / "home"))
    done = subprocess.run(
        [*KLINGFLOW, "run", str(REPO / "deployments" / "pipelines" / "story.yaml"), "--backend", "emulator"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    console = done.stdout + done.stderr
    assert done.returncode == 0, console
    assert "story: completed" in done.stdout
    noisy = [line for line in console.splitlines() if re.search(r"\b(ERROR|WARNING)\b", line)]
    assert noisy == [], console
