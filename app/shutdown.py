"""One deadline for the whole shutdown, shared by the steps that close resources.

SIGTERM to exit takes ``CHAT_SHUTDOWN_GRACE_S`` plus a second at most. The
drain (handlers/chat.py) takes the grace: calls in flight, then the sockets'
goodbyes. What is left is for the cleanup contexts: presence and budgets say
goodbye to Redis, the backplane flushes, the store answers queued writes, the
connections close. Each has a bound of its own, but when every one of them
waits on a dead peer (a frozen Redis, a blackholed database) their sum would
overrun the promise, and the last-resort timer in app/cli.py would end the
process with status 1. So each step gets the smaller of its own bound and
what remains of the shutdown's.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

logger = logging.getLogger(__name__)

# After the grace, the closing steps share this much. app/cli.py's last-resort
# timer fires a little later (SHUTDOWN_OVERRUN_S), still within the second.
CLOSING_S = 0.7


class ShutdownClock:
    """When the shutdown must be over; each closing step takes its part of what is left."""

    def __init__(self) -> None:
        self._by: float | None = None

    def start(self, seconds: float) -> None:
        """SIGTERM: everything must be closed `seconds` from now."""
        self._by = asyncio.get_running_loop().time() + seconds

    def share(self, most_s: float) -> float:
        """The time a step may take: its own bound, cut to what remains (never negative).

        Without a SIGTERM (an app cleaned up by a test or a runner) every
        step gets its own bound.
        """
        if self._by is None:
            return most_s
        return max(0.0, min(most_s, self._by - asyncio.get_running_loop().time()))


async def within(step: str, closing: Awaitable[None], timeout_s: float) -> None:
    """Run a closing step for `timeout_s` at most; past it, leave it behind with a log line."""
    try:
        await asyncio.wait_for(closing, timeout_s)
    except TimeoutError:
        logger.warning("shutdown: %s did not finish in %.2f s; left behind", step, timeout_s)
