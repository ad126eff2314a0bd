"""SIGKILL mid-load: every acknowledged message survives, stored once (a real server process)."""

from __future__ import annotations

import asyncio
import signal

from app.config import Config
from app.storage.db import Database
from models import Message
from tests.support import ChatClient, Serve, make_token

SENDERS = 8


async def test_sigkill_mid_load_loses_no_acknowledged_message(
    serve: Serve, clean_database: Config
) -> None:
    served = await serve()
    proc, url = served.proc, served.url
    acked: dict[str, str] = {}  # clientMessageId -> message id
    clients = [ChatClient(f"sender{i}") for i in range(SENDERS)]
    for c in clients:
        await c.sio.connect(url, namespaces=["/chat"], auth={"token": make_token(c.user)},
                            transports=["websocket"], wait_timeout=5)

    async def send_until_cut(client: ChatClient) -> None:
        n = 0
        while True:
            cid = f"{client.user}-{n}"
            try:
                reply = await client.call("SendMessage", client.user, "receiver", f"m{n}", cid, timeout=2)
            except Exception:  # noqa: BLE001 - the server is gone
                return
            if reply.get("ok"):
                acked[cid] = reply["data"]
            n += 1

    senders = [asyncio.ensure_future(send_until_cut(c)) for c in clients]
    while len(acked) < 200:
        await asyncio.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # no goodbye: mid-batch, mid-commit, wherever it is
    proc.wait()
    await asyncio.gather(*senders)
    for c in clients:
        if c.sio.connected:
            await c.sio.disconnect()

    # A new server on the same database: every acked message is there, once, with its id.
    await serve()
    db = Database(clean_database)
    await db.open()
    try:
        with db.bound():
            rows = await Message.filter(receiver_id="receiver").values_list(
                "client_message_id", "uuid"
            )
    finally:
        await db.close()
    stored = {cid: str(uid) for cid, uid in rows}
    assert len(stored) == len(rows), "a clientMessageId was stored twice"
    missing = {cid for cid in acked if cid not in stored}
    assert not missing, f"{len(missing)} acked messages lost, e.g. {sorted(missing)[:3]}"
    assert all(stored[cid] == mid for cid, mid in acked.items())
    assert len(acked) >= 200
