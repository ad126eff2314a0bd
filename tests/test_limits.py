"""The budgets of one process: token buckets and socket caps, on a clock the test controls.

The same budgets across instances, over a real redis-server, are in
tests/test_cluster_budgets.py.
"""

from __future__ import annotations

import pytest

from handlers.limits import BucketTable, TokenBucket, UserBudgets, retry_after_s


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_refused_with_the_wait() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=Clock())
    assert [bucket.spend() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.spend() == pytest.approx(0.5), "one token comes back in 1/rate seconds"


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert not bucket.spend()
    clock.now += 0.4  # 0.8 of a token: still nothing, and 0.1 s to wait
    assert bucket.spend() == pytest.approx(0.1)
    clock.now += 0.1  # 1.0
    assert not bucket.spend()
    assert bucket.spend()
    clock.now += 3600  # an hour idle refills to the burst, no more
    assert [bool(bucket.spend()) for _ in range(4)] == [False, False, False, True]


def test_retry_after_is_whole_seconds_and_never_zero() -> None:
    assert [retry_after_s(w) for w in (0.001, 0.5, 1.0, 1.2, 59.9)] == [1, 1, 1, 2, 60]


async def test_user_budgets_are_shared_by_sockets_and_outlive_them() -> None:
    now = [0.0]
    budgets = UserBudgets(rate_per_s=1.0, burst=3, max_sockets=2, clock=lambda: now[0])
    assert await budgets.admit("alice", "s1") is None
    assert await budgets.admit("alice", "s2") is None
    assert "at most 2" in (await budgets.admit("alice", "s3") or ""), "a third socket over the cap"
    assert [bool(await budgets.spend_call("alice")) for _ in range(4)] == [False] * 3 + [True]
    await budgets.release("alice", "s1")
    await budgets.release("alice", "s2")
    assert await budgets.spend_call("alice"), "closing sockets gives no fresh budget"
    assert not await budgets.spend_call("bob"), "each user has his own"
    now[0] = 1.0
    assert not await budgets.spend_call("alice")
    assert await budgets.spend_call("alice")


async def test_connects_are_counted_apart_and_a_refused_connect_holds_no_place() -> None:
    budgets = UserBudgets(rate_per_s=1.0, burst=2, max_sockets=5, clock=lambda: 0.0)
    assert await budgets.admit("alice", "s1") is None
    assert await budgets.admit("alice", "s2") is None
    assert await budgets.admit("alice", "s3") == "too many connects, slow down"
    assert budgets.sockets == {"alice": {"s1", "s2"}}
    assert not await budgets.spend_call("alice"), "connects do not spend the call budget"
    await budgets.release("alice", "s3")  # never admitted: nothing to release
    assert budgets.sockets == {"alice": {"s1", "s2"}}


async def test_requests_without_a_user_spend_their_address_budget_not_a_users() -> None:
    budgets = UserBudgets(rate_per_s=1.0, burst=2, max_sockets=5, clock=lambda: 0.0)
    assert [bool(await budgets.spend_anonymous("10.0.0.1")) for _ in range(3)] == [
        False, False, True,
    ]
    assert not await budgets.spend_anonymous("10.0.0.2"), "another address has its own"
    assert not await budgets.spend_call("10.0.0.1"), "a user named like an address is not it"


def test_a_table_forgets_refilled_buckets() -> None:
    now = [0.0]
    table = BucketTable(rate_per_s=1.0, burst=2, clock=lambda: now[0])
    for i in range(1100):  # past the first sweep
        table.spend(f"u{i}")
    now[0] = 10.0  # everyone has refilled
    for i in range(1100, 2300):
        table.spend(f"u{i}")
    assert "u0" not in table, "a refilled bucket is forgotten"
    assert len(table) < 1300
