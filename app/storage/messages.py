"""Messages: one row each, direct or group; their writes in the group commit, their reads.

A direct message moves its own status (sent → delivered → read) when its
receiver acknowledges it. A group message's status is the aggregate over its
recipients, which app/storage/groups.py moves as members' positions move; it
is written once, whatever the group's size.
"""

from __future__ import annotations

import enum
import uuid as uuidlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.domain import ChatMessage, Status
from app.errors import InvalidArgument
from app.storage.sql import (
    MESSAGE_COLUMNS,
    Room,
    chunks,
    group_thread,
    marks,
    message_from_row,
    now_ms,
    pair_key,
    stored,
    with_status,
)

if TYPE_CHECKING:
    from app.storage.commit import Batch, GroupCommit, Witness


# -- writes, as the group commit carries them ----------------------------------


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender_id: str
    receiver_id: str | None  # None: a group message
    group_id: str | None
    text: str
    client_message_id: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    user_id: str  # the caller: the receiver (or a recipient in a group)
    message_id: str
    status: Status


@dataclass(frozen=True, slots=True)
class ReadAll:
    sender_id: str
    receiver_id: str


class ReceiptResult(enum.Enum):
    CHANGED = "changed"
    ALREADY = "already"  # the status (or the position) was reached already: a no-op
    MISSING = "missing"
    NOT_RECEIVER = "not_receiver"  # not the receiver, or not a recipient and member now


@dataclass(frozen=True, slots=True)
class Sent:
    """A send's outcome: the message as stored, whether this call stored it, who receives it."""

    message: ChatMessage
    created: bool
    recipients: tuple[str, ...] = ()


@dataclass(slots=True)
class ReceiptOutcome:
    result: ReceiptResult
    # Messages whose status moved (a direct one, or group aggregates), as the batch left them.
    moved: list[ChatMessage] = field(default_factory=list)
    group_id: str | None = None
    read_position: str | None = None  # the reader's new read position in the group, if it moved


# -- the room ---------------------------------------------------------------------


class Messages(Room):
    def __init__(self, *args: Any, commit: GroupCommit) -> None:
        super().__init__(*args)
        self._commit = commit

    async def insert(
        self, sender_id: str, receiver_id: str, text: str, client_message_id: str | None
    ) -> Sent:
        """Store a direct message and move both conversation heads; return once committed.

        A second message with the same (sender, clientMessageId) returns the
        stored one with created=False; the same key for another message is
        InvalidArgument.
        """
        return await self._commit.write(  # type: ignore[no-any-return]
            NewMessage(sender_id, receiver_id, None, text, client_message_id)
        )

    async def insert_in_group(
        self, sender_id: str, group_id: str, text: str, client_message_id: str | None
    ) -> Sent:
        """Store a group message for the members other than the sender (NotFound, Forbidden)."""
        return await self._commit.write(  # type: ignore[no-any-return]
            NewMessage(sender_id, None, group_id, text, client_message_id)
        )

    async def receipt(self, user_id: str, message_id: str, status: Status) -> ReceiptOutcome:
        """Move a message forward to `status` for its receiver, or a group position for a recipient."""
        try:
            uuidlib.UUID(message_id)
        except ValueError:
            return ReceiptOutcome(ReceiptResult.MISSING)
        return await self._commit.write(  # type: ignore[no-any-return]
            Receipt(user_id, message_id, status)
        )

    async def mark_read(self, sender_id: str, receiver_id: str) -> list[ChatMessage]:
        """Mark every direct message from sender to receiver read; return the ones that changed."""
        return await self._commit.write(ReadAll(sender_id, receiver_id))  # type: ignore[no-any-return]

    @stored
    async def get(self, message_id: str) -> ChatMessage | None:
        try:
            uuidlib.UUID(message_id)
        except ValueError:
            return None
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE uuid = ?", [message_id]
        )
        return message_from_row(rows[0]) if rows else None

    @stored
    async def counts(self, message_id: str) -> tuple[ChatMessage, int, int, int] | None:
        """A message with its recipient, delivered and read counts (group messages keep them)."""
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS}, recipient_count, delivered_count, read_count"
            " FROM chat_message WHERE uuid = ?",
            [message_id],
        )
        if not rows:
            return None
        r = rows[0]
        return (
            message_from_row(r), int(r["recipient_count"]), int(r["delivered_count"]),
            int(r["read_count"]),
        )

    @stored
    async def history(self, a: str, b: str, skip: int, take: int) -> list[ChatMessage]:
        return await self._thread(pair_key(a, b), 0, None, skip, take)

    @stored
    async def history_before(
        self, a: str, b: str, before_row: int | None, limit: int
    ) -> list[ChatMessage]:
        return await self._thread(pair_key(a, b), 0, before_row, 0, limit)

    @stored
    async def group_history(
        self, group_id: str, after_row: int, before_row: int | None, skip: int, take: int
    ) -> list[ChatMessage]:
        """A group's messages newer than `after_row` (the reader's join), newest first."""
        return await self._thread(group_thread(group_id), after_row, before_row, skip, take)

    async def _thread(
        self, thread: str, after_row: int, before_row: int | None, skip: int, take: int
    ) -> list[ChatMessage]:
        before = " AND id < ?" if before_row is not None else ""
        params: list[Any] = [thread, after_row, *([before_row] if before_row is not None else [])]
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE pair_key = ? AND id > ?{before}"
            " ORDER BY id DESC LIMIT ? OFFSET ?",
            [*params, take, skip],
        )
        return [message_from_row(r) for r in rows]

    @stored
    async def pending(self, receiver_id: str, after_row: int, limit: int) -> list[ChatMessage]:
        """Direct messages to the receiver still in status sent, oldest first."""
        rows = await self._rows(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message"
            " WHERE receiver_id = ? AND status = ? AND id > ? ORDER BY id LIMIT ?",
            [receiver_id, int(Status.SENT), after_row, limit],
        )
        return [message_from_row(r) for r in rows]


