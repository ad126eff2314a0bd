"""The change feed: one counter orders every change, and Sync reads what changed after a cursor.

Every write batch that changes something a Sync reader can see takes the next
value of the ``change`` counter once, inside its transaction, and stamps it
on every row it inserts or moves: messages (new, or a status that moved, a
group message's aggregate included) and groups (created, renamed, members
came or went) and the member rows it adds or removes. Bumping the counter's
row locks it until commit (a row lock on MySQL, the database write lock on
SQLite), so change numbers become visible strictly in the order they were
handed out. A Sync reader that has seen change N has therefore seen every
change before N: the cursor, (change number, message row), can never skip a
row that commits late. One batch's rows share its number and are ordered by
row within it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.domain import ChangePosition, ChatMessage
from app.storage.sql import MESSAGE_COLUMNS, Room, message_from_row, stored

if TYPE_CHECKING:
    from app.storage.commit import Batch

CHANGE_COUNTER = "change"


async def lock(batch: Batch) -> None:
    """Hold the counter's row without taking a number: what the batch reads next is current."""
    if not batch.sql.mysql:
        return  # SQLite: the batch's BEGIN IMMEDIATE holds the whole database already
    await batch.query(
        "SELECT value FROM chat_counter WHERE name = ? FOR UPDATE", [CHANGE_COUNTER]
    )


async def next_change(batch: Batch) -> int:
    # Bumping the row locks it until COMMIT: change numbers become visible in order.
    value = await batch.tx.bump("chat_counter", "value", "name", CHANGE_COUNTER)
    if value is None:  # the migration seeds the row; a database someone emptied by hand
        await batch.execute("INSERT INTO chat_counter (name, value) VALUES (?, 1)", [CHANGE_COUNTER])
        return 1
    return value


@dataclass(frozen=True, slots=True)
class GroupChange:
    """A group the reader is or was in changed (created, renamed, members) at `seq`."""

    group_id: str
    seq: int


# The part of a query that keeps (change_seq, id) > (seq, row). The leading
# `change_seq >= seq` is implied, but it lets the database walk a
# (key, change_seq, id) index as one range instead of sorting all of the
# key's rows: Sync stays flat as the table grows.
_LATER = "m.change_seq >= ? AND (m.change_seq > ? OR m.id > ?)"


class ChangeFeed(Room):
    @stored
    async def changes(
        self, user_id: str, after: ChangePosition, limit: int
    ) -> tuple[list[ChatMessage], list[GroupChange]]:
        """What the user may see that changed after `after`: at most `limit` messages, in
        change order, and the changes of their groups after `after` (all of them).

        Messages: the direct ones they sent or received, and those of the groups
        they are in now, since they (last) joined. Groups: those they are in,
        changed after the cursor, and those they left or were removed from
        after it. Every read in one transaction: one snapshot, so no commit
        can fall between them.
        """
        later = [after.seq, after.seq, after.row]
        async with self._db.transaction() as conn:

            async def rows(statement: str, params: list[Any]) -> list[dict[str, Any]]:
                return list(await conn.execute_query_dict(self._sql(statement), params))

            sent = await rows(
                f"SELECT {_m(MESSAGE_COLUMNS)} FROM chat_message m"
                f" WHERE m.sender_id = ? AND {_LATER} AND m.group_id IS NULL"
                " ORDER BY m.change_seq, m.id LIMIT ?",
                [user_id, *later, limit],
            )
            received = await rows(
                f"SELECT {_m(MESSAGE_COLUMNS)} FROM chat_message m"
                f" WHERE m.receiver_id = ? AND {_LATER} ORDER BY m.change_seq, m.id LIMIT ?",
                [user_id, *later, limit],
            )
            in_groups = await rows(
                f"SELECT {_m(MESSAGE_COLUMNS)} FROM chat_group_member gm"
                " JOIN chat_message m ON m.group_id = gm.group_id AND m.id > gm.joined_row"
                f" WHERE gm.user_id = ? AND gm.active = ? AND {_LATER}"
                " ORDER BY m.change_seq, m.id LIMIT ?",
                [user_id, True, *later, limit],
            )
            group_rows = await rows(
                "SELECT g.id, g.change_seq, gm.active, gm.change_seq AS member_seq"
                " FROM chat_group_member gm JOIN chat_group g ON g.id = gm.group_id"
                " WHERE gm.user_id = ? AND ((gm.active = ? AND g.change_seq > ?)"
                " OR (gm.active = ? AND gm.change_seq > ?))",
                [user_id, True, after.seq, False, after.seq],
            )
        merged = sorted(
            (message_from_row(r) for r in (*sent, *received, *in_groups)),
            key=lambda m: (m.change_seq, m.row),
        )
        changed = [
            # A group they left shows once, at their leaving; later changes are not theirs.
            GroupChange(r["id"], int(r["change_seq"] if r["active"] else r["member_seq"]))
            for r in group_rows
        ]
        return merged[:limit], sorted(changed, key=lambda c: c.seq)


def _m(columns: str) -> str:
    return ", ".join(f"m.{c.strip()}" for c in columns.split(","))
