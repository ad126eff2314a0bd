"""The python-socketio relays `make bench` measures this server against.

Same wire shapes as the hub (a /chat namespace, JWT in the handshake, a room
per user, SendMessage -> ReceiveMessage + MessageSent, MessageReceived ->
MessageStatusChanged, ack envelopes), and no storage: the ceiling of what the
stack itself carries on this machine. Two settings:

- defaults (baseline a): python-socketio and aiohttp as they come: asyncio,
  the standard library's json, permessage-deflate offered, aiohttp's listen
  backlog of 128, the library's scan of every packet for binary attachments
  and its task per recipient of an emit.
- ``--tuned`` (baseline b): every knob this server turns that a relay author
  could turn too, each below with what it mirrors: uvloop, orjson as the
  ``json=`` module, permessage-deflate off, a listen backlog of 4,096, packets
  without the binary scan, emits without a task per recipient, the garbage
  collector's thresholds raised and startup's objects frozen. It imports
  nothing from this project: the subclasses are the relay's own.

Groups, for the group load (bench/load.mjs ``group``): ``JoinGroup(groupId)``
puts the socket in the group's room (a relay has no membership to look up);
``SendGroupMessage(groupId, text, clientMessageId?)`` sends
``ReceiveGroupMessage(groupId, dto)`` to the room's other sockets; once every
socket it went to has answered ``MessageReceived``, the sender gets
``MessageStatusChanged(id, "delivered")``, as the server reports the
aggregate status.

    python bench/relay.py PORT SECRET [--tuned]
"""

from __future__ import annotations

import argparse
import gc
import logging
import uuid
from collections import OrderedDict
from typing import Any

import jwt
import orjson
import socketio
from aiohttp import web
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as engineio_aiohttp
from socketio import packet as sio_packet

NAMESPACE = "/chat"
KEEP_MESSAGES = 100_000  # message id -> sender, so receipts can be routed; no storage
# The server's listen backlog (app/cli.py LISTEN_BACKLOG); aiohttp's default is 128.
TUNED_BACKLOG = 4096

# The server's collector thresholds (app/cli.py GC_THRESHOLDS); Python's are 700, 10, 10.
TUNED_GC_THRESHOLDS = (50_000, 20, 10)

logger = logging.getLogger("relay")


async def freeze_startup_objects(app: web.Application) -> None:
    """What startup built lives as long as the process: out of the collector's sight (gc.freeze)."""
    gc.collect()
    gc.freeze()


# -- the tuned relay's knobs: each mirrors what handlers/engine.py does for the server --


class RelayJson:
    """orjson as the ``json=`` module: python-socketio calls ``dumps(data, separators=...)``
    and expects text, orjson takes no such argument and returns bytes."""

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        return orjson.dumps(obj).decode()

    @staticmethod
    def loads(text: str | bytes, **_: Any) -> Any:
        return orjson.loads(text)


class RelayPacket(sio_packet.Packet):  # type: ignore[misc]
    """No scan of every emitted packet for binary attachments: the relay never sends
    bytes. Mirrors the server's HubPacket (and python-socketio's own msgpack packets)."""

    uses_binary_events = False


class RelayManager(socketio.AsyncManager):  # type: ignore[misc]
    """Emits without a task per recipient.

    The library's AsyncManager.emit starts a task per recipient and awaits them
    with asyncio.wait, though a send only queues the packet on the socket's
    unbounded queue. This serves the recipients in turn. Mirrors the server's
    HubManager._emit_here (read from python-socketio 5.18); emits that ask for
    callbacks go to the library as before.
    """

    async def emit(self, event: str, data: Any, namespace: str, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> None:
        if callback is not None:
            await super().emit(event, data, namespace, room=room, skip_sid=skip_sid,
                               callback=callback, to=to, **kwargs)
            return
        if namespace not in self.rooms:
            return
        args = list(data) if isinstance(data, tuple) else [] if data is None else [data]
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        # RelayPacket never splits into binary attachments: one encoded string.
        encoded = self.server.packet_class(sio_packet.EVENT, namespace=namespace,
                                           data=[event, *args]).encode()
        message = eio_packet.Packet(eio_packet.MESSAGE, encoded)
        for sid, eio_sid in self.get_participants(namespace, to or room):
            if sid in skip:
                continue
            try:
                await self.server._send_eio_packet(eio_sid, message)
            except Exception:  # one socket's failure is not the others'
                logger.exception("could not send %s to %s", event, sid)


class UncompressedWebSocket(engineio_aiohttp.WebSocket):  # type: ignore[misc]
    """engine.io's aiohttp WebSocket without permessage-deflate (the driver always
    offers it: ~90 KiB of zlib state per connection). Mirrors the server's
    _UncompressedWebSocket: the driver's ``__call__`` but for ``compress=False``."""

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=False)
        await self._sock.prepare(request)
        self.environ = environ
        await self.handler(self)
        return self._sock


def without_websocket_compression(sio: socketio.AsyncServer) -> None:
    # engine.io has no setting for it: the driver table is swapped for a copy,
    # as the server's set_websocket_compression does.
    sio.eio._async = {**sio.eio._async, "websocket": UncompressedWebSocket}


