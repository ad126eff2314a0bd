"""Adaptations of python-socketio and python-engineio that the hub relies on.

Each one is a small subclass or setting with the reason it exists; the
namespace itself (handlers/chat.py) uses only the libraries' public API.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet
from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as engineio_aiohttp

logger = logging.getLogger(__name__)


class HubServer(socketio.AsyncServer):
    """python-socketio's server, hardened for clients that misbehave.

    - A closing long-poll is answered at once. When a polling client closes its
      session, python-engineio leaves that client's pending GET open until the
      ping timeout (45 s); engine.io's own server answers it
      (socketio/engine.io#291). Until then clients such as Node's
      socket.io-client keep a request, and their process, hanging.
    - A frame the protocol cannot carry (binary: the hub has no binary
      arguments; anything the Socket.IO parser refuses) closes the socket with
      one log line, not a traceback per frame. Binary attachments would
      otherwise be buffered until the packet completes, which a hostile client
      never lets happen.
    - An engine.io session that has not joined a namespace within
      ``handshake_timeout_s`` is closed: without it, a client can hold sessions
      open forever without ever showing a token.
    """

    def __init__(
        self,
        *args: Any,
        handshake_timeout_s: float = 10.0,
        on_protocol_error: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timeout_s = handshake_timeout_s
        self._on_protocol_error = on_protocol_error
        self._closing: set[asyncio.Task[None]] = set()
        self._complained: set[str] = set()  # eio sids already logged and being closed

    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        result = await super()._handle_eio_connect(eio_sid, environ)
        asyncio.get_running_loop().call_later(
            self._handshake_timeout_s, self._handshake_deadline, eio_sid
        )
        return result

    def _handshake_deadline(self, eio_sid: str) -> None:
        if eio_sid not in self.environ:
            return  # gone already
        if any(
            self.manager.sid_from_eio_sid(eio_sid, ns) is not None
            for ns in list(self.manager.get_namespaces())
        ):
            return  # joined (or is joining) a namespace
        self._close(eio_sid)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if not isinstance(data, str) or data[:1] in ("5", "6"):  # BINARY_EVENT, BINARY_ACK
            self._protocol_error(eio_sid, "binary frame")
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except Exception as exc:  # noqa: BLE001 - the parser's refusal of a client's frame
            # Handlers never raise here (the hub answers every failure itself),
            # so what arrives is the Socket.IO parser refusing the frame.
            self._protocol_error(eio_sid, f"malformed packet ({type(exc).__name__})")

    def _protocol_error(self, eio_sid: str, kind: str) -> None:
        # The frames a client sent before its socket closes arrive all the same:
        # one line per socket, never the frame itself.
        if eio_sid in self._complained or eio_sid not in self.environ:
            return  # said already, or the socket is gone
        self._complained.add(eio_sid)
        logger.warning("closing engine.io session %s: %s", eio_sid, kind)
        if self._on_protocol_error is not None:
            self._on_protocol_error(kind)
        self._close(eio_sid)

    async def drop_transport(self, eio_sid: str) -> None:
        """Close a session's transport without engine.io's CLOSE packet.

        A client sent CLOSE takes it as final (python-socketio's client does
        not reconnect); one whose transport just drops reconnects at once,
        which is what a shutting-down server wants of its clients.
        """
        socket = self.eio.sockets.get(eio_sid)
        if socket is None:
            return
        await socket.close(wait=False, abort=True, reason=self.eio.reason.SERVER_DISCONNECT)
        socket.queue.put_nowait(None)  # ends the WebSocket writer, which closes the socket
        self.eio.sockets.pop(eio_sid, None)

    def _close(self, eio_sid: str) -> None:
        task = asyncio.ensure_future(self.eio.disconnect(eio_sid))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        self._complained.discard(eio_sid)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and not socket.upgraded:
            socket.queue.put_nowait(None)  # engine.io's "stop polling": the GET returns empty


class HubManagerMixin:
    """What the hub needs of python-socketio's manager, local or over Redis.

    It tells the hub when a socket is fully connected: the library calls
    ``connect`` right after it has queued the handshake's CONNECT packet, and
    from then on events reach a client that knows it is connected. (Events
    emitted from inside the connect handler would arrive before the CONNECT
    packet, and some clients drop them.)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_connected: Callable[[str, str], None] | None = None
        # Sockets whose connect handler runs but whose CONNECT is not sent yet.
        self._unanswered: set[str] = set()

    async def pre_connect(self, eio_sid: str, namespace: str) -> Any:
        sid = await super().pre_connect(eio_sid, namespace)
        if sid is not None:
            self._unanswered.add(sid)
        return sid

    async def connect(self, sid: str, namespace: str) -> Any:
        result = await super().connect(sid, namespace)
        self._unanswered.discard(sid)
        if self.on_connected is not None:
            self.on_connected(sid, namespace)
        return result

    async def disconnect(self, sid: str, namespace: str, **kwargs: Any) -> Any:
        self._unanswered.discard(sid)  # a refused connect ends here
        return await super().disconnect(sid, namespace, **kwargs)

    def get_participants(self, namespace: str, room: Any) -> Iterator[tuple[str, str]]:
        """A room's sockets, leaving out those whose connect is not answered yet.

        The library puts a socket in its namespace's rooms before the connect
        handler runs; an emit to the room while the handler awaits (a
        broadcast of someone's presence, say) would reach a client that has
        not yet been told it is connected. (Used by emit; the hub never closes
        rooms.)
        """
        unanswered = self._unanswered
        if not unanswered:
            yield from super().get_participants(namespace, room)
            return
        for sid, eio_sid in super().get_participants(namespace, room):
            if sid not in unanswered:
                yield sid, eio_sid


    async def _emit_here(
        self, event: str, data: Any, namespace: str, room: Any, skip_sid: Any
    ) -> None:
        """Send an event to this process's sockets in `room` (all of them for None).

        The library's AsyncManager.emit does the same, but starts a task per
        recipient and awaits them with asyncio.wait: 12% of the server's CPU
        in the closed-loop profile, for what is one recipient nearly always.
        A send only queues the packet on the socket (an unbounded queue: it
        never waits), so the recipients are served in turn, and one that fails
        is logged without stopping the rest. No callbacks: the hub asks for none.
        """
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        # HubPacket never splits into binary attachments: one encoded string.
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        message = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            try:
                await self.server._send_eio_packet(eio_sid, message)
            except Exception:  # noqa: BLE001 - one socket's failure is not the others'
                logger.exception("could not send %s to %s", event, sid)


class HubManager(HubManagerMixin, socketio.AsyncManager):
    """One process: the library's in-memory manager with the hub's additions."""

    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> Any:
        if callback is not None:
            return await super().emit(event, data, namespace=namespace, room=to or room,
                                      skip_sid=skip_sid, callback=callback, **kwargs)
        await self._emit_here(event, data, namespace or "/", to or room, skip_sid)


class _UncompressedWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp WebSocket without permessage-deflate.

    The driver always offers compression, which costs ~90 KiB of zlib state per
    connection; chat frames are small. The same as the driver's ``__call__``
    but for ``compress=False``.
    """

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


def set_websocket_compression(server: socketio.AsyncServer, enabled: bool) -> None:
    """Offer permessage-deflate to WebSocket clients, or not."""
    if not enabled:
        # A copy: the driver's table is module-level, shared by every server in the process.
        server.eio._async = {**server.eio._async, "websocket": _UncompressedWebSocket}


class HubPacket(sio_packet.Packet):  # type: ignore[misc]
    """Socket.IO packets without the scan for binary attachments.

    The library walks every emitted packet's data, recursively, looking for
    bytes to send as attachments: 8% of the server's CPU in the closed-loop
    profile. The hub never emits bytes (every value it sends is JSON) and
    closes sockets that send binary frames, so the scan finds nothing, ever.
    (python-socketio's own msgpack packets switch it off the same way.)
    """

    uses_binary_events = False


class FastJson:
    """orjson for Socket.IO packets, with the standard library behind it.

    orjson encodes and decodes several times faster than ``json``, which the
    profile showed on every event. It is stricter, though: integers beyond 64
    bits and lone surrogates are errors to it, while ``json`` (and JavaScript)
    accept them. Those rare packets fall back to ``json``, so a client sees the
    same behaviour either way (and gets its ``invalid_argument`` from the hub).
    """

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        try:
            return orjson.dumps(obj).decode()
        except TypeError:
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        try:
            return orjson.loads(text)
        except orjson.JSONDecodeError:
            return json.loads(text)


OriginCheck = Callable[[str | None, dict[str, Any]], bool]


def allowed_origins(origins: tuple[str, ...]) -> str | OriginCheck | None:
    """engine.io's CORS setting: the server's own origin always, plus `origins`.

    Given a list, engine.io allows only that list, so a page served by this
    very server (the demo, or an app behind the same host) would be refused.
    """
    if "*" in origins:
        return "*"
    if not origins:
        return None  # engine.io's own same-origin check
    listed = frozenset(origins)

    def allowed(origin: str | None, environ: dict[str, Any]) -> bool:
        return origin in listed or origin in _own_origins(environ)

    return allowed


def _own_origins(environ: dict[str, Any]) -> set[str]:
    """This server's origin as the request names it (as engine.io's default reads it)."""
    scheme, host = environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST")
    if host is None:
        return set()
    own = {f"{scheme}://{host}"}
    if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
        fwd_scheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
        fwd_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
        own.add(f"{fwd_scheme}://{fwd_host}")
    return own