# -- steps of a batch (app/storage/commit.py) ------------------------------------------


@dataclass(slots=True)
class DirectMoves:
    """Direct messages this batch loaded, and their status as the batch leaves them."""

    loaded: dict[int, ChatMessage] = field(default_factory=dict)
    status: dict[int, Status] = field(default_factory=dict)

    def remember(self, message: ChatMessage) -> None:
        if message.row not in self.loaded:
            self.loaded[message.row] = message
            self.status[message.row] = message.status


async def load_receipts(batch: Batch) -> None:
    """Load the messages receipts name; decide direct receipts, hand group ones to groups.py."""
    receipts = batch.of(Receipt)
    if not receipts:
        return
    by_id: dict[str, ChatMessage] = {}
    ids = list(dict.fromkeys(w.message_id for _, w in receipts))
    for chunk in chunks(ids):
        for row in await batch.query(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE uuid IN ({marks(len(chunk))})",
            chunk,
        ):
            loaded = message_from_row(row)
            by_id[loaded.id] = loaded
    moves = batch.direct
    for i, receipt in receipts:
        message = by_id.get(receipt.message_id)
        if message is None:
            batch.answer(i, ReceiptOutcome(ReceiptResult.MISSING))
        elif message.group_id is not None:
            batch.group_receipts.append((i, receipt, message))
        elif message.receiver_id != receipt.user_id:
            batch.answer(i, ReceiptOutcome(ReceiptResult.NOT_RECEIVER))
        else:
            moves.remember(message)
            if moves.status[message.row] >= receipt.status:
                batch.answer(i, ReceiptOutcome(ReceiptResult.ALREADY))
            else:
                moves.status[message.row] = receipt.status
                batch.answer(i, ReceiptOutcome(ReceiptResult.CHANGED, [message]))


async def load_read_alls(batch: Batch) -> None:
    moves = batch.direct
    for i, write in batch.of(ReadAll):
        rows = await batch.query(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message"
            " WHERE sender_id = ? AND receiver_id = ? AND status < ? ORDER BY id",
            [write.sender_id, write.receiver_id, int(Status.READ)],
        )
        changed = []
        for row in rows:
            message = message_from_row(row)
            moves.remember(message)
            if moves.status[message.row] < Status.READ:
                moves.status[message.row] = Status.READ
                changed.append(message)
        batch.answer(i, changed)


async def move_statuses(batch: Batch) -> None:
    """Write each moved direct message's final status, one UPDATE per status."""
    moves = batch.direct
    moved = [row for row, status in moves.status.items() if status > moves.loaded[row].status]
    if not moved:
        return
    seq = await batch.change_number()
    for status in sorted({moves.status[row] for row in moved}):
        rows = [row for row in moved if moves.status[row] == status]
        for chunk in chunks(rows):
            await batch.execute(
                f"UPDATE chat_message SET status = ?, change_seq = ?"
                f" WHERE id IN ({marks(len(chunk))}) AND status < ?",
                [int(status), seq, *chunk, int(status)],
            )
    batch.witness(_moved_to(moves, moved, seq))
    # Answer with the messages as this batch leaves them.
    for i, w in enumerate(batch.writes):
        outcome = batch.outcomes[i]
        if isinstance(w, Receipt) and isinstance(outcome, ReceiptOutcome) and outcome.moved:
            if outcome.moved[0].group_id is None:
                outcome.moved = [with_status(m, moves.status[m.row], seq) for m in outcome.moved]
        elif isinstance(w, ReadAll):
            batch.answer(i, [with_status(m, moves.status[m.row], seq) for m in outcome])


def _moved_to(moves: DirectMoves, rows: list[int], seq: int) -> Witness:
    async def check(batch: Batch) -> bool:
        found = await batch.query(
            f"SELECT id, status, change_seq FROM chat_message WHERE id IN ({marks(len(rows))})",
            rows,
        )
        return any(
            int(r["change_seq"]) == seq and int(r["status"]) >= moves.status[int(r["id"])]
            for r in found
        )

    return check


