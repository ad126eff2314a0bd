"""The conversation list: direct conversation heads and the user's groups, with unread counts.

A direct conversation has a head row per (owner, peer), moved by every
message (app/storage/messages.py). A group's entry comes from the group row
(latest message, message count) and the reader's member row (read count, own
messages unread): unread = message count - messages up to the read position -
own messages after it, with no count over messages. Every part of the list is
a lookup by the owner's key, so it costs the same with 10k or 1M messages
stored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from app.batching import Abandoned, BatchingQueue, Interrupted
from app.domain import Status
from app.errors import Unavailable
from app.storage.sql import IN_CHUNK, Room, as_datetime, chunks, marks, stored
from app.storage.users import name_of

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConversationRow:
    """One entry of the list as stored (presence is not stored)."""

    id: str  # the other user, or the group
    name: str
    avatar: str | None
    preview: str
    last_at: datetime
    unread: int
    member_count: int | None = None  # groups only


class Conversations(Room):
    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self._peer_reads: BatchingQueue[str, list[str]] = BatchingQueue(
            "contacts lookups", self._peers_of, IN_CHUNK * 4
        )

    async def close(self, timeout_s: float) -> bool:
        return await self._peer_reads.close(timeout_s)

    async def cancel(self) -> None:
        await self._peer_reads.cancel()

    @stored
    async def of(self, owner_id: str) -> list[ConversationRow]:
        """The owner's conversations, direct and group, latest first."""
        rows = await self._direct(owner_id) + await self._groups(owner_id)
        return sorted(rows, key=lambda r: r.last_at, reverse=True)

    async def _direct(self, owner_id: str) -> list[ConversationRow]:
        heads = await self._rows(
            "SELECT peer_id, last_message_id, last_at FROM chat_conversation WHERE owner_id = ?"
            " ORDER BY last_at DESC, last_message_id DESC",
            [owner_id],
        )
        if not heads:
            return []
        previews = await self._texts([int(h["last_message_id"]) for h in heads])
        users: dict[str, dict[str, object]] = {}
        for chunk in chunks([h["peer_id"] for h in heads]):
            for u in await self._rows(
                "SELECT id, display_name, token_name, avatar FROM chat_user"
                f" WHERE id IN ({marks(len(chunk))})",
                chunk,
            ):
                users[str(u["id"])] = u
        unread = {
            r["sender_id"]: int(r["n"])
            for r in await self._rows(
                "SELECT sender_id, COUNT(*) AS n FROM chat_message"
                " WHERE receiver_id = ? AND status < ? GROUP BY sender_id",
                [owner_id, int(Status.READ)],
            )
        }
        return [
            ConversationRow(
                id=h["peer_id"],
                name=name_of(users.get(h["peer_id"]), h["peer_id"]),  # type: ignore[arg-type]
                avatar=users[h["peer_id"]]["avatar"] if h["peer_id"] in users else None,  # type: ignore[arg-type]
                preview=previews.get(int(h["last_message_id"]), ""),
                last_at=as_datetime(h["last_at"]),
                unread=unread.get(h["peer_id"], 0),
            )
            for h in heads
        ]

    async def _groups(self, owner_id: str) -> list[ConversationRow]:
        rows = await self._rows(
            "SELECT g.id, g.title, g.avatar, g.member_count, g.message_count, g.last_message_id,"
            " g.last_at, gm.joined_row, gm.joined_at, gm.read_messages, gm.own_unread"
            " FROM chat_group_member gm JOIN chat_group g ON g.id = gm.group_id"
            " WHERE gm.user_id = ? AND gm.active = ?",
            [owner_id, True],
        )
        # A member sees only what came after they (last) joined.
        seen = {r["id"] for r in rows if int(r["last_message_id"]) > int(r["joined_row"])}
        previews = await self._texts([int(r["last_message_id"]) for r in rows if r["id"] in seen])
        return [
            ConversationRow(
                id=r["id"],
                name=r["title"],
                avatar=r["avatar"],
                preview=previews.get(int(r["last_message_id"]), "") if r["id"] in seen else "",
                last_at=as_datetime(r["last_at"] if r["id"] in seen else r["joined_at"]),
                unread=max(
                    0,
                    int(r["message_count"]) - int(r["read_messages"]) - int(r["own_unread"]),
                ),
                member_count=int(r["member_count"]),
            )
            for r in rows
        ]

    async def _texts(self, rows: list[int]) -> dict[int, str]:
        texts: dict[int, str] = {}
        for chunk in chunks([r for r in rows if r]):
            for r in await self._rows(
                f"SELECT id, text FROM chat_message WHERE id IN ({marks(len(chunk))})", chunk
            ):
                texts[int(r["id"])] = r["text"]
        return texts

    async def peers(self, owner_id: str) -> list[str]:
        """Users who share a direct conversation with `owner_id`.

        Every connect and disconnect asks this (who hears of the presence change),
        so in a reconnect storm the lookups that wait are answered together, by
        one query per batch.
        """
        try:
            return await self._peer_reads.submit(owner_id, self._timeout_s)
        except Abandoned:
            logger.error("storage failure: a contacts lookup waited %s s", self._timeout_s)
            raise Unavailable("storage is unavailable, try again later") from None
        except Interrupted:  # its batch was cancelled: the store is closing (shutdown)
            raise Unavailable("storage is closing") from None

    @stored
    async def _peers_of(
        self, owners: list[str], hand_on: Callable[[], None] | None = None
    ) -> list[list[str]]:
        found: dict[str, list[str]] = {owner: [] for owner in owners}
        for chunk in chunks(list(found)):
            for r in await self._rows(
                "SELECT owner_id, peer_id FROM chat_conversation"
                f" WHERE owner_id IN ({marks(len(chunk))})",
                chunk,
            ):
                found[r["owner_id"]].append(r["peer_id"])
        return [found[owner] for owner in owners]
