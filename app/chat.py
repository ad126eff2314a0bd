"""The chat domain: the rules behind every hub method.

The service speaks in user ids and DTOs. It never sees a socket id and never
emits: it returns what happened, and the namespace decides who hears of it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.errors import Forbidden, InvalidArgument, NotFound
from app.presence import Presence
from app.store import START, ChangePosition, MessageStore
from app.validation import (
    MESSAGE_MAX_CHARS,
    check_display_name,
    check_range,
    check_text,
    check_user_id,
)
from models import Message, Status

HISTORY_TAKE_MAX = 100
SYNC_LIMIT_MAX = 500
PENDING_PAGE = 500
_CURSOR = re.compile(r"^(\d{1,19})\.(\d{1,19})$")

Dto = dict[str, Any]


def iso_ms(dt: datetime) -> str:
    """UTC ISO-8601 with milliseconds and Z, as the protocol pins."""
    dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond // 1000:03d}Z"


def message_dto(m: Message) -> Dto:
    return {
        "id": str(m.uuid),
        "senderId": m.sender_id,
        "receiverId": m.receiver_id,
        "text": m.text,
        "status": Status(m.status).wire,
        "timestamp": iso_ms(m.created_at),
        "clientMessageId": m.client_message_id,
    }


def encode_cursor(position: ChangePosition) -> str:
    return f"{position.seq}.{position.row}"


def decode_cursor(cursor: str | None) -> ChangePosition:
    if cursor is None:
        return START
    match = _CURSOR.match(cursor)
    if match is None:
        raise InvalidArgument("cursor is not one this server returned")
    return ChangePosition(int(match.group(1)), int(match.group(2)))


@dataclass(frozen=True)
class Sent:
    message: Dto
    created: bool  # False for an idempotent repeat: deliver nothing again


@dataclass(frozen=True)
class StatusChange:
    message_id: str
    sender_id: str
    receiver_id: str
    status: str


@dataclass(frozen=True)
class Registered:
    user_id: str
    pending: list[Dto]


class ChatService:
    def __init__(self, store: MessageStore, presence: Presence) -> None:
        self._store = store
        self._presence = presence

    # -- connections ------------------------------------------------------

    async def user_connected(self, user_id: str, name: str | None, avatar: str | None) -> None:
        """Remember what the token says about the user."""
        changes: dict[str, str | None] = {"token_name": name}
        if avatar is not None:
            changes["avatar"] = avatar
        await self._store.save_user(user_id, **changes)

    async def register_user(self, caller: str, user_name: object) -> Registered:
        name = check_display_name(user_name)
        await self._store.save_user(caller, display_name=name)
        pending: list[Dto] = []
        after = 0
        while True:
            page = await self._store.pending(caller, after, PENDING_PAGE)
            pending.extend(message_dto(m) for m in page)
            if len(page) < PENDING_PAGE:
                return Registered(caller, pending)
            after = page[-1].id

    # -- messages ---------------------------------------------------------

    async def send_message(
        self,
        caller: str,
        sender_id: object,
        receiver_id: object,
        text: object,
        client_message_id: object = None,
    ) -> Sent:
        sender = check_user_id(sender_id, "senderId")
        receiver = check_user_id(receiver_id, "receiverId")
        body = check_text(text, "message", MESSAGE_MAX_CHARS)
        client_id = None
        if client_message_id is not None:
            # Same shape rules as a user id, and the same 64-character limit.
            client_id = check_user_id(client_message_id, "clientMessageId")
        if sender != caller:
            raise Forbidden("senderId must be your own user id")
        if receiver == sender:
            raise InvalidArgument("receiverId must be another user")
        message, created = await self._store.insert_message(sender, receiver, body, client_id)
        return Sent(message_dto(message), created)

    async def history(
        self, caller: str, user1_id: object, user2_id: object, skip: int, take: int
    ) -> list[Dto]:
        a = check_user_id(user1_id, "user1Id")
        b = check_user_id(user2_id, "user2Id")
        check_range(skip, "skip", 0)
        check_range(take, "take", 1, HISTORY_TAKE_MAX)
        if caller not in (a, b):
            raise Forbidden("you can only read conversations you take part in")
        return [message_dto(m) for m in await self._store.history(a, b, skip, take)]

    async def history_page(
        self, caller: str, other_id: object, before: str | None, limit: int
    ) -> tuple[list[Dto], str | None]:
        """Cursor paging for the REST API: newest first, strictly older than `before`."""
        other = check_user_id(other_id, "userId")
        check_range(limit, "limit", 1, HISTORY_TAKE_MAX)
        before_row = None
        if before is not None:
            anchor = await self._store.get(before)
            if anchor is None or {anchor.sender_id, anchor.receiver_id} != {caller, other}:
                raise NotFound("before names no message of this conversation")
            before_row = anchor.id
        page = await self._store.history_before(caller, other, before_row, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return [message_dto(m) for m in page], (str(page[-1].uuid) if more else None)

    async def mark_status(self, caller: str, message_id: object, status: Status) -> StatusChange | None:
        """Receipt for one message; None when the status was already reached."""
        if not isinstance(message_id, str) or not message_id:
            raise InvalidArgument("messageId must be a non-empty string")
        message = await self._store.get(message_id)
        if message is None:
            raise NotFound("no such message")
        if message.receiver_id != caller:
            raise Forbidden("only the receiver can acknowledge a message")
        if message.status >= status or not await self._store.advance_status(message, status):
            return None
        return StatusChange(str(message.uuid), message.sender_id, message.receiver_id, status.wire)

    async def mark_conversation_read(self, caller: str, other_user_id: object) -> list[StatusChange]:
        other = check_user_id(other_user_id, "otherUserId")
        changed = await self._store.mark_read(other, caller)
        return [
            StatusChange(str(m.uuid), m.sender_id, m.receiver_id, Status.READ.wire) for m in changed
        ]

    async def sync(self, caller: str, cursor: str | None, limit: int) -> Dto:
        check_range(limit, "limit", 1, SYNC_LIMIT_MAX)
        after = decode_cursor(cursor)
        page = await self._store.changes(caller, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        last = ChangePosition(page[-1].change_seq, page[-1].id) if page else after
        return {
            "messages": [message_dto(m) for m in page],
            "cursor": encode_cursor(last),
            "hasMore": more,
        }

    # -- conversations and presence ---------------------------------------

    async def conversations(self, caller: str) -> list[Dto]:
        heads = await self._store.conversations(caller)
        if not heads:
            return []
        peers = [c.peer_id for c in heads]
        messages = await self._store.messages_by_row(c.last_message_id for c in heads)
        users = await self._store.users(peers)
        unread = await self._store.unread_counts(caller)
        online = await self._presence.online_among(peers)
        result = []
        for head in heads:
            user = users.get(head.peer_id)
            last = messages.get(head.last_message_id)
            result.append(
                {
                    "id": head.peer_id,
                    "name": user.name if user else head.peer_id,
                    "avatar": user.avatar if user else None,
                    "previewMessage": last.text if last else "",
                    "lastActive": iso_ms(head.last_at),
                    "isActive": head.peer_id in online,
                    "unreadCount": unread.get(head.peer_id, 0),
                }
            )
        return result

    async def contacts(self, user_id: str) -> Sequence[str]:
        """Users who share a conversation with `user_id`."""
        return await self._store.peers(user_id)

    async def is_online(self, user_id: object) -> bool:
        return await self._presence.is_online(check_user_id(user_id, "userId"))

    async def online_users(self) -> list[str]:
        return await self._presence.online_users()

    def typing(self, caller: str, receiver_id: object) -> str:
        """Check a typing notice; return who should hear it. Nothing is stored."""
        receiver = check_user_id(receiver_id, "receiverId")
        if receiver == caller:
            raise InvalidArgument("receiverId must be another user")
        return receiver
