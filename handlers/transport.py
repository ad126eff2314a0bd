"""Engine.IO's transports, guarded: frames checked, outgoing buffers bounded, sockets cut off.

python-engineio takes the pieces of its aiohttp transport from a table on each
server (``eio._async``): the WebSocket wrapper, and the function that turns an
aiohttp request into the WSGI-style environ the rest of it reads. The hub puts
its own in that table (for this server only; the table is module-level):

- **Frames are checked before engine.io decodes them.** engine.io decodes a
  WebSocket frame outside its own error handling, and logs a traceback for a
  packet type it does not know (7, 8, 9) while keeping the socket open; a
  polling POST it cannot decode is a traceback too. Here an empty, NUL,
  non-digit or unknown-type frame closes the socket with one log line, before
  and after authentication alike.
- **Each connection's transport is known**, so a socket can be cut off for
  real: its TCP connection aborted and its file descriptor freed at once,
  rather than a CLOSE packet queued for a peer that does not read.
- **Outgoing buffers are bounded** (:class:`OutgoingQueue`): engine.io queues
  every packet for a socket without limit, so one client that never reads
  (while calling ``Sync`` in a loop) held a gigabyte. Past the limit the
  socket is cut off and its queue dropped.

The table, the driver's ``WebSocket`` class and the way engine.io makes each
socket's queue are python-engineio 4.15.1's internals: docs/internals.md lists
each with why nothing public does the job, and tests/test_library_contract.py
fails, naming the entry, when one changes.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp.web import Request, WebSocketResponse
from engineio.async_drivers import aiohttp as engineio_aiohttp

# Engine.IO v4 packet types a client may send: close, ping, pong, message, upgrade, noop.
CLIENT_PACKET_TYPES = frozenset("123456")
RECORD_SEPARATOR = "\x1e"  # between packets of a polling payload


def frame_problem(frame: str | bytes) -> str | None:
    """Why an engine.io frame from a client is refused, or None if it may pass."""
    if isinstance(frame, bytes):
        return "binary frame"  # the hub has no binary arguments
    if not frame or frame[0] not in CLIENT_PACKET_TYPES:
        return "malformed engine.io packet"
    return None


def payload_problem(body: bytes) -> str | None:
    """The same for a long-polling POST body: packets separated by \\x1e."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed engine.io payload"
    if text.startswith("d="):
        return "malformed engine.io payload"  # JSONP: engine.io v3 only
    for frame in text.split(RECORD_SEPARATOR):
        if frame.startswith("b"):
            return "binary frame"  # base64 binary over polling
        if problem := frame_problem(frame):
            return problem
    return None


class Guard(Protocol):
    """What the transports report to (the hub's server)."""

    def bind_transport(self, eio_sid: str, transport: asyncio.Transport | None) -> None: ...

    def protocol_error(self, eio_sid: str, kind: str) -> None: ...

    def overflowed(self, queue: OutgoingQueue) -> None: ...


class OutgoingQueue(asyncio.Queue[Any]):
    """A socket's queue of engine.io packets, counting what waits in it.

    The writer takes everything queued each time it writes, so what is
    counted is what waits behind the packets being written. Past ``limit``
    characters the guard is told (once); a single packet may be larger as long
    as nothing waits behind it (a Sync page of long messages is one packet).
    Sizes are JSON characters, close to bytes on the wire.
    """

    def __init__(self, limit: int, on_overflow: Callable[[OutgoingQueue], None]) -> None:
        self.limit = limit
        self.size = 0
        self.overflowed = False
        # The engine.io session it belongs to, set at the handshake (the queue is made first).
        self.owner: str | None = None
        self._on_overflow = on_overflow
        super().__init__()

    def _init(self, maxsize: int) -> None:
        self._queue: deque[Any] = deque()

    def _put(self, item: Any) -> None:
        self._queue.append(item)
        self.size += _size(item)
        if self.size > self.limit and len(self._queue) > 1 and not self.overflowed:
            self.overflowed = True
            # Not from inside put(): the queue's own count of this item comes after _put.
            asyncio.get_running_loop().call_soon(self._on_overflow, self)

    def _get(self) -> Any:
        item = self._queue.popleft()
        self.size -= _size(item)
        return item

    def drop(self) -> None:
        """Forget everything queued: the socket is gone and will never read it."""
        while not self.empty():
            self.get_nowait()
            self.task_done()


def _size(item: Any) -> int:
    data = getattr(item, "data", None)
    return len(data) if isinstance(data, (str, bytes)) else 1


class GuardedWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp WebSocket, with the hub's guard (set by :func:`guard_transports`).

    ``__call__`` is the driver's own (copied from python-engineio 4.15.1), but
    for permessage-deflate (a setting) and telling the guard which TCP
    connection the socket is on; it sets the driver's private ``_sock`` and
    reads the session id from ``handler.__self__`` (the engine.io socket whose
    bound method the handler is). docs/internals.md#the-aiohttp-drivers-websocket-copied
    """

    guard: Guard
    compress: bool

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request: Request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(
            max_msg_size=self.server.max_http_buffer_size, compress=self.compress
        )
        await self._sock.prepare(request)
        self.environ = environ
        self._eio_sid = self.handler.__self__.sid  # the handler is the engine.io socket's method
        self.guard.bind_transport(self._eio_sid, request.transport)
        await self.handler(self)
        return self._sock

    async def wait(self) -> Any:
        frame = await super().wait()
        problem = frame_problem(frame)
        if problem is None:
            return frame
        self.guard.protocol_error(self._eio_sid, problem)
        return None  # what engine.io takes for "the client closed": it ends the socket


class _Body:
    """engine.io reads ``environ['wsgi.input']``; the body middleware has read it already.

    (engine.io 4.15.1 calls ``await read(length)`` on it: docs/internals.md#the-polling-body-wsgiinput.)
    """

    def __init__(self, request: Request) -> None:
        self._request = request

    async def read(self, length: int = -1) -> bytes:
        return await self._request.read()  # aiohttp keeps the body it read


def guard_transports(
    server: Any, guard: Guard, ws_compression: bool, max_buffer: int
) -> None:
    """Install the guarded transport pieces on this Socket.IO server's engine.io server."""
    eio = server.eio
    websocket = type("WebSocket", (GuardedWebSocket,), {"guard": guard, "compress": ws_compression})
    # The driver table (python-engineio 4.15.1, docs/internals.md#eio_async): the
    # only place engine.io looks up its WebSocket class and request translator.
    translate = eio._async["translate_request"]

    def translate_request(request: Request) -> dict[str, Any]:
        environ: dict[str, Any] = translate(request)
        if request.method == "POST":
            environ["wsgi.input"] = _Body(request)
        sid = request.query.get("sid")
        if sid is not None and sid in eio.sockets:  # docs/internals.md#eiosockets
            guard.bind_transport(sid, request.transport)  # each request of a polling session
        return environ

    # A copy: the driver's table is module-level, shared by every server in the process.
    eio._async = {**eio._async, "websocket": websocket, "translate_request": translate_request}
    # engine.io makes each socket's queue with this public factory; that it does
    # so for every socket is its behaviour, not its contract (docs/internals.md#eiocreate_queue).
    eio.create_queue = lambda *args, **kwargs: OutgoingQueue(max_buffer, guard.overflowed)

