"""Several instances over Redis: real `chat-server serve` processes, a real redis-server.

Each test starts its own redis-server on a free port (so that it may kill it)
and two server processes on the one clean MariaDB test database. Clients on
different instances must see one chat: messages, receipts, typing, presence,
and after a part dies, nothing lost.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import socketio

from app.devcluster import nginx_config
from handlers.backplane import CHANNEL, SYNC_SETTLE_S
from tests.support import (
    eventually,
    EVENT_TIMEOUT_S,
    SECRET,
    ChatClient,
    Connect,
    OwnRedis,
    Serve,
    Served,
    flush,
    free_port,
    make_token,
    service_missing,
    terminate,
    wait_listening,
)
from tests.test_js_clients import CHROMIUM, CLIENTS, compiled, require_node, run  # noqa: F401

pytestmark = pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)

TTL_S = 3


@dataclass
class Cluster:
    a: Served
    b: Served
    redis: OwnRedis


@pytest.fixture
def dev_mode() -> bool:
    """Whether the instances serve the demo page (a test overrides it by parametrizing)."""
    return False


@pytest.fixture
async def cluster(serve: Serve, own_redis: OwnRedis, dev_mode: bool) -> Cluster:
    async def instance(name: str) -> Served:
        return await serve(
            CHAT_REDIS_URL=own_redis.url, CHAT_INSTANCE_ID=name, CHAT_INSTANCE_TTL_S=str(TTL_S),
            CHAT_DEV="1" if dev_mode else "0",
        )

    a, b = await asyncio.gather(instance("a"), instance("b"))
    return Cluster(a, b, own_redis)


async def metric(served: Served, name: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(served.url + "/metrics") as r:
        text = await r.text()
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def ready(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url + "/readyz") as r:
        return r.status, await r.json()


async def sync_all(client: ChatClient, cursor: str) -> list[str]:
    """The ids of every message Sync returns after `cursor`, all pages."""
    ids: list[str] = []
    while True:
        page = await client.ok("Sync", cursor)
        ids += [m["id"] for m in page["messages"]]
        cursor = page["cursor"]
        if not page["hasMore"]:
            return ids


def statuses(client: ChatClient, user: str) -> list[str]:
    return [state for who, state in client.named("UserStatusChanged") if who == user]


# -- one chat across instances ---------------------------------------------------------


async def test_two_instances_are_one_chat(cluster: Cluster, connect: Connect) -> None:
    alice = await connect(cluster.a, "alice")
    bob = await connect(cluster.b, "bob")
    alice_phone = await connect(cluster.b, "alice")  # alice's second device, on the other instance
    start = (await bob.ok("Sync", None))["cursor"]

    message_id = await alice.ok("SendMessage", "alice", "bob", "hi from a")
    (received,) = await bob.wait_for("ReceiveMessage")
    assert received[:3] == ("alice", "hi from a", message_id)
    (echo,) = await alice_phone.wait_for("MessageSent")
    assert echo[0]["id"] == message_id

    await bob.ok("MessageReceived", message_id)
    await alice.wait_for("MessageStatusChanged")
    await alice_phone.wait_for("MessageStatusChanged")
    await bob.ok("MessageRead", message_id)
    assert (await alice.wait_for("MessageStatusChanged", 2))[-1] == (message_id, "read")

    await bob.ok("Typing", "alice", True)
    assert (await alice.wait_for("UserTyping"))[0] == ("bob", True)
    assert (await alice_phone.wait_for("UserTyping"))[0] == ("bob", True)

    page = await bob.ok("Sync", start)
    assert [m["id"] for m in page["messages"]] == [message_id]
    assert page["messages"][0]["status"] == "read"
    history = await alice_phone.ok("GetMessageHistory", "alice", "bob", 0, 50)
    assert [m["id"] for m in history] == [message_id]

    # The cluster's view of who is online, from either instance.
    assert await alice.ok("GetOnlineUsers") == ["alice", "bob"]
    assert await bob.ok("GetOnlineStatus", "alice") is True
    (conversation,) = await bob.ok("GetConversations")
    assert conversation["id"] == "alice" and conversation["isActive"] is True

    for served, name in ((cluster.a, "a"), (cluster.b, "b")):
        status, body = await ready(served.url)
        assert status == 200 and body["checks"]["redis"] == "ok" and body["instance"] == name
        assert f'chat_instance_info{{instance_id="{name}"}} 1.0' in await _metrics_text(served)
        assert f" [{name}] " in served.log_text()  # the instance id is in its log lines


async def _metrics_text(served: Served) -> str:
    async with aiohttp.ClientSession() as http, http.get(served.url + "/metrics") as r:
        return await r.text()


async def test_node_clients_on_two_instances(cluster: Cluster) -> None:
    node = require_node()
    out = await run(
        node, "cluster/cross-instance.mjs",
        env={"CHAT_URL": cluster.a.url, "CHAT_OTHER_URL": cluster.b.url, "CHAT_SECRET": SECRET},
    )
    assert "cross-instance (websocket): ok" in out, out


# -- presence ------------------------------------------------------------------------------


async def test_two_devices_on_two_instances_make_one_online_and_one_offline(
    cluster: Cluster, connect: Connect
) -> None:
    carol = await connect(cluster.a, "carol")
    assert await carol.ok("SubscribePresence", ["alice"]) == {"alice": "Offline"}
    dave = await connect(cluster.b, "dave")  # hears alice as a contact, not by subscribing
    await dave.ok("SendMessage", "dave", "alice", "hello")

    async def device(served: Served) -> ChatClient:
        return await connect(served, "alice")

    async def leave(client: ChatClient) -> None:
        await client.sio.disconnect()

    rounds = 0
    for order in ("together", "ab-ab", "ab-ba", "ba-ab", "together", "together"):
        if order == "together":  # racing: both at the same moment, both ways
            one, two = await asyncio.gather(device(cluster.a), device(cluster.b))
            await asyncio.gather(leave(one), leave(two))
        else:
            first, second = (cluster.a, cluster.b) if order[0] == "a" else (cluster.b, cluster.a)
            one = await device(first)
            two = await device(second)
            for client in ((one, two) if order[3] == order[0] else (two, one)):
                await leave(client)
        rounds += 1
        for observer in (carol, dave):
            await eventually(
                lambda o=observer: statuses(o, "alice").count("Offline") >= rounds,
                f"{observer.user} hearing alice go offline (round {rounds})",
                EVENT_TIMEOUT_S,
            )
    # Whatever else was sent to them has arrived once a notice sent now has.
    await flush(carol, via=dave)
    await flush(dave, via=carol)
    for observer in (carol, dave):
        assert statuses(observer, "alice") == ["Online", "Offline"] * rounds, observer.user
    assert await carol.ok("GetOnlineStatus", "alice") is False


async def test_a_killed_instance_takes_its_users_offline_and_nothing_is_missed(
    cluster: Cluster, connect: Connect
) -> None:
    carol = await connect(cluster.a, "carol")
    await carol.ok("SubscribePresence", ["alice"])
    alice = await connect(cluster.b, "alice")
    cursor = (await alice.ok("Sync", None))["cursor"]
    await carol.wait_for("UserStatusChanged")

    sent: list[str] = []

    async def carol_keeps_writing() -> None:
        while len(sent) < 60:
            sent.append(await carol.ok("SendMessage", "carol", "alice", f"m{len(sent)}"))
            await asyncio.sleep(0.02)

    writing = asyncio.ensure_future(carol_keeps_writing())
    await eventually(lambda: len(sent) >= 10, "carol writing before the kill")
    cluster.b.proc.send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    await writing

    took = await eventually(
        lambda: statuses(carol, "alice") == ["Online", "Offline"],
        "alice shown offline after her instance died",
        TTL_S + 2,
    )
    assert time.monotonic() - killed_at <= TTL_S + 2, took
    assert await carol.ok("GetOnlineStatus", "alice") is False

    live = {args[2] for args in alice.named("ReceiveMessage")}
    again = await connect(cluster.a, "alice")  # reconnects to the survivor
    synced = await sync_all(again, cursor)
    assert len(sent) == 60
    assert set(sent) <= live | set(synced), "a message acked before the kill is missing"
    assert len(synced) == len(set(synced))
    assert len(live) < 60, "the kill happened after every delivery: the test proves nothing"


async def test_a_deploy_sigterm_moves_users_to_the_other_instance(
    cluster: Cluster, connect: Connect
) -> None:
    """A rolling restart: the stopped instance says goodbye, no TTL wait, no traceback."""
    carol = await connect(cluster.a, "carol")
    await carol.ok("SubscribePresence", ["alice"])
    alice = await connect(cluster.b, "alice")
    await carol.wait_for("UserStatusChanged")
    cluster.b.proc.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    await eventually(
        lambda: statuses(carol, "alice") == ["Online", "Offline"],
        "alice shown offline after her instance stopped",
        TTL_S - 1,  # sooner than a crash
    )
    assert await asyncio.to_thread(cluster.b.proc.wait, 10) == 0
    assert time.monotonic() - stopped < 5
    assert "Traceback" not in cluster.b.log_text()
    assert not alice.sio.connected
    back = await connect(cluster.a, "alice")
    await carol.wait_for("UserStatusChanged", 3)
    assert statuses(carol, "alice") == ["Online", "Offline", "Online"]
    assert await back.ok("GetOnlineUsers") == ["alice", "carol"]


# -- Redis failures --------------------------------------------------------------------------


async def test_redis_dies_and_returns_nothing_is_lost(cluster: Cluster, connect: Connect) -> None:
    alice = await connect(cluster.a, "alice")
    bob = await connect(cluster.b, "bob")
    cursor = (await bob.ok("Sync", None))["cursor"]
    acked: list[str] = []
    stop = asyncio.Event()

    async def alice_streams() -> None:
        n = 0
        while not stop.is_set():
            reply = await alice.call("SendMessage", "alice", "bob", f"n{n}")
            assert reply["ok"], f"a send failed while Redis was away: {reply}"
            acked.append(reply["data"])
            n += 1
            await asyncio.sleep(0.01)

    streaming = asyncio.ensure_future(alice_streams())
    await eventually(lambda: len(acked) >= 10, "alice streaming before Redis dies")
    cluster.redis.kill()
    killed_with = len(acked)
    await eventually(
        lambda: len(acked) > killed_with + 20, "sends going on while Redis is away", 3
    )
    status, body = await ready(cluster.a.url)
    assert status == 200 and body["checks"]["redis"] == "unreachable"
    await cluster.redis.start()  # same port, empty: nothing of before survives
    restarted = time.monotonic()

    # Cross-instance delivery resumes: a message sent now arrives live.
    async def delivered_live() -> bool:
        return bool(acked) and acked[-1] in {a[2] for a in bob.named("ReceiveMessage")}

    await eventually(delivered_live, "live delivery across instances after Redis returned", 10)
    assert time.monotonic() - restarted < 10
    stop.set()
    await streaming
    await bob.wait_for("SyncRequired")

    live = [args[2] for args in bob.named("ReceiveMessage")]
    synced = await sync_all(bob, cursor)
    assert len(live) == len(set(live)), "a message was delivered live twice"
    assert len(synced) == len(set(synced)) == len(acked), "stored: not exactly the acked messages"
    assert set(synced) == set(acked)
    missed_live = set(acked) - set(live)
    assert missed_live, "Redis died and every message still arrived live: the test proves nothing"
    # Presence came back too: both users online in the cluster's view again.
    await eventually(
        lambda: _ok_equals(alice, "GetOnlineUsers", ["alice", "bob"]), "presence re-asserted", 5
    )
    assert await metric(cluster.a, "chat_backplane_publish_failures_total") > 0
    assert await metric(cluster.b, "chat_backplane_reconnects_total") >= 1
    for served in (cluster.a, cluster.b):
        await eventually(lambda s=served: _redis_ok(s), "/readyz saying Redis is ok again", 5)


async def _redis_ok(served: Served) -> bool:
    status, body = await ready(served.url)
    return status == 200 and body["checks"]["redis"] == "ok"


async def test_the_typed_client_catches_up_by_itself_after_redis_returns(
    cluster: Cluster, compiled: str
) -> None:
    """The TypeScript ChatClient answers SyncRequired with Sync: what it missed arrives."""
    proc = await asyncio.create_subprocess_exec(
        compiled, "cluster/sync-required.mjs", cwd=CLIENTS,
        env={**os.environ, "CHAT_URL": cluster.a.url, "CHAT_OTHER_URL": cluster.b.url,
             "CHAT_SECRET": SECRET},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    said: list[str] = []

    async def says(expected: str) -> None:
        line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
        said.append(line.decode(errors="replace").rstrip())
        assert said[-1] == expected, said

    async def tell(word: str) -> None:
        proc.stdin.write(f"{word}\n".encode())  # type: ignore[union-attr]
        await proc.stdin.drain()  # type: ignore[union-attr]

    try:
        await says("ready")
        cluster.redis.kill()

        async def redis_away() -> bool:
            return not await _redis_ok(cluster.a)

        await eventually(redis_away, "instance a noticing Redis is gone")
        await tell("down")
        await says("sent 5")
        await cluster.redis.start()
        await tell("up")
        await says("caught up")
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _ok_equals(client: ChatClient, event: str, expected: Any) -> bool:
    return bool(await client.ok(event) == expected)


async def test_the_listener_survives_redis_dropping_its_clients(
    cluster: Cluster, connect: Connect
) -> None:
    """python-socketio's listener can go deaf for good when Redis drops it (#1581); ours not."""
    alice = await connect(cluster.a, "alice")
    bob = await connect(cluster.b, "bob")
    for n in range(3):
        await cluster.redis.command("CLIENT", "KILL", "TYPE", "pubsub")
        await bob.wait_for("SyncRequired", n + 1)

        sent: list[str] = []

        async def heard(n: int = n, sent: list[str] = sent) -> bool:
            # A new message each poll: any of them arriving means the listener hears again.
            sent.append(await alice.ok("SendMessage", "alice", "bob", f"after kill {n}"))
            return bool(set(sent) & {a[2] for a in bob.named("ReceiveMessage")})

        await eventually(heard, f"delivery after the listener was dropped ({n + 1})", 10)
    assert await metric(cluster.b, "chat_backplane_reconnects_total") >= 3


