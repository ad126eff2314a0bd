"""Hostile and careless clients, and an operator's signals: each gets a clear answer.

One test (or a few) per finding of the hardening review: the namespace and
frames the hub refuses, sessions that never authenticate, what the log may
hold, per-user limits, a noisy user beside quiet ones, a polling POST that is
too large, token audience/issuer, and no event before the connect answer.
Shutdown and the log are tried on a real `chat-server serve` process.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import time
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
import socketio
from aiohttp.test_utils import TestServer

from app.appkeys import DB, SIO
from app.config import Config
from app.storage.db import Database
from models import Message
from tests.support import (
    ChatClient,
    Connect,
    RawSocket,
    EVENT_TIMEOUT_S,
    Serve,
    ServerFactory,
    eventually,
    make_token,
    mysql_kill_connections,
    server_url,
)

SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def refused(url: str, user: str, token: str | None = None) -> Any:
    """Try to connect `user` to /chat; return the connect_error data (fail if it connects)."""
    client = ChatClient(user)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            url, namespaces=["/chat"], auth={"token": token or make_token(user)},
            transports=["websocket"], wait_timeout=5,
        )
    await client.sio.disconnect()
    return client.connect_error["data"]  # what socket.io-client hands over as err.data


async def closes_after(url: str, frame: str | bytes) -> bool:
    """Join /chat on a bare socket, send `frame`: whether the server then closes the socket."""
    raw = await RawSocket.open(url)
    try:
        await raw.connect_chat(make_token("mallory"))
        assert (await raw.receive() or "").startswith("40/chat,")
        await raw.send(frame)
        return await raw.closed_within(3)
    finally:
        await raw.close()


async def answer(raw: RawSocket, ack_id: int) -> str:
    """Read `raw` until the ACK of call `ack_id` arrives (events before it are passed over)."""
    deadline = asyncio.get_running_loop().time() + EVENT_TIMEOUT_S
    prefix = f"43/chat,{ack_id}["
    while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
        frame = await raw.receive(timeout=remaining)
        assert frame is not None, f"the socket closed before the answer to call {ack_id}"
        if isinstance(frame, str) and frame.startswith(prefix):
            return frame
    raise AssertionError(f"no answer to call {ack_id} within {EVENT_TIMEOUT_S} s")


async def metric_text(url: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        return await r.text()


async def metric(url: str, line_start: str) -> float:
    for line in (await metric_text(url)).splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# -- namespaces, frames and sessions ------------------------------------------

@SQLITE
async def test_only_the_chat_namespace_exists(server: TestServer) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(server_url(server), namespaces=["/"], transports=["websocket"],
                          wait_timeout=3)
    await sio.disconnect()


@SQLITE
@pytest.mark.parametrize(
    "frame",
    [
        b"\x00" * 4096,  # a bare binary frame
        '451-/chat,["SendMessage",{"_placeholder":true,"num":0}]',  # a binary event
        '461-/chat,1[{"_placeholder":true,"num":0}]',  # a binary ack
    ],
    ids=["binary-frame", "binary-event", "binary-ack"],
)
async def test_binary_frames_close_the_socket(server: TestServer, frame: str | bytes) -> None:
    # Whatever attachments were to follow are never buffered: the socket is gone.
    assert await closes_after(server_url(server), frame)
    assert await metric(server_url(server), 'chat_protocol_errors_total{kind="binary frame"}') == 1


@SQLITE
async def test_a_session_that_never_joins_chat_is_closed(start_server: ServerFactory) -> None:
    server = await start_server(handshake_timeout_s=1.0)
    url = server_url(server)
    # Opened in this order, so their deadlines fire in this order too.
    idle, wrong_ns, joined, last = [await RawSocket.open(url) for _ in range(4)]
    try:
        await wrong_ns.send("40")  # the default namespace: refused, and no token ever shown
        await joined.connect_chat(make_token("alice"))
        assert (await joined.receive() or "").startswith("40/chat,")
        started = time.monotonic()
        assert await idle.closed_within(4)
        assert await wrong_ns.closed_within(4)
        assert await last.closed_within(4)
        assert time.monotonic() - started < 3
        # Past its own deadline (before `last`'s) the socket on /chat still answers.
        await joined.send('42/chat,1["GetOnlineUsers"]')
        assert await answer(joined, 1) == '43/chat,1[{"ok":true,"data":["alice"]}]'
    finally:
        for raw in (idle, wrong_ns, joined, last):
            await raw.close()


@SQLITE
@pytest.mark.parametrize(
    ("frame", "kind"),
    [
        ("4garbage", "type"),  # not a Socket.IO packet type
        ("4", "type"),  # an engine.io message with nothing in it
        ("47/chat,[]", "type"),  # no such packet type
        ("44/chat,{}", "type"),  # CONNECT_ERROR is the server's to send
        ('42/chat,["SendMessage"', "encoding"),  # JSON cut short
        ('42/chat,["GetOnlineStatus",' + "9" * 5000 + "]", "encoding"),  # an integer Python refuses
        ("42/chat," + "[" * 3000 + "]" * 3000, "encoding"),  # nested past the recursion limit
        ("42/chat," + "9" * 101 + '["GetOnlineUsers"]', "encoding"),  # an ack id too long
        ("42/chat,{}", "shape"),  # an EVENT is an array
        ("42/chat,[]", "shape"),  # with the event's name first
        ("42/chat,", "shape"),  # and is not empty
        ('421-/chat,["GetOnlineUsers"]', "shape"),  # attachments on a text packet
        ("43/chat,[]", "shape"),  # an ACK without the id it answers
        ("43/chat,1{}", "shape"),  # or not an array
    ],
)
async def test_malformed_packets_close_the_socket(
    server: TestServer, frame: str, kind: str
) -> None:
    assert await closes_after(server_url(server), frame)
    label = f'chat_protocol_errors_total{{kind="malformed packet ({kind})"}}'
    assert await metric(server_url(server), label) == 1


@SQLITE
@pytest.mark.parametrize("auth", ['"a-token"', "[]", "42", "null", ""])
async def test_a_handshake_whose_auth_is_no_object_is_refused_as_unauthorized(
    server: TestServer, auth: str
) -> None:
    """Not a malformed packet: a handshake without a token, answered as the protocol says."""
    raw = await RawSocket.open(server_url(server))
    try:
        await raw.send(f"40/chat,{auth}")
        refusal = await raw.receive()
        assert isinstance(refusal, str) and refusal.startswith("44/chat,"), refusal
        assert json.loads(refusal.removeprefix("44/chat,"))["data"]["code"] == "unauthorized"
    finally:
        await raw.close()
    assert 'kind="malformed' not in await metric_text(server_url(server))


@SQLITE
async def test_a_library_failure_on_the_event_path_is_a_bug_not_the_clients_malformed_packet(
    server: TestServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A failure inside python-socketio is logged with its traceback; the client is not blamed.

    The failure is injected into the manager the library consults for every
    event (a public method, patched on this server's instance only).
    """
    raw = await RawSocket.open(server_url(server))
    try:
        await raw.connect_chat(make_token("alice"))
        assert (await raw.receive() or "").startswith("40/chat,")
        failed = asyncio.Event()

        def broken(*args: Any) -> Any:
            failed.set()
            raise RuntimeError("a failure inside the library")

        monkeypatch.setattr(server.app[SIO].manager, "sid_from_eio_sid", broken)
        await raw.send('42/chat,1["GetOnlineUsers"]')
        # Raised and logged in one go, before the server's task yields to this one.
        await asyncio.wait_for(failed.wait(), EVENT_TIMEOUT_S)
        monkeypatch.undo()
        # The same socket, still open, answers the next call.
        await raw.send('42/chat,2["GetOnlineUsers"]')
        assert await answer(raw, 2) == '43/chat,2[{"ok":true,"data":["alice"]}]'
    finally:
        await raw.close()
    bugs = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], RuntimeError)]
    assert bugs and bugs[0].levelname == "ERROR", "the library's failure was not logged as a bug"
    assert not [r for r in caplog.records if "closing engine.io session" in r.getMessage()]
    assert 'kind="malformed' not in await metric_text(server_url(server))


