"""ClusterPresence against a real redis-server: the Lua scripts decide first and last once.

No server processes here: two presence services stand for two instances on
one Redis, so that races can be run hundreds of times in a second.
tests/test_cluster.py covers the same through real instances and sockets.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from app.cluster import ClusterPresence, redis_client
from app.domain import Notice, PresenceChanged
from app.presence import Audience
from tests.support import OwnRedis, eventually

Instance = Callable[..., ClusterPresence]


@pytest.fixture
async def instance(own_redis: OwnRedis) -> AsyncIterator[Instance]:
    clients: list[Redis] = []

    def make(name: str, ttl_s: float = 15) -> ClusterPresence:
        redis = redis_client(own_redis.url)
        clients.append(redis)
        # Scope "all" announces to everyone and never asks the database who the
        # contacts are: these tests are about Redis alone.
        return ClusterPresence(Audience("all", None), redis, name, ttl_s)  # type: ignore[arg-type]

    yield make
    for redis in clients:
        await redis.aclose()


def changes(notices: tuple[Notice, ...]) -> list[tuple[str, bool]]:
    events = [n.event for n in notices]
    return [(e.user_id, e.online) for e in events if isinstance(e, PresenceChanged)]


async def test_racing_connects_on_two_instances_make_exactly_one_first(instance: Instance) -> None:
    a, b = instance("a"), instance("b")
    await a.maintain()
    await b.maintain()
    for n in range(200):
        user = f"u{n % 7}"
        came = await asyncio.gather(a.connect(user, f"a{n}"), b.connect(user, f"b{n}"))
        assert sum(bool(c) for c in came) == 1, f"round {n}: {came}"
        went = await asyncio.gather(a.disconnect(user, f"a{n}"), b.disconnect(user, f"b{n}"))
        assert sum(bool(w) for w in went) == 1, f"round {n}: {went}"
        assert changes(sum(came, ()) + sum(went, ())) == [(user, True), (user, False)]
    assert await a.online_users() == [] and await b.online_users() == []


async def test_a_second_device_says_nothing(instance: Instance) -> None:
    a, b = instance("a"), instance("b")
    assert changes(await a.connect("alice", "laptop")) == [("alice", True)]
    assert await b.connect("alice", "phone") == ()
    assert await a.disconnect("alice", "laptop") == ()
    assert await b.is_online("alice") is True
    assert await a.online_among(["alice", "bob"]) == {"alice"}
    assert changes(await b.disconnect("alice", "phone")) == [("alice", False)]
    assert await a.is_online("alice") is False


async def test_a_dead_instance_is_reaped_once_and_comes_back_if_it_was_only_slow(
    instance: Instance, own_redis: OwnRedis
) -> None:
    a, b, c = instance("a", ttl_s=1), instance("b", ttl_s=1), instance("c", ttl_s=1)
    for i in (a, b, c):
        await i.maintain()
    await a.connect("alice", "s1")
    await b.connect("bob", "s2")
    # No heartbeats: once their keys expire in Redis, all three look dead.
    alive = [f"chat:presence:alive:{name}" for name in ("a", "b", "c")]

    async def all_expired() -> bool:
        return await own_redis.command("EXISTS", *alive) == 0

    await eventually(all_expired, "the three heartbeats expiring", 3)
    # b and c come back at once; each re-asserts itself and reaps whoever still looks dead.
    reaped = await asyncio.gather(b.maintain(), c.maintain())
    # alice went offline once, announced by whichever survivor reaped a first; bob stayed.
    assert sorted(changes(reaped[0] + reaped[1])) == [("alice", False)]
    assert await b.online_users() == ["bob"]
    # a was only slow: its next heartbeat finds it was reaped and re-asserts alice.
    assert changes(await a.maintain()) == [("alice", True)]
    assert await b.online_users() == ["alice", "bob"]


async def test_while_redis_is_away_the_instance_answers_alone_and_reasserts_later(
    instance: Instance, own_redis: OwnRedis
) -> None:
    a, b = instance("a"), instance("b")
    await a.maintain()
    await b.maintain()
    await a.connect("alice", "s1")
    await b.connect("bob", "s2")
    own_redis.kill()
    # a keeps answering from its own connections, and announces its own transitions.
    assert changes(await a.connect("carol", "s3")) == [("carol", True)]
    assert changes(await a.disconnect("alice", "s1")) == [("alice", False)]
    assert await a.online_users() == ["carol"]
    assert await a.is_online("carol") is True
    assert await a.maintain() == ()  # the heartbeat fails quietly
    await own_redis.start()  # empty: what Redis knew is gone
    came_a = await a.maintain()
    came_b = await b.maintain()
    assert changes(came_a) == [("carol", True)] and changes(came_b) == [("bob", True)]
    assert await a.online_users() == ["bob", "carol"] == await b.online_users()


def versions(notices: tuple[Notice, ...]) -> list[tuple[str, bool, int]]:
    events = [n.event for n in notices]
    return [(e.user_id, e.online, e.version) for e in events if isinstance(e, PresenceChanged)]


async def test_each_change_takes_a_later_version_in_the_order_redis_decided_it(
    instance: Instance, own_redis: OwnRedis
) -> None:
    """The issue's window: a first connect's announcement, and the last disconnect elsewhere.

    a decides alice is online; before a's notice goes out, b decides she is
    offline. The notices may cross on their way; their versions say which came
    last, whatever the order they arrive in.
    """
    a, b = instance("a"), instance("b")
    await a.maintain()
    await b.maintain()
    (online,) = versions(await a.connect("alice", "s1"))
    assert await b.connect("alice", "s2") == ()
    assert await a.disconnect("alice", "s1") == ()
    (offline,) = versions(await b.disconnect("alice", "s2"))
    assert online[:2] == ("alice", True) and offline[:2] == ("alice", False)
    assert 0 < online[2] < offline[2]
    # Versions come from Redis's clock: one made after Redis forgot everything is still later.
    own_redis.kill()
    await own_redis.start()  # empty
    (again,) = versions(await a.connect("alice", "s3"))
    assert again[2] > offline[2]
    await a.maintain()  # registers a again (the restart forgot the instances too)
    # Changes found by the heartbeat (a dead instance reaped, one re-asserted) are versioned too.
    await own_redis.command("DEL", "chat:presence:alive:a")
    (reaped,) = versions(await b.maintain())
    assert reaped[:2] == ("alice", False) and reaped[2] > again[2]
    (back,) = versions(await a.maintain())
    assert back[:2] == ("alice", True) and back[2] > reaped[2]


async def test_without_redis_changes_carry_no_version(
    instance: Instance, own_redis: OwnRedis
) -> None:
    a = instance("a")
    await a.maintain()
    own_redis.kill()
    assert versions(await a.connect("carol", "s1")) == [("carol", True, 0)]
