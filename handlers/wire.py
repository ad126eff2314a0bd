"""The protocol's JSON shapes (MessageDto, ConversationDto, Sync pages) and event names.

Both edges, the /chat hub and REST, answer in these shapes; the domain never
builds a wire dict.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from app.domain import (
    ChatMessage,
    ConversationSummary,
    Event,
    MessageArrived,
    MessageEchoed,
    PresenceChanged,
    Status,
    StatusChanged,
    SyncPage,
    TypingChanged,
)

Json = dict[str, Any]

# The protocol's names for statuses and presence.
STATUS = {Status.SENT: "sent", Status.DELIVERED: "delivered", Status.READ: "read"}


def presence_word(online: bool) -> str:
    return "Online" if online else "Offline"


def iso_ms(dt: datetime) -> str:
    """UTC ISO-8601 with milliseconds and Z, as the protocol pins."""
    if dt.utcoffset():
        dt = dt.astimezone(UTC)
    # By hand: strftime showed in the profile, on every message twice.
    return (
        f"{dt.year:04d}-{dt.month:02d}-{dt.day:02d}T"
        f"{dt.hour:02d}:{dt.minute:02d}:{dt.second:02d}.{dt.microsecond // 1000:03d}Z"
    )


def message_dto(m: ChatMessage) -> Json:
    return {
        "id": m.id,
        "senderId": m.sender_id,
        "receiverId": m.receiver_id,
        "text": m.text,
        "status": STATUS[m.status],
        "timestamp": iso_ms(m.created_at),
        "clientMessageId": m.client_message_id,
    }


def conversation_dto(c: ConversationSummary) -> Json:
    return {
        "id": c.peer_id,
        "name": c.name,
        "avatar": c.avatar,
        "previewMessage": c.preview,
        "lastActive": iso_ms(c.last_at),
        "isActive": c.is_active,
        "unreadCount": c.unread,
    }


def sync_page(page: SyncPage) -> Json:
    return {
        "messages": [message_dto(m) for m in page.messages],
        "cursor": page.cursor.encode(),
        "hasMore": page.has_more,
    }


def server_event(event: Event) -> tuple[str, tuple[Any, ...]]:
    """The wire name and positional arguments of a server -> client event."""
    match event:
        case MessageArrived(m):
            return "ReceiveMessage", (m.sender_id, m.text, m.id, STATUS[m.status], message_dto(m))
        case MessageEchoed(m):
            return "MessageSent", (message_dto(m),)
        case StatusChanged(message_id, status):
            return "MessageStatusChanged", (message_id, STATUS[status])
        case PresenceChanged(user_id, online):
            return "UserStatusChanged", (user_id, presence_word(online))
        case TypingChanged(user_id, is_typing):
            return "UserTyping", (user_id, is_typing)
    raise TypeError(f"no wire form for {event!r}")
