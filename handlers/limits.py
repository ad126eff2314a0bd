"""Budgets a client spends as it calls and connects: token buckets and socket caps.

One app-level object holds them (the ``BUDGETS`` AppKey), and every edge
spends from it: each Socket.IO call and each REST request of a user takes
from the same call budget, each handshake from the user's connect budget, and
each open socket counts against the user's socket cap. Requests that carry no
valid token (and the dev token endpoint) spend from a budget per client
address instead.

- ``UserBudgets``: one process. All in memory, no awaiting anything.
- ``ClusterBudgets``: several instances over Redis. One Lua script per check
  makes the budgets hold across the cluster. A call waits at most
  ``REDIS_WAIT_S`` for its answer, else it spends from this instance's own
  ``UserBudgets``; once Redis has not answered for ``REDIS_AWAY_S`` it counts
  as away, every check is decided here at once, and one probe at a time
  notices Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import NoScriptError

from app.cluster import ALIVE_PREFIX, bounded, cancel_lingering

logger = logging.getLogger(__name__)

TOO_MANY_CONNECTS = "too many connects, slow down"


def too_many_sockets(cap: int) -> str:
    return f"too many open sockets for this user (at most {cap})"


@dataclass
class TokenBucket:
    """``burst`` calls at once, refilled at ``rate_per_s``."""

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

    def spend(self) -> float:
        """Spend one token: 0.0 when there was one, else the seconds until there is."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens < 1:
            return (1 - self.tokens) / self.rate_per_s
        self.tokens -= 1
        return 0.0


class BucketTable:
    """A token bucket per key, made on first use and forgotten once full again."""

    def __init__(self, rate_per_s: float, burst: int, clock: Callable[[], float]) -> None:
        self._rate = rate_per_s
        self._burst = burst
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._sweep_at = 1024

    def spend(self, key: str) -> float:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._sweep_at:
                self._sweep()
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, self._clock)
        return bucket.spend()

    def __contains__(self, key: str) -> bool:
        return key in self._buckets

    def __len__(self) -> int:
        return len(self._buckets)

    def _sweep(self) -> None:
        """Forget the buckets that are full again: a full bucket is a fresh one.

        Run when the table has doubled since the last sweep: amortised O(1) per
        new key, and memory bounded by the keys active within one refill time.
        """
        now = self._clock()
        for key, bucket in list(self._buckets.items()):
            if bucket.full(now):
                del self._buckets[key]
        self._sweep_at = max(1024, 2 * len(self._buckets))


class Budgets(Protocol):
    """What each user (or, without a token, each address) may spend; see the module doc."""

    async def spend_call(self, user_id: str) -> float:
        """Spend one call: 0.0 when allowed, else the seconds until one is."""

    async def spend_anonymous(self, address: str) -> float:
        """Spend one request without a valid token, from the client address's budget."""

    async def admit(self, user_id: str, socket_id: str) -> str | None:
        """Spend a connect and count the socket: None when admitted, else why not.

        An admitted socket is counted until ``release``.
        """

    async def release(self, user_id: str, socket_id: str) -> None: ...

    async def close(self) -> None: ...


