"""HTTP-level guards: a body limit for long-polling POSTs, and an access log without secrets."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Middleware

from handlers.transport import payload_problem

SOCKETIO_PATH = "/socket.io/"

# Query parameters whose values are safe to log; any other value may be a
# token a client put in the URL, or the polling session id (which lets its
# holder act as the session), and is written as "-".
LOGGED_QUERY_VALUES = frozenset({"EIO", "transport", "skip", "take", "limit"})


Networks = Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]


def client_address(peer: str | None, forwarded_for: str | None, trusted: Networks) -> str:
    """The address a per-address limit counts: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies the client is the right-most X-Forwarded-For entry
    that is not itself a trusted proxy: entries left of it were written by
    the client and prove nothing. Without ``trusted`` the header is ignored,
    so a client cannot pick the address it is counted under.
    """
    address = peer or "unknown"
    if not trusted or not forwarded_for or not _is_trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        if not hop:
            break
        address = hop
        if not _is_trusted(hop, trusted):
            break
    return address


def _is_trusted(address: str, trusted: Networks) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def request_address(request: web.BaseRequest, trusted: Networks) -> str:
    return client_address(request.remote, request.headers.get("X-Forwarded-For"), trusted)


class PollingGuard(Protocol):
    """What the middleware needs of the hub's server (handlers/engine.py)."""

    def protocol_error(
        self, eio_sid: str, kind: str, answering: asyncio.Transport | None = None
    ) -> None: ...

    def cut_off(self, eio_sid: str, answering: asyncio.Transport | None = None) -> None: ...


def polling_guard(guard: PollingGuard, max_bytes: int, body_timeout_s: float) -> Middleware:
    """Long-polling POSTs: refused when too large, too slow or not engine.io, before engine.io.

    - Larger than a packet may be: 413 at once, session closed. python-engineio
      checks the size only after accepting the request and then waits for the
      session's queue to drain before answering, so an oversize POST hung for
      the ping timeout and broke the session's next request.
    - A body that does not arrive within ``body_timeout_s`` (a slow-loris
      POST): 408, session closed, connection dropped.
    - A body engine.io cannot decode (or binary): 400 with one log line and no
      traceback (engine.io logged one per request, and kept the session).
    """

    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.method != "POST" or not request.path.startswith(SOCKETIO_PATH):
            return await handler(request)
        sid = request.query.get("sid") or ""
        length = request.content_length
        if length is None or length > max_bytes:
            guard.cut_off(sid, request.transport)
            if length is None:
                raise web.HTTPLengthRequired(text="a polling POST needs a Content-Length")
            raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=length)
        try:
            body = await asyncio.wait_for(request.read(), body_timeout_s)
        except TimeoutError:
            guard.protocol_error(sid, "polling body too slow")
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPRequestTimeout() from None
        if problem := payload_problem(body):
            guard.protocol_error(sid, problem, request.transport)
            raise web.HTTPBadRequest(text=problem)
        return await handler(request)  # engine.io reads the body aiohttp kept

    return middleware


class AccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path, status, size, time. No secrets.

    aiohttp's default line holds the whole query string and the Referer and
    User-Agent headers; a token passed as ``?token=`` (or in a Referer) would
    land in the log. This one writes query values only for a few known-safe
    keys and never writes a header.
    """

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        query = "&".join(
            f"{key}={value}" if key in LOGGED_QUERY_VALUES
            # A bare key can be a secret too (``?<token>``): only short names are written.
            else f"{key if key.isidentifier() and len(key) <= 32 else '-'}=-"
            for key, value in request.query.items()
        )
        target = f"{request.path}?{query}" if query else request.path
        self.logger.info(
            '%s "%s %s" %s %s %.3fs',
            request.remote, request.method, target, response.status,
            response.body_length, time,
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)