async def test_nothing_reaches_a_socket_before_its_connect_answer(
    start_server: ServerFactory,
) -> None:
    """With presence told to everyone, connects racing each other see their answer first."""
    server = await start_server(presence_scope="all")
    url = server_url(server)
    sockets = [await RawSocket.open(url) for _ in range(60)]
    try:
        for i, s in enumerate(sockets):  # staggered: each one's connect overlaps others' news
            await s.connect_chat(make_token(f"u{i}"))
            await asyncio.sleep(0.003)  # pacing the connects, not waiting for anything
        firsts = await asyncio.gather(*(s.receive() for s in sockets))
        early = [f for f in firsts if not (isinstance(f, str) and f.startswith("40/chat,"))]
        assert not early, f"{len(early)} sockets got an event first, e.g. {early[:2]}"
    finally:
        await asyncio.gather(*(s.close() for s in sockets))


# -- per-user limits -------------------------------------------------------------

@SQLITE
async def test_one_user_holds_at_most_max_sockets(
    start_server: ServerFactory, connect: Connect
) -> None:
    assert Config().max_sockets_per_user <= 20
    server = await start_server(max_sockets_per_user=3)
    url = server_url(server)
    alice = [await connect(server, "alice") for _ in range(3)]
    error = await refused(url, "alice")
    assert error["code"] == "rate_limited" and "sockets" in error["message"]
    await connect(server, "bob")  # others are not affected

    await alice[0].sio.disconnect()  # a freed place can be taken again

    async def reconnected() -> bool:
        try:
            await connect(server, "alice")
        except socketio.exceptions.ConnectionError:
            return False  # the server has not seen the disconnect yet
        return True

    await eventually(reconnected, "the closed socket's place to be free again", 3)


