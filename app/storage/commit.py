"""Group commit: every write of every room goes to the database in batches, one transaction each.

Callers add a write and await their own result (app/batching.py); one
processor takes everything queued so far and runs it as one transaction of
multi-row statements on the write path's own connection
(app/storage/writer.py), while the next batch forms. A lone write is not
delayed.

A batch runs its steps in one fixed order, whatever arrived in what order:

1. receipts and "mark read" read the messages they move;
2. before any group state is read, the change counter's row is locked
   (hold_changes), so that what the batch reads of groups and members is
   current and no other writer (another instance) can change it until the
   batch commits; every writer takes the counter before group rows, so locks
   are always taken in the same order;
3. membership changes (create, add, remove, rename);
4. group sends are checked (membership) and counted (recipients);
5. statuses and read positions move;
6. new messages are inserted (direct and group), with conversation heads and
   group counters; a send whose (sender, clientMessageId) is stored already
   is ignored by the unique key and answered with the first message;
7. user rows are upserted.

A batch that changed nothing that must stay (only retries and refusals) is
rolled back rather than committed: nothing of it remains, not even its
change number.

A step that changes anything Sync can show takes the batch's change number
(app/storage/changes.py), once per batch. A step that refuses one write (a
non-member's send, a reused key) answers that caller with the error and
leaves the others alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.batching import Abandoned, BatchingQueue, Interrupted
from app.domain import ChatMessage
from app.errors import OutcomeUnknown, Unavailable
from app.storage import changes, groups, messages, users
from app.storage.db import Database
from app.storage.failures import is_storage_failure
from app.storage.sql import Sql
from app.storage.writer import Tx

logger = logging.getLogger(__name__)

# Most writes in one group commit: bounds a transaction's size and its statements'
# parameter count (13 per message row; SQLite allows 32766).
MAX_BATCH = 256


@dataclass(frozen=True, slots=True)
class Probe:
    """Nothing to store: proves that a batch can commit (readiness)."""


Write = (
    messages.NewMessage
    | messages.Receipt
    | messages.ReadAll
    | groups.GroupWrite
    | users.UserChange
    | Probe
)

# Asked on a fresh connection (batch.tx) whether a batch is stored.
Witness = Callable[["Batch"], Awaitable[bool]]


class Batch:
    """One group commit: its writes, their outcomes, and what the steps share."""

    def __init__(self, sql: Sql, writes: Sequence[Write], members: groups.MemberCache) -> None:
        self.sql = sql
        self.writes = list(writes)
        self.members = members
        self.outcomes: list[Any] = [None] * len(writes)
        self.tx: Tx
        self._seq = 0
        self._held = False
        # How to tell, on another connection, whether this batch is stored; the
        # steps add them as they write, the most exact first (see committed).
        self._witnesses: list[Witness] = []
        # Shared between steps (messages.py, groups.py).
        self.direct = messages.DirectMoves()
        self.group_receipts: list[tuple[int, messages.Receipt, ChatMessage]] = []
        self.group_sends: dict[int, groups.GroupSend] = {}
        self.group_state: dict[str, Any] = {}

    def of(self, kind: type | tuple[type, ...]) -> list[tuple[int, Any]]:
        """The writes of one kind, with their index."""
        return [(i, w) for i, w in enumerate(self.writes) if isinstance(w, kind)]

    def answer(self, index: int, outcome: Any) -> None:
        self.outcomes[index] = outcome

    async def query(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return await self.tx.query(self.sql(statement), params)

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        return await self.tx.execute(self.sql(statement), params)

    async def change_number(self) -> int:
        """This batch's change number, taken at the first change (one per batch)."""
        if not self._seq:
            self._seq = await changes.next_change(self)
            self._held = True
        return self._seq

    @property
    def seq(self) -> int:
        """The change number if taken (0: none yet)."""
        return self._seq

    def witness(self, check: Witness, exact: bool = False) -> None:
        if exact:
            self._witnesses.insert(0, check)
        else:
            self._witnesses.append(check)

    async def hold_changes(self) -> None:
        """Lock the change counter now, before any group state is read (see the docstring)."""
        if not self._held:
            self._held = True
            if not self._seq:
                await changes.lock(self)

    async def run(self, tx: Tx) -> list[Any]:
        self.tx = tx
        await messages.load_receipts(self)
        await messages.load_read_alls(self)
        await groups.change_membership(self)
        new = await groups.check_sends(self, self.of(messages.NewMessage))
        await messages.move_statuses(self)
        await groups.move_positions(self)
        await groups.count_sent(self, await messages.insert(self, new))
        await users.upsert(self)
        if self.of(Probe):
            await self.hold_changes()  # readiness: wait for the counter's lock as writes do
        return self.outcomes

    def needed(self) -> bool:
        """Whether the batch changed anything that must stay (else it is rolled back).

        A batch of nothing but retries and refusals took a change number for
        nothing (its sends were ignored by the unique key): rolling back gives
        it back, so a refused call changes nothing at all. A probe commits.
        """
        return bool(self._witnesses) or bool(self.of(Probe))

    async def committed(self, tx: Tx) -> bool:
        """Whether this batch's effects are stored (asked when its COMMIT went unanswered).

        Everything a batch writes commits or not together, so one witness
        answers for all; the most exact is asked (new messages' uuids exist
        nowhere else). A batch that wrote nothing is trivially stored.
        """
        self.tx = tx
        return await self._witnesses[0](self) if self._witnesses else True


