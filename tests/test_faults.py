"""The write path under a hung database: bounded, thrown-away connections, honest outcomes.

MariaDB is reached through tests/faultproxy.py, which freezes, refuses or traps
connections while the real server runs; the shared MariaDB itself is never
touched. What every test holds: a call answers within its time limit (or, for
a COMMIT whose answer was lost, once the outcome is known), `unavailable`
means not stored, nothing acknowledged is lost, and answers are ok again soon
after the database answers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from tests.faultproxy import FaultProxy
from tests.support import (
    Connect,
    Serve,
    ServerFactory,
    mysql_connect_kwargs,
    server_url,
    terminate,
)

pytestmark = pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)

# A MySQL COM_QUERY packet carrying COMMIT, as asyncmy sends it.
COMMIT = b"\x03COMMIT"
CALL_TIMEOUT_S = 2.0


def through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host))


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    kwargs = mysql_connect_kwargs()
    fault = FaultProxy(kwargs["host"], kwargs["port"])
    await fault.start()
    yield fault
    await fault.close()


async def stored(database_url: str) -> list[tuple[str, str, str]]:
    """(uuid, client_message_id, text) of every message, read directly (not through the proxy)."""
    import asyncmy

    conn = await asyncmy.connect(**mysql_connect_kwargs(), db=urlsplit(database_url).path[1:])
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT uuid, client_message_id, text FROM chat_message ORDER BY id")
            return [tuple(r) for r in await cur.fetchall()]
    finally:
        conn.close()


async def ready_status(url: str) -> int:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/readyz", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return r.status


async def test_a_frozen_database_is_bounded_and_writes_resume_on_fresh_connections(
    start_server: ServerFactory, connect: Connect, proxy: FaultProxy, database_url: str
) -> None:
    server = await start_server(
        database_url=through(database_url, proxy.port), call_timeout_s=CALL_TIMEOUT_S
    )
    url = server_url(server)
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    acked = [await alice.ok("SendMessage", "alice", "bob", "before", "m-0")]

    # The open connections stop answering (no FIN, no reset); new ones are refused.
    proxy.freeze()
    await proxy.refuse(True)
    loop = asyncio.get_running_loop()
    started = loop.time()
    send, history, ready = await asyncio.gather(
        alice.call("SendMessage", "alice", "bob", "frozen", "m-1", timeout=10),
        bob.call("GetMessageHistory", "alice", "bob", timeout=10),
        ready_status(url),
    )
    assert loop.time() - started < CALL_TIMEOUT_S + 1.5
    assert send["error"]["code"] == "unavailable", send
    assert history["error"]["code"] == "unavailable", history  # never `internal`
    assert ready == 503

    # New connections go through again; the frozen ones stay frozen for good.
    await proxy.refuse(False)
    healed = loop.time()
    while True:
        reply = await alice.call("SendMessage", "alice", "bob", "frozen", "m-1", timeout=10)
        if reply["ok"]:
            acked.append(reply["data"])
            break
        assert loop.time() - healed < 5, f"writes did not resume: {reply}"
        await asyncio.sleep(0.1)
    assert loop.time() - healed < 5
    for n in range(2, 6):
        acked.append(await alice.ok("SendMessage", "alice", "bob", f"after {n}", f"m-{n}"))
    assert len(await bob.ok("GetMessageHistory", "alice", "bob")) == 6
    assert await ready_status(url) == 200

    rows = await stored(database_url)
    assert [r[0] for r in rows] == acked  # every ack stored, once, nothing else
    assert [r[1] for r in rows] == [f"m-{n}" for n in range(6)]


async def test_a_commit_whose_answer_was_lost_is_answered_once_its_outcome_is_known(
    start_server: ServerFactory, connect: Connect, proxy: FaultProxy, database_url: str
) -> None:
    server = await start_server(
        database_url=through(database_url, proxy.port), call_timeout_s=CALL_TIMEOUT_S
    )
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    await alice.ok("SendMessage", "alice", "bob", "warm", "w-0")

    # The server commits; its answer never comes back to us.
    proxy.freeze_when(COMMIT, deliver=True)
    reply = await alice.call("SendMessage", "alice", "bob", "committed unheard", "c-1", timeout=10)
    assert proxy.trapped.is_set()
    assert reply["ok"] is True, reply  # stored, so said so: not `unavailable`
    arrived = await bob.wait_for("ReceiveMessage", 2)
    assert arrived[-1][2] == reply["data"]

    # COMMIT never reaches the server: the batch was not stored, and says so.
    proxy.freeze_when(COMMIT, deliver=False)
    lost = await alice.call("SendMessage", "alice", "bob", "never committed", "c-2", timeout=10)
    assert proxy.trapped.is_set()
    assert lost["error"]["code"] == "unavailable", lost
    # The zombie session that held the change counter's lock was killed: writes flow.
    retried = await alice.ok("SendMessage", "alice", "bob", "never committed", "c-2")

    rows = await stored(database_url)
    assert [r[1] for r in rows] == ["w-0", "c-1", "c-2"]
    assert rows[1][0] == reply["data"] and rows[2][0] == retried


async def test_sigterm_exits_in_time_whatever_the_database_does(
    serve: Serve, connect: Connect, proxy: FaultProxy, database_url: str
) -> None:
    grace = 2
    served = await serve(
        CHAT_DATABASE_URL=through(database_url, proxy.port),
        CHAT_SHUTDOWN_GRACE_S=str(grace),
        CHAT_CALL_TIMEOUT_S="5",
    )
    alice = await connect(served, "alice")
    await alice.ok("SendMessage", "alice", "bob", "warm", "s-0")

    # One COMMIT goes through unheard and nothing new connects: its outcome
    # cannot be learned. Other sends and reads hang on frozen connections.
    proxy.freeze_when(COMMIT, deliver=True)
    unheard = asyncio.ensure_future(
        alice.call("SendMessage", "alice", "bob", "in doubt", "s-1", timeout=15)
    )
    await asyncio.wait_for(proxy.trapped.wait(), 5)
    await proxy.refuse(True)
    proxy.freeze()
    others = [
        asyncio.ensure_future(alice.call("GetConversations", timeout=15)) for _ in range(3)
    ]
    await asyncio.sleep(0.3)  # the calls are on the wire

    took, status = await terminate(served, grace)
    assert took <= grace + 1, f"exited after {took:.1f} s"
    log = served.log_text()
    assert "Traceback" not in log, log
    # Its own closing steps fit in the time: the last-resort timer (exit status 1) never fired.
    assert status == 0 and "exiting now" not in log, log[-2000:]

    # The send in doubt got no answer at all (never a false `unavailable`).
    if unheard.done() and unheard.exception() is None:
        answer = unheard.result()
        assert answer["ok"] or answer["error"]["code"] != "unavailable", answer
    for task in [unheard, *others]:
        task.cancel()
    # ...and it was stored: the client's retry with the same key finds it, once.
    await proxy.refuse(False)
    proxy.thaw()
    rows = await stored(database_url)
    assert [r[1] for r in rows] == ["s-0", "s-1"]
