"""The Redis backplane: python-socketio's AsyncRedisManager, made to notice what it misses.

Every emit is handled on this instance and published on a Redis channel for
the others (the library's design). The library's manager has two gaps that a
chat server cannot live with, both closed here:

- A failed publish is logged and dropped (two attempts): the receivers on
  other instances never hear of it. Here a failure is counted, further
  publishes skip Redis until it answers again (no send waits on a dead
  Redis), and once it does, every socket in the cluster is told
  ``SyncRequired``: its client calls ``Sync`` and gets what it missed from the
  database, which stays the truth.
- The listener can stop hearing without raising: redis-py reconnects a
  subscriber connection by itself (messages published meanwhile are lost), and
  ``listen()`` can end quietly, after which the library's listener loop is
  dead for good (miguelgrinberg/python-socketio#1581). Here the listener never
  ends, retries every second, and every reconnect of the subscriber
  connection, visible or not, tells this instance's sockets ``SyncRequired``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import socketio
from redis.asyncio.client import PubSub

from app.cluster import REDIS_TIMEOUT_S, redis_client
from handlers.engine import HubManagerMixin

logger = logging.getLogger(__name__)

CHANNEL = "chat:socketio"
# Between two attempts to subscribe again: short, so delivery resumes soon after Redis does.
LISTEN_RETRY_S = 1.0
# How often a publisher that failed checks whether Redis answers again.
PUBLISH_PROBE_S = 1.0

# Told which sockets may have missed events: this instance's own (False) or
# every socket of the cluster (True).
MissedHandler = Callable[[bool], Awaitable[None]]


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

    def __init__(
        self,
        url: str,
        *,
        on_missed: MissedHandler | None = None,
        on_publish_failure: Callable[[], None] | None = None,
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
        self._on_reconnect = on_reconnect
        # Publishing has its own client: the library's reconnect in _publish
        # would replace the subscriber the listener is reading from.
        self._publisher = redis_client(url)
        self._publish_down = False
        self.listening = False
        self._started = False
        self._tasks: set[asyncio.Task[None]] = set()

    def initialize(self) -> None:
        super().initialize()  # the library starts the listener at the first connect
        self._started = True

    @property
    def healthy(self) -> bool:
        """Publishing works and, once started, the listener is subscribed."""
        return not self._publish_down and (self.listening or not self._started)

    # -- emitting -------------------------------------------------------------

    async def emit(self, event: str, data: Any, namespace: str | None = None, room: Any = None,
                   skip_sid: Any = None, callback: Any = None, to: Any = None,
                   **kwargs: Any) -> Any:
        """Handle here, then publish for the other instances.

        The library's AsyncPubSubManager.emit does the same, plus a recursive
        scan of the data for bytes (the hub never sends any, see HubPacket)
        and cross-instance ack callbacks (the hub never asks for one). An emit
        to one socket of this instance is not published at all.
        """
        target = to or room
        namespace = namespace or "/"
        local_socket = isinstance(target, str) and self.is_connected(target, namespace)
        if callback is not None:
            return await super().emit(event, data, namespace=namespace, room=target,
                                      skip_sid=skip_sid, callback=callback, **kwargs)
        if kwargs.get("ignore_queue") or local_socket:
            return await self._emit_here(event, data, namespace, target, skip_sid)
        # host_id stays the last key: _listen recognises our own messages by it.
        message = {
            "method": "emit", "event": event,
            "data": list(data) if isinstance(data, tuple) else [data],
            "binary": False, "namespace": namespace, "room": target, "skip_sid": skip_sid,
            "callback": None, "host_id": self.host_id,
        }
        await self._handle_emit(message)
        await self._publish(message)

    # -- handling here, publishing for the others ------------------------------

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        """An emit of ours or of another instance, for this instance's sockets."""
        if message.get("callback") or message.get("binary"):
            return await super()._handle_emit(message)  # never from this hub; the library knows
        data = message["data"]
        await self._emit_here(
            message["event"],
            data[0] if len(data) == 1 else tuple(data),
            message.get("namespace") or "/",
            message.get("room"),
            message.get("skip_sid"),
        )

    async def _publish(self, data: Any) -> None:
        if self._publish_down:
            self._publish_failed()  # Redis is known down: do not make the caller wait on it
            return
        try:
            await self._publisher.publish(self.channel, self.json.dumps(data))
            return
        except Exception as exc:  # noqa: BLE001 - any failure means the others did not hear
            logger.warning("backplane: publish failed (%s); sockets will be told to Sync", exc)
        self._publish_down = True
        self._publish_failed()
        self._spawn(self._until_publishing())

    def _publish_failed(self) -> None:
        if self._on_publish_failure is not None:
            self._on_publish_failure()

    async def _until_publishing(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_PROBE_S)
            try:
                await self._publisher.ping()
            except Exception:  # noqa: BLE001 - still down
                continue
            self._publish_down = False
            logger.info("backplane: publishing again")
            await self._missed(everyone=True)
            return

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
        self._spawn(self._missed(everyone=False))

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
                    self._spawn(self._missed(everyone=False))
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
        """The channel's messages, less this instance's own.

        Every instance hears its own publishes back; the library decodes each
        before it sees the sender. Our emits are encoded with host_id as the
        last key, so an own message is recognised by its ending, undecoded.
        """
        own = f'"host_id":"{self.host_id}"}}'.encode()
        channel = self.channel.encode()
        async for message in self._redis_listen_with_retries():
            if message.get("channel") != channel or message.get("type") != "message":
                continue
            data = message.get("data")
            if isinstance(data, bytes) and data.endswith(own):
                continue
            yield data

    async def _close_subscriber(self) -> None:
        """Close the subscriber and its client: each retry makes new ones."""
        pubsub, self.pubsub = self.pubsub, None
        redis, self.redis = self.redis, None
        for closing in (pubsub, redis):
            if closing is None:
                continue
            try:
                await closing.aclose()
            except Exception:  # noqa: BLE001 - it is broken already
                pass

    async def _missed(self, everyone: bool) -> None:
        if self.on_missed is not None:
            await self.on_missed(everyone)

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def ping(self) -> None:
        await self._publisher.ping()

    async def close(self) -> None:
        """Stop listening and close both Redis clients (app shutdown)."""
        thread = getattr(self, "thread", None)
        for task in [*self._tasks, *([thread] if thread is not None else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if thread is not None:
            await asyncio.gather(thread, return_exceptions=True)
        await self._close_subscriber()
        await self._publisher.aclose()