# -- the relay ------------------------------------------------------------------


def group_room(group_id: str) -> str:
    # Its own prefix, so a group can never share a room with a user of the same name.
    return f"group:{group_id}"


def build(secret: str, tuned: bool = False) -> web.Application:
    options: dict[str, Any] = {}
    if tuned:
        options = {"client_manager": RelayManager(), "json": RelayJson, "serializer": RelayPacket}
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*", **options)
    if tuned:
        without_websocket_compression(sio)
    users: dict[str, str] = {}
    senders: OrderedDict[str, str] = OrderedDict()
    # group message id -> [sender, recipients who have not yet acknowledged it]
    unreceived: OrderedDict[str, list[Any]] = OrderedDict()

    def remember(table: OrderedDict[str, Any], key: str, value: Any) -> None:
        table[key] = value
        if len(table) > KEEP_MESSAGES:
            table.popitem(last=False)

    @sio.on("connect", namespace=NAMESPACE)
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            claims = jwt.decode((auth or {}).get("token"), secret, algorithms=["HS256"])
            user = str(claims["id"])
        except Exception as e:  # noqa: BLE001 - any bad token is the client's
            raise socketio.exceptions.ConnectionRefusedError("bad token", {"code": "unauthorized"}) from e
        users[sid] = user
        await sio.enter_room(sid, user, namespace=NAMESPACE)

    @sio.on("disconnect", namespace=NAMESPACE)
    async def disconnect(sid: str, *_: Any) -> None:
        users.pop(sid, None)

    @sio.on("SendMessage", namespace=NAMESPACE)
    async def send(sid: str, sender: str, receiver: str, text: str, cid: str | None = None) -> dict[str, Any]:
        mid = str(uuid.uuid4())
        remember(senders, mid, sender)
        dto = {"id": mid, "senderId": sender, "receiverId": receiver, "text": text,
               "status": "sent", "timestamp": "", "clientMessageId": cid}
        await sio.emit("ReceiveMessage", (sender, text, mid, "sent", dto), to=receiver, namespace=NAMESPACE)
        await sio.emit("MessageSent", dto, to=sender, skip_sid=sid, namespace=NAMESPACE)
        return {"ok": True, "data": mid}

    @sio.on("MessageReceived", namespace=NAMESPACE)
    async def received(sid: str, mid: str) -> dict[str, Any]:
        sender = senders.get(mid)
        if sender is not None:
            await sio.emit("MessageStatusChanged", (mid, "delivered"), to=sender, namespace=NAMESPACE)
            return {"ok": True, "data": None}
        pending = unreceived.get(mid)
        if pending is not None:
            pending[1] -= 1
            if pending[1] <= 0:
                del unreceived[mid]
                await sio.emit("MessageStatusChanged", (mid, "delivered"), to=pending[0], namespace=NAMESPACE)
        return {"ok": True, "data": None}

    @sio.on("JoinGroup", namespace=NAMESPACE)
    async def join_group(sid: str, group_id: str) -> dict[str, Any]:
        await sio.enter_room(sid, group_room(group_id), namespace=NAMESPACE)
        return {"ok": True, "data": None}

    @sio.on("SendGroupMessage", namespace=NAMESPACE)
    async def send_group(sid: str, group_id: str, text: str, cid: str | None = None) -> dict[str, Any]:
        sender = users.get(sid)
        if sender is None:
            return {"ok": False, "error": {"code": "forbidden", "message": "not connected"}}
        room = group_room(group_id)
        recipients = sum(1 for other, _ in sio.manager.get_participants(NAMESPACE, room) if other != sid)
        mid = str(uuid.uuid4())
        remember(unreceived, mid, [sender, recipients])
        dto = {"id": mid, "senderId": sender, "receiverId": None, "groupId": group_id, "text": text,
               "status": "sent", "timestamp": "", "clientMessageId": cid}
        await sio.emit("ReceiveGroupMessage", (group_id, dto), to=room, skip_sid=sid, namespace=NAMESPACE)
        await sio.emit("MessageSent", dto, to=sender, skip_sid=sid, namespace=NAMESPACE)
        return {"ok": True, "data": mid}

    app = web.Application()
    sio.attach(app)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("secret")
    parser.add_argument("--tuned", action="store_true", help="the knobs this server turns (baseline b)")
    a = parser.parse_args()
    app = build(a.secret, a.tuned)
    if a.tuned:
        import uvloop

        # The server's garbage-collector settings (app/cli.py GC_THRESHOLDS, tune_gc).
        gc.set_threshold(*TUNED_GC_THRESHOLDS)
        app.on_startup.append(freeze_startup_objects)

        web.run_app(app, host="127.0.0.1", port=a.port, print=None,
                    loop=uvloop.new_event_loop(), backlog=TUNED_BACKLOG)
    else:
        web.run_app(app, host="127.0.0.1", port=a.port, print=None)


if __name__ == "__main__":
    main()
