"""Presence across instances, kept in Redis.

Who is connected lives in Redis sets, changed by Lua scripts so that "first
connection" and "last connection" are decided atomically for the whole
cluster: two devices connecting to two instances at the same moment make
exactly one of them the first.

Keys (``chat:presence:`` prefix):

- ``user:{id}``      the user's connections, as ``{instance}\\t{connection}``
- ``instance:{id}``  the instance's connections, as ``{user}\\t{connection}``
- ``alive:{id}``     the instance's heartbeat, which expires after the TTL
- ``instances``      the instances that have ever registered (until reaped)
- ``online``         the users with at least one connection
- ``version:{id}``   the user's presence version: Redis's clock in µs at the
                     user's last change (or one more than the last, if larger)

Every change of a user's presence (first connect, last disconnect, reaped,
re-asserted) takes a new version in the same script that decides it, and the
notice carries it. A notice is delivered a few milliseconds after its
decision, so two instances' notices about one user can cross on the way; each
instance's backplane delivers a user's changes in version order and drops one
that arrives after a later one (see handlers/backplane.py): an observer never
sees a user come Online after the Offline that followed it.

Each instance renews its heartbeat every second and looks for instances whose
heartbeat expired (a SIGKILL, a power loss): their connections are removed
and whoever thereby went offline is announced, by exactly one survivor.

Redis is not the truth of anything durable, so its failures cost little: the
instance keeps its own connections in memory, answers from them while Redis
is away, and once Redis answers again re-asserts them (announcing whoever came
or went meanwhile). User ids never hold a tab (validation refuses control
characters), so the tab separator is unambiguous.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.domain import Notice
from app.presence import Audience

logger = logging.getLogger(__name__)

T = TypeVar("T")

PREFIX = "chat:presence:"
# An instance's heartbeat key is this prefix and its id (handlers/limits.py reads them too).
ALIVE_PREFIX = PREFIX + "alive:"
REDIS_TIMEOUT_S = 2.0
# Connects, disconnects and calls asking who is online wait at most this long
# for Redis before this instance answers alone (a frozen Redis must not hold
# them for the socket timeout); the heartbeat re-asserts once it answers.
CALL_WAIT_S = 0.5
# How often the heartbeat is renewed and dead instances are looked for.
MAINTAIN_EVERY_S = 1.0
# A user's presence version is kept this long after their last change. Versions
# come from Redis's clock, so one forgotten and made again is still larger.
VERSION_TTL_MS = 24 * 3600 * 1000

async def bounded(call: Awaitable[T], limit_s: float, lingering: set[asyncio.Task[Any]]) -> T:
    """Await a Redis call for at most ``limit_s``; past it, raise TimeoutError.

    The call is not cancelled, only no longer waited for: redis-py's cleanup of
    a cancelled command closes its connection, under the pool's lock, and
    against a frozen Redis that waits out the socket timeout (measured: 50
    calls bounded by ``asyncio.timeout(0.05)`` took up to 4 s). The call ends
    on its own within the socket timeout; ``lingering`` holds it until then
    (its owner cancels what is left at shutdown).
    """
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=limit_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if done:
        return task.result()
    lingering.add(task)
    task.add_done_callback(_ended)
    task.add_done_callback(lingering.discard)
    raise TimeoutError(f"Redis did not answer within {limit_s * 1000:.0f} ms")


def _ended(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: it was given up on, its failure is known


async def cancel_lingering(lingering: set[asyncio.Task[Any]]) -> None:
    for task in list(lingering):
        task.cancel()
    await asyncio.gather(*lingering, return_exceptions=True)


# Connections one client opens to Redis at most. Past it, a command waits for
# one to be free (up to the timeout) rather than failing.
POOL_CONNECTIONS = 100


def redis_client(url: str) -> Redis:
    """A Redis client that fails fast, retries once at once, and queues past its pool.

    ``Redis.from_url`` sets no retry: the first command after Redis restarted
    would fail on the pooled connection Redis closed. One immediate retry
    takes a fresh one; a Redis that is really down still fails in milliseconds.
    redis-py's default pool raises "Too many connections" past 100 commands
    in flight: a connect storm, each connect running a presence script, made
    Redis look unreachable. A blocking pool makes them wait their turn instead.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS,
        timeout=REDIS_TIMEOUT_S,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 1),
    )
    return Redis.from_pool(pool)


