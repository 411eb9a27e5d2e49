"""A tiny HTTPS CONNECT proxy that routes fal's host names to the emulator.

fal_client reads its hosts once, when it is imported. A notebook that ran ``import fal_client``
before klingflow started the embedded emulator therefore still targets ``fal.run`` and
``queue.fal.run``. Rather than patch fal_client, klingflow points ``HTTPS_PROXY`` at this tunnel:
httpx then asks it to ``CONNECT queue.fal.run:443``, and the tunnel joins that connection to the
emulator's queue socket (``fal.run`` to its run socket). TLS still runs end to end between the
client and the emulator, whose certificate also names fal's hosts. Any other host is tunnelled to
its real destination, so the rest of the program's https traffic is unaffected.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["ConnectTunnel"]

_MAX_HEADER = 16 * 1024


class ConnectTunnel:
    """CONNECT proxy: ``routes`` maps a host name to the local (host, port) it should reach."""

    def __init__(self, routes: dict[str, tuple[str, int]]) -> None:
        self.routes = routes
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        """Listen on ``host:port`` (0 = any free port)."""
        self.server = await asyncio.start_server(self._handle, host, port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting connections."""
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
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
        destination = self.routes.get(host.strip("[]"), (host.strip("[]"), int(port or 443)))
        try:
            up_reader, up_writer = await asyncio.open_connection(*destination)
        except OSError:
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection Established\r\n\r\n")
        await writer.drain()
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
