"""Persistence for messages, conversations and users: the one place that writes them.

Every write takes the next value of the `change` counter inside its
transaction. Bumping that row locks it until commit (a row lock on MySQL, the
database write lock on SQLite), so change numbers become visible strictly in
the order they were handed out. A Sync reader that has seen change N has
therefore seen every change before N: the cursor can never skip a row that
commits late.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.expressions import F, Q
from tortoise.functions import Count
from tortoise.transactions import in_transaction

from models import Conversation, Counter, Message, Status, User

CHANGE_COUNTER = "change"
# Bound on ids in one `IN (...)` list.
IN_CHUNK = 500


@dataclass(frozen=True, order=True)
class ChangePosition:
    """Where a reader is in the change order: (change_seq, message row id)."""

    seq: int
    row: int


START = ChangePosition(0, 0)


def now_ms() -> datetime:
    """Now in UTC, truncated to the millisecond the protocol shows."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def pair_key(a: str, b: str) -> str:
    low, high = sorted((a, b))
    return f"{len(low)}:{low}|{high}"


class MessageStore:
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

    async def by_client_id(self, sender_id: str, client_message_id: str) -> Message | None:
        return await Message.get_or_none(sender_id=sender_id, client_message_id=client_message_id)

    async def insert_message(
        self, sender_id: str, receiver_id: str, text: str, client_message_id: str | None
    ) -> tuple[Message, bool]:
        """Store a message and move both conversation heads; commit before returning.

        Returns (message, created). A second message with the same
        (sender, clientMessageId) returns the stored one with created=False.
        """
        if client_message_id is not None:
            existing = await self.by_client_id(sender_id, client_message_id)
            if existing is not None:
                return existing, False
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
            existing = await self.by_client_id(sender_id, client_message_id)
            if existing is None:
                raise
            return existing, False
        return message, True

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

    async def get(self, message_uuid: str) -> Message | None:
        try:
            parsed = uuidlib.UUID(message_uuid)
        except ValueError:
            return None
        return await Message.get_or_none(uuid=parsed)

    async def advance_status(self, message: Message, status: Status) -> bool:
        """Move one message forward to `status`; False if it was already there or beyond."""
        async with in_transaction() as conn:
            seq = await self._next_change(conn)
            updated = await Message.filter(id=message.id, status__lt=status).using_db(conn).update(
                status=status, change_seq=seq
            )
        if updated:
            message.status = status
            message.change_seq = seq
        return bool(updated)

    async def mark_read(self, sender_id: str, receiver_id: str) -> list[Message]:
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
        return list(rows)

    async def history(self, a: str, b: str, skip: int, take: int) -> list[Message]:
        return (
            await Message.filter(pair_key=pair_key(a, b)).order_by("-id").offset(skip).limit(take)
        )

    async def history_before(
        self, a: str, b: str, before_row: int | None, limit: int
    ) -> list[Message]:
        query = Message.filter(pair_key=pair_key(a, b))
        if before_row is not None:
            query = query.filter(id__lt=before_row)
        return await query.order_by("-id").limit(limit)

    async def pending(self, receiver_id: str, after_row: int, limit: int) -> list[Message]:
        return (
            await Message.filter(receiver_id=receiver_id, status=Status.SENT, id__gt=after_row)
            .order_by("id")
            .limit(limit)
        )

    async def changes(
        self, user_id: str, after: ChangePosition, limit: int
    ) -> list[Message]:
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
        return merged[:limit]

    async def messages_by_row(self, rows: Iterable[int]) -> dict[int, Message]:
        found: dict[int, Message] = {}
        for chunk in _chunks(list(rows), IN_CHUNK):
            for m in await Message.filter(id__in=chunk):
                found[m.id] = m
        return found

    # -- conversations ----------------------------------------------------

    async def conversations(self, owner_id: str) -> list[Conversation]:
        return await Conversation.filter(owner_id=owner_id).order_by("-last_at", "-last_message_id")

    async def unread_counts(self, receiver_id: str) -> dict[str, int]:
        rows = (
            await Message.filter(receiver_id=receiver_id, status__lt=Status.READ)
            .annotate(n=Count("id"))
            .group_by("sender_id")
            .values_list("sender_id", "n")
        )
        return {sender: int(n) for sender, n in rows}

    async def peers(self, owner_id: str) -> list[str]:
        return list(
            await Conversation.filter(owner_id=owner_id).values_list("peer_id", flat=True)
        )

    # -- users ------------------------------------------------------------

    async def users(self, ids: Sequence[str]) -> dict[str, User]:
        found: dict[str, User] = {}
        for chunk in _chunks(list(ids), IN_CHUNK):
            for u in await User.filter(id__in=chunk):
                found[u.id] = u
        return found

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
