"""The Redis backplane: python-socketio's AsyncRedisManager, made to notice what it misses.

Every emit is handled on this instance and published on a Redis channel for
the others (the library's design). The library's manager has gaps that a chat
server cannot live with, all closed here:

- The library awaits each publish inside the emit, so a call's answer waits
  on Redis: a frozen Redis held sends for seconds. Here an emit only queues
  its publish; one publisher sends what is queued, in order, a batch per
  round trip, and nothing else ever waits for it. The queue is bounded
  (``PUBLISH_QUEUE_MAX``): past it, and while Redis is known to be away,
  publishes are dropped and counted.
- A lost publish (dropped, or failed) is logged and forgotten by the library:
  the receivers on other instances never hear of it. Here, once the publisher
  has Redis again (one probe at a time), it tells the other instances that
  they missed something, and they tell their sockets ``SyncRequired``: the
  clients call ``Sync`` and get what they missed from the database, which
  stays the truth.
- The listener can stop hearing without raising: redis-py reconnects a
  subscriber connection by itself (messages published meanwhile are lost), and
  ``listen()`` can end quietly, after which the library's listener loop is
  dead for good (miguelgrinberg/python-socketio#1581). Here the listener never
  ends, retries every second, and every reconnect of the subscriber
  connection, visible or not, is a gap for this instance's sockets.

Gaps reported close together (one outage seen by several instances, and by
both the publishers and the listeners) make one ``SyncRequired`` per socket:
an instance tells its own sockets once the reports have settled for
``SYNC_SETTLE_S`` and its listener is subscribed again.

Presence changes carry a per-user version (app/cluster.py); an instance never
delivers a user's change after a later one, whichever way each came.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from redis.asyncio.client import PubSub

from app.cluster import REDIS_TIMEOUT_S, bounded, cancel_lingering, redis_client
from handlers.engine import HubManagerMixin

logger = logging.getLogger(__name__)

CHANNEL = "chat:socketio"
# Between two attempts to subscribe again: short, so delivery resumes soon after Redis does.
LISTEN_RETRY_S = 1.0
# Emits waiting to be published. Past this many (Redis slow or frozen, not yet
# known to be away), new ones are dropped: a gap the others are told of.
PUBLISH_QUEUE_MAX = 10_000
# Publishes sent to Redis in one round trip, at most.
PUBLISH_BATCH = 256
# How long one round trip of publishes may take before Redis counts as away.
PUBLISH_WAIT_S = 1.0
# While Redis is away, how often the publisher's one probe asks whether it is back.
PUBLISH_PROBE_S = 0.5
# SyncRequired goes out once no gap was reported for this long (one outage is
# seen by every instance within about a second)...
SYNC_SETTLE_S = 1.0
# At shutdown, how long what is queued may take to reach Redis.
CLOSE_FLUSH_S = 0.3
# ...and at the latest this long after the first report, even if more keep coming.
SYNC_SETTLE_MAX_S = 5.0
# A user's last delivered presence version is forgotten after this long: two
# instances' notices about one change cross within milliseconds, not minutes.
VERSION_KEEP_S = 60.0
# Published by an instance that lost publishes, once it publishes again: the
# others tell their sockets SyncRequired. Not an emit; the library ignores it.
GAP_METHOD = "sync_required"

# Told that this instance's sockets may have missed events.
MissedHandler = Callable[[], Awaitable[None]]


class _Subscriber(PubSub):  # type: ignore[misc]
    """A PubSub that reports each time redis-py reconnects it on its own."""

    def __init__(self, *args: Any, on_reconnect: Callable[[], None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._on_reconnect = on_reconnect

    async def on_connect(self, connection: Any) -> None:
        await super().on_connect(connection)
        if self.channels:  # subscribed before: this is a reconnect, and a gap
            self._on_reconnect()


class RedisHubManager(HubManagerMixin, socketio.AsyncRedisManager):  # type: ignore[misc]
    """The hub's manager across instances."""

    # The library's subscriber client and PubSub, replaced on each retry (_redis_connect).
    redis: Any
    pubsub: Any

    def __init__(
        self,
        url: str,
        *,
        on_missed: MissedHandler | None = None,
        on_publish_failure: Callable[[int], Any] | None = None,
        on_publish_dropped: Callable[[int], Any] | None = None,
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        options = {
            "socket_connect_timeout": REDIS_TIMEOUT_S,
            "socket_keepalive": True,
            "health_check_interval": 10,
        }
        super().__init__(url, channel=CHANNEL, redis_options=options)
        self.on_missed = on_missed
        self._on_publish_failure = on_publish_failure
        self._on_publish_dropped = on_publish_dropped
        self._on_reconnect = on_reconnect
        # Publishing has its own client: the library's reconnect in _publish
        # would replace the subscriber the listener is reading from.
        self._publisher = redis_client(url)
        self._outbox: deque[dict[str, Any] | str] = deque()
        self._sending = False
        self._outbox_ready = asyncio.Event()
        self._publishing: asyncio.Task[None] | None = None
        self._publish_down = False
        # Publishes were lost since the others were last told.
        self._gap = False
        self._gap_notice = f'{{"method":"{GAP_METHOD}","host_id":"{self.host_id}"}}'
        # The pending SyncRequired: when its first and latest gap were reported.
        self._sync_first: float | None = None
        self._sync_last = 0.0
        self._syncing: asyncio.Task[None] | None = None
        # Per user, the presence version last delivered here and when.
        self._versions: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self.listening = False
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._lingering: set[asyncio.Task[Any]] = set()  # Redis calls given up on (see bounded)

    def initialize(self) -> None:
        super().initialize()  # the library starts the listener at the first connect
        self._started = True

    @property
    def healthy(self) -> bool:
        """Publishing works and, once started, the listener is subscribed."""
        return not self._publish_down and (self.listening or not self._started)

    @property
    def sync_pending(self) -> bool:
        """A gap was reported and its SyncRequired is not sent yet."""
        return self._sync_first is not None

    @property
    def queued(self) -> int:
        """Publishes waiting for Redis."""
        return len(self._outbox)

    # -- emitting -------------------------------------------------------------

    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   version: tuple[str, int] | None = None, **kwargs: Any) -> Any:
        """Handle here, then queue the publish for the other instances.

        The library's AsyncPubSubManager.emit does the same, plus a recursive
        scan of the data for bytes (the hub never sends any, see HubPacket)
        and cross-instance ack callbacks (the hub never asks for one). An emit
        to one socket of this instance is not published at all. ``version``:
        (user id, presence version) of a presence change, delivered in order.
        """
        target = to or room
        namespace = namespace or "/"
        if callback is not None:
            return await super().emit(event, data, namespace=namespace, room=target,
                                      skip_sid=skip_sid, callback=callback, **kwargs)
        if kwargs.get("ignore_queue") or (
            isinstance(target, str) and self.is_connected(target, namespace)
        ):
            return await self._emit_here(event, data, namespace, target, skip_sid)
        # host_id stays the last key: _listen recognises our own messages by it.
        message = {
            "method": "emit", "event": event,
            "data": list(data) if isinstance(data, tuple) else [data],
            "binary": False, "namespace": namespace, "room": target, "skip_sid": skip_sid,
            "callback": None, "host_id": self.host_id,
        }
        if version is not None:
            message = {"version": list(version), **message}
        await self._handle_emit(message)
        self._enqueue(message)

    # -- handling here ----------------------------------------------------------

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """An emit of ours or of another instance, for this instance's sockets."""
        if message.get("callback") or message.get("binary"):
            return await super()._handle_emit(message)  # never from this hub; the library knows
        version = message.get("version")
        if version is not None and not self._in_order(str(version[0]), int(version[1])):
            return
        data = message["data"]
        await self._emit_here(
            message["event"],
            data[0] if len(data) == 1 else tuple(data),
            message.get("namespace") or "/",
            message.get("room"),
            message.get("skip_sid"),
        )

    def _in_order(self, user_id: str, version: int) -> bool:
        """Whether a presence change is newer than the user's last one delivered here."""
        last = self._versions.get(user_id)
        if last is not None and last[0] >= version:
            return False  # a later change went out already: this one is stale
        now = time.monotonic()
        self._versions[user_id] = (version, now)
        self._versions.move_to_end(user_id)
        while self._versions:  # oldest first: forget what no late change can still cross
            oldest, (_, at) = next(iter(self._versions.items()))
            if now - at < VERSION_KEEP_S:
                break
            del self._versions[oldest]
        return True

    # -- publishing for the others -----------------------------------------------

    def _enqueue(self, message: dict[str, Any]) -> None:
        if self._publish_down:  # Redis is known away: the emit is lost, never waited on
            self._gap = True
            if self._on_publish_failure is not None:
                self._on_publish_failure(1)
            return
        if len(self._outbox) >= PUBLISH_QUEUE_MAX:
            self._gap = True
            if self._on_publish_dropped is not None:
                self._on_publish_dropped(1)
            return
        self._outbox.append(message)
        if self._publishing is None or self._publishing.done():
            self._publishing = self._spawn(self._publish_loop())
        self._outbox_ready.set()

    async def _publish_loop(self) -> None:
        """The one publisher: what is queued, in order, up to a batch per round trip."""
        while True:
            if not self._outbox:
                if not self._gap:
                    self._outbox_ready.clear()
                    await self._outbox_ready.wait()
                    continue
                # Everything queued before is out: now tell the others what they missed.
                self._gap = False
                self._outbox.append(self._gap_notice)
            batch = [self._outbox.popleft() for _ in range(min(PUBLISH_BATCH, len(self._outbox)))]
            self._sending = True
            try:
                pipe = self._publisher.pipeline(transaction=False)
                for message in batch:
                    pipe.publish(self.channel, message if isinstance(message, str)
                                 else self.json.dumps(message))
                await bounded(pipe.execute(), PUBLISH_WAIT_S, self._lingering)
            except Exception as exc:  # noqa: BLE001 - any failure means the others did not hear
                await self._publisher_lost(exc, batch)
            finally:
                self._sending = False

    async def _publisher_lost(self, exc: BaseException, batch: list[dict[str, Any] | str]) -> None:
        """Drop what is queued, count it, and wait for Redis with one probe at a time."""
        lost = [m for m in (*batch, *self._outbox) if not isinstance(m, str)]
        self._outbox.clear()
        self._publish_down = True
        self._gap = True
        if lost and self._on_publish_failure is not None:
            self._on_publish_failure(len(lost))
        logger.warning(
            "backplane: publishing failed (%s); emits go to this instance's sockets only, "
            "and the others will be told to Sync", str(exc) or type(exc).__name__,
        )
        while True:
            await asyncio.sleep(PUBLISH_PROBE_S)
            try:
                await bounded(self._publisher.ping(), PUBLISH_WAIT_S, self._lingering)
            except Exception:  # noqa: BLE001 - still away
                continue
            break
        self._publish_down = False
        logger.info("backplane: publishing again")

    # -- listening ----------------------------------------------------------

    def _redis_connect(self) -> None:
        super()._redis_connect()
        self.pubsub = _Subscriber(
            self.redis.connection_pool,
            ignore_subscribe_messages=True,
            on_reconnect=self._resubscribed,
        )

    def _resubscribed(self) -> None:
        logger.warning("backplane: the subscriber reconnected; events may have been missed")
        if self._on_reconnect is not None:
            self._on_reconnect()
        self._want_sync()

    async def _redis_listen_with_retries(self) -> Any:
        """The library's loop, but it never ends and never sleeps more than a second."""
        gap = False
        while True:
            try:
                self._redis_connect()
                await self.pubsub.subscribe(self.channel)
                self.listening = True
                if gap:
                    logger.info("backplane: listening again")
                    if self._on_reconnect is not None:
                        self._on_reconnect()
                    self._want_sync()
                gap = False
                async for message in self.pubsub.listen():
                    yield message
                logger.warning("backplane: the subscriber stopped without an error")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - retried; logged once per outage
                if not gap:
                    logger.warning("backplane: not listening (%s); retrying every %.0f s",
                                   exc, LISTEN_RETRY_S)
            self.listening = False
            await self._close_subscriber()
            # The first retry at once (a dropped client, Redis back already), then every second.
            await asyncio.sleep(LISTEN_RETRY_S if gap else 0.05)
            gap = True

    async def _listen(self) -> Any:
        """The channel's messages, less this instance's own and the gap notices.

        Every instance hears its own publishes back; the library decodes each
        before it sees the sender. Our emits are encoded with host_id as the
        last key, so an own message is recognised by its ending, undecoded.
        """
        own = f'"host_id":"{self.host_id}"}}'.encode()
        gap = f'{{"method":"{GAP_METHOD}",'.encode()
        channel = self.channel.encode()
        async for message in self._redis_listen_with_retries():
            if message.get("channel") != channel or message.get("type") != "message":
                continue
            data = message.get("data")
            if isinstance(data, bytes):
                if data.endswith(own):
                    continue
                if data.startswith(gap):  # another instance lost publishes
                    self._want_sync()
                    continue
            yield data

    async def _close_subscriber(self) -> None:
        """Close the subscriber and its client: each retry makes new ones."""
        pubsub: Any = self.pubsub
        redis: Any = self.redis
        self.pubsub, self.redis = None, None
        for closing in (pubsub, redis):
            if closing is None:
                continue
            try:
                await closing.aclose()
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    # -- SyncRequired, once per outage -----------------------------------------

    def _want_sync(self) -> None:
        """A gap in what this instance's sockets heard: they get SyncRequired once it settles."""
        now = asyncio.get_running_loop().time()
        self._sync_last = now
        if self._sync_first is None:
            self._sync_first = now
        if self._syncing is None or self._syncing.done():
            self._syncing = self._spawn(self._sync_when_settled())

    async def _sync_when_settled(self) -> None:
        loop = asyncio.get_running_loop()
        while self._sync_first is not None:
            due = min(self._sync_last + SYNC_SETTLE_S, self._sync_first + SYNC_SETTLE_MAX_S)
            now = loop.time()
            if now < due or not self.listening:
                # Telling sockets to Sync while still deaf would let them miss more.
                await asyncio.sleep(max(due - now, 0.1))
                continue
            self._sync_first = None  # a gap reported from here on needs another
            if self.on_missed is not None:
                await self.on_missed()

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ping(self) -> None:
        await self._publisher.ping()

    async def close(self, flush_s: float = CLOSE_FLUSH_S) -> None:
        """Stop listening and publishing, and close both Redis clients (app shutdown).

        What is still queued (the goodbyes of the sockets just closed: users
        going offline) gets up to `flush_s` to reach the other instances.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + flush_s
        while (self._outbox or self._sending) and not self._publish_down and loop.time() < deadline:
            await asyncio.sleep(0.01)
        thread = getattr(self, "thread", None)
        for task in [*self._tasks, *([thread] if thread is not None else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await cancel_lingering(self._lingering)
        if thread is not None:
            await asyncio.gather(thread, return_exceptions=True)
        await self._close_subscriber()
        await self._publisher.aclose()
