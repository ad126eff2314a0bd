"""The per-connection token bucket, on a clock the test controls."""

from __future__ import annotations

from handlers.limits import TokenBucket


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
