"""ClusterBudgets against a real redis-server: budgets and socket caps hold across instances.

No server processes here: two ClusterBudgets stand for two instances on one
Redis of the test's own, which the tests kill, restart, and freeze (SIGSTOP)
by its pid. tests/test_cluster.py covers the same through real instances.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator, Callable

import pytest
from redis.asyncio import Redis

from app.cluster import ALIVE_PREFIX, redis_client
from handlers.limits import (
    BUDGET_PREFIX, PROBE_EVERY_S, REDIS_AWAY_S, REDIS_WAIT_S, ClusterBudgets, TOO_MANY_CONNECTS,
)
from tests.support import OwnRedis, eventually

Instance = Callable[..., ClusterBudgets]


@pytest.fixture
async def instance(own_redis: OwnRedis) -> AsyncIterator[Instance]:
    made: list[tuple[ClusterBudgets, Redis]] = []

    def make(name: str, rate: float = 1.0, burst: int = 10, max_sockets: int = 20) -> ClusterBudgets:
        redis = redis_client(own_redis.url)
        budgets = ClusterBudgets(redis, name, rate, burst, max_sockets)
        made.append((budgets, redis))
        return budgets

    yield make
    for budgets, redis in made:
        await budgets.close()
        await redis.aclose()


async def alive(own_redis: OwnRedis, *names: str) -> None:
    """What each instance's presence heartbeat keeps in Redis: it is alive."""
    for name in names:
        await own_redis.command("SET", ALIVE_PREFIX + name, "1", "PX", "60000")


async def sockets_in_redis(own_redis: OwnRedis, user: str) -> set[str]:
    members = await own_redis.command("SMEMBERS", f"{BUDGET_PREFIX}sockets:{user}")
    return {m.decode() for m in members}


async def test_a_users_call_budget_is_one_across_instances(instance: Instance) -> None:
    a, b = instance("a"), instance("b")
    started = time.monotonic()
    waits = [await (a if n % 2 else b).spend_call("alice") for n in range(16)]
    elapsed = time.monotonic() - started
    granted = sum(1 for w in waits if not w)
    assert 10 <= granted <= 10 + elapsed * 1.0 + 1, (waits, elapsed)
    assert all(0 < w <= 1.0 for w in waits if w), "a refusal says when a token is back"
    assert not await a.spend_call("bob"), "another user's budget is his own"
    # Checks arriving together share a round trip; the budget is the same.
    together = await asyncio.gather(*((a if n % 2 else b).spend_call("carol") for n in range(16)))
    assert sum(1 for w in together if not w) == 10, together
    # Requests without a user are counted by address, apart from any user.
    assert [bool(await (a if n % 2 else b).spend_anonymous("10.0.0.9")) for n in range(11)] == (
        [False] * 10 + [True]
    )
    assert not await b.spend_anonymous("10.0.0.8")


async def test_the_socket_cap_holds_across_instances(instance: Instance, own_redis: OwnRedis) -> None:
    await alive(own_redis, "a", "b")
    a, b = instance("a", max_sockets=3), instance("b", max_sockets=3)
    assert await a.admit("alice", "s1") is None
    assert await b.admit("alice", "s2") is None
    assert await a.admit("alice", "s3") is None
    assert "at most 3" in (await b.admit("alice", "s4") or "")
    assert "at most 3" in (await a.admit("alice", "s5") or "")
    assert await sockets_in_redis(own_redis, "alice") == {"a\ts1", "b\ts2", "a\ts3"}
    await a.release("alice", "s1")
    assert await b.admit("alice", "s6") is None, "a released place is free on every instance"
    assert await sockets_in_redis(own_redis, "alice") == {"b\ts2", "a\ts3", "b\ts6"}


async def test_a_dead_instances_sockets_free_their_places(
    instance: Instance, own_redis: OwnRedis
) -> None:
    """An instance killed without goodbye holds no places once its heartbeat has expired."""
    await alive(own_redis, "a", "c")
    a, c = instance("a", max_sockets=2), instance("c", max_sockets=2)
    assert await c.admit("alice", "s1") is None
    assert await c.admit("alice", "s2") is None
    assert await a.admit("alice", "s3") is not None, "c is alive: its sockets count"
    await own_redis.command("DEL", ALIVE_PREFIX + "c")  # c died: its heartbeat expired
    assert await a.admit("alice", "s4") is None
    assert await sockets_in_redis(own_redis, "alice") == {"a\ts4"}


