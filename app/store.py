"""Persistence for messages, conversations and users: the one place that reads and writes them.

Every public method runs in its own storage session (see ``Database.session``):
it binds the ORM context itself, is bounded by the call time limit, and any
storage failure leaves it as ``Unavailable``. It returns domain values, never
ORM objects, so nothing above this module depends on Tortoise.

Every write takes the next value of the `change` counter inside its
transaction. Bumping that row locks it until commit (a row lock on MySQL, the
database write lock on SQLite), so change numbers become visible strictly in
the order they were handed out. A Sync reader that has seen change N has
therefore seen every change before N: the cursor can never skip a row that
commits late.
"""

from __future__ import annotations

import functools
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Concatenate, ParamSpec, TypeVar

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F, Q
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from app.db import Database
from app.domain import ChangePosition, ChatMessage
from models import Conversation, Counter, Message, Status, User

CHANGE_COUNTER = "change"
# Bound on ids in one `IN (...)` list.
IN_CHUNK = 500

P = ParamSpec("P")
R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """A conversation head with what the list shows of it (presence is not stored)."""

    peer_id: str
    name: str
    avatar: str | None
    preview: str
    last_at: datetime
    unread: int


def now_ms() -> datetime:
    """Now in UTC, truncated to the millisecond the protocol shows."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def pair_key(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"{len(low)}:{low}|{high}"


def _message(m: Message) -> ChatMessage:
    return ChatMessage(
        row=m.id,
        id=str(m.uuid),
        sender_id=m.sender_id,
        receiver_id=m.receiver_id,
        text=m.text,
        status=Status(m.status),
        created_at=m.created_at,
        client_message_id=m.client_message_id,
        change_seq=m.change_seq,
    )


def _stored(
    method: Callable[Concatenate[MessageStore, P], Awaitable[R]],
) -> Callable[Concatenate[MessageStore, P], Awaitable[R]]:
    """Run a store method in a storage session named after it."""

    @functools.wraps(method)
    async def run(self: MessageStore, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._db.session(self._timeout_s, method.__name__):
            return await method(self, *args, **kwargs)

    return run


class MessageStore:
    def __init__(self, db: Database, timeout_s: float) -> None:
        self._db = db
        self._timeout_s = timeout_s

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query (readiness; not logged here)."""
        await self._db.ping()

    async def _next_change(self, conn: BaseDBAsyncClient) -> int:
        updated = await Counter.filter(name=CHANGE_COUNTER).using_db(conn).update(
            value=F("value") + 1
        )
        if not updated:
            # First write ever. A concurrent first write makes one of the two
            # fail on the primary key; its caller's transaction rolls back.
            await Counter.create(name=CHANGE_COUNTER, value=1, using_db=conn)
            return 1
        value = await Counter.filter(name=CHANGE_COUNTER).using_db(conn).values_list(
            "value", flat=True
        )
        return int(value[0])

    # -- messages ---------------------------------------------------------

    @_stored
    async def insert_message(
        self, sender_id: str, receiver_id: str, text: str, client_message_id: str | None
    ) -> tuple[ChatMessage, bool]:
        """Store a message and move both conversation heads; commit before returning.

        Returns (message, created). A second message with the same
        (sender, clientMessageId) returns the stored one with created=False.
        """
        if client_message_id is not None:
            existing = await self._by_client_id(sender_id, client_message_id)
            if existing is not None:
                return _message(existing), False
        try:
            async with in_transaction() as conn:
                seq = await self._next_change(conn)
                message = await Message.create(
                    uuid=uuidlib.uuid4(),
                    sender_id=sender_id,
                    receiver_id=receiver_id,
                    pair_key=pair_key(sender_id, receiver_id),
                    text=text,
                    status=Status.SENT,
                    client_message_id=client_message_id,
                    created_at=now_ms(),
                    change_seq=seq,
                    using_db=conn,
                )
                await self._touch_conversation(conn, sender_id, receiver_id, message)
                await self._touch_conversation(conn, receiver_id, sender_id, message)
        except IntegrityError:
            # Lost a race with a concurrent send of the same clientMessageId.
            if client_message_id is None:
                raise
            existing = await self._by_client_id(sender_id, client_message_id)
            if existing is None:
                raise
            return _message(existing), False
        return _message(message), True

    async def _by_client_id(self, sender_id: str, client_message_id: str) -> Message | None:
        return await Message.get_or_none(sender_id=sender_id, client_message_id=client_message_id)

    async def _touch_conversation(
        self, conn: BaseDBAsyncClient, owner: str, peer: str, message: Message
    ) -> None:
        # Writers are serialised by the change counter, so update-then-insert cannot race.
        updated = await Conversation.filter(owner_id=owner, peer_id=peer).using_db(conn).update(
            last_message_id=message.id, last_at=message.created_at
        )
        if not updated:
            await Conversation.create(
                owner_id=owner,
                peer_id=peer,
                last_message_id=message.id,
                last_at=message.created_at,
                using_db=conn,
            )

    @_stored
    async def get(self, message_id: str) -> ChatMessage | None:
        try:
            parsed = uuidlib.UUID(message_id)
        except ValueError:
            return None
        found = await Message.get_or_none(uuid=parsed)
        return _message(found) if found is not None else None

    @_stored
    async def advance_status(self, message: ChatMessage, status: Status) -> bool:
        """Move one message forward to `status`; False if it was already there or beyond."""
        async with in_transaction() as conn:
            seq = await self._next_change(conn)
            updated = await Message.filter(id=message.row, status__lt=status).using_db(conn).update(
                status=status, change_seq=seq
            )
        return bool(updated)

    @_stored
    async def mark_read(self, sender_id: str, receiver_id: str) -> list[ChatMessage]:
        """Mark every message from sender to receiver read; return the ones that changed."""
        async with in_transaction() as conn:
            rows = (
                await Message.filter(
                    sender_id=sender_id, receiver_id=receiver_id, status__lt=Status.READ
                )
                .using_db(conn)
                .order_by("id")
            )
            if not rows:
                return []
            seq = await self._next_change(conn)
            for chunk in _chunks([m.id for m in rows], IN_CHUNK):
                await Message.filter(id__in=chunk, status__lt=Status.READ).using_db(conn).update(
                    status=Status.READ, change_seq=seq
                )
        for m in rows:
            m.status = Status.READ
            m.change_seq = seq
        return [_message(m) for m in rows]

    @_stored
    async def history(self, a: str, b: str, skip: int, take: int) -> list[ChatMessage]:
        rows = await Message.filter(pair_key=pair_key(a, b)).order_by("-id").offset(skip).limit(take)
        return [_message(m) for m in rows]

    @_stored
    async def history_before(
        self, a: str, b: str, before_row: int | None, limit: int
    ) -> list[ChatMessage]:
        query = Message.filter(pair_key=pair_key(a, b))
        if before_row is not None:
            query = query.filter(id__lt=before_row)
        return [_message(m) for m in await query.order_by("-id").limit(limit)]

    @_stored
    async def pending(self, receiver_id: str, after_row: int, limit: int) -> list[ChatMessage]:
        rows = (
            await Message.filter(receiver_id=receiver_id, status=Status.SENT, id__gt=after_row)
            .order_by("id")
            .limit(limit)
        )
        return [_message(m) for m in rows]

    @_stored
    async def changes(self, user_id: str, after: ChangePosition, limit: int) -> list[ChatMessage]:
        """Messages the user sent or received, changed after `after`, in change order."""
        later = Q(change_seq__gt=after.seq) | Q(change_seq=after.seq, id__gt=after.row)
        # Both reads in one transaction: one snapshot, so no commit can fall between them.
        async with in_transaction() as conn:
            sent = (
                await Message.filter(Q(sender_id=user_id) & later)
                .using_db(conn)
                .order_by("change_seq", "id")
                .limit(limit)
            )
            received = (
                await Message.filter(Q(receiver_id=user_id) & later)
                .using_db(conn)
                .order_by("change_seq", "id")
                .limit(limit)
            )
        merged = sorted([*sent, *received], key=lambda m: (m.change_seq, m.id))
        return [_message(m) for m in merged[:limit]]

    # -- conversations ----------------------------------------------------

    @_stored
    async def conversations(self, owner_id: str) -> list[ConversationRow]:
        """The owner's conversation heads, latest first, with names, previews and unread counts."""
        heads = await Conversation.filter(owner_id=owner_id).order_by("-last_at", "-last_message_id")
        if not heads:
            return []
        peers = [c.peer_id for c in heads]
        previews: dict[int, str] = {}
        for chunk in _chunks([c.last_message_id for c in heads], IN_CHUNK):
            for row_id, text in await Message.filter(id__in=chunk).values_list("id", "text"):
                previews[row_id] = text
        users: dict[str, User] = {}
        for chunk in _chunks(peers, IN_CHUNK):
            for u in await User.filter(id__in=chunk):
                users[u.id] = u
        unread = await self._unread_counts(owner_id)
        rows = []
        for head in heads:
            user = users.get(head.peer_id)
            rows.append(
                ConversationRow(
                    peer_id=head.peer_id,
                    name=user.name if user else head.peer_id,
                    avatar=user.avatar if user else None,
                    preview=previews.get(head.last_message_id, ""),
                    last_at=head.last_at,
                    unread=unread.get(head.peer_id, 0),
                )
            )
        return rows

    async def _unread_counts(self, receiver_id: str) -> dict[str, int]:
        rows = (
            await Message.filter(receiver_id=receiver_id, status__lt=Status.READ)
            .annotate(n=Count("id"))
            .group_by("sender_id")
            .values_list("sender_id", "n")
        )
        return {sender: int(n) for sender, n in rows}

    @_stored
    async def peers(self, owner_id: str) -> list[str]:
        """Users who share a conversation with `owner_id`."""
        return list(
            await Conversation.filter(owner_id=owner_id).values_list("peer_id", flat=True)
        )

    # -- users ------------------------------------------------------------

    @_stored
    async def save_user(self, user_id: str, **changes: str | None) -> None:
        """Upsert a user row; concurrent first connects of one user both succeed."""
        changes_at = {**changes, "updated_at": now_ms()}
        for _ in range(2):
            if await User.filter(id=user_id).update(**changes_at):
                return
            try:
                await User.create(id=user_id, **changes_at)
                return
            except IntegrityError:
                continue  # created by a concurrent connect: update it instead


def _chunks(items: Sequence[int] | Sequence[str], size: int) -> Iterable[list]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