@SQLITE
async def test_the_call_budget_belongs_to_the_user_across_sockets_and_reconnects(
    start_server: ServerFactory, connect: Connect
) -> None:
    server = await start_server(rate_limit_burst=10, rate_limit_per_s=1.0)
    started = time.monotonic()
    accepted = 0
    for _ in range(4):  # connect, spend, disconnect: a fresh socket is not a fresh budget
        client = await connect(server, "alice")
        replies = [await client.call("GetOnlineUsers") for _ in range(10)]
        accepted += sum(r["ok"] for r in replies)
        assert all(r["error"]["code"] == "rate_limited" for r in replies if not r["ok"])
        await client.sio.disconnect()
    two = [await connect(server, "alice") for _ in range(2)]  # nor are two sockets at once
    replies = [await two[i % 2].call("GetOnlineUsers") for i in range(10)]
    accepted += sum(r["ok"] for r in replies)
    elapsed = time.monotonic() - started
    assert accepted <= 10 + elapsed * 1.0 + 1, (accepted, elapsed)
    bob = await connect(server, "bob")
    assert (await bob.call("GetOnlineUsers"))["ok"], "another user's budget is his own"


@SQLITE
async def test_connects_spend_a_budget_too(start_server: ServerFactory, connect: Connect) -> None:
    server = await start_server(rate_limit_burst=4, rate_limit_per_s=0.5, max_sockets_per_user=50)
    for _ in range(4):
        await connect(server, "alice")
    error = await refused(server_url(server), "alice")
    assert error["code"] == "rate_limited" and "connects" in error["message"]


