"""Persistence for messages, conversations and users: the one place that reads and writes them.

Every public method runs in its own storage session (see ``Database.session``):
it binds the ORM context itself, is bounded by the call time limit, and any
storage failure leaves it as ``Unavailable``. It returns domain values, never
ORM objects, so nothing above this module depends on Tortoise.

Writes go through one group-commit queue (``app/batching.py``): the writes
that arrive while a batch is committing go to the database together, in one
transaction of multi-row statements, and each caller is answered when its
batch has committed. A batch takes the next value of the `change` counter
once, inside its transaction, for every message row it inserts or moves. Bumping that row locks it until commit (a row lock on MySQL, the
database write lock on SQLite), so change numbers become visible strictly in
the order they were handed out. A Sync reader that has seen change N has
therefore seen every change before N: the cursor can never skip a row that
commits late.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import logging
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from tortoise.expressions import Q
from tortoise.functions import Count

from app.batching import Abandoned, BatchingQueue, Interrupted
from app.storage.db import Database
from app.storage.failures import is_storage_failure
from app.domain import ChangePosition, ChatMessage
from app.errors import InvalidArgument, OutcomeUnknown, Unavailable
from app.storage.writer import Tx
from app.domain import Status
from models import Conversation, Message, User

logger = logging.getLogger(__name__)

CHANGE_COUNTER = "change"
# Bound on ids in one `IN (...)` list.
IN_CHUNK = 500
# Most writes in one group commit: bounds a transaction's size and its statements'
# parameter count (9 per message row; SQLite allows 32766).
MAX_BATCH = 256
MESSAGE_COLUMNS = (
    "id, uuid, sender_id, receiver_id, text, status, client_message_id, created_at, change_seq"
)

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


# -- writes, as the group-commit queue carries them --------------------------


@dataclass(frozen=True, slots=True)
class NewMessage:
    sender_id: str
    receiver_id: str
    text: str
    client_message_id: str | None


@dataclass(frozen=True, slots=True)
class Receipt:
    receiver_id: str  # the caller: only the receiver may move a message's status
    message_id: str
    status: Status


@dataclass(frozen=True, slots=True)
class ReadAll:
    sender_id: str
    receiver_id: str


@dataclass(frozen=True, slots=True)
class UserChange:
    user_id: str
    changes: tuple[tuple[str, str | None], ...]  # (column, value), columns of chat_user


@dataclass(frozen=True, slots=True)
class Probe:
    """Nothing to store: proves that a batch can commit (readiness)."""


Write = NewMessage | Receipt | ReadAll | UserChange | Probe


class ReceiptResult(enum.Enum):
    CHANGED = "changed"
    ALREADY = "already"  # the status was already reached: a no-op
    MISSING = "missing"
    NOT_RECEIVER = "not_receiver"


USER_COLUMNS = frozenset({"display_name", "token_name", "avatar"})
# Status by stored number, without an enum call per row.
_STATUSES = tuple(Status)


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
    def __init__(
        self,
        db: Database,
        timeout_s: float,
        dialect: str,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self._timeout_s = timeout_s
        self._sql = Sql(dialect)
        self._writes: BatchingQueue[Write, Any] = BatchingQueue(
            "writes", self._commit, MAX_BATCH, on_batch=on_batch
        )
        self._peer_reads: BatchingQueue[str, list[str]] = BatchingQueue(
            "contacts lookups", self._peers_of, IN_CHUNK * 4
        )

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query (readiness; not logged here)."""
        await self._db.ping()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Answer every write and lookup still queued, within `timeout_s` (shutdown).

        A batch whose COMMIT went unanswered waits to learn its outcome; at the
        limit it stops waiting, and whatever is still running is cancelled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        for queue in (self._writes, self._peer_reads):
            if not await queue.close(max(0.0, deadline - loop.time())):
                self._db.writes.stop_resolving()
                if not await queue.close(0.2):
                    await queue.cancel()

    # -- writes -------------------------------------------------------------

    async def insert_message(
        self, sender_id: str, receiver_id: str, text: str, client_message_id: str | None
    ) -> tuple[ChatMessage, bool]:
        """Store a message and move both conversation heads; return once committed.

        Returns (message, created). A second message with the same
        (sender, clientMessageId) returns the stored one with created=False.
        """
        return await self._write(NewMessage(sender_id, receiver_id, text, client_message_id))

    async def receipt(
        self, receiver_id: str, message_id: str, status: Status
    ) -> tuple[ReceiptResult, ChatMessage | None]:
        """Move a message the receiver got forward to `status`, if it is theirs and behind."""
        try:
            uuidlib.UUID(message_id)
        except ValueError:
            return ReceiptResult.MISSING, None
        return await self._write(Receipt(receiver_id, message_id, status))

    async def mark_read(self, sender_id: str, receiver_id: str) -> list[ChatMessage]:
        """Mark every message from sender to receiver read; return the ones that changed."""
        return await self._write(ReadAll(sender_id, receiver_id))

    async def save_user(self, user_id: str, **changes: str | None) -> None:
        """Upsert a user row with these columns (display_name, token_name, avatar)."""
        assert set(changes) <= USER_COLUMNS, changes
        await self._write(UserChange(user_id, tuple(sorted(changes.items()))))

    async def _write(self, write: Write) -> Any:
        try:
            return await self._writes.submit(write, self._timeout_s)
        except Abandoned:
            logger.error("storage failure: a write waited %s s for its batch", self._timeout_s)
            raise Unavailable("storage is unavailable, try again later") from None
        except Interrupted:
            raise OutcomeUnknown("the server shut down while this write was committing") from None

    async def probe_write(self, timeout_s: float) -> None:
        """Raise unless a write batch commits within `timeout_s` (readiness)."""
        try:
            # The item keeps the queue's own limit (items expire in order); the
            # caller stops waiting sooner, and the probe, a no-op, may still run.
            await asyncio.wait_for(self._writes.submit(Probe(), self._timeout_s), timeout_s)
        except (Abandoned, Interrupted, TimeoutError):
            raise Unavailable("no write batch committed in time") from None

    async def _commit(self, writes: list[Write]) -> list[Any]:
        """One batch: one transaction, multi-row statements, one change number.

        Every step, the COMMIT included, is bounded by the call time limit on
        a connection of the write path's own (app/storage/writer.py). A COMMIT
        that got no answer is resolved before anyone is answered: `committed`
        looks for the batch's rows on a fresh connection.
        """
        batch = _Batch(self._sql, writes)
        try:
            return await self._db.writes.run(batch.run, batch.committed)
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            logger.error("storage failure in a write batch: %r", exc)
            self._db.suspect()
            raise Unavailable("storage is unavailable, try again later") from exc

    # -- reads --------------------------------------------------------------

    @_stored
    async def get(self, message_id: str) -> ChatMessage | None:
        try:
            parsed = uuidlib.UUID(message_id)
        except ValueError:
            return None
        found = await Message.get_or_none(uuid=parsed)
        return _message(found) if found is not None else None

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
        # (seq, row) > after. The leading `change_seq >= seq` is implied, but it lets
        # the database walk the (user, change_seq, id) index as one range instead
        # of sorting all of the user's rows: Sync stays flat as the table grows.
        later = Q(change_seq__gte=after.seq) & (
            Q(change_seq__gt=after.seq) | Q(id__gt=after.row)
        )
        # Both reads in one transaction: one snapshot, so no commit can fall between them.
        async with self._db.transaction() as conn:
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

    async def peers(self, owner_id: str) -> list[str]:
        """Users who share a conversation with `owner_id`.

        Every connect and disconnect asks this (who hears of the presence change),
        so in a reconnect storm the lookups that wait are answered together, by
        one query per batch.
        """
        try:
            return await self._peer_reads.submit(owner_id, self._timeout_s)
        except Abandoned:
            logger.error("storage failure: a contacts lookup waited %s s", self._timeout_s)
            raise Unavailable("storage is unavailable, try again later") from None

    @_stored
    async def _peers_of(self, owners: list[str]) -> list[list[str]]:
        found: dict[str, list[str]] = {owner: [] for owner in owners}
        for chunk in _chunks(list(found), IN_CHUNK):
            for owner, peer in await Conversation.filter(owner_id__in=chunk).values_list(
                "owner_id", "peer_id"
            ):
                found[owner].append(peer)
        return [found[owner] for owner in owners]