class UserBudgets:
    """The budgets of one process.

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
        self.max_sockets = max_sockets
        self.calls = BucketTable(rate_per_s, burst, clock)
        self.connects = BucketTable(rate_per_s, burst, clock)
        self.addresses = BucketTable(rate_per_s, burst, clock)
        # Per user, the sockets this process holds open.
        self.sockets: dict[str, set[str]] = {}

    async def spend_call(self, user_id: str) -> float:
        return self.calls.spend(user_id)

    async def spend_anonymous(self, address: str) -> float:
        return self.addresses.spend(address)

    async def admit(self, user_id: str, socket_id: str) -> str | None:
        if self.connects.spend(user_id):
            return TOO_MANY_CONNECTS
        if len(self.sockets.get(user_id, ())) >= self.max_sockets:
            return too_many_sockets(self.max_sockets)
        self.hold(user_id, socket_id)
        return None

    async def release(self, user_id: str, socket_id: str) -> None:
        held = self.sockets.get(user_id)
        if held is not None:
            held.discard(socket_id)
            if not held:
                del self.sockets[user_id]

    def hold(self, user_id: str, socket_id: str) -> None:
        """Count a socket without asking (one that Redis admitted)."""
        self.sockets.setdefault(user_id, set()).add(socket_id)

    async def close(self) -> None:
        self.sockets.clear()


# -- across instances ---------------------------------------------------------

BUDGET_PREFIX = "chat:budget:"
# A user's sockets across instances: this prefix and the user id (admit, release, re-assert).
SOCKETS_PREFIX = f"{BUDGET_PREFIX}sockets:"
# The longest a call waits for Redis to answer its budget before this instance
# decides alone. A budget check is on the path of every call: a Redis that is
# slow or frozen must cost a call no more than this.
REDIS_WAIT_S = 0.05
# Redis is away once a request to it has gone unanswered this long: from then
# on no call waits for it at all. Longer than REDIS_WAIT_S because a server
# under load answers its own sockets late (the closed-loop benchmark's acks
# take 50-80 ms at p50 on two shared cores): a call may miss REDIS_WAIT_S for
# that alone, which must not count as Redis failing.
REDIS_AWAY_S = 0.5
# While Redis is away, how often the one probe asks whether it is back, and how
# long that probe may wait for an answer.
PROBE_EVERY_S = 0.5
PROBE_WAIT_S = 1.0
# A user's socket set outlives its last change by this much at most: sockets of
# an instance that died are forgotten with it (see ADMIT), this only bounds memory.
SOCKETS_TTL_MS = 24 * 3600 * 1000
# Budget checks sent to Redis in one round trip, at most.
SPEND_BATCH = 256

# A token bucket kept in a hash {tokens, at}, timed by Redis's clock so that
# every instance refills it alike. spend(key, rate per s, burst) returns 0 when
# a token was spent, else the milliseconds until one is back. A bucket expires
# once it would be full again: a missing bucket is a full one.
_BUCKET = """
local function spend(key, rate, burst)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
  local b = redis.call('HMGET', key, 'tokens', 'at')
  local tokens = tonumber(b[1])
  if tokens == nil then
    tokens = burst
  else
    tokens = math.min(burst, tokens + math.max(0, now - tonumber(b[2])) * rate / 1000)
  end
  if tokens < 1 then
    return math.ceil((1 - tokens) * 1000 / rate)
  end
  tokens = tokens - 1
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'at', string.format('%.3f', now))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate))
  return 0
end
"""

# KEYS: the bucket. ARGV: rate per s, burst. Returns 0, or the ms to wait.
SPEND = _BUCKET + """
return spend(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]))
"""

# KEYS: the user's connect bucket, the user's socket set ({instance}\t{socket}).
# ARGV: rate per s, burst, socket cap, this socket, the heartbeat key prefix, set TTL ms.
# Returns 0 (admitted and counted), 1 (connects over budget), 2 (at the socket cap).
# At the cap, sockets of instances whose heartbeat has expired (a crash) are
# dropped first: they are gone, and must not hold their user's places.
ADMIT = _BUCKET + """
if spend(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2])) > 0 then return 1 end
local cap = tonumber(ARGV[3])
if redis.call('SCARD', KEYS[2]) >= cap then
  for _, m in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local instance = string.sub(m, 1, string.find(m, '\\t', 1, true) - 1)
    if redis.call('EXISTS', ARGV[5] .. instance) == 0 then
      redis.call('SREM', KEYS[2], m)
    end
  end
  if redis.call('SCARD', KEYS[2]) >= cap then return 2 end
