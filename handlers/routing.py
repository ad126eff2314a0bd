"""Call routing for the hub: wire method name -> handler, and argument binding.

The protocol pins PascalCase method names and positional arguments. A
``Route`` reads a handler's signature once (after the leading ``caller``) and
binds each call's arguments to it: count, JSON types, optional trailing
arguments and their defaults. Anything that does not fit is
``invalid_argument`` before a handler runs, so handlers and the services
behind them receive exactly the types their signatures say.
"""

from __future__ import annotations

import functools
import inspect
import math
import re
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import Any

from app.errors import InvalidArgument

# Wire method name -> handler method name on the namespace.
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
    "SubscribePresence": "subscribe_presence",
    "GetMessageReceipts": "get_message_receipts",
    # Groups (v2.0)
    "CreateGroup": "create_group",
    "GetGroup": "get_group",
    "AddGroupMembers": "add_group_members",
    "RemoveGroupMember": "remove_group_member",
    "RenameGroup": "rename_group",
    "SendGroupMessage": "send_group_message",
    "GetGroupHistory": "get_group_history",
    "MarkGroupRead": "mark_group_read",
    "GroupTyping": "group_typing",
}

# JavaScript's Number.MAX_SAFE_INTEGER: the largest integer every client can send exactly.
MAX_SAFE_INTEGER = 2**53 - 1

_TYPE_NAMES = {str: "string", bool: "boolean", int: "integer", list: "list"}


@dataclass(frozen=True)
class Param:
    wire: str  # the name a client reads in an error message (camelCase)
    kind: type
    optional: bool  # None is accepted
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
            kind = typing.get_origin(kind) or kind  # list[object] is bound as a list
            default = None if p.default is inspect.Parameter.empty else p.default
            params.append(Param(_camel(p.name), kind, optional, default))
        return cls(event, handler, tuple(params))

    @functools.cached_property
    def required(self) -> int:
        return sum(1 for p in self.params if p.default is None and not p.optional)

    def bind(self, args: tuple[Any, ...]) -> list[Any]:
        """The handler's arguments after the caller, or InvalidArgument."""
        if not self.required <= len(args) <= len(self.params):
            expected = (
                str(len(self.params))
                if self.required == len(self.params)
                else f"{self.required} to {len(self.params)}"
            )
            raise InvalidArgument(f"{self.event} takes {expected} arguments, got {len(args)}")
        values = list(args) + [p.default for p in self.params[len(args) :]]
        return [coerce(p, v) for p, v in zip(self.params, values)]


def routes_of(target: object) -> dict[str, Route]:
    """Every route of EVENTS, bound to the handler methods of `target`."""
    return {event: Route.of(event, getattr(target, name)) for event, name in EVENTS.items()}


def coerce(param: Param, value: Any) -> Any:
    if value is None:
        if param.optional:
            return None
        raise InvalidArgument(f"{param.wire} is required")
    if param.kind is int:
        # JSON has one number type; accept 5.0 from clients whose numbers are doubles.
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)
        if isinstance(value, int) and not isinstance(value, bool):
            if not -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
                # Bounded before anything reaches SQL: 10**30 is no page offset.
                raise InvalidArgument(f"{param.wire} must be an integer of at most 15 digits")
            return value
        raise InvalidArgument(f"{param.wire} must be an integer")
    if not isinstance(value, param.kind) or (param.kind is not bool and isinstance(value, bool)):
        raise InvalidArgument(f"{param.wire} must be a {_TYPE_NAMES[param.kind]}")
    return value


def ok(data: Any = None) -> dict[str, Any]:
    """The success envelope."""
    return {"ok": True, "data": data}


def _unwrap_optional(hint: Any) -> tuple[type, bool]:
    if isinstance(hint, UnionType) or typing.get_origin(hint) is typing.Union:
        members = [a for a in typing.get_args(hint) if a is not NoneType]
        return members[0], True
    return hint, False


def _camel(name: str) -> str:
    return re.sub(r"_([a-z0-9])", lambda m: m.group(1).upper(), name)
