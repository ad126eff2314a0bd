"""What every storage room shares: the SQL dialect, row mapping, sessions for reads."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Concatenate, ParamSpec, TypeVar

from app.domain import ChatMessage, Status
from app.storage.db import Database

# Bound on ids in one `IN (...)` list.
IN_CHUNK = 500
MESSAGE_COLUMNS = (
    "id, uuid, sender_id, receiver_id, group_id, text, status, client_message_id, created_at,"
    " change_seq"
)
# Status by stored number, without an enum call per row.
_STATUSES = tuple(Status)

P = ParamSpec("P")
R = TypeVar("R")


class Sql:
    """The few statements whose syntax differs between SQLite and MySQL/MariaDB."""

    def __init__(self, dialect: str) -> None:
        self.mysql = dialect == "mysql"

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


def now_ms() -> datetime:
    """Now in UTC, truncated to the millisecond the protocol shows."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def as_datetime(value: Any) -> datetime:
    """A stored timestamp: SQLite keeps ISO text, MySQL a naive UTC DATETIME."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value  # type: ignore[no-any-return]


def pair_key(a: str, b: str) -> str:
    """The thread of a direct conversation: "<len(a)>:<a>|<b>" with a <= b."""
    low, high = sorted((a, b))
    return f"{len(low)}:{low}|{high}"


def group_thread(group_id: str) -> str:
    """The thread of a group (never starts with a digit, so never a pair's)."""
    return f"g:{group_id}"


def message_from_row(row: Mapping[str, Any]) -> ChatMessage:
    return ChatMessage(
        row=int(row["id"]),
        id=str(row["uuid"]),
        sender_id=row["sender_id"],
        receiver_id=row["receiver_id"],
        text=row["text"],
        status=_STATUSES[row["status"]],
        created_at=as_datetime(row["created_at"]),
        client_message_id=row["client_message_id"],
        change_seq=int(row["change_seq"]),
        group_id=row["group_id"],
    )


def with_status(m: ChatMessage, status: Status, seq: int) -> ChatMessage:
    """The message with a new status, taken at change `seq`."""
    # Not dataclasses.replace(): it showed in the profile, once per receipt.
    return ChatMessage(
        m.row, m.id, m.sender_id, m.receiver_id, m.text, status, m.created_at,
        m.client_message_id, seq, m.group_id,
    )


def chunks(items: Sequence[Any], size: int = IN_CHUNK) -> Iterable[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def marks(n: int) -> str:
    return ", ".join("?" * n)


class Room:
    """A part of storage: its database, SQL dialect and time limit.

    Every read runs in a storage session (``Database.session``, via
    :func:`stored`): bound to this database, limited in time, and any storage
    failure leaves it as ``Unavailable``.
    """

    def __init__(self, db: Database, sql: Sql, timeout_s: float) -> None:
        self._db = db
        self._sql = sql
        self._timeout_s = timeout_s

    async def _rows(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """A raw read on the ORM's connection (inside a session)."""
        return await self._db.query(self._sql(statement), list(params))


RoomT = TypeVar("RoomT", bound=Room)


def stored(
    method: Callable[Concatenate[RoomT, P], Awaitable[R]],
) -> Callable[Concatenate[RoomT, P], Awaitable[R]]:
    """Run a room's method in a storage session named after it."""

    @functools.wraps(method)
    async def run(self: RoomT, *args: P.args, **kwargs: P.kwargs) -> R:
        async with self._db.session(self._timeout_s, method.__name__):
            return await method(self, *args, **kwargs)

    return run
