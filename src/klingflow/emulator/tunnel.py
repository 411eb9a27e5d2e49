"""A tiny HTTPS CONNECT proxy that routes fal's host names to the emulator.

Some of fal_client's hosts cannot be pointed anywhere: the upload hosts are module constants
(``rest.fal.ai``, ``v3.fal.media``), and the model hosts are read once, at import, so a notebook
that ran ``import fal_client`` before klingflow started the embedded emulator still targets
``fal.run`` and ``queue.fal.run``. Rather than patch fal_client, the emulator runs this tunnel and
``HTTPS_PROXY`` points at it: httpx then asks it to ``CONNECT rest.fal.ai:443``, and the tunnel
joins that connection to the emulator's queue socket (``fal.run`` to its run socket). TLS still
runs end to end between the client and the emulator, whose certificate also names fal's hosts.

Any other host is tunnelled to its real destination (through ``upstream``, the proxy that was
configured before, if any), so the rest of the program's https traffic is unaffected.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from urllib.parse import unquote, urlparse

__all__ = ["ConnectTunnel", "Upstream"]

_MAX_HEADER = 16 * 1024


class Upstream:
    """An http:// proxy that unrouted CONNECTs are sent on to (e.g. a corporate proxy)."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url if "://" in url else f"http://{url}")
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"only http:// proxies can be chained, got {url!r}")
        self.address = (parsed.hostname, parsed.port or 8080)
        self.authorization = None
        if parsed.username:
            pair = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}".encode()
            self.authorization = b"Proxy-Authorization: Basic " + base64.b64encode(pair) + b"\r\n"

    @classmethod
    def from_url(cls, url: str | None) -> Upstream | None:
        """An Upstream for ``url``, or None when it is empty or not an http:// proxy."""
        try:
            return cls(url) if url else None
        except ValueError:
            return None


class ConnectTunnel:
    """CONNECT proxy: ``routes`` maps a host name to the local (host, port) it should reach."""

    def __init__(self, routes: dict[str, tuple[str, int]], upstream: Upstream | None = None) -> None:
        self.routes = routes
        self.upstream = upstream
        self.server: asyncio.Server | None = None
        self.port = 0
        self._clients: set[asyncio.StreamWriter] = set()

    async def start(
        self, host: str = "127.0.0.1", port: int = 0, *, sock: socket.socket | None = None
    ) -> None:
        """Listen on ``host:port`` (0 = any free port), or on an already bound ``sock``."""
        if sock is not None:
            self.server = await asyncio.start_server(self._handle, sock=sock)
        else:
            self.server = await asyncio.start_server(self._handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting connections and end the open ones.

        Since Python 3.12 ``wait_closed`` waits for every connection, and an idle keep-alive client
        (the embedded emulator's, whose loop has ended) never closes its own: closing the client side
        ends both pipes of each tunnel at once.
        """
        if self.server is not None:
            self.server.close()
            for writer in list(self._clients):
                writer.transport.abort()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One client connection; ends quietly when the emulator stops with the connection open.

        A keep-alive connection (fal_client's, a download client's) is still open when the process
        exits and the embedded emulator's loop stops. Python 3.11's ``start_server`` then logs the
        handler's cancellation as an ERROR (3.12 no longer does), which is why it is not re-raised.
        """
        self._clients.add(writer)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._clients.discard(writer)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        method, _, rest = head.decode("latin-1").partition(" ")
        target = rest.partition(" ")[0]
        if method != "CONNECT" or len(head) > _MAX_HEADER:
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        host, _, port = target.rpartition(":")
        routed = self.routes.get(host.strip("[]").lower())
        chained = routed is None and self.upstream is not None
        if routed is not None:
            destination = routed
        elif self.upstream is not None:
            destination = self.upstream.address
        else:
            destination = (host.strip("[]"), int(port or 443))
        try:
            up_reader, up_writer = await asyncio.open_connection(*destination)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        if chained:  # the upstream proxy answers the CONNECT itself; its reply passes through
            assert self.upstream is not None
            line = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n".encode()
            up_writer.write(line + (self.upstream.authorization or b"") + b"\r\n")
        else:
            writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await (up_writer if chained else writer).drain()
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()
