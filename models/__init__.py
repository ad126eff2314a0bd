"""Tortoise models: users, messages, conversation heads, groups and members, the change counter.

Sender and receiver ids are plain strings, not foreign keys: a message may be
sent to a user who has never connected, and is handed over when they do.

Groups sit beside direct conversations (docs/architecture.md): a group message
is one row of chat_message, whatever the group's size, and each member has one
row of chat_group_member holding their positions (delivered, read) in it. No
row is written per recipient of a message.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from app.domain import (
    CLIENT_MESSAGE_ID_MAX,
    DISPLAY_NAME_MAX,
    GROUP_ID_MAX,
    GROUP_TITLE_MAX,
    USER_ID_MAX,
    Status,
)

# "<len(a)>:<a>|<b>" with a <= b: unambiguous whatever characters ids contain.
# A group's thread is "g:<group id>" (never a digit first, so never a pair's).
PAIR_KEY_MAX = 2 + 1 + USER_ID_MAX + 1 + USER_ID_MAX


class User(Model):
    id = fields.CharField(max_length=USER_ID_MAX, primary_key=True)
    # Set by RegisterUser; wins over the token's name claim.
    display_name = fields.CharField(max_length=DISPLAY_NAME_MAX, null=True)
    token_name = fields.CharField(max_length=DISPLAY_NAME_MAX, null=True)
    avatar = fields.CharField(max_length=1024, null=True)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "chat_user"

    @property
    def name(self) -> str:
        return self.display_name or self.token_name or self.id


class Message(Model):
    # Insert order; history pages and tie-breaks use it. Clients only see `uuid`.
    id = fields.BigIntField(primary_key=True)
    uuid = fields.UUIDField(unique=True)
    sender_id = fields.CharField(max_length=USER_ID_MAX)
    receiver_id = fields.CharField(max_length=USER_ID_MAX, null=True)  # None: a group message
    # The thread the message belongs to: a pair of users, or a group (see PAIR_KEY_MAX).
    pair_key = fields.CharField(max_length=PAIR_KEY_MAX)
    group_id = fields.CharField(max_length=GROUP_ID_MAX, null=True)
    text = fields.TextField()
    status = fields.SmallIntField(default=int(Status.SENT))  # app.domain.Status, as a number
    client_message_id = fields.CharField(max_length=CLIENT_MESSAGE_ID_MAX, null=True)
    created_at = fields.DatetimeField()
    # Position in the global change order (see app/storage/changes.py); rows touched by
    # one transaction share a value and are ordered by id within it.
    change_seq = fields.BigIntField()
    # Group messages: the members other than the sender when it was sent, and how
    # many of them have it (delivered, read); `status` is their aggregate.
    recipient_count = fields.IntField(default=1)
    delivered_count = fields.IntField(default=0)
    read_count = fields.IntField(default=0)

    class Meta:
        table = "chat_message"
        unique_together = (("sender_id", "client_message_id"),)
        indexes = (
            Index(fields=("pair_key", "id"), name="idx_message_pair"),
            Index(fields=("receiver_id", "status", "sender_id"), name="idx_message_inbox"),
            Index(fields=("sender_id", "change_seq", "id"), name="idx_message_sent_seq"),
            Index(fields=("receiver_id", "change_seq", "id"), name="idx_message_recv_seq"),
            Index(fields=("group_id", "change_seq", "id"), name="idx_message_group_seq"),
        )


class Conversation(Model):
    """One row per (owner, peer): the head of the thread as the owner sees it."""

    id = fields.BigIntField(primary_key=True)
    owner_id = fields.CharField(max_length=USER_ID_MAX)
    peer_id = fields.CharField(max_length=USER_ID_MAX)
    last_message_id = fields.BigIntField()
    last_at = fields.DatetimeField()

    class Meta:
        table = "chat_conversation"
        unique_together = (("owner_id", "peer_id"),)
        indexes = (Index(fields=("owner_id", "last_at"), name="idx_conversation_owner"),)


class Group(Model):
    """A group conversation: its title, and the counts each unread count is worked out from."""

    id = fields.CharField(max_length=GROUP_ID_MAX, primary_key=True)
    title = fields.CharField(max_length=GROUP_TITLE_MAX)
    avatar = fields.CharField(max_length=1024, null=True)
    created_by = fields.CharField(max_length=USER_ID_MAX)
    created_at = fields.DatetimeField()
    # CreateGroup's idempotency key, per creator.
    client_request_id = fields.CharField(max_length=CLIENT_MESSAGE_ID_MAX, null=True)
    member_count = fields.IntField()
    message_count = fields.BigIntField(default=0)
    last_message_id = fields.BigIntField(default=0)  # the latest message's row; 0: none yet
    last_at = fields.DatetimeField()  # the latest message's time, else the creation's
    # The change (app/storage/changes.py) that last created, renamed or changed its members.
    change_seq = fields.BigIntField()

    class Meta:
        table = "chat_group"
        unique_together = (("created_by", "client_request_id"),)


class GroupMember(Model):
    """One user in one group: role, and positions. Kept after they leave, inactive."""

    id = fields.BigIntField(primary_key=True)
    group_id = fields.CharField(max_length=GROUP_ID_MAX)
    user_id = fields.CharField(max_length=USER_ID_MAX)
    role = fields.SmallIntField(default=0)  # app.domain.Role, as a number
    active = fields.BooleanField(default=True)
    joined_at = fields.DatetimeField()
    # The group's latest message row when they (last) joined: they see and
    # receive only the messages after it.
    joined_row = fields.BigIntField()
    delivered_upto = fields.BigIntField()  # a message row
    read_upto = fields.BigIntField()  # a message row
    # Group messages up to read_upto, and own messages after it: their unread
    # count is the group's message_count less both.
    read_messages = fields.BigIntField()
    own_unread = fields.IntField(default=0)
    change_seq = fields.BigIntField()  # the change that last added or removed them

    class Meta:
        table = "chat_group_member"
        unique_together = (("group_id", "user_id"),)
        indexes = (
            Index(fields=("user_id", "active"), name="idx_member_user"),
            Index(fields=("group_id", "active", "joined_at"), name="idx_member_group"),
        )


class Counter(Model):
    """Named counters. The `change` row orders every write for Sync cursors."""

    name = fields.CharField(max_length=32, primary_key=True)
    value = fields.BigIntField(default=0)

    class Meta:
        table = "chat_counter"
