"""The domain's vocabulary: the values the services return, and the notices they raise.

A service call answers with a value and, where something happened that other
people must hear of, a tuple of :class:`Notice`: *what* happened (a typed event)
and *who* must hear it (user ids). The edge maps users onto its own delivery
mechanism (Socket.IO rooms) and events onto wire names; it never decides who
hears what. Nothing here knows about sockets, JSON or the ORM.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Generic, TypeVar

from app.errors import InvalidArgument

T = TypeVar("T")

# ASCII digits only (\d would take any script's), each part a BIGINT.
_CURSOR = re.compile(r"([0-9]{1,19})\.([0-9]{1,19})")
BIGINT_MAX = 2**63 - 1


# -- limits -------------------------------------------------------------------

USER_ID_MAX = 64
DISPLAY_NAME_MAX = 100
CLIENT_MESSAGE_ID_MAX = 64
GROUP_ID_MAX = 64
GROUP_TITLE_MAX = 100
# Messages in one page of history (GetMessageHistory, GetGroupHistory, REST).
HISTORY_TAKE_MAX = 100


# -- values -------------------------------------------------------------------


class Status(IntEnum):
    """A message's delivery status. It only moves forward, so it is ordered."""

    SENT = 0
    DELIVERED = 1
    READ = 2


class Role(IntEnum):
    """A group member's role: admins change the group, members talk in it."""

    MEMBER = 0
    ADMIN = 1


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """A stored message as the domain sees it."""

    row: int  # insert order; never shown to clients
    id: str  # the uuid clients know it by
    sender_id: str
    receiver_id: str | None  # None for a group message
    text: str
    # A group message's status is the aggregate over its recipients: read once
    # every one has read it, delivered once every one has it.
    status: Status
    created_at: datetime
    client_message_id: str | None
    change_seq: int
    group_id: str | None = None

    @property
    def position(self) -> ChangePosition:
        return ChangePosition(self.change_seq, self.row)


@dataclass(frozen=True, order=True, slots=True)
class ChangePosition:
    """Where a Sync reader is in the change order: (change_seq, message row)."""

    seq: int
    row: int

    def encode(self) -> str:
        """The opaque cursor string a client gets and hands back."""
        return f"{self.seq}.{self.row}"

    @classmethod
    def decode(cls, cursor: str | None) -> ChangePosition:
        if cursor is None:
            return START
        match = _CURSOR.fullmatch(cursor)
        if match is None or max(int(match.group(1)), int(match.group(2))) > BIGINT_MAX:
            raise InvalidArgument("cursor is not one this server returned")
        return cls(int(match.group(1)), int(match.group(2)))


START = ChangePosition(0, 0)


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """One entry of a user's conversation list: another user, or a group."""

    id: str  # the other user's id, or the group's
    name: str
    avatar: str | None
    preview: str
    last_at: datetime
    is_active: bool
    unread: int
    member_count: int | None = None  # a group's size; None for a direct conversation

    @property
    def is_group(self) -> bool:
        return self.member_count is not None


@dataclass(frozen=True, slots=True)
class GroupMember:
    user_id: str
    name: str
    role: Role
    joined_at: datetime


@dataclass(frozen=True, slots=True)
class Group:
    """A group as its members see it: who is in it now."""

    id: str
    title: str
    avatar: str | None
    created_by: str
    created_at: datetime
    members: tuple[GroupMember, ...]

    @property
    def member_ids(self) -> tuple[str, ...]:
        return tuple(m.user_id for m in self.members)


@dataclass(frozen=True, slots=True)
class Receipts:
    """Who of a message's recipients has it and has read it (GetMessageReceipts)."""

    recipient_count: int
    delivered_count: int
    read_count: int
    read_by: tuple[str, ...] | None  # None when there are too many recipients to list


@dataclass(frozen=True, slots=True)
class SyncPage:
    messages: list[ChatMessage]
    cursor: ChangePosition
    has_more: bool
    # Groups created, renamed or whose members changed within this page's changes,
    # including those the reader left or was removed from.
    groups: list[Group] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Registered:
    user_id: str
    pending: int


# -- events: what happened ----------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessageArrived:
    """A new message for its receiver (also the hand-over of pending messages)."""

    message: ChatMessage


@dataclass(frozen=True, slots=True)
class MessageEchoed:
    """A message the user sent from another of their connections."""

    message: ChatMessage


@dataclass(frozen=True, slots=True)
class StatusChanged:
    """A message's status moved forward (a group message's aggregate, for its sender)."""

    message_id: str
    status: Status


@dataclass(frozen=True, slots=True)
class GroupMessageArrived:
    """A new group message for the members other than its sender."""

    message: ChatMessage


@dataclass(frozen=True, slots=True)
class GroupChanged:
    """A group was created, renamed, or members came or went."""

    group: Group


@dataclass(frozen=True, slots=True)
class GroupTypingChanged:
    group_id: str
    user_id: str
    is_typing: bool


@dataclass(frozen=True, slots=True)
class ReadPositionMoved:
    """The reader's position in a group moved: their other devices clear the unread count."""

    group_id: str
    message_id: str


@dataclass(frozen=True, slots=True)
class PresenceChanged:
    user_id: str
    online: bool
    # Across instances, the user's presence version (it grows with each change):
    # an instance never delivers a user's change after a later one. 0: unordered.
    version: int = 0


@dataclass(frozen=True, slots=True)
class TypingChanged:
    user_id: str
    is_typing: bool


Event = (
    MessageArrived
    | MessageEchoed
    | StatusChanged
    | PresenceChanged
    | TypingChanged
    | GroupMessageArrived
    | GroupChanged
    | GroupTypingChanged
    | ReadPositionMoved
)


# -- who must hear it ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Notice:
    """An event and who must hear it.

    ``users``: every connection of these users; ``None`` means every connected
    user. ``watchers_of``: also every connection that watches these users'
    presence (SubscribePresence); each connection hears it once.
    ``except_caller``: not the connection that made the call (it learns the
    result from its own answer). ``caller_only``: just that connection.
    """

    event: Event
    users: tuple[str, ...] | None = ()
    except_caller: bool = False
    caller_only: bool = False
    watchers_of: tuple[str, ...] = ()

    @classmethod
    def to_users(
        cls, event: Event, *users: str, except_caller: bool = False, watchers_of: tuple[str, ...] = ()
    ) -> Notice:
        return cls(event, tuple(dict.fromkeys(users)), except_caller, watchers_of=watchers_of)

    @classmethod
    def to_everyone(cls, event: Event, *, except_caller: bool = False) -> Notice:
        return cls(event, None, except_caller=except_caller)

    @classmethod
    def to_caller(cls, event: Event) -> Notice:
        return cls(event, (), caller_only=True)


@dataclass(frozen=True, slots=True)
class Outcome(Generic[T]):
    """A call's answer and the notices it raised, in the order they must go out."""

    value: T
    notices: tuple[Notice, ...] = field(default=())


def paged(page: list[ChatMessage], limit: int) -> tuple[list[ChatMessage], str | None]:
    """A page of `limit` from `limit + 1` read, and the id to continue before."""
    more = len(page) > limit
    page = page[:limit]
    return page, (page[-1].id if more else None)
