"""The per-connection token bucket, on a clock the test controls."""

from __future__ import annotations

from handlers.limits import TokenBucket, UserBudgets


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_is_allowed_then_refused() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=Clock())
    assert [bucket.take() for _ in range(5)] == [True, True, True, False, False]


def test_tokens_come_back_at_the_rate_and_never_beyond_the_burst() -> None:
    clock = Clock()
    bucket = TokenBucket(rate_per_s=2.0, burst=3, clock=clock)
    for _ in range(3):
        assert bucket.take()
    clock.now += 0.4  # 0.8 of a token: still nothing
    assert not bucket.take()
    clock.now += 0.1  # 1.0
    assert bucket.take()
    assert not bucket.take()
    clock.now += 3600  # an hour idle refills to the burst, no more
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


def test_user_budgets_are_shared_by_sockets_and_outlive_them() -> None:
    now = [0.0]
    budgets = UserBudgets(rate_per_s=1.0, burst=3, max_sockets=2, clock=lambda: now[0])
    assert budgets.open_socket("alice") and budgets.open_socket("alice")
    assert not budgets.open_socket("alice"), "a third socket over the cap"
    assert [budgets.take("alice") for _ in range(4)] == [True, True, True, False]
    budgets.close_socket("alice")
    budgets.close_socket("alice")
    assert not budgets.take("alice"), "closing sockets gives no fresh budget"
    assert budgets.take("bob"), "each user has his own"
    assert budgets.take_connect("alice"), "connects are counted apart from calls"
    now[0] = 1.0
    assert budgets.take("alice") and not budgets.take("alice")


def test_user_budgets_forget_idle_users_once_refilled() -> None:
    now = [0.0]
    budgets = UserBudgets(rate_per_s=1.0, burst=2, max_sockets=5, clock=lambda: now[0])
    budgets.open_socket("connected")
    for i in range(1100):  # past the first sweep
        budgets.take(f"u{i}")
    now[0] = 10.0  # everyone has refilled
    for i in range(1100, 2300):
        budgets.take(f"u{i}")
    remembered = set(budgets._buckets)
    assert "u0" not in remembered, "a refilled budget of a user with no socket is forgotten"
    assert len(remembered) < 1300