class Sql:
    """The few statements whose syntax differs between SQLite and MySQL/MariaDB."""

    def __init__(self, dialect: str) -> None:
        self.mysql = dialect == "mysql"
        # SQLite has no row locks: BEGIN IMMEDIATE took the database's write lock.
        self.for_update = " FOR UPDATE" if self.mysql else ""

    def __call__(self, statement: str) -> str:
        """Write statements with ``?`` placeholders; MySQL's driver wants ``%s``."""
        return statement.replace("?", "%s") if self.mysql else statement

    def upsert(
        self, table: str, columns: Sequence[str], key: str, rows: int, update: Sequence[str]
    ) -> str:
        """A multi-row INSERT that updates `update` on a key conflict (or ignores it)."""
        marks = "(" + ", ".join("?" * len(columns)) + ")"
        head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([marks] * rows)}"
        if self.mysql:
            sets = ", ".join(f"{c} = VALUES({c})" for c in update) if update else f"{key} = {key}"
            return f"{head} ON DUPLICATE KEY UPDATE {sets}"
        if not update:
            return f"{head} ON CONFLICT DO NOTHING"
        sets = ", ".join(f"{c} = excluded.{c}" for c in update)
        return f"{head} ON CONFLICT ({key}) DO UPDATE SET {sets}"


