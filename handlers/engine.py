"""Adaptations of python-socketio and python-engineio that the hub relies on.

Each one is a small subclass or setting with the reason it exists. Where one
overrides or reads a private name, the comment names the version it was read
from and the entry of docs/internals.md that says why no public API does the
job; tests/test_library_contract.py fails, naming that entry, when the name
disappears or changes shape. (Versions are capped in pyproject.toml.)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from handlers.http import Networks, request_address
from handlers.transport import OutgoingQueue, guard_transports

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Guards:
    """The limits HubServer enforces on engine.io sessions (from Config)."""

    handshake_timeout_s: float = 10.0
    max_socket_buffer: int = 1024 * 1024
    max_pending_per_address: int = 256
    trusted_proxies: Networks = ()
    ws_compression: bool = False


class HubServer(socketio.AsyncServer):
    """python-socketio's server, hardened for clients that misbehave.

    - A closing long-poll is answered at once. When a polling client closes its
      session, python-engineio leaves that client's pending GET open until the
      ping timeout (45 s); engine.io's own server answers it
      (socketio/engine.io#291). Until then clients such as Node's
      socket.io-client keep a request, and their process, hanging.
    - A frame the protocol cannot carry (binary: the hub has no binary
      arguments; a malformed engine.io or Socket.IO packet) closes the socket
      with one log line, not a traceback per frame. Binary attachments would
      otherwise be buffered until the packet completes, which a hostile client
      never lets happen. (Engine.IO frames are checked in handlers/transport.py.)
    - A socket is cut off for real: its TCP connection is aborted, so its file
      descriptor is free at once, where engine.io's own close only queues a
      CLOSE packet and waits up to the ping timeout for a peer that may never
      read it. That is how a session that has not joined /chat within the
      handshake deadline ends, and a slow consumer (its outgoing queue past
      the buffer limit, see OutgoingQueue).
    - Sessions not yet authenticated are capped per client address, so a flood
      of them from one address cannot exhaust the server for everyone else.
    """

    def __init__(
        self,
        *args: Any,
        guards: Guards = Guards(),
        on_protocol_error: Callable[[str], None] | None = None,
        on_cut_off: Callable[[str], None] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._guards = guards
        self._on_protocol_error = on_protocol_error
        self._on_cut_off = on_cut_off
        self._closing: set[asyncio.Task[None]] = set()
        # The TCP connection each engine.io session is on now (its latest request).
        self._transports: dict[str, asyncio.Transport] = {}
        # Sessions that have not joined /chat: eio sid -> client address, and counts.
        self._pending: dict[str, str] = {}
        self._pending_at: Counter[str] = Counter()
        self._refused_said: set[str] = set()  # addresses told about in the log
        guard_transports(self, self, guards.ws_compression, guards.max_socket_buffer)

    # Private hook (python-socketio 5.18.1): the library registers it as engine.io's
    # "connect" handler; nothing public runs when a session opens without joining a
    # namespace. docs/internals.md#asyncserver_handle_eio_connect
    async def _handle_eio_connect(self, eio_sid: str, environ: dict[str, Any]) -> Any:
        request = environ.get("aiohttp.request")
        address = (
            request_address(request, self._guards.trusted_proxies)
            if request is not None else "unknown"
        )
        if self._pending_at[address] >= self._guards.max_pending_per_address:
            self._refuse_pending(address)
            return False  # engine.io answers 401 and forgets the session
        result = await super()._handle_eio_connect(eio_sid, environ)
        socket = self.eio.sockets.get(eio_sid)  # made, with its queue, before this hook
        if socket is not None and isinstance(socket.queue, OutgoingQueue):
            socket.queue.owner = eio_sid  # so an overflow finds its session without a search
        self._pending[eio_sid] = address
        self._pending_at[address] += 1
        if request is not None:
            self.bind_transport(eio_sid, request.transport)
        asyncio.get_running_loop().call_later(
            self._guards.handshake_timeout_s, self._handshake_deadline, eio_sid
        )
        return result

    def _refuse_pending(self, address: str) -> None:
        if self._on_cut_off is not None:
            self._on_cut_off("too many unauthenticated sessions")
        if address not in self._refused_said:  # one line per address, not per attempt
            self._refused_said.add(address)
            logger.warning(
                "refusing new sessions from %s: %d not yet authenticated",
                address, self._guards.max_pending_per_address,
            )

    def authenticated(self, eio_sid: str) -> None:
        """The session joined /chat: it no longer counts against its address."""
        address = self._pending.pop(eio_sid, None)
        if address is None:
            return
        self._pending_at[address] -= 1
        if self._pending_at[address] <= 0:
            del self._pending_at[address]
            self._refused_said.discard(address)

    def _handshake_deadline(self, eio_sid: str) -> None:
        if eio_sid in self._pending:
            if self._on_cut_off is not None:
                self._on_cut_off("never joined /chat")
            self.cut_off(eio_sid)

    def bind_transport(self, eio_sid: str, transport: asyncio.Transport | None) -> None:
        if transport is not None:
            self._transports[eio_sid] = transport

    # Private hook (python-socketio 5.18.1): engine.io's "message" handler, where the
    # library parses the Socket.IO packet. docs/internals.md#asyncserver_handle_eio_message
    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        if problem := packet_problem(data):
            self.protocol_error(eio_sid, problem)
            return
        try:
            await super()._handle_eio_message(eio_sid, data)
        except MalformedPacket as exc:
            # Raised only by HubPacket.decode, before the library dispatches
            # anything: the client's frame, refused. Any other exception is a
            # bug (ours or the library's): engine.io logs it with its traceback.
            self.protocol_error(eio_sid, exc.kind)

    def protocol_error(
        self, eio_sid: str, kind: str, answering: asyncio.BaseTransport | None = None
    ) -> None:
        """A frame the protocol cannot carry: one log line per socket, then it is cut off.

        ``answering``: the connection of the request being answered now (a
        polling POST), left open for its error response.
        """
        # The frames a client sent before its socket closes arrive all the same:
        # one line per socket, never the frame itself. (``eio.sockets``: engine.io's
        # sessions by id, an undocumented attribute; docs/internals.md#eiosockets)
        if eio_sid not in self.eio.sockets:
            return  # said already (cut_off takes it out at once), or the socket is gone
        logger.warning("closing engine.io session %s: %s", eio_sid, kind)
        if self._on_protocol_error is not None:
            self._on_protocol_error(kind)
        self.cut_off(eio_sid, answering)

    def overflowed(self, queue: OutgoingQueue) -> None:
        """A socket's outgoing queue passed the buffer limit: a slow consumer, cut off."""
        eio_sid = queue.owner
        if eio_sid is None or eio_sid not in self.eio.sockets:
            return  # gone already
        logger.warning(
            "closing engine.io session %s: a slow consumer (%d characters waiting)",
            eio_sid, queue.size,
        )
        if self._on_cut_off is not None:
            self._on_cut_off("slow consumer")
        self.cut_off(eio_sid)

    def cut_off(self, eio_sid: str, answering: asyncio.BaseTransport | None = None) -> None:
        """End a session now: its queue dropped, its TCP connection aborted, no CLOSE packet.

        A client whose transport drops reconnects at once (one told CLOSE
        stays away): that is also what a shutting-down server wants.
        ``answering`` is left open (see protocol_error). engine.io 4.15.1 has no
        public "drop this session now": this takes it out of ``eio.sockets`` and
        uses the socket's ``queue`` and ``close(wait, abort, reason)``
        (docs/internals.md#asyncsocketqueue-close-upgraded).
        """
        socket = self.eio.sockets.pop(eio_sid, None)
        transport = self._transports.pop(eio_sid, None)
        if transport is not None and transport is not answering:
            transport.abort()
        if socket is None:
            return
        if isinstance(socket.queue, OutgoingQueue):
            socket.queue.drop()
        socket.queue.put_nowait(None)  # ends the WebSocket writer, or a pending long-poll
        task = asyncio.ensure_future(
            socket.close(wait=False, abort=True, reason=self.eio.reason.SERVER_DISCONNECT)
        )
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def cut_off_settled(self, timeout_s: float) -> None:
        """Wait (up to `timeout_s`) for the sessions cut off to finish closing: their
        disconnect handlers (presence, goodbyes to the other instances) have run."""
        if self._closing:
            await asyncio.wait(set(self._closing), timeout=timeout_s)

    # Private hook (python-socketio 5.18.1): engine.io's "disconnect" handler; the
    # namespace's disconnect runs only for sockets that joined it.
    # docs/internals.md#asyncserver_handle_eio_disconnect
    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        self.authenticated(eio_sid)  # gone: it no longer counts either way
        self._transports.pop(eio_sid, None)
        socket = self.eio.sockets.get(eio_sid)  # docs/internals.md#asyncsocketqueue-close-upgraded
        if socket is not None and not socket.upgraded:
            socket.queue.put_nowait(None)  # engine.io's "stop polling": the GET returns empty


if TYPE_CHECKING:  # what the mixin is mixed into: the library's async managers
    from socketio import AsyncManager as _Manager
else:
    _Manager = object


class HubManagerMixin(_Manager):
    """What the hub needs of python-socketio's manager, local or over Redis.

    It tells the hub when a socket is fully connected: the library calls
    ``connect`` right after it has queued the handshake's CONNECT packet, and
    from then on events reach a client that knows it is connected. (Events
    emitted from inside the connect handler would arrive before the CONNECT
    packet, and some clients drop them.)

    The methods overridden are public names of the manager, but when the
    server calls them is python-socketio 5.18.1's behaviour, not a documented
    contract: docs/internals.md#manager-hooks.
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
        eio_sid = self.eio_sid_from_sid(sid, namespace)
        if eio_sid is not None:
            self.server.authenticated(eio_sid)
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
        A re-implementation of python-socketio 5.18.1's AsyncManager.emit
        without callbacks (docs/internals.md#asyncmanageremit-re-implemented).
        """
        if namespace not in self.get_namespaces():
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        # HubPacket never splits into binary attachments: one encoded string.
        encoded = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *args]
        ).encode()
        message = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        eio = self.server.eio
        for sid, eio_sid in self.get_participants(namespace, room):
            if sid in skip:
                continue
            try:
                # engine.io's public send_packet (the library's emit goes through
                # its private _send_eio_packet, which only calls this).
                await eio.send_packet(eio_sid, message)
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


