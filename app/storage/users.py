"""Users: what the server knows of each (names, avatar), written in the group commit."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.storage.sql import chunks, marks, now_ms

if TYPE_CHECKING:
    from app.storage.commit import Batch, Witness

USER_COLUMNS = frozenset({"display_name", "token_name", "avatar"})


@dataclass(frozen=True, slots=True)
class UserChange:
    user_id: str
    changes: tuple[tuple[str, str | None], ...]  # (column, value), columns of chat_user


def name_of(row: dict[str, Any] | None, user_id: str) -> str:
    """A user's name as shown: RegisterUser's, else the token's, else the id."""
    if row is None:
        return user_id
    return str(row.get("display_name") or row.get("token_name") or user_id)


async def names(batch_or_query: Any, user_ids: Iterable[str]) -> dict[str, str]:
    """The names of these users, by a `query(statement, params)` of a batch or a room."""
    ids = list(dict.fromkeys(user_ids))
    found: dict[str, dict[str, Any]] = {}
    for chunk in chunks(ids):
        for row in await batch_or_query(
            f"SELECT id, display_name, token_name FROM chat_user WHERE id IN ({marks(len(chunk))})",
            chunk,
        ):
            found[row["id"]] = row
    return {u: name_of(found.get(u), u) for u in ids}


async def upsert(batch: Batch) -> None:
    changes = [w for _, w in batch.of(UserChange)]
    # One statement per set of columns; the latest change of a user wins.
    sets: dict[tuple[str, ...], dict[str, UserChange]] = {}
    for w in changes:
        sets.setdefault(tuple(c for c, _ in w.changes), {})[w.user_id] = w
    now = now_ms()
    for columns, by_user in sets.items():
        for chunk in chunks(list(by_user.values())):
            params: list[Any] = []
            for w in chunk:
                params += [w.user_id, *(v for _, v in w.changes), now]
            statement = batch.sql.upsert(
                "chat_user", ("id", *columns, "updated_at"), "id", len(chunk),
                (*columns, "updated_at"),
            )
            await batch.execute(statement, params)
        first = next(iter(by_user.values()))
        batch.witness(_holds(first))


def _holds(change: UserChange) -> Witness:
    """Whether the user's row holds what this change wrote (the change is stored)."""

    async def check(batch: Batch) -> bool:
        columns = ", ".join(c for c, _ in change.changes)
        rows = await batch.query(f"SELECT {columns} FROM chat_user WHERE id = ?", [change.user_id])
        return bool(rows) and all(rows[0][c] == v for c, v in change.changes)

    return check
