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
from collections.abc import Callable, Iterable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from app.domain import Notice
from app.presence import Audience

logger = logging.getLogger(__name__)

PREFIX = "chat:presence:"
REDIS_TIMEOUT_S = 2.0
# How often the heartbeat is renewed and dead instances are looked for.
MAINTAIN_EVERY_S = 1.0

def redis_client(url: str) -> Redis:
    """A Redis client that fails fast and retries once at once.

    ``Redis.from_url`` sets no retry: the first command after Redis restarted
    would fail on the pooled connection Redis closed. One immediate retry
    takes a fresh one; a Redis that is really down still fails in milliseconds.
    """
    return Redis.from_url(
        url,
        socket_timeout=REDIS_TIMEOUT_S,
        socket_connect_timeout=REDIS_TIMEOUT_S,
        socket_keepalive=True,
        retry=Retry(NoBackoff(), 1),
    )


_SPLIT = """
local function split(m)
  local tab = string.find(m, '\\t', 1, true)
  return string.sub(m, 1, tab - 1), string.sub(m, tab + 1)
end
"""

# KEYS: user set, instance set, online set. ARGV: user, instance, connection.
# Returns 1 when this is the user's first connection in the cluster.
CONNECT = """
redis.call('SADD', KEYS[2], ARGV[1] .. '\\t' .. ARGV[3])
if redis.call('SADD', KEYS[1], ARGV[2] .. '\\t' .. ARGV[3]) == 1
    and redis.call('SCARD', KEYS[1]) == 1 then
  redis.call('SADD', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

# Same keys and arguments. Returns 1 when this was the user's last connection.
DISCONNECT = """
redis.call('SREM', KEYS[2], ARGV[1] .. '\\t' .. ARGV[3])
if redis.call('SREM', KEYS[1], ARGV[2] .. '\\t' .. ARGV[3]) == 1
    and redis.call('SCARD', KEYS[1]) == 0 then
  redis.call('SREM', KEYS[3], ARGV[1])
  return 1
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
# ARGV: the dead instance, the key prefix. Returns the users who went offline.
# Only the first survivor to run it finds anything to do.
REAP = _SPLIT + """
if redis.call('EXISTS', KEYS[2]) == 1 then return {} end
local gone = {}
for _, m in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local user, conn = split(m)
  local ukey = ARGV[2] .. 'user:' .. user
  if redis.call('SREM', ukey, ARGV[1] .. '\\t' .. conn) == 1
      and redis.call('SCARD', ukey) == 0 then
    redis.call('SREM', KEYS[3], user)
    table.insert(gone, user)
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[4], ARGV[1])
return gone
"""

# KEYS: this instance's set, its heartbeat, online, instances.
# ARGV: instance, prefix, ttl ms, then every live connection as user\tconnection.
# Makes Redis hold exactly these connections for this instance. Returns
# {users who came online, users who went offline}. Adds go first, so a user
# whose stale connection is replaced by a live one neither comes nor goes.
REASSERT = _SPLIT + """
local live, came, went = {}, {}, {}
for i = 4, #ARGV do
  local m = ARGV[i]
  live[m] = true
  local user, conn = split(m)
  local ukey = ARGV[2] .. 'user:' .. user
  redis.call('SADD', KEYS[1], m)
  if redis.call('SADD', ukey, ARGV[1] .. '\\t' .. conn) == 1
      and redis.call('SCARD', ukey) == 1 then
    redis.call('SADD', KEYS[3], user)
    table.insert(came, user)
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

    @property
    def redis_ok(self) -> bool:
        return not self._down

    # -- keys ---------------------------------------------------------------

    def _instance_key(self, instance: str) -> str:
        return f"{PREFIX}instance:{instance}"

    def _alive_key(self, instance: str) -> str:
        return f"{PREFIX}alive:{instance}"

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
        if not first:
            return ()
        try:
            return await self._audience.notices(user_id, True)
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
        if not last:
            return ()
        return await self._audience.notices(user_id, False)

    async def _script(self, script: Any, user_id: str, connection_id: str, local: bool) -> bool:
        """Run CONNECT or DISCONNECT; when Redis is away, this instance's view decides."""
        if self._down:
            self._dirty = True
            return local
        self._busy += 1
        self._settled.clear()
        try:
            keys = [f"{PREFIX}user:{user_id}", self._instance_key(self._instance), f"{PREFIX}online"]
            return bool(await script(keys, [user_id, self._instance, connection_id]))
        except Exception as exc:  # noqa: BLE001 - Redis away: fall back, re-assert later
            self._lost(exc)
            return local
        finally:
            self._busy -= 1
            if not self._busy:
                self._settled.set()

    # -- questions ------------------------------------------------------------

    async def is_online(self, user_id: str) -> bool:
        if not self._down:
            try:
                return bool(await self._redis.sismember(f"{PREFIX}online", user_id))
            except Exception as exc:  # noqa: BLE001
                self._lost(exc)
        return user_id in self._local

    async def online_users(self) -> list[str]:
        if not self._down:
            try:
                return sorted(u.decode() for u in await self._redis.smembers(f"{PREFIX}online"))
            except Exception as exc:  # noqa: BLE001
                self._lost(exc)
        return sorted(self._local)

    async def online_among(self, user_ids: Iterable[str]) -> set[str]:
        users = list(user_ids)
        if not users:
            return set()
        if not self._down:
            try:
                flags = await self._redis.smismember(f"{PREFIX}online", users)
                return {u for u, on in zip(users, flags) if on}
            except Exception as exc:  # noqa: BLE001
                self._lost(exc)
        return {u for u in users if u in self._local}

    def _lost(self, exc: BaseException) -> None:
        if not self._down:
            logger.warning("presence: Redis unreachable (%s); answering from this instance", exc)
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
                [self._instance, PREFIX, self._ttl_ms, *members],
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
            instances = [i.decode() for i in await self._redis.smembers(f"{PREFIX}instances")]
            others = [i for i in instances if i != self._instance]
            if not others:
                return []
            pipe = self._redis.pipeline(transaction=False)
            for other in others:
                pipe.exists(self._alive_key(other))
            dead = [i for i, live in zip(others, await pipe.execute()) if not live]
            gone: list[str] = []
            for instance in dead:
                users = await self._reap(
                    self._instance_keys(instance), [instance, PREFIX],
                )
                logger.warning(
                    "presence: instance %s stopped without saying goodbye; %d users went offline",
                    instance, len(users),
                )
                gone += users
        except Exception as exc:  # noqa: BLE001
            self._lost(exc)
            return []
        if gone and self._on_reaped is not None:
            self._on_reaped(len(gone))
        return await self._announce(gone, False)

    async def _announce(self, users: Iterable[Any], online: bool) -> list[Notice]:
        notices: list[Notice] = []
        for user in users:
            user_id = user.decode() if isinstance(user, bytes) else str(user)
            notices += await self._audience.notices(user_id, online)
        return notices

    async def close(self) -> None:
        """Say goodbye: this instance's connections leave Redis at once (app shutdown)."""
        self._local.clear()
        try:
            await self._reassert(
                self._instance_keys(self._instance),
                [self._instance, PREFIX, 1],
            )
            await self._redis.srem(f"{PREFIX}instances", self._instance)
        except Exception as exc:  # noqa: BLE001 - the others will reap us after the TTL
            logger.warning("presence: could not say goodbye to Redis (%s)", exc)