class MalformedPacket(ValueError):
    """A Socket.IO packet from a client that the protocol does not allow: the client's mistake."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind  # the protocol_errors metric's label, and the log line's reason


# The Socket.IO packet types a client may send (socket.io-protocol v5): CONNECT,
# DISCONNECT, EVENT, ACK. CONNECT_ERROR is the server's to send; BINARY_EVENT
# and BINARY_ACK the hub refuses (it has no binary arguments).
CLIENT_PACKET_TYPES = frozenset("0123")
BINARY_PACKET_TYPES = frozenset("56")


def packet_problem(data: Any) -> str | None:
    """Why an engine.io message is not a Socket.IO packet a client may send, or None.

    Checked before the library sees the frame: the library takes an empty
    frame for an EVENT without data, and waits for a binary packet's
    attachments, which a hostile client never sends.
    """
    if not isinstance(data, str) or data[:1] in BINARY_PACKET_TYPES:
        return "binary frame"
    if data[:1] not in CLIENT_PACKET_TYPES:  # "" included: not in the set
        return "malformed packet (type)"
    return None


class HubPacket(sio_packet.Packet):  # type: ignore[misc]
    """Socket.IO packets without the scan for binary attachments, checked as they are decoded.

    The library walks every emitted packet's data, recursively, looking for
    bytes to send as attachments: 8% of the server's CPU in the closed-loop
    profile. The hub never emits bytes (every value it sends is JSON) and
    closes sockets that send binary frames, so the scan finds nothing, ever.
    (python-socketio's own msgpack packets switch it off the same way, with
    the undocumented class attribute ``uses_binary_events``: see
    docs/internals.md#packetuses_binary_events.)

    ``decode`` is the documented extension point of a ``serializer`` class
    (python-socketio: "a subclass of the Packet class with custom
    implementations of the encode() and decode() methods"). Here it also
    checks what the library leaves to a traceback later, so every client
    mistake is a :class:`MalformedPacket` raised before anything is dispatched.
    """

    uses_binary_events = False

    def decode(self, encoded_packet: str) -> int:
        try:
            attachments = int(super().decode(encoded_packet) or 0)
        except (ValueError, RecursionError) as exc:
            # The library's parser refusing the client's text: a bad packet type
            # or id, JSON that does not parse (or nests past the recursion limit).
            raise MalformedPacket("malformed packet (encoding)") from exc
        if attachments or not _well_formed(self.packet_type, self.data, self.id):
            raise MalformedPacket("malformed packet (shape)")
        return attachments


def _well_formed(packet_type: Any, data: Any, ack_id: Any) -> bool:
    """Whether a packet carries what the library needs to handle it (socket.io-protocol v5).

    A CONNECT's payload is the hub's to judge (an auth that is not an object
    holds no token: ``connect_error`` with ``unauthorized``, as the protocol
    says of a refused handshake); the library ignores a DISCONNECT's.
    """
    if packet_type in (sio_packet.CONNECT, sio_packet.DISCONNECT):
        return True
    if packet_type == sio_packet.EVENT:
        # [name, ...args]; a name that is not a string is the hub's to answer (unknown_event).
        return isinstance(data, list) and len(data) > 0
    if packet_type == sio_packet.ACK:
        return isinstance(data, list) and ack_id is not None
    return False  # CONNECT_ERROR, binary, or a type the protocol does not have


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
