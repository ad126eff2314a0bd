"""The protocol's JSON shapes (MessageDto, ConversationDto, GroupDto, Sync pages) and event names.

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
    Group,
    GroupChanged,
    GroupMessageArrived,
    GroupTypingChanged,
    MessageArrived,
    MessageEchoed,
    PresenceChanged,
    ReadPositionMoved,
    Receipts,
    Role,
    Status,
    StatusChanged,
    SyncPage,
    TypingChanged,
)

Json = dict[str, Any]

# The protocol's names for statuses, roles and presence.
STATUS = {Status.SENT: "sent", Status.DELIVERED: "delivered", Status.READ: "read"}
ROLE = {Role.MEMBER: "member", Role.ADMIN: "admin"}


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
        "groupId": m.group_id,
    }


def conversation_dto(c: ConversationSummary) -> Json:
    dto: Json = {
        "kind": "group" if c.is_group else "direct",
        "id": c.id,
        "name": c.name,
        "avatar": c.avatar,
        "previewMessage": c.preview,
        "lastActive": iso_ms(c.last_at),
        "isActive": c.is_active,
        "unreadCount": c.unread,
    }
    if c.is_group:
        dto["memberCount"] = c.member_count
    return dto


def group_dto(g: Group) -> Json:
    return {
        "id": g.id,
        "title": g.title,
        "avatar": g.avatar,
        "createdBy": g.created_by,
        "createdAt": iso_ms(g.created_at),
        "memberCount": len(g.members),
        "members": [
            {"userId": m.user_id, "name": m.name, "role": ROLE[m.role], "joinedAt": iso_ms(m.joined_at)}
            for m in g.members
        ],
    }


def receipts_dto(r: Receipts) -> Json:
    return {
        "recipientCount": r.recipient_count,
        "deliveredCount": r.delivered_count,
        "readCount": r.read_count,
        "readBy": list(r.read_by) if r.read_by is not None else None,
    }


def sync_page(page: SyncPage) -> Json:
    return {
        "messages": [message_dto(m) for m in page.messages],
        "cursor": page.cursor.encode(),
        "hasMore": page.has_more,
        "groups": [group_dto(g) for g in page.groups],
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
        case GroupMessageArrived(m):
            return "ReceiveGroupMessage", (m.group_id, message_dto(m))
        case GroupChanged(group):
            return "GroupChanged", (group_dto(group),)
        case GroupTypingChanged(group_id, user_id, is_typing):
            return "UserTypingInGroup", (group_id, user_id, is_typing)
        case ReadPositionMoved(group_id, message_id):
            return "GroupReadPositionChanged", (group_id, message_id)
    raise TypeError(f"no wire form for {event!r}")
