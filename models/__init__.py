"""Tortoise models: users, messages, per-user conversation heads, and the change counter.

Sender and receiver ids are plain strings, not foreign keys: a message may be
sent to a user who has never connected, and is handed over when they do.
"""

from __future__ import annotations

from tortoise import fields
from tortoise.indexes import Index
from tortoise.models import Model

from app.domain import CLIENT_MESSAGE_ID_MAX, DISPLAY_NAME_MAX, USER_ID_MAX, Status
# "<len(a)>:<a>|<b>" with a <= b: unambiguous whatever characters ids contain.
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
    receiver_id = fields.CharField(max_length=USER_ID_MAX)
    pair_key = fields.CharField(max_length=PAIR_KEY_MAX)
    text = fields.TextField()
    status = fields.SmallIntField(default=int(Status.SENT))  # app.domain.Status, as a number
    client_message_id = fields.CharField(max_length=CLIENT_MESSAGE_ID_MAX, null=True)
    created_at = fields.DatetimeField()
    # Position in the global change order (see app/storage/store.py); rows touched by one
    # transaction share a value and are ordered by id within it.
    change_seq = fields.BigIntField()

    class Meta:
        table = "chat_message"
        unique_together = (("sender_id", "client_message_id"),)
        indexes = (
            Index(fields=("pair_key", "id"), name="idx_message_pair"),
            Index(fields=("receiver_id", "status", "sender_id"), name="idx_message_inbox"),
            Index(fields=("sender_id", "change_seq", "id"), name="idx_message_sent_seq"),
            Index(fields=("receiver_id", "change_seq", "id"), name="idx_message_recv_seq"),
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


class Counter(Model):
    """Named counters. The `change` row orders every write for Sync cursors."""

    name = fields.CharField(max_length=32, primary_key=True)
    value = fields.BigIntField(default=0)

    class Meta:
        table = "chat_counter"