class GroupCommit:
    """The one write queue of the storage rooms."""

    def __init__(
        self,
        db: Database,
        sql: Sql,
        timeout_s: float,
        members: groups.MemberCache,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        self._sql = sql
        self._timeout_s = timeout_s
        self._members = members
        # Two in flight: the next batch runs its statements while the previous
        # one's COMMIT waits for the disk. Its change number still comes after
        # the previous one's: taking it waits on the counter's lock, which the
        # previous batch holds until its COMMIT is done (see changes.py).
        self._queue: BatchingQueue[Write, Any] = BatchingQueue(
            "writes", self._commit, MAX_BATCH, on_batch=on_batch, max_in_flight=2
        )

    async def write(self, write: Write) -> Any:
        """Add a write to the next batch; its outcome once committed (or its error)."""
        try:
            return await self._queue.submit(write, self._timeout_s)
        except Abandoned:
            logger.error("storage failure: a write waited %s s for its batch", self._timeout_s)
            raise Unavailable("storage is unavailable, try again later") from None
        except Interrupted:
            raise OutcomeUnknown("the server shut down while this write was committing") from None

    async def probe(self, timeout_s: float) -> None:
        """Raise unless a write batch commits within `timeout_s` (readiness)."""
        try:
            # The item keeps the queue's own limit (items expire in order); the
            # caller stops waiting sooner, and the probe, a no-op, may still run.
            await asyncio.wait_for(self._queue.submit(Probe(), self._timeout_s), timeout_s)
        except (Abandoned, Interrupted, TimeoutError):
            raise Unavailable("no write batch committed in time") from None

    async def close(self, timeout_s: float) -> bool:
        """Take nothing new; answer what is queued. False if not done within `timeout_s`."""
        return await self._queue.close(timeout_s)

    async def cancel(self) -> None:
        await self._queue.cancel()

    async def _commit(self, writes: list[Write], hand_on: Callable[[], None]) -> list[Any]:
        """One batch: one transaction, every step bounded (app/storage/writer.py).

        A COMMIT that got no answer is resolved before anyone is answered:
        `committed` looks for the batch's rows on a fresh connection.
        """
        batch = Batch(self._sql, writes, self._members)
        try:
            outcomes = await self._db.writes.run(
                batch.run, batch.committed, batch.needed, on_commit=hand_on
            )
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
            logger.error("storage failure in a write batch: %r", exc)
            self._db.suspect()
            raise Unavailable("storage is unavailable, try again later") from exc
        return outcomes
