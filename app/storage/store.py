"""Storage: the rooms the services use, over one database and one group commit.

| room | holds |
|---|---|
| `messages` (messages.py) | message rows, direct and group: sends, receipts, history |
| `groups` (groups.py) | groups and members: membership, positions, member lists |
| `conversations` (conversations.py) | the conversation list, and who shares one (presence) |
| `changes` (changes.py) | the change counter and what Sync reads after a cursor |
| users (users.py) | names and avatars, written with the others, read by them |

Every write of every room goes through one group commit (commit.py), so one
transaction carries whatever arrived together, and one change number orders
it all. Every read runs in a storage session bounded by the call time limit,
and returns domain values, never ORM objects: nothing above this package
depends on Tortoise.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from app.storage.changes import ChangeFeed
from app.storage.commit import GroupCommit
from app.storage.conversations import Conversations
from app.storage.db import Database
from app.storage.groups import Groups, MemberCache
from app.storage.messages import Messages
from app.storage.sql import Sql
from app.storage.users import USER_COLUMNS, UserChange

# At shutdown, how long a batch told to stop resolving its COMMIT's outcome gets to end.
RESOLVE_TAIL_S = 0.2


class Storage:
    def __init__(
        self,
        db: Database,
        timeout_s: float,
        dialect: str,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self._db = db
        sql = Sql(dialect)
        members = MemberCache()
        self._commit = GroupCommit(db, sql, timeout_s, members, on_batch=on_batch)
        self.messages = Messages(db, sql, timeout_s, commit=self._commit)
        self.groups = Groups(db, sql, timeout_s, commit=self._commit, members=members)
        self.conversations = Conversations(db, sql, timeout_s)
        self.changes = ChangeFeed(db, sql, timeout_s)

    async def save_user(self, user_id: str, **changes: str | None) -> None:
        """Upsert a user row with these columns (display_name, token_name, avatar)."""
        assert set(changes) <= USER_COLUMNS, changes
        await self._commit.write(UserChange(user_id, tuple(sorted(changes.items()))))

    async def ping(self) -> None:
        """Raise unless the database answers a trivial query (readiness; not logged here)."""
        await self._db.ping()

    async def probe_write(self, timeout_s: float) -> None:
        """Raise unless a write batch commits within `timeout_s` (readiness)."""
        await self._commit.probe(timeout_s)

    async def close(self, timeout_s: float = 5.0) -> None:
        """Answer every write and lookup still queued, within `timeout_s` (shutdown).

        A batch whose COMMIT went unanswered waits to learn its outcome; at the
        limit it stops waiting, and whatever is still running is cancelled.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        # The end of the time is for a batch told to stop resolving to finish by itself.
        tail_s = min(RESOLVE_TAIL_S, timeout_s / 2)
        for queue in (self._commit, self.conversations):
            if not await queue.close(max(0.0, deadline - tail_s - loop.time())):
                self._db.writes.stop_resolving()
                if not await queue.close(max(0.0, deadline - loop.time())):
                    await queue.cancel()