async def test_a_noisy_user_is_refused_and_others_are_unaffected(
    server: TestServer, connect: Connect
) -> None:
    """Default limits: one user with many sockets and sends; a quiet user beside them."""
    url = server_url(server)
    attempts = [ChatClient("noisy") for _ in range(30)]

    async def try_connect(c: ChatClient) -> bool:
        try:
            await c.sio.connect(url, namespaces=["/chat"], auth={"token": make_token("noisy")},
                                transports=["websocket"], wait_timeout=10)
            return True
        except socketio.exceptions.ConnectionError:
            return False

    connected = await asyncio.gather(*(try_connect(c) for c in attempts))
    noisy = [c for c, ok in zip(attempts, connected, strict=True) if ok]
    assert len(noisy) == 20
    assert all(c.connect_error["data"]["code"] == "rate_limited"
               for c, ok in zip(attempts, connected, strict=True) if not ok)
    quiet = await connect(server, "quiet")
    await connect(server, "peer")

    async def flood(c: ChatClient, i: int) -> list[tuple[str, dict[str, Any]]]:
        calls = [c.call("SendMessage", "noisy", "peer", f"spam {i}.{n}", f"n{i}.{n}", timeout=30)
                 for n in range(60)]
        return list(zip((f"n{i}.{n}" for n in range(60)), await asyncio.gather(*calls),
                        strict=True))

    async def converse() -> list[float]:
        times = []
        for n in range(10):
            t = time.monotonic()
            await quiet.ok("SendMessage", "quiet", "peer", f"hello {n}", f"q{n}")
            times.append(time.monotonic() - t)
        return times

    started = time.monotonic()
    floods, quiet_times = await asyncio.gather(
        asyncio.gather(*(flood(c, i) for i, c in enumerate(noisy))), converse()
    )
    elapsed = time.monotonic() - started
    replies = dict(pair for f in floods for pair in f)
    accepted = {cid for cid, r in replies.items() if r["ok"]}
    codes = {r["error"]["code"] for r in replies.values() if not r["ok"]}
    assert codes == {"rate_limited"}
    assert len(accepted) <= 60 + 20 * elapsed + 1, (len(accepted), elapsed)
    assert max(quiet_times) < 2.0, quiet_times

    with server.app[DB].bound():
        stored = set(await Message.filter(sender_id="noisy").values_list("client_message_id", flat=True))
    assert stored == accepted, "a refused send was stored, or an accepted one was not"
    for c in noisy:
        await c.sio.disconnect()


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_connections_killed_mid_transaction_answer_unavailable_never_internal(
    start_server: ServerFactory, connect: Connect, database_url: str
) -> None:
    """MariaDB connections killed under load (2006/2013, also on ROLLBACK): `unavailable`."""
    server = await start_server(rate_limit_per_s=100_000, rate_limit_burst=100_000)
    senders = [await connect(server, f"s{i}") for i in range(4)]
    bob = await connect(server, "bob")
    replies: dict[str, dict[str, Any]] = {}
    killing = True

    async def send(c: ChatClient) -> None:
        n = 0
        while killing:
            cid = f"{c.user}.{n}"
            replies[cid] = await c.call("SendMessage", c.user, "bob", f"m{n}", cid, timeout=15)
            reply = await bob.call("MessageReceived", replies[cid]["data"]) if replies[cid][
                "ok"] else {"ok": True}
            if not reply["ok"]:
                replies[f"receipt {cid}"] = reply
            n += 1

    tasks = [asyncio.ensure_future(send(c)) for c in senders]
    killed = 0
    for _ in range(20):
        await asyncio.sleep(0.1)  # pacing the kills under load, not waiting for anything
        killed += await mysql_kill_connections(urlsplit(database_url).path.lstrip("/"))
    killing = False
    await asyncio.gather(*tasks)
    assert killed > 0
    codes = {r["error"]["code"] for r in replies.values() if not r["ok"]}
    assert codes <= {"unavailable"}, codes
    assert "unavailable" in codes, "no call was cut: the test did not test"

    async def stored_again() -> bool:  # the pool recovers by itself
        return bool((await senders[0].call("SendMessage", "s0", "bob", "after", None))["ok"])

    await eventually(stored_again, "a send to succeed after the kills (storage recovering)", 10)
    acked = {cid for cid, r in replies.items() if r["ok"] and not cid.startswith("receipt")}
    with server.app[DB].bound():
        stored = set(await Message.all().values_list("client_message_id", flat=True))
    assert acked <= stored
    # Closing the pool waits for every connection to come back: none may have leaked.
    await asyncio.gather(*(c.sio.disconnect() for c in (*senders, bob)))
    await asyncio.wait_for(server.close(), 20)


# -- HTTP and tokens ---------------------------------------------------------------

@SQLITE
async def test_an_oversize_polling_post_gets_413_and_ends_the_session(server: TestServer) -> None:
    url = f"{server_url(server)}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as r:
            sid = json.loads((await r.text())[1:])["sid"]
        started = time.monotonic()
        async with http.post(f"{url}&sid={sid}", data="4" + "x" * 70_000) as r:
            assert r.status == 413
        assert time.monotonic() - started < 2
        statuses = []
        for _ in range(3):  # the session's close packet, then it is unknown
            async with http.get(f"{url}&sid={sid}") as r:
                statuses.append(r.status)
                if r.status == 400:
                    break
        assert statuses[-1] == 400, statuses
        async with http.get(url) as r:  # the server is fine
            assert r.status == 200


@SQLITE
async def test_audience_and_issuer_are_required_when_set(
    start_server: ServerFactory, connect: Connect
) -> None:
    server = await start_server(jwt_audience="chat-app", jwt_issuer="https://id.example")
    url = server_url(server)
    good = {"aud": "chat-app", "iss": "https://id.example"}
    await connect(server, "alice", token=make_token("alice", **good))
    for claims, why in [
        ({}, "aud"),
        ({"iss": "https://id.example"}, "aud"),
        ({"aud": "chat-app"}, "iss"),
        ({**good, "aud": "other-app"}, "audience"),
        ({**good, "iss": "https://evil.example"}, "issuer"),
    ]:
        error = await refused(url, "bob", make_token("bob", **claims))
        assert error["code"] == "unauthorized" and why in error["message"], (claims, error)


@SQLITE
async def test_leeway_accepts_a_token_just_past_exp(
    start_server: ServerFactory, connect: Connect
) -> None:
    late = make_token("alice", ttl_s=-5)
    error = await refused(server_url(await start_server()), "alice", late)
    assert error["code"] == "unauthorized"
    lenient = await start_server(jwt_leeway_s=30)
    await connect(lenient, "alice", token=late)


# -- a real process: the log, and shutdown -----------------------------------------