_SPLIT = """
local function split(m)
  local tab = string.find(m, '\\t', 1, true)
  return string.sub(m, 1, tab - 1), string.sub(m, tab + 1)
end
"""

# next_version(version key, ttl ms): the user's next presence version.
_VERSION = """
local function next_version(key, ttl)
  local t = redis.call('TIME')
  local v = math.max(tonumber(t[1]) * 1000000 + tonumber(t[2]),
                     (tonumber(redis.call('GET', key)) or 0) + 1)
  redis.call('SET', key, string.format('%.0f', v), 'PX', ttl)
  return v
end
"""

# KEYS: user set, instance set, online set, user's version. ARGV: user,
# instance, connection, version ttl ms. Returns the new presence version when
# this is the user's first connection in the cluster, else 0.
CONNECT = _VERSION + """
redis.call('SADD', KEYS[2], ARGV[1] .. '\\t' .. ARGV[3])
if redis.call('SADD', KEYS[1], ARGV[2] .. '\\t' .. ARGV[3]) == 1
    and redis.call('SCARD', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[1])
  return next_version(KEYS[4], ARGV[4])
end
return 0
"""

# Same keys and arguments. Returns the new version when this was the user's
# last connection, else 0.
DISCONNECT = _VERSION + """
redis.call('SREM', KEYS[2], ARGV[1] .. '\\t' .. ARGV[3])
if redis.call('SREM', KEYS[1], ARGV[2] .. '\\t' .. ARGV[3]) == 1
    and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  return next_version(KEYS[4], ARGV[4])
end
return 0
"""

# KEYS: heartbeat, instances. ARGV: instance, ttl ms.
# Returns 0 when the heartbeat had expired: the instance may have been reaped
# and must re-assert its connections.
HEARTBEAT = """
local renewed = redis.call('SET', KEYS[1], '1', 'PX', ARGV[2], 'XX')
redis.call('SADD', KEYS[2], ARGV[1])
if renewed then return 1 end
return 0
"""

# KEYS: the dead instance's set, its heartbeat, online, instances.
# ARGV: the dead instance, the key prefix, version ttl ms. Returns the users
# who went offline, each followed by their new version. Only the first
# survivor to run it finds anything to do.
REAP = _SPLIT + _VERSION + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local gone = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local user, conn = split(m)
  local ukey = ARGV[2] .. 'user:' .. user
  if redis.call('SREM', ukey, ARGV[1] .. '\\t' .. conn) == 1
      and redis.call('SCARD', ukey) == 0 then
    redis.call('SREM', KEYS[3], user)
    table.insert(gone, user)
    table.insert(gone, next_version(ARGV[2] .. 'version:' .. user, ARGV[3]))
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[4], ARGV[1])
return gone
"""

# KEYS: this instance's set, its heartbeat, online, instances.
# ARGV: instance, prefix, ttl ms, version ttl ms, then every live connection as
# user\tconnection. Makes Redis hold exactly these connections for this
# instance. Returns {users who came online, users who went offline}, each user
# followed by their new version. Adds go first, so a user whose stale
# connection is replaced by a live one neither comes nor goes.
REASSERT = _SPLIT + _VERSION + """
local live, came, went = {}, {}, {}
for i = 5, #ARGV do
  local m = ARGV[i]
  live[m] = true
  local user, conn = split(m)
  local ukey = ARGV[2] .. 'user:' .. user
  redis.call('SADD', KEYS[1], m)
  if redis.call('SADD', ukey, ARGV[1] .. '\\t' .. conn) == 1
      and redis.call('SCARD', ukey) == 1 then
    redis.call('SADD', KEYS[3], user)
    table.insert(came, user)
    table.insert(came, next_version(ARGV[2] .. 'version:' .. user, ARGV[4]))
  end
end
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if not live[m] then
    local user, conn = split(m)
    local ukey = ARGV[2] .. 'user:' .. user
    redis.call('SREM', KEYS[1], m)
    if redis.call('SREM', ukey, ARGV[1] .. '\\t' .. conn) == 1
        and redis.call('SCARD', ukey) == 0 then
      redis.call('SREM', KEYS[3], user)
      table.insert(went, user)
      table.insert(went, next_version(ARGV[2] .. 'version:' .. user, ARGV[4]))
    end
  end
