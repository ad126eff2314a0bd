"""Storage outages: client-safe errors, nothing half-done, readiness says so."""

from __future__ import annotations

import asyncio
import logging
import threading

import pytest
from aiohttp.test_utils import TestClient, TestServer

from app.config import ConfigError
from app.appkeys import DB
from tests.support import (
    UNREACHABLE_MYSQL,
    ChatClient,
    Connect,
    ServerFactory,
    flush,
    make_token,
    mysql_connect_kwargs,
)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_storage_failure_answers_unavailable_without_detail(
    server: TestServer, connect: Connect, caplog: pytest.LogCaptureFixture
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    # Take the message table away underneath the running server.
    with server.app[DB].bound() as orm:
        await orm.db().execute_script('ALTER TABLE "chat_message" RENAME TO "chat_message_gone"')
    try:
        with caplog.at_level(logging.ERROR):
            reply = await alice.call("SendMessage", "alice", "bob", "into the void")
        assert reply["ok"] is False
        assert reply["error"]["code"] == "unavailable"
        assert "chat_message" not in reply["error"]["message"]
        assert "Traceback" not in reply["error"]["message"]
        assert "chat_message" in caplog.text  # the detail is in the server log instead

        history = await bob.call("GetMessageHistory", "alice", "bob")
        assert history["error"]["code"] == "unavailable"
        await flush(bob, via=alice)
        assert bob.named("ReceiveMessage") == []
    finally:
        with server.app[DB].bound() as orm:
            await orm.db().execute_script(
                'ALTER TABLE "chat_message_gone" RENAME TO "chat_message"'
            )
    # Nothing was half-written: no conversation head points at a missing message.
    assert await bob.ok("GetConversations") == []
    assert await alice.ok("SendMessage", "alice", "bob", "back again")


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_unreachable_database_refuses_handshake_and_fails_readiness(
    start_server: ServerFactory, aiohttp_client
) -> None:
    dead = await start_server(database_url=UNREACHABLE_MYSQL)
    client: TestClient = await aiohttp_client(dead)

    ready = await client.get("/readyz")
    assert ready.status == 503
    assert (await ready.json())["checks"]["database"] == "unreachable"
    assert (await client.get("/healthz")).status == 200

    chat = ChatClient("alice")
    with pytest.raises(Exception):
        await chat.sio.connect(
            str(dead.make_url("")).rstrip("/"), namespaces=["/chat"],
            auth={"token": make_token("alice")}, transports=["websocket"], wait_timeout=5,
        )
    assert chat.connect_error["data"]["code"] == "unavailable"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_file_that_cannot_be_opened_stops_startup(
    start_server: ServerFactory, tmp_path
) -> None:
    workers = set(_aiosqlite_threads())
    with pytest.raises(ConfigError, match="CHAT_DATABASE_URL"):
        await start_server(database_url=f"sqlite://{tmp_path}")  # a directory, not a file
    # aiosqlite stops the worker thread of a failed connect without awaiting it;
    # let it finish on this loop, or it reports to a closed one after the test.
    for _ in range(200):
        if not set(_aiosqlite_threads()) - workers:
            break
        await asyncio.sleep(0.01)


def _aiosqlite_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if "_connection_worker_thread" in t.name]


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_stalled_database_answers_unavailable_in_time_and_recovers(
    start_server: ServerFactory, connect: Connect, mariadb_url: str
) -> None:
    import asyncmy

    # Lock waits give up at half the call limit: 1 s here.
    server = await start_server(call_timeout_s=3.0)
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    before = await bob.ok("Sync", None)
    locker = await asyncmy.connect(**mysql_connect_kwargs(), db=mariadb_url.rsplit("/", 1)[1])
    try:
        async with locker.cursor() as cur:
            # Another transaction sits on the change counter, as a stuck writer would.
            await cur.execute("BEGIN")
            await cur.execute("SELECT value FROM chat_counter WHERE name='change' FOR UPDATE")
            started = asyncio.get_running_loop().time()
            reply = await alice.call("SendMessage", "alice", "bob", "stuck", "stall-1")
            waited = asyncio.get_running_loop().time() - started
        assert reply["ok"] is False and reply["error"]["code"] == "unavailable", reply
        assert 0.9 < waited < 3.0
    finally:
        async with locker.cursor() as cur:
            await cur.execute("ROLLBACK")
        locker.close()
    assert await bob.ok("Sync", before["cursor"]) == {**before, "messages": []}

    # The retry with the same clientMessageId goes through, once.
    mid = await alice.ok("SendMessage", "alice", "bob", "stuck", "stall-1")
    for _ in range(5):
        assert await alice.ok("GetOnlineStatus", "bob") is True
        await alice.ok("SendMessage", "alice", "bob", "flowing again")
    history = await bob.ok("GetMessageHistory", "alice", "bob")
    assert [m["id"] for m in history].count(mid) == 1 and len(history) == 6