@SQLITE
async def test_the_log_holds_no_token_and_no_traceback_for_client_mistakes(serve: Serve) -> None:
    served = await serve()
    token = make_token("alice")
    async with aiohttp.ClientSession() as http:
        for target, headers in [
            (f"/socket.io/?EIO=4&transport=polling&token={token}", {}),
            (f"/healthz?access_token={token}&{token}",
             {"Referer": f"https://app.example/?t={token}", "User-Agent": token}),
            ("/healthz", {"Authorization": f"Bearer {token}" + "x" * 9000}),
            ("/api/conversations", {"Authorization": f"Bearer {token}"}),
            ("/api/conversations", {"Authorization": f"Bearer {token}x"}),
        ]:
            async with http.get(served.url + target, headers=headers) as r:
                await r.read()

    bad_frames = ["4garbage", '42/chat,["SendMessage"', "47/chat,[]", b"\x01\x02"]
    sockets = [await RawSocket.open(served.url) for _ in range(10)]
    for i, raw in enumerate(sockets):  # tokenless sockets, 200 bad frames each
        for n in range(200):
            try:
                await raw.send(bad_frames[(i + n) % len(bad_frames)])
            except ConnectionResetError:
                break
    for raw in sockets:
        assert await raw.closed_within(5)
        await raw.close()
    # Each complaint is written before its socket is cut off; the access line of a
    # request can follow its response: wait for the last one before reading the log.
    await eventually(
        lambda: re.search(r'"GET /api/conversations ?" 401', served.log_text()) is not None,
        "the access log line of the last request",
    )

    log = served.log_text()
    for part in token.split("."):
        assert part not in log, "token text in the server's log"
    assert "Traceback" not in log
    complaints = [line for line in log.splitlines() if "closing engine.io session" in line]
    assert 0 < len(complaints) <= len(sockets), complaints
    assert re.search(r'"GET /healthz\?access_token=-&-=- ?" 200', log), log[-2000:]


async def test_sigterm_drains_answers_calls_and_closes_sockets(
    serve: Serve, clean_database: Config
) -> None:
    served = await serve(CHAT_SHUTDOWN_GRACE_S="10")
    clients = [ChatClient(f"user{i}") for i in range(6)]
    reasons: dict[str, Any] = {}
    closed_at: dict[str, float] = {}
    for c in clients:
        def on_disconnect(reason: Any = None, user: str = c.user) -> None:
            reasons[user] = reason
            closed_at[user] = time.monotonic()
        c.sio.on("disconnect", on_disconnect, namespace="/chat")
        await c.sio.connect(served.url, namespaces=["/chat"], auth={"token": make_token(c.user)},
                            transports=["websocket"], wait_timeout=5)
    answers: list[dict[str, Any]] = []
    acked: set[str] = set()
    unanswered: dict[str, int] = {c.user: 0 for c in clients}

    async def send_until_closed(c: ChatClient) -> None:
        n = 0
        while c.user not in closed_at:
            try:
                reply = await c.call("SendMessage", c.user, "peer", f"m{n}", f"{c.user}.{n}",
                                     timeout=4)
                answers.append(reply)
                if reply["ok"]:
                    acked.add(f"{c.user}.{n}")
            except socketio.exceptions.TimeoutError:
                unanswered[c.user] += 1
            except socketio.exceptions.BadNamespaceError:
                return
            n += 1

    senders = [asyncio.ensure_future(send_until_closed(c)) for c in clients]
    await eventually(lambda: len(answers) >= 100, "100 answered sends before the SIGTERM", 20)
    signalled = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    returncode = await asyncio.to_thread(served.proc.wait, 15)
    exited = time.monotonic() - signalled
    await asyncio.gather(*senders)

    assert returncode == 0
    assert exited <= 10, exited
    assert set(closed_at) == {c.user for c in clients}
    assert max(closed_at.values()) - signalled < 3, "sockets were left to the ping timeout"
    # The transport closed, not the namespace: a client reconnects by itself.
    assert all(r != socketio.AsyncClient.reason.SERVER_DISCONNECT for r in reasons.values()), reasons
    # Every call was answered but, at most, the one each client had on the wire as it closed.
    assert all(n <= 1 for n in unanswered.values()), unanswered
    assert {a["error"]["code"] for a in answers if not a["ok"]} <= {"unavailable"}
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", served.port)
    log = served.log_text()
    assert "Traceback" not in log
    assert "shutdown: 6 sockets closed" in log
    db = Database(clean_database)
    await db.open()
    try:
        with db.bound():
            stored = set(await Message.all().values_list("client_message_id", flat=True))
    finally:
        await db.close()
    assert acked <= stored, f"{len(acked - stored)} acked messages were not stored"