end
redis.call('SET', KEYS[2], '1', 'PX', ARGV[3])
redis.call('SADD', KEYS[4], ARGV[1])
return {came, went}
"""


class ClusterPresence:
    """The ``Presence`` of app/presence.py for several instances sharing one Redis."""

    def __init__(
        self,
        audience: Audience,
        redis: Redis,
        instance_id: str,
        ttl_s: float,
        on_reaped: Callable[[int], None] | None = None,
    ) -> None:
        self._audience = audience
        self._redis = redis
        self._instance = instance_id
        self._ttl_ms = int(ttl_s * 1000)
        # This instance's connections: the truth it re-asserts, and its answers while Redis is away.
        self._local: dict[str, set[str]] = {}
        # Redis may not hold what _local says: re-assert at the next heartbeat.
        self._dirty = True
        self._down = False
        # Re-asserting takes a snapshot of _local; connects and disconnects wait
        # for it (and it for them), so none slips between snapshot and script.
        self._open = asyncio.Event()
        self._open.set()
        self._busy = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._connect = redis.register_script(CONNECT)
        self._disconnect = redis.register_script(DISCONNECT)
        self._heartbeat = redis.register_script(HEARTBEAT)
        self._reap = redis.register_script(REAP)
        self._reassert = redis.register_script(REASSERT)
        self._on_reaped = on_reaped  # told how many users a dead instance took offline
        self._lingering: set[asyncio.Task[Any]] = set()  # calls given up on (see bounded)

    @property
    def redis_ok(self) -> bool:
        return not self._down

    # -- keys ---------------------------------------------------------------

    def _instance_key(self, instance: str) -> str:
        return f"{PREFIX}instance:{instance}"

    def _alive_key(self, instance: str) -> str:
        return f"{ALIVE_PREFIX}{instance}"

    def _instance_keys(self, instance: str) -> list[str]:
        """KEYS of REAP and REASSERT: the instance's set and heartbeat, online, instances."""
        return [
            self._instance_key(instance),
            self._alive_key(instance),
            f"{PREFIX}online",
            f"{PREFIX}instances",
        ]

    # -- connections ----------------------------------------------------------

    async def connect(self, user_id: str, connection_id: str) -> tuple[Notice, ...]:
        await self._open.wait()
        conns = self._local.setdefault(user_id, set())
        first_here = not conns
        conns.add(connection_id)
        first = await self._script(self._connect, user_id, connection_id, first_here)
        if first is None:
            return ()
        try:
            return await self._audience.notices(user_id, True, first)
        except BaseException:
            # The edge refuses a connection whose connect failed: forget it.
            await self.disconnect(user_id, connection_id)
            raise

    async def disconnect(self, user_id: str, connection_id: str) -> tuple[Notice, ...]:
        await self._open.wait()
        conns = self._local.get(user_id)
        if not conns or connection_id not in conns:
            return ()
        conns.discard(connection_id)
        last_here = not conns
        if last_here:
            del self._local[user_id]
        last = await self._script(self._disconnect, user_id, connection_id, last_here)
        if last is None:
            return ()
        return await self._audience.notices(user_id, False, last)

    async def _script(
        self, script: Any, user_id: str, connection_id: str, local: bool
    ) -> int | None:
        """Run CONNECT or DISCONNECT: the change's version, or None when there is no change.

        When Redis is away this instance's view decides, and the change has no
        version (0): nothing orders it against other instances' changes.
        """
        if self._down:
            self._dirty = True
            return 0 if local else None
        self._busy += 1
        self._settled.clear()
        try:
            keys = [
                f"{PREFIX}user:{user_id}", self._instance_key(self._instance),
                f"{PREFIX}online", f"{PREFIX}version:{user_id}",
            ]
            version = int(await bounded(
                script(keys, [user_id, self._instance, connection_id, VERSION_TTL_MS]),
                CALL_WAIT_S, self._lingering,
            ))
            return version or None
        except Exception as exc:  # noqa: BLE001 - Redis away: fall back, re-assert later
            self._lost(exc)
            return 0 if local else None
        finally:
            self._busy -= 1
            if not self._busy:
                self._settled.set()

    # -- questions ------------------------------------------------------------

    async def is_online(self, user_id: str) -> bool:
        if not self._down:
            try:
                return bool(await bounded(
                    self._redis.sismember(f"{PREFIX}online", user_id), CALL_WAIT_S, self._lingering
                ))
            except Exception as exc:  # noqa: BLE001
                self._lost(exc)
        return user_id in self._local

    async def online_users(self) -> list[str]:
        if not self._down:
            try:
                online = await bounded(
                    self._redis.smembers(f"{PREFIX}online"), CALL_WAIT_S, self._lingering
                )
                return sorted(_text(u) for u in online)
            except Exception as exc:  # noqa: BLE001
                self._lost(exc)
        return sorted(self._local)

    async def online_among(self, user_ids: Iterable[str]) -> set[str]:
        users = list(user_ids)
        if not users:
            return set()
        if not self._down:
            try:
                flags = await bounded(
                    self._redis.smismember(f"{PREFIX}online", users), CALL_WAIT_S, self._lingering
                )
                return {u for u, on in zip(users, flags) if on}
            except Exception as exc:  # noqa: BLE001
                self._lost(exc)
        return {u for u in users if u in self._local}

    def _lost(self, exc: BaseException) -> None:
        if not self._down:
            logger.warning(
                "presence: Redis unreachable (%s); answering from this instance",
                str(exc) or type(exc).__name__,
            )
        self._down = True
        self._dirty = True

    # -- upkeep ---------------------------------------------------------------

    async def maintain(self) -> tuple[Notice, ...]:
        """One heartbeat: renew ours, re-assert if needed, reap dead instances.

        Returns the presence notices this produced (whoever came or went).
        """
        try:
            alive = await self._heartbeat(
                [self._alive_key(self._instance), f"{PREFIX}instances"],
                [self._instance, self._ttl_ms],
            )
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            return ()
        notices: list[Notice] = []
        if not alive or self._dirty or self._down:
            notices += await self._reassert_all()
        notices += await self._reap_dead()
        return tuple(notices)

    async def _reassert_all(self) -> list[Notice]:
        self._open.clear()
        try:
            await self._settled.wait()
            members = [f"{u}\t{c}" for u, conns in self._local.items() for c in conns]
            came, went = await self._reassert(
                self._instance_keys(self._instance),
                [self._instance, PREFIX, self._ttl_ms, VERSION_TTL_MS, *members],
            )
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            return []
        finally:
            self._open.set()
        if self._down:
            logger.info("presence: Redis answers again; %d connections re-asserted", len(members))
        self._down = False
        self._dirty = False
        return await self._announce(came, True) + await self._announce(went, False)

    async def _reap_dead(self) -> list[Notice]:
        try:
            instances = [_text(i) for i in await self._redis.smembers(f"{PREFIX}instances")]
            others = [i for i in instances if i != self._instance]
            if not others:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for other in others:
                pipe.exists(self._alive_key(other))
            dead = [i for i, live in zip(others, await pipe.execute()) if not live]
            gone: list[Any] = []
            for instance in dead:
                users = await self._reap(
                    self._instance_keys(instance), [instance, PREFIX, VERSION_TTL_MS],
                )
                logger.warning(
                    "presence: instance %s stopped without saying goodbye; %d users went offline",
                    instance, len(users) // 2,
                )
                gone += users
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            return []
        if gone and self._on_reaped is not None:
            self._on_reaped(len(gone) // 2)
        return await self._announce(gone, False)

    async def _announce(self, changes: list[Any], online: bool) -> list[Notice]:
        """Notices for a script's changes: a flat list of user, version, user, version..."""
        notices: list[Notice] = []
        for user, version in zip(changes[::2], changes[1::2]):
            user_id = _text(user)
            notices += await self._audience.notices(user_id, online, int(version))
        return notices

    async def close(self) -> None:
        """Say goodbye: this instance's connections leave Redis at once (app shutdown)."""
        await cancel_lingering(self._lingering)
        self._local.clear()
        try:
            await self._reassert(
                self._instance_keys(self._instance),
                [self._instance, PREFIX, 1, VERSION_TTL_MS],
            )
            await self._redis.srem(f"{PREFIX}instances", self._instance)
        except Exception as exc:  # noqa: BLE001 - the others will reap us after the TTL
            logger.warning("presence: could not say goodbye to Redis (%s)", exc)


def _text(value: bytes | str) -> str:
    """A member of a Redis set: bytes from this client (no decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value
