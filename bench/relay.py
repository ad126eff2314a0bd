"""The stock python-socketio relay `make bench` measures this server against.

Same wire shapes as the hub (a /chat namespace, JWT in the handshake, a room
per user, SendMessage -> ReceiveMessage + MessageSent, MessageReceived ->
MessageStatusChanged, ack envelopes), on python-socketio's defaults, and no
storage: the ceiling of what the stack itself carries on this machine.

    python bench/relay.py PORT SECRET
"""

from __future__ import annotations

import sys
import uuid
from collections import OrderedDict
from typing import Any

import jwt
import socketio
from aiohttp import web

KEEP_SENDERS = 100_000  # message id -> sender, so receipts can be routed; no storage


def build(secret: str) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins="*")
    users: dict[str, str] = {}
    senders: OrderedDict[str, str] = OrderedDict()

    @sio.on("connect", namespace="/chat")
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        try:
            claims = jwt.decode((auth or {}).get("token"), secret, algorithms=["HS256"])
        except Exception as e:  # noqa: BLE001
            raise socketio.exceptions.ConnectionRefusedError("bad token", {"code": "unauthorized"}) from e
        user = str(claims["id"])
        users[sid] = user
        await sio.enter_room(sid, user, namespace="/chat")

    @sio.on("disconnect", namespace="/chat")
    async def disconnect(sid: str, *_: Any) -> None:
        users.pop(sid, None)

    @sio.on("SendMessage", namespace="/chat")
    async def send(sid: str, sender: str, receiver: str, text: str, cid: str | None = None) -> dict[str, Any]:
        mid = str(uuid.uuid4())
        senders[mid] = sender
        if len(senders) > KEEP_SENDERS:
            senders.popitem(last=False)
        dto = {"id": mid, "senderId": sender, "receiverId": receiver, "text": text,
               "status": "sent", "timestamp": "", "clientMessageId": cid}
        await sio.emit("ReceiveMessage", (sender, text, mid, "sent", dto), to=receiver, namespace="/chat")
        await sio.emit("MessageSent", dto, to=sender, skip_sid=sid, namespace="/chat")
        return {"ok": True, "data": mid}

    @sio.on("MessageReceived", namespace="/chat")
    async def received(sid: str, mid: str) -> dict[str, Any]:
        sender = senders.get(mid)
        if sender is not None:
            await sio.emit("MessageStatusChanged", (mid, "delivered"), to=sender, namespace="/chat")
        return {"ok": True, "data": None}

    app = web.Application()
    sio.attach(app)
    return app


if __name__ == "__main__":
    web.run_app(build(sys.argv[2]), host="127.0.0.1", port=int(sys.argv[1]), print=None)
