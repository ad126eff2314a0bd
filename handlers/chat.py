"""The `/chat` namespace: the hub. Connection lifecycle, hub methods, delivery to rooms.

Each hub method receives arguments the router has already bound and typed,
calls one ChatService method, delivers the notices it returned to the rooms of
the users they name, and answers through the ack. Every exception becomes an
ack envelope here, at the edge; none escapes. Storage work is bounded in time
inside the store; delivery happens after it, outside that limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import socketio

from app.auth import Identity, TokenVerifier, bearer_token
from app.config import Config
from app.domain import Notice, Outcome, PresenceChanged, Status
from app.errors import (
    OutcomeUnknown,
    RateLimited,
    Unauthorized,
    Unavailable,
    UnknownEvent,
    client_error,
)
from app.metrics import Metrics
from app.presence import Presence
from app.groups import GroupService
from app.service import ChatService
from handlers.limits import Budgets
from handlers.routing import ok, routes_of
from handlers.wire import (
    Json,
    conversation_dto,
    group_dto,
    message_dto,
    presence_word,
    receipts_dto,
    server_event,
    sync_page,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")

NAMESPACE = "/chat"
WELCOME = "Welcome to the chat!"
SYNC_REQUIRED = "SyncRequired"
# Of the shutdown grace, the part kept for closing sockets once calls are done.
SOCKET_CLOSE_S = 1.0


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


def watch_room(user_id: str) -> str:
    """The connections watching this user's presence (SubscribePresence)."""
    return f"watch:{user_id}"


@dataclass
class Caller:
    """One connected socket: who it is and what the namespace keeps for it."""

    sid: str
    identity: Identity
    # Presence notices held until the socket's own connect has been answered.
    arrival: tuple[Notice, ...] = ()
    expiry: asyncio.TimerHandle | None = None
    watching: frozenset[str] = frozenset()

    @property
    def user_id(self) -> str:
        return self.identity.user_id


