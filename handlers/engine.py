"""Adaptations of python-socketio and python-engineio that the hub relies on.

Each one is a small subclass or setting with the reason it exists; the
namespace itself (handlers/chat.py) uses only the libraries' public API.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import socketio
from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as engineio_aiohttp


class HubServer(socketio.AsyncServer):
    """python-socketio's server, answering a closing long-poll at once.

    When a polling client closes its session, python-engineio leaves that
    client's pending GET open until the ping timeout (45 s); engine.io's own
    server answers it (socketio/engine.io#291). Until then clients such as
    Node's socket.io-client keep a request, and their process, hanging.
    """

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None and not socket.upgraded:
            socket.queue.put_nowait(None)  # engine.io's "stop polling": the GET returns empty


class HubManager(socketio.AsyncManager):
    """python-socketio's manager, telling the hub when a socket is fully connected.

    The library calls ``connect`` right after it has queued the handshake's
    CONNECT packet: from then on events reach a client that knows it is
    connected. (Events emitted from inside the connect handler would arrive
    before the CONNECT packet, and some clients drop them.)
    """

    def __init__(self) -> None:
        super().__init__()
        self.on_connected: Callable[[str, str], None] | None = None

    async def connect(self, sid: str, namespace: str) -> Any:
        result = await super().connect(sid, namespace)
        if self.on_connected is not None:
            self.on_connected(sid, namespace)
        return result


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
