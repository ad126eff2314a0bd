"""SIGKILL mid-load: every acknowledged message survives, stored once (a real server process)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.config import Config
from app.db import Database
from models import Message
from tests.support import SECRET, ChatClient, make_token

SERVER = str(Path(sys.executable).with_name("chat-server"))
SENDERS = 8


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@pytest.fixture
async def serve(clean_database: Config, tmp_path: Path) -> AsyncIterator:
    """serve() -> (process, url): `chat-server serve` on the clean test database."""
    procs: list[subprocess.Popen[bytes]] = []

    async def start() -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        env = {
            **os.environ,
            "CHAT_DATABASE_URL": clean_database.database_url,
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_PORT": str(port),
            "CHAT_RATE_LIMIT_PER_S": "10000",
            "CHAT_RATE_LIMIT_BURST": "10000",
        }
        log = open(tmp_path / f"server-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen([SERVER, "serve"], env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        procs.append(proc)
        await wait_listening(port, proc)
        return proc, f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_sigkill_mid_load_loses_no_acknowledged_message(serve, clean_database: Config) -> None:
    proc, url = await serve()
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
