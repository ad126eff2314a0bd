"""Budgets a client spends as it calls and connects: token buckets and socket counts per user."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    """``burst`` calls at once, refilled at ``rate_per_s``; ``take`` says whether one is left."""

    rate_per_s: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    tokens: float = field(init=False)
    stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self.tokens = self.burst
        self.stamp = self.clock()

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled by ``now`` (forgetting it loses nothing)."""
        return self.tokens + (now - self.stamp) * self.rate_per_s >= self.burst

    def take(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


class UserBudgets:
    """What each user may spend, across all of their sockets and reconnects.

    A budget per socket is no limit at all: a client that reconnects, or opens
    many sockets, gets a fresh one each time. So the call budget belongs to the
    user id and outlives the user's sockets until it has refilled; the number
    of sockets a user holds open is capped too.
    """

    def __init__(
        self,
        rate_per_s: float,
        burst: int,
        max_sockets: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._max_sockets = max_sockets
        self._clock = clock
        # Per user: (calls, connects).
        self._buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}
        self._sockets: dict[str, int] = {}
        self._sweep_at = 1024

    def take(self, user_id: str) -> bool:
        """Spend one call from the user's budget; False when it is empty."""
        return self._budget(user_id)[0].take()

    def take_connect(self, user_id: str) -> bool:
        """Spend one connect from the user's connect budget (same rate, counted apart)."""
        return self._budget(user_id)[1].take()

    def _budget(self, user_id: str) -> tuple[TokenBucket, TokenBucket]:
        budget = self._buckets.get(user_id)
        if budget is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep()
            budget = self._buckets[user_id] = (
                TokenBucket(self._rate, self._burst, self._clock),
                TokenBucket(self._rate, self._burst, self._clock),
            )
        return budget

    def open_socket(self, user_id: str) -> bool:
        """Count one more open socket for the user; False (and not counted) over the cap."""
        held = self._sockets.get(user_id, 0)
        if held >= self._max_sockets:
            return False
        self._sockets[user_id] = held + 1
        return True

    def close_socket(self, user_id: str) -> None:
        held = self._sockets.get(user_id, 0) - 1
        if held > 0:
            self._sockets[user_id] = held
        else:
            self._sockets.pop(user_id, None)

    def sockets(self, user_id: str) -> int:
        return self._sockets.get(user_id, 0)

    def _sweep(self) -> None:
        """Forget the budgets that are full again and whose users hold no socket.

        Run when the table has doubled since the last sweep: amortised O(1) per
        new user, and memory bounded by the users active within one refill time.
        """
        now = self._clock()
        for user_id, budget in list(self._buckets.items()):
            if user_id not in self._sockets and all(b.full(now) for b in budget):
                del self._buckets[user_id]
        self._sweep_at = max(1024, 2 * len(self._buckets))