class ChatNamespace(socketio.AsyncNamespace):
    def __init__(
        self,
        config: Config,
        chat: ChatService,
        groups: GroupService,
        presence: Presence,
        verifier: TokenVerifier,
        metrics: Metrics,
        budgets: Budgets,
    ) -> None:
        super().__init__(NAMESPACE)
        self._config = config
        self._chat = chat
        self._groups = groups
        self._presence = presence
        self._verifier = verifier
        self._metrics = metrics
        self._routes = routes_of(self)
        self._callers: dict[str, Caller] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._budgets = budgets  # the app's one set, shared with REST
        # Shutdown: once draining, connects and new calls are refused; calls
        # already running are awaited (see drain).
        self._draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    # -- dispatch ---------------------------------------------------------

    async def trigger_event(self, event: str, *args: Any) -> Any:
        sid, payload = args[0], args[1:]
        # python-socketio routes a client event named "connect" or "disconnect"
        # here too. The library's own calls come while the socket is still
        # connecting or already disconnecting; a fully connected socket sending
        # one is a client trying to fake its lifecycle.
        if event in ("connect", "disconnect") and not self.server.manager.is_connected(
            sid, NAMESPACE
        ):
            if event == "connect":
                environ, auth = (payload + (None,))[:2]
                return await self._on_connect(sid, environ, auth)
            return await self._on_disconnect(sid)
        return await self._call(sid, event, payload)

    async def _call(self, sid: str, event: Any, payload: tuple[Any, ...]) -> Any:
        started = time.perf_counter()
        # A hostile client can name its event with a list or an object: not a route.
        route = self._routes.get(event) if isinstance(event, str) else None
        label = event if route else "unknown"
        self._in_flight += 1
        self._idle.clear()
        try:
            caller = self._callers.get(sid)
            if caller is None:  # raced with its own disconnect
                raise Unauthorized("not connected")
            if self._draining:
                raise Unavailable("server is shutting down; reconnect and retry")
            if await self._budgets.spend_call(caller.user_id):
                raise RateLimited("too many requests, slow down")
            if route is None:
                raise UnknownEvent(f"no such method: {str(event)[:64]}")
            return ok(await route.handler(caller, *route.bind(payload)))
        except OutcomeUnknown:
            # Shutting down before a write's outcome was known: any answer could
            # be a lie. None goes out; the client retries with the same
            # clientMessageId on the instance it reconnects to.
            self._metrics.errors.labels("outcome_unknown").inc()
            # The library sends no ACK for this sentinel (python-socketio 5.18.1;
            # docs/internals.md#asyncservernot_handled); None would be an empty ACK.
            return self.server.not_handled
        except Exception as exc:  # the edge: nothing escapes, every failure is an envelope
            error = client_error(exc, event if route else "unknown event")
            self._metrics.errors.labels(error.code).inc()
            return error.envelope()
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()
            self._metrics.events.labels(label).observe(time.perf_counter() - started)

    # -- connection lifecycle ---------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        counted: str | None = None  # the user whose socket count this connect holds
        try:
            if self._draining:
                raise Unavailable("server is shutting down; connect again")
            token = auth.get("token") if isinstance(auth, dict) else None
            if token is None:
                token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
            identity = self._verifier.verify(token)
            refused = await self._budgets.admit(identity.user_id, sid)
            if refused is not None:
                raise RateLimited(refused)
            counted = identity.user_id
            await self._chat.user_connected(identity.user_id, identity.name, identity.avatar)
            arrival = await self._presence.connect(identity.user_id, sid)
        except Exception as exc:
            if counted is not None:
                await self._budgets.release(counted, sid)
            error = client_error(exc, "connect")
            self._metrics.refused.labels(error.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(
                error.message, {"code": error.code, "message": error.message}
            ) from None
        caller = Caller(sid, identity, arrival=arrival)
        self._callers[sid] = caller
        await self.enter_room(sid, user_room(identity.user_id))
        self._metrics.connects.inc()
        self._metrics.connections.inc()
        return True

    def connected(self, sid: str, namespace: str) -> None:
        """The handshake is answered (see HubManager): greet, announce, arm the expiry."""
        caller = self._callers.get(sid) if namespace == NAMESPACE else None
        if caller is not None:
            self._spawn(self._after_connect(caller))

    async def _after_connect(self, caller: Caller) -> None:
        await self.emit("Notify", WELCOME, to=caller.sid)
        arrival, caller.arrival = caller.arrival, ()
        await self._deliver(caller.sid, arrival)
        delay = max(0.0, caller.identity.expires_at - time.time())
        caller.expiry = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._expire(caller.sid))
        )

    async def _expire(self, sid: str) -> None:
        if sid not in self._callers:
            return
        await self.emit("SessionExpired", to=sid)
        await self.disconnect(sid)

    async def _on_disconnect(self, sid: str) -> None:
        caller = self._callers.pop(sid, None)
        if caller is None:
            return
        self._metrics.connections.dec()
        await self._budgets.release(caller.user_id, sid)
        if caller.expiry is not None:
            caller.expiry.cancel()
        try:
            await self._deliver(sid, await self._presence.disconnect(caller.user_id, sid))
        except Exception as exc:
            client_error(exc, "disconnect")  # logs; a disconnect has no one to answer

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    @property
    def draining(self) -> bool:
        return self._draining

    async def drain(self, grace_s: float) -> None:
        """Shutdown: refuse new work, let calls in flight finish, close every socket.

        Calls get up to ``grace_s`` less a second, kept for closing the sockets.
        Sockets are closed by dropping their transport, not with a namespace
        DISCONNECT or engine.io CLOSE: a client told either stays disconnected,
        one whose transport drops reconnects at once (to another instance,
        behind a load balancer).
        """
        self._draining = True
        deadline = asyncio.get_running_loop().time() + grace_s
        try:
            await asyncio.wait_for(self._idle.wait(), max(0.0, grace_s - SOCKET_CLOSE_S))
        except TimeoutError:
            logger.warning("shutdown: %d calls still running after the grace", self._in_flight)
        server = self.server
        closing = list(server.eio.sockets)
        for eio_sid in closing:
            server.cut_off(eio_sid)
        # Their disconnects say goodbye (presence) before the app goes on closing.
        remaining = deadline - asyncio.get_running_loop().time()
        await server.cut_off_settled(max(0.1, min(SOCKET_CLOSE_S, remaining)))
        logger.info("shutdown: %d sockets closed", len(closing))

    async def close(self) -> None:
        """Cancel timers and background work (app shutdown)."""
        for caller in self._callers.values():
            if caller.expiry is not None:
                caller.expiry.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- delivery ---------------------------------------------------------

    async def announce(self, notices: Iterable[Notice]) -> None:
        """Deliver notices no call raised (presence found by the cluster heartbeat)."""
        await self._deliver(None, notices)

    async def sync_required(self) -> None:
        """Tell this instance's sockets that live events may have passed them by (see backplane)."""
        self._metrics.sync_required.inc()
        await self.emit(SYNC_REQUIRED, ignore_queue=True)

    async def _deliver(self, caller_sid: str | None, notices: Iterable[Notice]) -> None:
        """Emit each notice to the rooms of the users it names, in order."""
        for notice in notices:
            name, args = server_event(notice.event)
            skip = caller_sid if notice.except_caller else None
            if notice.caller_only:
                await self.emit(name, args, to=caller_sid)
            elif notice.users is None:
                await self._emit_notice(notice, name, args, None, skip)
            elif notice.users or notice.watchers_of:
                # The manager sends each socket one copy, whatever rooms it is in.
                rooms = [user_room(u) for u in notice.users]
                rooms += [watch_room(u) for u in notice.watchers_of]
                await self._emit_notice(notice, name, args, rooms, skip)

    async def _emit_notice(
        self, notice: Notice, name: str, args: Any, to: list[str] | None, skip: str | None
    ) -> None:
        """Emit; a versioned presence change tells the manager its version, to keep it in order."""
        event = notice.event
        if isinstance(event, PresenceChanged) and event.version:
            await self.server.manager.emit(
                name, args, NAMESPACE, room=to, skip_sid=skip,
                version=(event.user_id, event.version),
            )
        else:
            await self.emit(name, args, to=to, skip_sid=skip)

    async def _heard(self, caller: Caller, outcome: Outcome[T]) -> T:
        """Deliver what a call's outcome says others must hear; return its value."""
        await self._deliver(caller.sid, outcome.notices)
        return outcome.value

    # -- hub methods ------------------------------------------------------

    async def register_user(self, caller: Caller, user_name: str) -> Json:
        outcome = await self._chat.register_user(caller.user_id, user_name)
        registered = await self._heard(caller, outcome)
        return {"userId": registered.user_id, "pending": registered.pending}

    async def send_message(
        self,
        caller: Caller,
        sender_id: str,
        receiver_id: str,
        message: str,
        client_message_id: str | None = None,
    ) -> str:
        outcome = await self._chat.send_message(
            caller.user_id, sender_id, receiver_id, message, client_message_id
        )
        return await self._heard(caller, outcome)

    async def get_message_history(
        self, caller: Caller, user1_id: str, user2_id: str, skip: int = 0, take: int = 50
    ) -> list[Json]:
        page = await self._chat.history(caller.user_id, user1_id, user2_id, skip, take)
        return [message_dto(m) for m in page]

    async def get_online_status(self, caller: Caller, user_id: str) -> bool:
        return await self._chat.is_online(user_id)

    async def get_online_users(self, caller: Caller) -> list[str]:
        return await self._chat.online_users()

    async def message_received(self, caller: Caller, message_id: str) -> None:
        outcome = await self._chat.mark_status(caller.user_id, message_id, Status.DELIVERED)
        await self._heard(caller, outcome)

    async def message_read(self, caller: Caller, message_id: str) -> None:
        outcome = await self._chat.mark_status(caller.user_id, message_id, Status.READ)
        await self._heard(caller, outcome)

    async def get_conversations(self, caller: Caller) -> list[Json]:
        return [conversation_dto(c) for c in await self._chat.conversations(caller.user_id)]

    async def mark_conversation_read(self, caller: Caller, other_user_id: str) -> int:
        outcome = await self._chat.mark_conversation_read(caller.user_id, other_user_id)
        return await self._heard(caller, outcome)

    async def typing(self, caller: Caller, receiver_id: str, is_typing: bool) -> None:
        await self._heard(caller, self._chat.typing(caller.user_id, receiver_id, is_typing))

    async def subscribe_presence(self, caller: Caller, user_ids: list[object]) -> dict[str, str]:
        async def watch(users: frozenset[str]) -> None:
            for user_id in caller.watching - users:
                await self.leave_room(caller.sid, watch_room(user_id))
            for user_id in users - caller.watching:
                await self.enter_room(caller.sid, watch_room(user_id))
            caller.watching = users

        online = await self._chat.subscribe_presence(user_ids, watch)
        return {user: presence_word(on) for user, on in online.items()}

    async def sync(self, caller: Caller, cursor: str | None = None, limit: int = 200) -> Json:
        return sync_page(await self._chat.sync(caller.user_id, cursor, limit))

    async def get_message_receipts(self, caller: Caller, message_id: str) -> Json:
        return receipts_dto(await self._chat.receipts(caller.user_id, message_id))

    # -- groups (v2.0) ------------------------------------------------------

    async def create_group(
        self, caller: Caller, title: str, member_ids: list[object],
        client_request_id: str | None = None,
    ) -> Json:
        outcome = await self._groups.create(caller.user_id, title, member_ids, client_request_id)
        return group_dto(await self._heard(caller, outcome))

    async def get_group(self, caller: Caller, group_id: str) -> Json:
        return group_dto(await self._groups.get(caller.user_id, group_id))

    async def add_group_members(self, caller: Caller, group_id: str, user_ids: list[object]) -> Json:
        outcome = await self._groups.add_members(caller.user_id, group_id, user_ids)
        return group_dto(await self._heard(caller, outcome))

    async def remove_group_member(self, caller: Caller, group_id: str, user_id: str) -> None:
        await self._heard(caller, await self._groups.remove_member(caller.user_id, group_id, user_id))

    async def rename_group(self, caller: Caller, group_id: str, title: str) -> Json:
        outcome = await self._groups.rename(caller.user_id, group_id, title)
        return group_dto(await self._heard(caller, outcome))

    async def send_group_message(
        self, caller: Caller, group_id: str, message: str, client_message_id: str | None = None
    ) -> str:
        outcome = await self._groups.send(caller.user_id, group_id, message, client_message_id)
        return await self._heard(caller, outcome)

    async def get_group_history(
        self, caller: Caller, group_id: str, skip: int = 0, take: int = 50
    ) -> list[Json]:
        page = await self._groups.history(caller.user_id, group_id, skip, take)
        return [message_dto(m) for m in page]

    async def mark_group_read(self, caller: Caller, group_id: str) -> int:
        return await self._heard(caller, await self._groups.mark_read(caller.user_id, group_id))

    async def group_typing(self, caller: Caller, group_id: str, is_typing: bool) -> None:
        await self._heard(caller, await self._groups.typing(caller.user_id, group_id, is_typing))