def message_from_row(row: Mapping[str, Any]) -> ChatMessage:
    created = row["created_at"]
    if isinstance(created, str):  # SQLite keeps ISO text
        created = datetime.fromisoformat(created)
    if created.tzinfo is None:  # MySQL DATETIME: UTC, naive
        created = created.replace(tzinfo=UTC)
    return ChatMessage(
        row=int(row["id"]),
        id=str(row["uuid"]),
        sender_id=row["sender_id"],
        receiver_id=row["receiver_id"],
        text=row["text"],
        status=_STATUSES[row["status"]],
        created_at=created,
        client_message_id=row["client_message_id"],
        change_seq=int(row["change_seq"]),
    )


class _Batch:
    """The statements of one group commit, run on one transaction's connection."""

    def __init__(self, sql: Sql, writes: list[Write]) -> None:
        self.sql = sql
        self.writes = writes
        self.outcomes: list[Any] = [None] * len(writes)
        self.status: dict[int, Status] = {}  # message row -> status as this batch leaves it
        self.rows: dict[int, ChatMessage] = {}
        # What `committed` looks for: the rows this batch inserted, moved or upserted.
        self.inserted: list[str] = []
        self.moved: list[int] = []
        self.seq = 0
        self.user_rows: list[tuple[tuple[str, ...], UserChange]] = []
        self.conn: Tx

    async def query(self, statement: str, params: Sequence[Any] = ()) -> list[Any]:
        return await self.conn.query(self.sql(statement), params)

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        return await self.conn.execute(self.sql(statement), params)

    async def run(self, conn: Tx) -> list[Any]:
        self.conn = conn
        # Reads first, so a batch with nothing to change takes no change number.
        await self._receipts()
        await self._read_alls()
        new = await self._not_repeats(
            [(i, w) for i, w in enumerate(self.writes) if isinstance(w, NewMessage)]
        )
        moved = [row for row, status in self.status.items() if status > self.rows[row].status]
        if new or moved:
            seq = await self._next_change()
            await self._move(moved, seq)
            await self._insert(new, seq)
        elif any(isinstance(w, Probe) for w in self.writes):
            # Readiness: wait for the counter's lock as a real write would.
            await self.query(
                f"SELECT value FROM chat_counter WHERE name = ?{self.sql.for_update}",
                [CHANGE_COUNTER],
            )
        await self._users()
        return self.outcomes

    async def committed(self, conn: Tx) -> bool:
        """Whether this batch's effects are stored (asked when its COMMIT went unanswered).

        New messages decide it exactly: their uuids exist nowhere else. A batch
        of receipts is stored when its rows carry its change number and at
        least the status it gave them; a batch of user changes when the rows
        hold what it wrote. A batch that changed nothing is trivially stored.
        """
        self.conn = conn
        if self.inserted:
            marks = ", ".join("?" * len(self.inserted))
            rows = await self.query(
                f"SELECT COUNT(*) AS n FROM chat_message WHERE uuid IN ({marks})", self.inserted
            )
            return int(rows[0]["n"]) > 0
        if self.moved:
            marks = ", ".join("?" * len(self.moved))
            rows = await self.query(
                f"SELECT id, status, change_seq FROM chat_message WHERE id IN ({marks})", self.moved
            )
            return any(
                int(r["change_seq"]) == self.seq and int(r["status"]) >= self.status[int(r["id"])]
                for r in rows
            )
        for columns, change in self.user_rows:
            rows = await self.query(
                f"SELECT {', '.join(columns)} FROM chat_user WHERE id = ?", [change.user_id]
            )
            if not rows or any(rows[0][c] != v for c, v in change.changes):
                return False
        return True

    async def _next_change(self) -> int:
        # Bumping the row locks it until COMMIT: change numbers become visible in order.
        if not await self.execute(
            "UPDATE chat_counter SET value = value + 1 WHERE name = ?", [CHANGE_COUNTER]
        ):
            await self.execute("INSERT INTO chat_counter (name, value) VALUES (?, 1)", [CHANGE_COUNTER])
            return 1
        rows = await self.query("SELECT value FROM chat_counter WHERE name = ?", [CHANGE_COUNTER])
        return int(rows[0]["value"])

    def _remember(self, message: ChatMessage) -> None:
        if message.row not in self.rows:
            self.rows[message.row] = message
            self.status[message.row] = message.status

    async def _receipts(self) -> None:
        receipts = [(i, w) for i, w in enumerate(self.writes) if isinstance(w, Receipt)]
        if not receipts:
            return
        by_id: dict[str, ChatMessage] = {}
        ids = list(dict.fromkeys(w.message_id for _, w in receipts))
        for chunk in _chunks(ids, IN_CHUNK):
            marks = ", ".join("?" * len(chunk))
            for row in await self.query(
                f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE uuid IN ({marks})", chunk
            ):
                message = message_from_row(row)
                by_id[message.id] = message
                self._remember(message)
        for i, receipt in receipts:
            message = by_id.get(receipt.message_id)
            if message is None:
                self.outcomes[i] = (ReceiptResult.MISSING, None)
            elif message.receiver_id != receipt.receiver_id:
                self.outcomes[i] = (ReceiptResult.NOT_RECEIVER, None)
            elif self.status[message.row] >= receipt.status:
                self.outcomes[i] = (ReceiptResult.ALREADY, None)
            else:
                self.status[message.row] = receipt.status
                self.outcomes[i] = (ReceiptResult.CHANGED, message)

    async def _read_alls(self) -> None:
        for i, write in enumerate(self.writes):
            if not isinstance(write, ReadAll):
                continue
            rows = await self.query(
                f"SELECT {MESSAGE_COLUMNS} FROM chat_message"
                " WHERE sender_id = ? AND receiver_id = ? AND status < ? ORDER BY id",
                [write.sender_id, write.receiver_id, int(Status.READ)],
            )
            changed = []
            for row in rows:
                message = message_from_row(row)
                self._remember(message)
                if self.status[message.row] < Status.READ:
                    self.status[message.row] = Status.READ
                    changed.append(message)
            self.outcomes[i] = changed

    async def _move(self, moved: list[int], seq: int) -> None:
        """Write each moved message's final status, one UPDATE per status."""
        self.moved, self.seq = moved, seq
        for status in sorted({self.status[row] for row in moved}):
            rows = [row for row in moved if self.status[row] == status]
            for chunk in _chunks(rows, IN_CHUNK):
                marks = ", ".join("?" * len(chunk))
                await self.execute(
                    f"UPDATE chat_message SET status = ?, change_seq = ?"
                    f" WHERE id IN ({marks}) AND status < ?",
                    [int(status), seq, *chunk, int(status)],
                )
        for i, outcome in enumerate(self.outcomes):
            # Answer with the messages as this batch leaves them.
            if isinstance(self.writes[i], Receipt) and outcome[1] is not None:
                self.outcomes[i] = (outcome[0], _moved(outcome[1], self.status, seq))
            elif isinstance(self.writes[i], ReadAll):
                self.outcomes[i] = [_moved(m, self.status, seq) for m in outcome]

    async def _not_repeats(
        self, new: list[tuple[int, NewMessage]]
    ) -> list[tuple[int, NewMessage]]:
        """Answer the sends whose (sender, clientMessageId) is stored already; return the rest.

        Looked up before anything is written, so a batch of nothing but repeats
        (a client retrying after a lost ack) takes no change number and changes
        nothing. Repeats within the batch, or racing another instance, are left
        to the unique key (see _insert).
        """
        keyed = [w for _, w in new if w.client_message_id is not None]
        if not keyed:
            return new
        earlier = await self._by_client_id(keyed)
        rest = []
        for i, w in new:
            first = earlier.get((w.sender_id, w.client_message_id or ""))
            if first is None:
                rest.append((i, w))
            else:
                self.outcomes[i] = _repeat(first, w)
        return rest

    async def _insert(self, new: list[tuple[int, NewMessage]], seq: int) -> None:
        if not new:
            return
        created_at = now_ms()
        uuids = [str(uuidlib.uuid4()) for _ in new]
        params: list[Any] = []
        for (_, w), uid in zip(new, uuids):
            params += [
                uid, w.sender_id, w.receiver_id, pair_key(w.sender_id, w.receiver_id), w.text,
                int(Status.SENT), w.client_message_id, created_at, seq,
            ]
        self.inserted = uuids
        columns = (
            "uuid", "sender_id", "receiver_id", "pair_key", "text", "status",
            "client_message_id", "created_at", "change_seq",
        )
        # A repeated (sender, clientMessageId) is ignored by the unique key, which
        # decides idempotency in the same statement, even inside one batch.
        await self.execute(self.sql.upsert("chat_message", columns, "id", len(new), ()), params)
        marks = ", ".join("?" * len(uuids))
        stored = {
            str(row["uuid"]): message_from_row(row)
            for row in await self.query(
                f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE uuid IN ({marks})", uuids
            )
        }
        repeats = [w for (_, w), uid in zip(new, uuids) if uid not in stored]
        earlier = await self._by_client_id(repeats)
        heads: dict[tuple[str, str], ChatMessage] = {}
        for (i, w), uid in zip(new, uuids):
            if uid in stored:
                message = stored[uid]
                self.outcomes[i] = (message, True)
                heads[(message.sender_id, message.receiver_id)] = message
                heads[(message.receiver_id, message.sender_id)] = message
            else:
                self.outcomes[i] = _repeat(earlier[(w.sender_id, w.client_message_id or "")], w)
        rows = [(owner, peer, m.row, m.created_at) for (owner, peer), m in heads.items()]
        if rows:
            statement = self.sql.upsert(
                "chat_conversation",
                ("owner_id", "peer_id", "last_message_id", "last_at"),
                "owner_id, peer_id",
                len(rows),
                ("last_message_id", "last_at"),
            )
            await self.execute(statement, [v for row in rows for v in row])

    async def _by_client_id(self, repeats: list[NewMessage]) -> dict[tuple[str, str], ChatMessage]:
        if not repeats:
            return {}
        keys = list(dict.fromkeys((w.sender_id, w.client_message_id or "") for w in repeats))
        where = " OR ".join(["(sender_id = ? AND client_message_id = ?)"] * len(keys))
        rows = await self.query(
            f"SELECT {MESSAGE_COLUMNS} FROM chat_message WHERE {where}", [v for k in keys for v in k]
        )
        return {(r["sender_id"], r["client_message_id"]): message_from_row(r) for r in rows}

    async def _users(self) -> None:
        changes = [w for w in self.writes if isinstance(w, UserChange)]
        # One statement per set of columns; the latest change of a user wins.
        groups: dict[tuple[str, ...], dict[str, UserChange]] = {}
        for w in changes:
            groups.setdefault(tuple(c for c, _ in w.changes), {})[w.user_id] = w
        now = now_ms()
        for columns, by_user in groups.items():
            for chunk in _chunks(list(by_user.values()), IN_CHUNK):
                params: list[Any] = []
                for w in chunk:
                    params += [w.user_id, *(v for _, v in w.changes), now]
                    self.user_rows.append((columns, w))
                statement = self.sql.upsert(
                    "chat_user", ("id", *columns, "updated_at"), "id", len(chunk),
                    (*columns, "updated_at"),
                )
                await self.execute(statement, params)


def _repeat(first: ChatMessage, again: NewMessage) -> tuple[ChatMessage, bool] | InvalidArgument:
    """A send whose key is taken: the first message again, or refused if it is another one.

    Like a reused idempotency key at a payment API: the same key with another
    receiver or text is a client bug, not a retry, and must not be taken as
    the first message (the second one would silently never be stored).
    """
    if (first.receiver_id, first.text) != (again.receiver_id, again.text):
        return InvalidArgument("clientMessageId was already used for another message")
    return (first, False)


def _moved(m: ChatMessage, status: dict[int, Status], seq: int) -> ChatMessage:
    # Not dataclasses.replace(): it showed in the profile, once per receipt.
    return ChatMessage(
        m.row, m.id, m.sender_id, m.receiver_id, m.text, status[m.row], m.created_at,
        m.client_message_id, seq,
    )


def _chunks(items: Sequence[Any], size: int) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])