# -- behind nginx ------------------------------------------------------------------------------


@pytest.fixture
async def nginx(cluster: Cluster, tmp_path: Path) -> Served:
    """Debian's nginx in front of both instances, with the shipped config."""
    executable = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(executable):
        service_missing("nginx", "not installed; apt-get install nginx (.ci/run does)")
    port = free_port()
    conf = tmp_path / "nginx" / "nginx.conf"
    nginx_config(conf, port, [cluster.a.port, cluster.b.port])
    log = tmp_path / "nginx" / "error.log"
    proc = subprocess.Popen(
        [executable, "-p", str(conf.parent), "-c", str(conf), "-g", "daemon off;"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )
    try:
        await wait_listening(port, proc)
        yield Served(proc, f"http://127.0.0.1:{port}", port, log)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.parametrize("transport", ["websocket", "polling"])
async def test_through_nginx_to_the_other_instance(
    cluster: Cluster, nginx: Served, transport: str
) -> None:
    node = require_node()
    _, body = await ready(nginx.url)
    behind = cluster.a if body["instance"] == "a" else cluster.b
    other = cluster.b if behind is cluster.a else cluster.a
    out = await run(
        node, "cluster/cross-instance.mjs",
        env={"CHAT_URL": nginx.url, "CHAT_OTHER_URL": other.url, "CHAT_SECRET": SECRET,
             "CHAT_TRANSPORT": transport},
    )
    assert f"cross-instance ({transport}): ok" in out, out
    assert (CLIENTS / "cluster" / "cross-instance.mjs").is_file()


@pytest.mark.parametrize("dev_mode", [True])
async def test_two_browsers_chat_through_nginx_and_the_other_instance(
    cluster: Cluster, nginx: Served
) -> None:
    """What `make cluster` is for: the demo page through nginx, and on the other instance."""
    node = require_node()
    if not Path(CHROMIUM).exists():
        service_missing("Chromium", f"{CHROMIUM} not found; apt-get install chromium")
    _, body = await ready(nginx.url)
    other = cluster.b if body["instance"] == "a" else cluster.a
    out = await run(
        node, "browser/two-people.mjs",
        env={"CHAT_URL": nginx.url, "CHAT_OTHER_URL": other.url, "CHAT_CHROMIUM": CHROMIUM},
    )
    assert "two-people: ok" in out, out


# -- budgets across instances ----------------------------------------------------------------


async def pair(serve: Serve, redis: OwnRedis, **env: str) -> tuple[Served, Served]:
    """Two instances, a and b, on this test's own Redis, with these settings."""
    a, b = await asyncio.gather(*(
        serve(CHAT_REDIS_URL=redis.url, CHAT_INSTANCE_ID=name, **env) for name in ("a", "b")
    ))
    return a, b


async def rest_get(served: Served, path: str, user: str) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http, http.get(
        served.url + path, headers={"Authorization": f"Bearer {make_token(user)}"}
    ) as r:
        return r.status, dict(r.headers), await r.json()


async def test_a_users_budgets_hold_across_instances_for_calls_rest_and_sockets(
    serve: Serve, own_redis: OwnRedis, connect: Connect
) -> None:
    a, b = await pair(
        serve, own_redis, CHAT_RATE_LIMIT_PER_S="1", CHAT_RATE_LIMIT_BURST="12",
        CHAT_MAX_SOCKETS_PER_USER="3",
    )
    on_a, on_b = await connect(a, "alice"), await connect(b, "alice")
    started = time.monotonic()
    replies = [await (on_a if n % 2 else on_b).call("GetOnlineUsers") for n in range(10)]
    rest = [await rest_get(b if n % 2 else a, "/api/users/online", "alice") for n in range(6)]
    elapsed = time.monotonic() - started
    accepted = sum(r["ok"] for r in replies) + sum(status == 200 for status, _, _ in rest)
    assert 12 <= accepted <= 12 + elapsed * 1.0 + 1, (replies, rest, elapsed)
    assert {r["error"]["code"] for r in replies if not r["ok"]} <= {"rate_limited"}
    refused = [(h, body) for status, h, body in rest if status == 429]
    assert refused, "REST never answered 429: it does not share the socket calls' budget"
    for headers, body in refused:
        assert body["error"]["code"] == "rate_limited" and int(headers["Retry-After"]) >= 1
    bob = await connect(b, "bob")
    assert (await bob.call("GetOnlineUsers"))["ok"], "another user's budget is his own"

    # Three sockets at most, wherever they are: alice holds two, one more fits.
    await connect(a, "alice")
    late = ChatClient("alice")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await late.sio.connect(b.url, namespaces=["/chat"], auth={"token": make_token("alice")},
                               transports=["websocket"], wait_timeout=EVENT_TIMEOUT_S)
    await late.sio.disconnect()
    error = late.connect_error["data"]
    assert error["code"] == "rate_limited" and "sockets" in error["message"]
    await on_a.sio.disconnect()

    async def reconnects_on_b() -> bool:
        try:
            await connect(b, "alice")
            return True
        except socketio.exceptions.ConnectionError:
            return False

    await eventually(reconnects_on_b, "a place freed on a being taken on b", 5)


# -- a frozen Redis ----------------------------------------------------------------------------


async def test_sigterm_exits_in_time_with_redis_frozen(
    serve: Serve, own_redis: OwnRedis, connect: Connect
) -> None:
    """Goodbyes to a frozen Redis (presence, budgets, backplane) must not hold the exit."""
    grace = 2
    a, _ = await pair(serve, own_redis, CHAT_SHUTDOWN_GRACE_S=str(grace))
    users = [await connect(a, f"u{i}") for i in range(4)]
    await users[0].ok("SendMessage", "u0", "u1", "before", "t-0")
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    try:
        # Stored and acked while its publish waits on the frozen Redis.
        await users[2].ok("SendMessage", "u2", "u3", "during", "t-1")
        took, status = await terminate(a, grace)
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    log = a.log_text()
    assert took <= grace + 1, f"exited after {took:.1f} s"
    assert status == 0 and "exiting now" not in log, log[-2000:]
    assert "Traceback" not in log, log


async def test_a_frozen_redis_never_slows_a_send_and_each_socket_hears_sync_required_once(
    serve: Serve, own_redis: OwnRedis, connect: Connect
) -> None:
    """The outside probe's case: Redis stopped (SIGSTOP) for 6 s, two instances, 40 senders."""
    a, b = await pair(serve, own_redis, CHAT_INSTANCE_TTL_S="30")
    pairs = 40
    senders = [await connect(a if i % 2 else b, f"s{i}") for i in range(pairs)]
    receivers = [await connect(b if i % 2 else a, f"r{i}") for i in range(pairs)]  # the other one
    cursors = [(await r.ok("Sync", None))["cursor"] for r in receivers]
    acked: list[list[str]] = [[] for _ in range(pairs)]
    latencies: list[tuple[float, float]] = []  # (when sent, how long to the ack)
    failures: list[Any] = []
    stop = asyncio.Event()

    async def keep_sending(i: int) -> None:
        n = 0
        while not stop.is_set():
            sent = time.monotonic()
            reply = await senders[i].call("SendMessage", f"s{i}", f"r{i}", f"m{n}", timeout=30)
            latencies.append((sent, time.monotonic() - sent))
            if reply["ok"]:
                acked[i].append(reply["data"])
            else:
                failures.append(reply)
            n += 1
            await asyncio.sleep(0.1)  # pace: ten sends a second per sender

    sending = [asyncio.ensure_future(keep_sending(i)) for i in range(pairs)]
    await eventually(lambda: all(len(a) >= 3 for a in acked), "every sender under way")
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        await asyncio.sleep(6.0)  # the fault's length, not a wait for anything
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    thawed_at = time.monotonic()

    # Delivery across instances resumes: a message sent now arrives live.
    probes: list[str] = []

    async def delivered_live() -> bool:
        probes.append(await senders[0].ok("SendMessage", "s0", "r0", "are you there"))
        acked[0].append(probes[-1])
        return bool(set(probes) & {args[2] for args in receivers[0].named("ReceiveMessage")})

    resumed = await eventually(delivered_live, "live delivery after Redis answered again", 5)
    after = [len(a) for a in acked]
    await eventually(
        lambda: all(len(a) >= n + 3 for a, n in zip(acked, after)), "every sender going on after"
    )
    stop.set()
    await asyncio.gather(*sending)

    assert not failures, failures[:3]
    during = sorted(took for sent, took in latencies if frozen_at <= sent < thawed_at)
    assert len(during) > pairs * 20, "the senders did not keep sending while Redis was frozen"
    assert during[-1] < 1.0, f"a send waited {during[-1]:.2f} s while Redis was frozen"

    # Nothing acked is lost: each message arrived live or comes with Sync.
    for i, receiver in enumerate(receivers):
        live = {args[2] for args in receiver.named("ReceiveMessage")}
        synced = set(await sync_all(receiver, cursors[i]))
        assert set(acked[i]) <= live | synced, f"r{i} lost messages"
    missed = sum(len(set(acked[i]) - {a[2] for a in r.named("ReceiveMessage")})
                 for i, r in enumerate(receivers))
    assert missed, "every message arrived live: the freeze cost nothing and the test proves nothing"

    # One SyncRequired per socket for the one outage, not one per publish in flight.
    everyone = senders + receivers
    await eventually(
        lambda: all(c.named("SyncRequired") for c in everyone), "SyncRequired on every socket", 10
    )

    async def settled() -> bool:  # no instance has a SyncRequired still to send
        return all([await metric(s, "chat_sync_required_pending") == 0 for s in (a, b)])

    await eventually(settled, "both instances done with SyncRequired", 5 * SYNC_SETTLE_S)
    for sender, receiver in zip(senders, receivers):  # what was sent before has arrived
        await flush(receiver, via=sender)
        await flush(sender, via=receiver)
    counts = {c.user: len(c.named("SyncRequired")) for c in everyone}
    assert set(counts.values()) == {1}, counts
    print(
        f"frozen 6 s: {len(during)} sends, ack p50 {during[len(during) // 2] * 1000:.1f} ms, "
        f"max {during[-1] * 1000:.1f} ms; delivery resumed {resumed:.2f} s after SIGCONT; "
        f"{missed} messages came by Sync"
    )


# -- presence in order ------------------------------------------------------------------------


async def test_presence_stays_in_order_when_one_user_races_across_instances(
    serve: Serve, own_redis: OwnRedis, connect: Connect
) -> None:
    """alice's sockets come and go on two instances at once, many times; observers on both.

    After each round alice is offline, and once everything sent before has
    arrived (a flush through each instance), each observer's last word on her
    must be Offline: an Online delivered after the Offline that followed it
    would leave her shown online for good.
    """
    a, b = await pair(serve, own_redis)
    watchers = [await connect(a, "carol"), await connect(b, "dave")]
    peers = [await connect(a, "peer-a"), await connect(b, "peer-b")]
    published: list[dict[str, Any]] = []  # what the instances tell each other
    subscribed = asyncio.Event()
    listening = asyncio.ensure_future(listen_to_the_backplane(own_redis, published, subscribed))
    await asyncio.wait_for(subscribed.wait(), EVENT_TIMEOUT_S)
    for watcher in watchers:
        assert await watcher.ok("SubscribePresence", ["alice"]) == {"alice": "Offline"}

    async def visit(served: Served, after_s: float) -> None:
        """A socket of alice's that leaves as soon as it is in."""
        await asyncio.sleep(after_s)
        client = await connect(served, "alice", greet=False)
        await client.sio.disconnect()

    async def alice_offline() -> bool:
        return await peers[0].ok("GetOnlineStatus", "alice") is False

    rounds = 100
    for n in range(1, rounds + 1):
        # Two short visits overlapping on two instances: whichever comes first
        # announces her, whichever leaves last says she left, while the
        # announcement may still be on its way (through Redis) to the other.
        first, second = (a, b) if n % 2 else (b, a)
        await asyncio.gather(visit(first, 0), visit(second, (n % 5) * 0.001))
        await eventually(alice_offline, f"alice offline after round {n}", EVENT_TIMEOUT_S)
        for watcher in watchers:
            # Her last change is Offline: it reaches each watcher, and is the last word...
            await eventually(
                lambda w=watcher: statuses(w, "alice")[-1:] == ["Offline"],
                f"round {n}: {watcher.user} showing alice offline (heard {statuses(watcher, 'alice')})",
                EVENT_TIMEOUT_S,
            )
            # ...and stays it: an Online still on its way would arrive before these.
            for peer in peers:
                await flush(watcher, peer)
            heard = statuses(watcher, "alice")
            assert heard[-1] == "Offline", (
                f"round {n}: {watcher.user} shows alice {heard[-1]} after she left: {heard}"
            )
    for watcher in watchers:
        assert statuses(watcher, "alice").count("Offline") >= rounds
    listening.cancel()
    changes = [m for m in published if m.get("event") == "UserStatusChanged"]
    assert len(changes) >= 2 * rounds, "alice's changes were not published to the other instance"
    assert all(m.get("version", [None])[0] == "alice" for m in changes), changes[:2]
    versions = [m["version"][1] for m in changes]
    assert len(set(versions)) == len(versions), "two changes of alice with one version"


async def listen_to_the_backplane(
    redis: OwnRedis, into: list[dict[str, Any]], subscribed: asyncio.Event
) -> None:
    """Every message the instances publish to each other, decoded."""
    from redis.asyncio import Redis

    client = Redis(host="127.0.0.1", port=redis.port)
    pubsub = client.pubsub()
    try:
        await pubsub.subscribe(CHANNEL)
        subscribed.set()
        async for message in pubsub.listen():
            if message["type"] == "message":
                into.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()
        await client.aclose()


async def test_an_instance_never_delivers_a_presence_change_after_a_later_one(
    serve: Serve, own_redis: OwnRedis, connect: Connect
) -> None:
    """Changes of one user heard from another instance out of order: the stale one is dropped."""
    a, _ = await pair(serve, own_redis)
    carol = await connect(a, "carol")
    await carol.ok("SubscribePresence", ["alice"])

    async def from_elsewhere(event: str, data: list[Any], room: str, **extra: Any) -> None:
        """What another instance's backplane publishes for an emit."""
        message = {
            **extra, "method": "emit", "event": event, "data": data, "binary": False,
            "namespace": "/chat", "room": [room], "skip_sid": None, "callback": None,
            "host_id": "elsewhere",
        }
        await own_redis.command("PUBLISH", CHANNEL, json.dumps(message))

    async def alice_is(status: str, version: int) -> None:
        await from_elsewhere(
            "UserStatusChanged", ["alice", status], "watch:alice", version=["alice", version]
        )

    await alice_is("Online", 1_000)
    await alice_is("Offline", 3_000)
    await alice_is("Online", 2_000)  # decided before the Offline, arrived after it
    await alice_is("Online", 4_000)
    await alice_is("Offline", 4_000)  # the same version twice: not a change
    # The channel keeps its order: once this arrives, everything before it was handled.
    await from_elsewhere("UserTyping", ["elsewhere", True], "user:carol")
    await carol.wait_for("UserTyping")
    assert statuses(carol, "alice") == ["Online", "Offline", "Online"]