async def test_connects_spend_a_budget_of_their_own_across_instances(instance: Instance) -> None:
    a, b = instance("a", burst=3), instance("b", burst=3)
    verdicts = [await (a if n % 2 else b).admit("alice", f"s{n}") for n in range(4)]
    assert verdicts[:3] == [None] * 3 and verdicts[3] == TOO_MANY_CONNECTS
    assert not await a.spend_call("alice"), "connects do not spend the call budget"


async def test_without_redis_each_instance_counts_alone_and_reasserts_when_it_returns(
    instance: Instance, own_redis: OwnRedis
) -> None:
    await alive(own_redis, "a", "b")
    a, b = instance("a", burst=5, max_sockets=3), instance("b", burst=5, max_sockets=3)
    assert await a.admit("alice", "s1") is None
    assert await b.admit("alice", "s2") is None
    own_redis.kill()
    assert not await a.spend_call("alice")
    assert not a.redis_ok, "a failed check falls back at once"
    # Alone, a knows only its own socket: two more fit under its cap.
    assert await a.admit("alice", "s3") is None
    assert await a.admit("alice", "s4") is None
    assert "at most 3" in (await a.admit("alice", "s5") or "")
    await a.release("alice", "s1")
    await own_redis.start()  # empty: what Redis knew is gone
    await alive(own_redis, "a", "b")
    await eventually(lambda: a.redis_ok, "a noticing Redis is back", PROBE_EVERY_S * 4 + 2)
    assert await sockets_in_redis(own_redis, "alice") == {"a\ts3", "a\ts4"}
    # b asked nothing while Redis was away; its heartbeat finds that Redis forgot it.
    assert b.redis_ok
    await b.maintain()
    assert await sockets_in_redis(own_redis, "alice") == {"a\ts3", "a\ts4", "b\ts2"}
    assert "at most 3" in (await b.admit("alice", "s6") or ""), "the cap holds again, cluster-wide"
    # Redis lost the scripts too: batched checks load them again, and stay shared.
    spent = await asyncio.gather(*((a if n % 2 else b).spend_call("dave") for n in range(8)))
    assert sum(1 for w in spent if not w) == 5 and a.redis_ok and b.redis_ok, spent


async def test_a_frozen_redis_costs_a_call_at_most_the_bound_and_soon_nothing(
    instance: Instance, own_redis: OwnRedis
) -> None:
    a = instance("a", rate=1000, burst=100_000)
    assert not await a.spend_call("alice")  # scripts loaded, connection open
    assert own_redis.proc is not None
    own_redis.proc.send_signal(signal.SIGSTOP)
    frozen_at = time.monotonic()
    try:
        started = time.monotonic()
        first = await asyncio.gather(*(a.spend_call(f"u{i}") for i in range(50)))
        took = time.monotonic() - started
        assert not any(first), "budgets are not refused because Redis is frozen"
        assert took < REDIS_WAIT_S + 0.1, f"calls waited {took:.3f} s for a frozen Redis"
        n = 0
        while a.redis_ok:  # each call waits at most the bound until Redis counts as away
            started = time.monotonic()
            assert not await a.spend_call(f"w{n}")
            assert time.monotonic() - started < REDIS_WAIT_S + 0.1
            n += 1
        assert time.monotonic() - frozen_at < REDIS_AWAY_S + 0.3
        started = time.monotonic()
        for i in range(500):  # away: decided here, without waiting at all
            assert not await a.spend_call(f"v{i}")
        per_call = (time.monotonic() - started) / 500
        assert per_call < 0.002, f"{per_call * 1000:.2f} ms per check while Redis is away"
        await asyncio.sleep(2.0)  # the freeze goes on (a fault's length): the probe keeps trying
    finally:
        own_redis.proc.send_signal(signal.SIGCONT)
    await eventually(lambda: a.redis_ok, "a noticing Redis answers again", PROBE_EVERY_S * 4 + 2)
    # One probe at a time: a handful of PINGs over the freeze, not one per failed call.
    stats = await own_redis.command("INFO", "commandstats")
    pings = stats.get("cmdstat_ping", {}).get("calls", 0)
    assert 1 <= pings <= 6, stats.get("cmdstat_ping")
