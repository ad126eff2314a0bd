"""A TCP proxy that plays network faults between the server and MariaDB or Redis.

The server is pointed at the proxy's port instead of the service's; the test
(or ``make chaos``) then turns faults on and off while the server runs:

- ``freeze()``: the connections open now stop carrying bytes, in both
  directions, without a FIN or a reset (a hung peer, a dead NAT entry);
  ``thaw()`` lets them carry on.
- ``refuse(True)``: new connections are refused (nothing listens on the port).
- ``blackhole(True)``: new connections are accepted and then nothing happens
  on them: no bytes either way, no close (a firewall that drops packets).
- ``reset()``: every open connection is closed with a TCP reset.
- ``latency_s``: each chunk is held this long before it is passed on.
- ``freeze_when(marker, deliver)``: the next connection that sends a chunk
  holding `marker` (a MySQL ``COMMIT``, say) freezes right there, the chunk
  passed on first (``deliver=True``: the server acts, its answer is lost) or
  held (``deliver=False``: the server never hears it).

The proxy runs in the caller's event loop; the services behind it are never
touched (the shared MariaDB and Redis keep running for everyone else).
"""

from __future__ import annotations

import asyncio
import socket
import struct
from dataclasses import dataclass, field

CHUNK = 65536


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter | None = None
    flowing: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def writers(self) -> list[asyncio.StreamWriter]:
        return [w for w in (self.client, self.upstream) if w is not None]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, port: int = 0) -> None:
        self.target = (target_host, target_port)
        self.port = port
        self.latency_s = 0.0
        self._server: asyncio.Server | None = None
        self._links: set[_Link] = set()
        self._blackhole = False
        self._trap: tuple[bytes, bool] | None = None
        self.trapped = asyncio.Event()
        self.accepted = 0

    async def start(self) -> int:
        await self._listen()
        return self.port

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, "127.0.0.1", self.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]

    # -- faults -----------------------------------------------------------------

    def freeze(self) -> None:
        """Stop every open connection where it stands (no FIN, no reset)."""
        for link in self._links:
            link.flowing.clear()

    def thaw(self) -> None:
        for link in self._links:
            link.flowing.set()

    async def refuse(self, on: bool) -> None:
        """Refuse new connections (close the listening socket), or listen again."""
        if on and self._server is not None:
            self._server.close()
            self._server = None
        elif not on and self._server is None:
            await self._listen()

    def blackhole(self, on: bool) -> None:
        """New connections are accepted and then ignored."""
        self._blackhole = on

    def reset(self) -> None:
        """Close every open connection with a TCP reset."""
        for link in list(self._links):
            self._drop(link, rst=True)

    def freeze_when(self, marker: bytes, deliver: bool) -> None:
        self._trap = (marker, deliver)
        self.trapped.clear()

    def heal(self) -> None:
        """Back to a plain proxy for new connections; frozen ones carry on."""
        self._blackhole = False
        self.latency_s = 0.0
        self.thaw()

    @property
    def open_links(self) -> int:
        return len(self._links)

    async def close(self) -> None:
        await self.refuse(True)
        for link in list(self._links):
            self._drop(link, rst=False)
        await asyncio.sleep(0)

    # -- plumbing -----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        link = _Link(writer)
        self._links.add(link)
        if self._blackhole:
            return  # held open, never read, never answered
        link.flowing.set()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            self._drop(link, rst=True)
            return
        link.upstream = up_writer
        loop = asyncio.get_running_loop()
        link.tasks = [
            loop.create_task(self._pump(link, reader, up_writer, upstream=True)),
            loop.create_task(self._pump(link, up_reader, writer, upstream=False)),
        ]

    def _sprung(self, link: _Link, data: bytes) -> bool | None:
        """None: no trap here; else the trap fired and whether to pass the chunk on."""
        if self._trap is None or self._trap[0] not in data:
            return None
        deliver = self._trap[1]
        self._trap = None
        link.flowing.clear()
        self.trapped.set()
        return deliver

    async def _pump(
        self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
        upstream: bool,
    ) -> None:
        try:
            while True:
                await link.flowing.wait()
                data = await reader.read(CHUNK)
                if not data:
                    break
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                if upstream and (deliver := self._sprung(link, data)) is not None:
                    if deliver:
                        writer.write(data)
                    continue  # frozen from here on
                await link.flowing.wait()  # frozen while the chunk was in hand: hold it
                writer.write(data)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            if link in self._links:
                self._drop(link, rst=False)

    def _drop(self, link: _Link, rst: bool) -> None:
        self._links.discard(link)
        for task in link.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        for w in link.writers():
            sock = w.get_extra_info("socket")
            if rst and sock is not None:
                # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            w.transport.abort() if rst else w.close()