async def insert(batch: Batch, new: list[tuple[int, NewMessage]]) -> list[tuple[int, ChatMessage]]:
    """Insert new messages and move conversation heads; return the group messages stored.

    The group messages are left unanswered for the group step (counters, the
    sender's position): see groups.count_sent.
    """
    if not new:
        return []
    seq = await batch.change_number()
    created_at = now_ms()
    uuids = [str(uuidlib.uuid4()) for _ in new]
    columns = (
        "uuid", "sender_id", "receiver_id", "group_id", "pair_key", "text", "status",
        "client_message_id", "created_at", "change_seq", "recipient_count",
    )
    params: list[Any] = []
    for (i, w), uid in zip(new, uuids):
        thread = group_thread(w.group_id) if w.group_id else pair_key(w.sender_id, w.receiver_id or "")
        recipients = batch.group_sends[i].recipient_count if w.group_id else 1
        params += [
            uid, w.sender_id, w.receiver_id, w.group_id, thread, w.text, int(Status.SENT),
            w.client_message_id, created_at, seq, recipients,
        ]
    # A repeated (sender, clientMessageId) is ignored by the unique key, which
    # decides idempotency in the same statement, even inside one batch. Only
    # the row ids come back: the rest of each stored message is what was sent.
    insert = batch.sql.upsert("chat_message", columns, "id", len(new), ())
    if batch.tx.returning:
        # A row the key ignored comes back with the first message's uuid, or not at all.
        inserted = await batch.query(f"{insert} RETURNING id, uuid", params)
    else:
        await batch.execute(insert, params)
        inserted = await batch.query(
            f"SELECT id, uuid FROM chat_message WHERE uuid IN ({marks(len(uuids))})", uuids
        )
    rows_of = {str(row["uuid"]): int(row["id"]) for row in inserted}
    if any(uid in rows_of for uid in uuids):
        batch.witness(_inserted(uuids), exact=True)
    stored_rows = {
        uid: ChatMessage(
            rows_of[uid], uid, w.sender_id, w.receiver_id, w.text, Status.SENT, created_at,
            w.client_message_id, seq, w.group_id,
        )
        for (_, w), uid in zip(new, uuids)
        if uid in rows_of
    }
    repeats = [w for (_, w), uid in zip(new, uuids) if uid not in stored_rows]
    earlier = await _by_client_id(batch, repeats)
    heads: dict[tuple[str, str], ChatMessage] = {}
    in_groups: list[tuple[int, ChatMessage]] = []
    for (i, w), uid in zip(new, uuids):
        if uid not in stored_rows:
            batch.answer(i, _repeat(earlier[(w.sender_id, w.client_message_id or "")], w))
            continue
        message = stored_rows[uid]
        if message.group_id is not None:
            in_groups.append((i, message))
            continue
        batch.answer(i, Sent(message, True, (message.receiver_id or "",)))
        heads[(message.sender_id, message.receiver_id or "")] = message
        heads[(message.receiver_id or "", message.sender_id)] = message
    rows = [(owner, peer, m.row, m.created_at) for (owner, peer), m in heads.items()]
    if rows:
        statement = batch.sql.upsert(
            "chat_conversation",
            ("owner_id", "peer_id", "last_message_id", "last_at"),
            "owner_id, peer_id",
            len(rows),
            ("last_message_id", "last_at"),
        )
        await batch.execute(statement, [v for row in rows for v in row])
    return in_groups


def _inserted(uuids: list[str]) -> Witness:
    async def check(batch: Batch) -> bool:
        rows = await batch.query(
            f"SELECT COUNT(*) AS n FROM chat_message WHERE uuid IN ({marks(len(uuids))})", uuids
        )
        return int(rows[0]["n"]) > 0

    return check


async def _by_client_id(
    batch: Batch, writes: list[NewMessage]
) -> dict[tuple[str, str], ChatMessage]:
    if not writes:
        return {}
    keys = list(dict.fromkeys((w.sender_id, w.client_message_id or "") for w in writes))
    found: dict[tuple[str, str], ChatMessage] = {}
    for chunk in chunks(keys, 200):
        where = " OR ".join(["(sender_id = ? AND client_message_id = ?)"] * len(chunk))
        for r in await batch.query(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE {where}",
            [v for k in chunk for v in k],
        ):
            found[(r["sender_id"], r["client_message_id"])] = message_from_row(r)
    return found


def _repeat(first: ChatMessage, again: NewMessage) -> Sent | InvalidArgument:
    """A send whose key is taken: the first message again, or refused if it is another one.

    Like a reused idempotency key at a payment API: the same key with another
    receiver (or group) or text is a client bug, not a retry, and must not be
    taken as the first message (the second one would silently never be stored).
    """
    if (first.receiver_id, first.group_id, first.text) != (
        again.receiver_id, again.group_id, again.text
    ):
        return InvalidArgument("clientMessageId was already used for another message")
    return Sent(first, False)
