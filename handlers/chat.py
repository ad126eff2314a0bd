"""The `/chat` namespace: the hub. Handshake auth, argument checks, acks and fan-out.

Each handler validates its arguments, calls one ChatService method, emits what
the result says to the rooms it concerns, and answers through the ack. Every
exception becomes an ack envelope here, at the edge; none escapes.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import re
import time
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import NoneType, UnionType
from typing import Any

import socketio

from app.auth import Identity, TokenVerifier, bearer_token
from app.chat import ChatService, StatusChange
from app.config import Config
from app.db import Database
from app.errors import ChatError, InvalidArgument, RateLimited, Unauthorized, UnknownEvent, client_error
from app.metrics import Metrics
from app.presence import Presence
from models import Status

logger = logging.getLogger(__name__)

NAMESPACE = "/chat"
WELCOME = "Welcome to the chat!"
# How long the post-connect task waits for the library to finish the handshake.
HANDSHAKE_WAIT_S = 5.0

# Wire method name -> handler method. The protocol pins PascalCase on the wire.
EVENTS = {
    "RegisterUser": "register_user",
    "SendMessage": "send_message",
    "GetMessageHistory": "get_message_history",
    "GetOnlineStatus": "get_online_status",
    "GetOnlineUsers": "get_online_users",
    "MessageReceived": "message_received",
    "MessageRead": "message_read",
    "GetConversations": "get_conversations",
    "MarkConversationRead": "mark_conversation_read",
    "Typing": "typing",
    "Sync": "sync",
}


def user_room(user_id: str) -> str:
    return f"user:{user_id}"


@dataclass
class TokenBucket:
    rate_per_s: float
    burst: float
    tokens: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.tokens = self.burst

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate_per_s)
        self.stamp = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@dataclass
class Caller:
    """One connected socket: who it is and what the namespace keeps for it."""

    sid: str
    identity: Identity
    bucket: TokenBucket
    came_online: bool = False
    expiry: asyncio.TimerHandle | None = None

    @property
    def user_id(self) -> str:
        return self.identity.user_id


@dataclass(frozen=True)
class Param:
    wire: str
    kind: type
    optional: bool
    default: Any


@dataclass(frozen=True)
class Route:
    event: str
    handler: Callable[..., Awaitable[Any]]
    params: tuple[Param, ...]

    @classmethod
    def of(cls, event: str, handler: Callable[..., Awaitable[Any]]) -> Route:
        hints = typing.get_type_hints(handler)
        params = []
        for p in list(inspect.signature(handler).parameters.values())[1:]:  # skip caller
            kind, optional = _unwrap_optional(hints[p.name])
            default = None if p.default is inspect.Parameter.empty else p.default
            params.append(Param(_camel(p.name), kind, optional, default))
        return cls(event, handler, tuple(params))

    @property
    def required(self) -> int:
        return sum(1 for p in self.params if p.default is None and not p.optional)

    def bind(self, args: tuple[Any, ...]) -> list[Any]:
        if not self.required <= len(args) <= len(self.params):
            expected = (
                str(len(self.params))
                if self.required == len(self.params)
                else f"{self.required} to {len(self.params)}"
            )
            raise InvalidArgument(f"{self.event} takes {expected} arguments, got {len(args)}")
        values = list(args) + [p.default for p in self.params[len(args) :]]
        return [_coerce(p, v) for p, v in zip(self.params, values)]


def _unwrap_optional(hint: Any) -> tuple[type, bool]:
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not NoneType]
        return members[0], True
    return hint, False


def _camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)


def _coerce(param: Param, value: Any) -> Any:
    if value is None:
        if param.optional:
            return None
        raise InvalidArgument(f"{param.wire} is required")
    if param.kind is int:
        # JSON has one number type; accept 5.0 from clients whose numbers are doubles.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise InvalidArgument(f"{param.wire} must be an integer")
    if not isinstance(value, param.kind) or (param.kind is not bool and isinstance(value, bool)):
        raise InvalidArgument(f"{param.wire} must be a {_TYPE_NAMES[param.kind]}")
    return value


_TYPE_NAMES = {str: "string", bool: "boolean", int: "integer"}


def ok(data: Any = None) -> dict[str, Any]:
    return {"ok": True, "data": data}


class ChatNamespace(socketio.AsyncNamespace):
    def __init__(
        self,
        config: Config,
        db: Database,
        chat: ChatService,
        presence: Presence,
        verifier: TokenVerifier,
        metrics: Metrics,
    ) -> None:
        super().__init__(NAMESPACE)
        self._config = config
        self._db = db
        self._chat = chat
        self._presence = presence
        self._verifier = verifier
        self._metrics = metrics
        self._routes = {event: Route.of(event, getattr(self, name)) for event, name in EVENTS.items()}
        self._callers: dict[str, Caller] = {}
        self._background: set[asyncio.Task[None]] = set()

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

    async def _call(self, sid: str, event: str, payload: tuple[Any, ...]) -> dict[str, Any]:
        started = time.perf_counter()
        route = self._routes.get(event)
        label = event if route else "unknown"
        try:
            caller = self._callers.get(sid)
            if caller is None:  # raced with its own disconnect
                raise Unauthorized("not connected")
            if not caller.bucket.take():
                raise RateLimited("too many requests, slow down")
            if route is None:
                raise UnknownEvent(f"no such method: {str(event)[:64]}")
            values = route.bind(payload)
            async with self._db.session(self._config.call_timeout_s):
                return ok(await route.handler(caller, *values))
        except Exception as exc:  # the edge: nothing escapes, every failure is an envelope
            error = client_error(exc, event if route else "unknown event")
            self._metrics.errors.labels(error.code).inc()
            return error.envelope()
        finally:
            self._metrics.events.labels(label).observe(time.perf_counter() - started)

    # -- connection lifecycle ---------------------------------------------

    async def _on_connect(self, sid: str, environ: dict[str, Any], auth: Any) -> bool:
        try:
            token = auth.get("token") if isinstance(auth, dict) else None
            if token is None:
                token = bearer_token(environ.get("HTTP_AUTHORIZATION"))
            identity = self._verifier.verify(token)
            async with self._db.session(self._config.call_timeout_s):
                await self._chat.user_connected(identity.user_id, identity.name, identity.avatar)
            first = await self._presence.connect(identity.user_id, sid)
        except Exception as exc:
            error = exc if isinstance(exc, Unauthorized) else client_error(exc, "connect")
            self._metrics.refused.labels(error.code).inc()
            raise socketio.exceptions.ConnectionRefusedError(
                error.message, {"code": error.code, "message": error.message}
            ) from None
        caller = Caller(
            sid,
            identity,
            TokenBucket(self._config.rate_limit_per_s, self._config.rate_limit_burst),
            came_online=first,
        )
        self._callers[sid] = caller
        await self.enter_room(sid, user_room(identity.user_id))
        self._metrics.connects.inc()
        self._metrics.connections.inc()
        self._spawn(self._after_connect(caller))
        return True

    async def _after_connect(self, caller: Caller) -> None:
        """Greet and announce once the library has sent the handshake's CONNECT packet.

        Events emitted from inside the connect handler would reach the client
        before it considers the namespace connected, and some clients drop them.
        """
        deadline = time.monotonic() + HANDSHAKE_WAIT_S
        while not self.server.manager.is_connected(caller.sid, NAMESPACE):
            if caller.sid not in self._callers or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.005)
        await self.emit("Notify", WELCOME, to=caller.sid)
        if caller.came_online:
            await self._announce(caller.user_id, "Online", skip_sid=caller.sid)
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
        if caller.expiry is not None:
            caller.expiry.cancel()
        try:
            if await self._presence.disconnect(caller.user_id, sid):
                await self._announce(caller.user_id, "Offline")
        except Exception as exc:
            client_error(exc, "disconnect")  # logs; a disconnect has no one to answer

    async def _announce(self, user_id: str, state: str, skip_sid: str | None = None) -> None:
        if self._config.presence_scope == "all":
            await self.emit("UserStatusChanged", (user_id, state), skip_sid=skip_sid)
            return
        with self._db.bound():
            contacts = await self._chat.contacts(user_id)
        if contacts:
            rooms = [user_room(u) for u in contacts]
            await self.emit("UserStatusChanged", (user_id, state), to=rooms, skip_sid=skip_sid)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Cancel timers and background work (app shutdown)."""
        for caller in self._callers.values():
            if caller.expiry is not None:
                caller.expiry.cancel()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # -- hub methods ------------------------------------------------------

    async def register_user(self, caller: Caller, user_name: str) -> dict[str, Any]:
        registered = await self._chat.register_user(caller.user_id, user_name)
        for dto in registered.pending:
            await self._emit_receive(dto, to=caller.sid)
        return {"userId": registered.user_id, "pending": len(registered.pending)}

    async def send_message(
        self,
        caller: Caller,
        sender_id: str,
        receiver_id: str,
        message: str,
        client_message_id: str | None = None,
    ) -> str:
        sent = await self._chat.send_message(
            caller.user_id, sender_id, receiver_id, message, client_message_id
        )
        dto = sent.message
        if sent.created:
            self._metrics.messages_sent.inc()
            await self._emit_receive(dto, to=user_room(dto["receiverId"]))
            await self.emit("MessageSent", dto, to=user_room(dto["senderId"]), skip_sid=caller.sid)
        return str(dto["id"])

    async def get_message_history(
        self, caller: Caller, user1_id: str, user2_id: str, skip: int = 0, take: int = 50
    ) -> list[dict[str, Any]]:
        return await self._chat.history(caller.user_id, user1_id, user2_id, skip, take)

    async def get_online_status(self, caller: Caller, user_id: str) -> bool:
        return await self._chat.is_online(user_id)

    async def get_online_users(self, caller: Caller) -> list[str]:
        return await self._chat.online_users()

    async def message_received(self, caller: Caller, message_id: str) -> None:
        change = await self._chat.mark_status(caller.user_id, message_id, Status.DELIVERED)
        if change is not None:
            await self._emit_status([change], caller.sid)

    async def message_read(self, caller: Caller, message_id: str) -> None:
        change = await self._chat.mark_status(caller.user_id, message_id, Status.READ)
        if change is not None:
            await self._emit_status([change], caller.sid)

    async def get_conversations(self, caller: Caller) -> list[dict[str, Any]]:
        return await self._chat.conversations(caller.user_id)

    async def mark_conversation_read(self, caller: Caller, other_user_id: str) -> int:
        changes = await self._chat.mark_conversation_read(caller.user_id, other_user_id)
        await self._emit_status(changes, caller.sid)
        return len(changes)

    async def typing(self, caller: Caller, receiver_id: str, is_typing: bool) -> None:
        receiver = self._chat.typing(caller.user_id, receiver_id)
        await self.emit("UserTyping", (caller.user_id, is_typing), to=user_room(receiver))

    async def sync(self, caller: Caller, cursor: str | None = None, limit: int = 200) -> dict[str, Any]:
        return await self._chat.sync(caller.user_id, cursor, limit)

    # -- fan-out ----------------------------------------------------------

    async def _emit_receive(self, dto: dict[str, Any], to: str) -> None:
        await self.emit(
            "ReceiveMessage",
            (dto["senderId"], dto["text"], dto["id"], dto["status"], dto),
            to=to,
        )

    async def _emit_status(self, changes: list[StatusChange], skip_sid: str) -> None:
        # The sender's sockets and the receiver's other sockets; the caller knows already.
        for change in changes:
            await self.emit(
                "MessageStatusChanged",
                (change.message_id, change.status),
                to=[user_room(change.sender_id), user_room(change.receiver_id)],
                skip_sid=skip_sid,
            )