end
redis.call('SADD', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 0
"""

# ARGV: instance, socket key prefix, set TTL ms, then entries "{user}\t{socket}",
# or "{user}\t" for a user of whom this instance holds no socket. For each user
# named, makes Redis hold exactly the listed sockets of this instance (the
# truth after an outage, in which releases and admissions were not written).
REASSERT = """
local instance, prefix, ttl = ARGV[1], ARGV[2], ARGV[3]
local live, users = {}, {}
for i = 4, #ARGV do
  local tab = string.find(ARGV[i], '\\t', 1, true)
  local user, socket = string.sub(ARGV[i], 1, tab - 1), string.sub(ARGV[i], tab + 1)
  if live[user] == nil then
    live[user] = {}
    table.insert(users, user)
  end
  if socket ~= '' then live[user][instance .. '\\t' .. socket] = true end
end
local mine = instance .. '\\t'
for _, user in ipairs(users) do
  local key = prefix .. user
  for _, m in ipairs(redis.call('SMEMBERS', key)) do
    if string.sub(m, 1, #mine) == mine and not live[user][m] then
      redis.call('SREM', key, m)
    end
  end
  for m in pairs(live[user]) do redis.call('SADD', key, m) end
  if redis.call('EXISTS', key) == 1 then redis.call('PEXPIRE', key, ttl) end
end
return #users
"""


class ClusterBudgets:
    """The budgets of every instance together, in Redis; this instance's own while it is away.

    Redis holds each user's sockets as ``{instance}\\t{socket}``. Whenever it
    may not hold this instance's right (it was away, restarted empty, or this
    instance stalled past its heartbeat and others dropped its sockets), the
    instance re-asserts them: the probe does once Redis is back, ``maintain``
    (each heartbeat) once a marker that lives as long as the heartbeat is
    gone. Admissions and releases wait while a re-assert takes its snapshot
    and writes it, so that none slips in between.
    """

    def __init__(
        self,
        redis: Redis,
        instance_id: str,
        rate_per_s: float,
        burst: int,
        max_sockets: int,
        ttl_s: float = 15.0,
        on_fallback: Callable[[], None] | None = None,
    ) -> None:
        self._redis = redis
        self._instance = instance_id
        # Alive while this instance renews it; its sockets are forgotten with it.
        self._marker = f"{BUDGET_PREFIX}instance:{instance_id}"
        self._rate = rate_per_s
        self._burst = burst
        self._max_sockets = max_sockets
        self._ttl_ms = int(ttl_s * 1000)
        # This instance's budgets: its answers while Redis is away, and the
        # sockets it holds (the truth it re-asserts).
        self.local = UserBudgets(rate_per_s, burst, max_sockets)
        self._spend = redis.register_script(SPEND)
        self._admit = redis.register_script(ADMIT)
        self._reassert = redis.register_script(REASSERT)
        self._on_fallback = on_fallback
        self._down = False
        self._probe: asyncio.Task[None] | None = None
        # Users whose sockets Redis may hold wrong (changed while it was away).
        self._touched: set[str] = set()
        # The gate: closed while a re-assert runs; _busy counts socket changes
        # in flight, which the re-assert waits for.
        self._open = asyncio.Event()
        self._open.set()
        self._busy = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._lingering: set[asyncio.Task[Any]] = set()  # calls given up on (see bounded)
        # Budget checks waiting for the spender, the batch it has sent, the
        # spender, and its timer that releases callers waiting too long.
        self._queued: list[tuple[str, asyncio.Future[int | None]]] = []
        self._sent: list[tuple[str, asyncio.Future[int | None]]] = []
        self._spender: asyncio.Task[None] | None = None
        self._release_timer: asyncio.TimerHandle | None = None

    @property
    def redis_ok(self) -> bool:
        return not self._down

    def _socket_key(self, user_id: str) -> str:
        return f"{SOCKETS_PREFIX}{user_id}"

    # -- spending ---------------------------------------------------------------

    async def spend_call(self, user_id: str) -> float:
        if self._down:
            return self.local.calls.spend(user_id)
        return await self._spend_shared(f"{BUDGET_PREFIX}call:{user_id}", self.local.calls, user_id)

    async def spend_anonymous(self, address: str) -> float:
        if self._down:
            return self.local.addresses.spend(address)
        return await self._spend_shared(
            f"{BUDGET_PREFIX}address:{address}", self.local.addresses, address
        )

    async def _spend_shared(self, key: str, fallback: BucketTable, local_key: str) -> float:
        """Spend from Redis, batched: the checks that arrive together share a round trip.

        Each one costs redis-py ~70 µs of this process's CPU when sent alone,
        ~20 µs in a pipeline of ten (measured); a server under load has many
        calls in flight. The caller waits for its answer at most about
        REDIS_WAIT_S (one timer per batch, not per call: see _release_waiting);
        an answer of None means "decide here".
        """
        answer: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._queued.append((key, answer))
        if self._spender is None or self._spender.done():
            self._spender = asyncio.ensure_future(self._spend_batches())
        wait_ms = await answer
        if wait_ms is None:
            return fallback.spend(local_key)  # this call only; the spender judges Redis
        return wait_ms / 1000

    async def _spend_batches(self) -> None:
        """The one spender: everything queued so far, one round trip per batch, until drained."""
        loop = asyncio.get_running_loop()
        while self._queued:
            batch, self._queued = self._queued[:SPEND_BATCH], self._queued[SPEND_BATCH:]
            self._sent = batch
            self._release_timer = loop.call_later(REDIS_WAIT_S, self._release_waiting)
            results: list[Any] = []
            try:
                if len(batch) == 1:  # alone: the plain call is cheaper than a pipeline of one
                    asking = self._spend([batch[0][0]], [self._rate, self._burst])
                    results = [await bounded(asking, REDIS_AWAY_S, self._lingering)]
                else:
                    asking = self._spend_pipelined([key for key, _ in batch])
                    results = await bounded(asking, REDIS_AWAY_S, self._lingering)
            except Exception as exc:  # noqa: BLE001 - away: every caller of the batch falls back
                self._lost(exc)
                results = []
            finally:
                self._release_timer.cancel()
                self._sent = []
                # Every caller gets an answer: its wait in ms, or None (decide here)
                # for an error, a missing answer, or a cancelled spender.
                for n, (_, answer) in enumerate(batch):
                    result = results[n] if n < len(results) else None
                    if not answer.done():  # else its caller was released already
                        answer.set_result(result if isinstance(result, int) else None)

    def _release_waiting(self) -> None:
        """A batch is unanswered after REDIS_WAIT_S: its callers and those queued behind it
        decide here, and so will the next ones every REDIS_WAIT_S until it is answered."""
        for _, answer in (*self._sent, *self._queued):
            if not answer.done():
                answer.set_result(None)
        self._queued.clear()  # answered: nobody waits for what they would spend
        self._release_timer = asyncio.get_running_loop().call_later(
            REDIS_WAIT_S, self._release_waiting
        )

    async def _spend_pipelined(self, keys: list[str]) -> list[Any]:
        """SPEND for each key in one pipeline (each answer, or its error)."""
        results = await self._spend_pipeline(keys)
        if any(isinstance(r, NoScriptError) for r in results):
            await self._redis.script_load(SPEND)  # a restarted Redis has no scripts
            results = await self._spend_pipeline(keys)
        return results

    async def _spend_pipeline(self, keys: list[str]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.evalsha(self._spend.sha, 1, key, self._rate, self._burst)
        return list(await pipe.execute(raise_on_error=False))

    # -- sockets ----------------------------------------------------------------

    async def admit(self, user_id: str, socket_id: str) -> str | None:
        if not self._open.is_set():
            await self._open.wait()
        if self._down:
            return await self._admit_here(user_id, socket_id)
        self._busy += 1
        self._settled.clear()
        try:
            verdict = int(await bounded(self._admit(
                [f"{BUDGET_PREFIX}connect:{user_id}", self._socket_key(user_id)],
                [self._rate, self._burst, self._max_sockets,
                 f"{self._instance}\t{socket_id}", ALIVE_PREFIX, SOCKETS_TTL_MS],
            ), REDIS_AWAY_S, self._lingering))
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            # The script may have run: the re-assert makes Redis match what is decided here.
            return await self._admit_here(user_id, socket_id)
        finally:
            self._done()
        if verdict == 1:
            return TOO_MANY_CONNECTS
        if verdict == 2:
            return too_many_sockets(self._max_sockets)
        self.local.hold(user_id, socket_id)
        return None

    async def _admit_here(self, user_id: str, socket_id: str) -> str | None:
        self._touched.add(user_id)
        return await self.local.admit(user_id, socket_id)

    async def release(self, user_id: str, socket_id: str) -> None:
        if not self._open.is_set():
            await self._open.wait()
        await self.local.release(user_id, socket_id)
        if self._down:
            self._touched.add(user_id)
            return
        self._busy += 1
        self._settled.clear()
        try:
            await bounded(
                self._redis.srem(self._socket_key(user_id), f"{self._instance}\t{socket_id}"),
                REDIS_AWAY_S, self._lingering,
            )
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            self._touched.add(user_id)
        finally:
            self._done()

    def _done(self) -> None:
        self._busy -= 1
        if not self._busy:
            self._settled.set()

    # -- Redis away and back ----------------------------------------------------

    def _lost(self, exc: BaseException) -> None:
        if self._down:
            return
        self._down = True
        logger.warning(
            "budgets: Redis is away (%s); each instance counts its own until it answers",
            str(exc) or type(exc).__name__,
        )
        if self._on_fallback is not None:
            self._on_fallback()
        if self._probe is None or self._probe.done():
            self._probe = asyncio.ensure_future(self._until_back())

    async def _until_back(self) -> None:
        """The one probe: once Redis answers, make it hold this instance's sockets, then use it."""
        while True:
            await asyncio.sleep(PROBE_EVERY_S)
            try:
                await bounded(self._redis.ping(), PROBE_WAIT_S, self._lingering)
                await self._reassert_all()
            except Exception:  # noqa: BLE001 - still away
                continue
            logger.info("budgets: Redis answers again; budgets are shared")
            return

    async def maintain(self) -> None:
        """Each heartbeat: re-assert this instance's sockets if Redis may have lost them."""
        if self._down:
            return  # the probe re-asserts once Redis is back
        try:
            if await bounded(self._redis.pexpire(self._marker, self._ttl_ms), PROBE_WAIT_S, self._lingering):
                return
            await self._reassert_all()
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)

    async def _reassert_all(self) -> None:
        """Write this instance's sockets to Redis (gate closed), then use Redis again."""
        self._open.clear()
        try:
            await self._settled.wait()
            await bounded(
                self._reassert_users(set(self.local.sockets) | self._touched),
                PROBE_WAIT_S, self._lingering,
            )
            await bounded(
                self._redis.set(self._marker, 1, px=self._ttl_ms),
                PROBE_WAIT_S, self._lingering,
            )
            self._touched.clear()
            self._down = False
        finally:
            self._open.set()

    async def _reassert_users(self, users: Iterable[str], *, holding: bool = True) -> None:
        entries: list[str] = []
        for user in users:
            sockets = self.local.sockets.get(user, ()) if holding else ()
            entries += [f"{user}\t{s}" for s in sockets] or [f"{user}\t"]
        if entries:
            await self._reassert(
                [], [self._instance, SOCKETS_PREFIX, SOCKETS_TTL_MS, *entries]
            )

    async def close(self) -> None:
        """App shutdown: stop probing, and take this instance's sockets out of Redis."""
        for task in (self._probe, self._spender):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if self._release_timer is not None:
            self._release_timer.cancel()
        await cancel_lingering(self._lingering)
        users = set(self.local.sockets) | self._touched
        try:
            async with asyncio.timeout(PROBE_WAIT_S):  # shutting down: cancelling is fine
                await self._reassert_users(users, holding=False)
                await self._redis.delete(self._marker)
        except Exception as exc:  # noqa: BLE001 - they go with this instance's heartbeat
            logger.warning("budgets: could not take this instance's sockets out of Redis (%s)", exc)
        await self.local.close()


def retry_after_s(wait_s: float) -> int:
    """The Retry-After header's whole seconds for a wait (at least 1)."""
    return max(1, math.ceil(wait_s))

