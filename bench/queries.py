"""Query times at two table sizes: the reads a client makes, with the table around them grown.

Imports the server's own service and store (the benchmark drives the domain
directly here: no sockets, only the database's work).
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from datetime import UTC, datetime
from typing import Any

U0_MESSAGES = 600
# The group side: G0 is a member of this many groups, among GROUPS of GROUP_MEMBERS each.
G0_GROUPS = 200
GROUPS = 1000
GROUP_MEMBERS = 5


async def query_times(db_url: str, rows: int) -> dict[str, float]:
    """Seed `rows` messages among 2,000 users, then time the reads a client makes."""
    from app.config import Config
    from app.metrics import Metrics
    from app.presence import Audience, LocalPresence
    from app.service import ChatService
    from app.storage.db import Database
    from app.storage.store import Storage

    config = Config(database_url=db_url, jwt_secret="x" * 40)
    db = Database(config)
    await db.open()
    storage = Storage(db, 60, config.dialect)
    chat = ChatService(storage, LocalPresence(Audience(config.presence_scope, storage.conversations)), Metrics())
    await seed(db, config.dialect, rows)
    await seed_groups(db, config.dialect, rows // 5, first_row=rows)
    samples: dict[str, list[float]] = {
        "history": [], "conversations": [], "sync_recent": [], "sync_start": [], "group_list": [],
    }
    # A cursor 100 changes before u0's latest: "what did I miss since a minute ago".
    cursor = (await chat.sync("u0", None, U0_MESSAGES - 100)).cursor
    # Warm reads: one untimed pass first. The seed has just churned the database's
    # cache, and a first read of any conversation costs page I/O, at any table size.
    for rounds, timed in ((10, False), (30, True)):
        await _query_round(chat, cursor, rounds, samples if timed else None)
    await storage.close()
    await db.close()
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


async def _query_round(chat: Any, cursor: Any, rounds: int, samples: dict[str, list[float]] | None) -> None:
    from app.domain import START

    for i in range(rounds):
        t0 = time.perf_counter()
        await chat.history("u0", "u0", "u1", i % 4 * 50, 50)
        t1 = time.perf_counter()
        await chat.conversations("u0")
        t2 = time.perf_counter()
        await chat.sync("u0", cursor.encode(), 200)
        t3 = time.perf_counter()
        await chat.sync("u0", START.encode(), 200)
        t4 = time.perf_counter()
        listed = await chat.conversations("g0")  # 200 groups, with their unread counts
        t5 = time.perf_counter()
        assert sum(1 for c in listed if c.member_count is not None) == G0_GROUPS
        if samples is not None:
            samples["history"].append(t1 - t0)
            samples["conversations"].append(t2 - t1)
            samples["sync_recent"].append(t3 - t2)
            samples["sync_start"].append(t4 - t3)
            samples["group_list"].append(t5 - t4)


async def seed(db: Any, dialect: str, rows: int) -> None:
    """`rows` messages among 2,000 users. The measured user u0 has the same 600 at every
    size (300 with u1, the rest with u2..u40), spread evenly through the table: the
    reads return the same amount, and only the table around them grows."""
    rng = random.Random(1)
    now = datetime.now(UTC).replace(tzinfo=None)
    chunk = 2000
    with db.bound() as orm:
        conn = orm.db()
        mark = "%s" if dialect == "mysql" else "?"
        row = "(" + ", ".join([mark] * 9) + ")"
        heads: dict[tuple[str, str], int] = {}
        for start in range(0, rows, chunk):
            params: list[Any] = []
            n = min(chunk, rows - start)
            for i in range(start, start + n):
                mine = i % max(1, rows // U0_MESSAGES) == 0 and i // max(1, rows // U0_MESSAGES) < U0_MESSAGES
                if mine:
                    a, b = "u0", ("u1" if rng.random() < 0.5 else f"u{rng.randrange(2, 41)}")
                else:
                    a, b = f"u{rng.randrange(1, 2000)}", f"u{rng.randrange(1, 2000)}"
                if not mine and "u0" in (a, b):
                    a, b = "u1998", "u1999"
                if a == b:
                    b = "u1999" if a != "u1999" else "u1998"
                if rng.random() < 0.5:
                    a, b = b, a
                low, high = sorted((a, b))
                status = 2 if i < rows - 5000 else rng.randrange(0, 3)
                params += [str(uuid.UUID(int=rng.getrandbits(128), version=4)), a, b,
                           f"{len(low)}:{low}|{high}", f"message {i}", status, None,
                           now, i + 1]
                heads[(a, b)] = i + 1
                heads[(b, a)] = i + 1
            await conn.execute_query(
                "INSERT INTO chat_message (uuid, sender_id, receiver_id, pair_key, text, status,"
                " client_message_id, created_at, change_seq) VALUES " + ", ".join([row] * n),
                params,
            )
        items = list(heads.items())
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            marks = ", ".join([f"({mark}, {mark}, {mark}, {mark})"] * len(part))
            await conn.execute_query(
                "INSERT INTO chat_conversation (owner_id, peer_id, last_message_id, last_at) VALUES "
                + marks,
                [v for (o, p), seq in part for v in (o, p, seq, now)],
            )
        await conn.execute_query(
            f"UPDATE chat_counter SET value = {mark} WHERE name = 'change'", [rows]
        )


async def seed_groups(db: Any, dialect: str, messages: int, first_row: int) -> None:
    """GROUPS groups of GROUP_MEMBERS; g0 is in the first G0_GROUPS. `messages` group
    messages spread over all groups, after the direct ones (their rows and changes
    follow them); g0 has read all but the last few of each of its groups."""
    rng = random.Random(2)
    now = datetime.now(UTC).replace(tzinfo=None)
    mark = "%s" if dialect == "mysql" else "?"
    ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(GROUPS)]
    per_group: dict[int, list[int]] = {g: [] for g in range(GROUPS)}
    with db.bound() as orm:
        conn = orm.db()
        chunk = 2000
        for start in range(0, messages, chunk):
            n = min(chunk, messages - start)
            params: list[Any] = []
            for i in range(start, start + n):
                g = i % GROUPS
                row = first_row + i + 1
                per_group[g].append(row)
                sender = f"gm{g}-{rng.randrange(GROUP_MEMBERS - 1)}"
                params += [str(uuid.UUID(int=rng.getrandbits(128), version=4)), sender, None,
                           ids[g], f"g:{ids[g]}", f"group message {i}", 2, None, now, row,
                           GROUP_MEMBERS - 1, GROUP_MEMBERS - 1, GROUP_MEMBERS - 1]
            row_marks = "(" + ", ".join([mark] * 13) + ")"
            await conn.execute_query(
                "INSERT INTO chat_message (uuid, sender_id, receiver_id, group_id, pair_key, text,"
                " status, client_message_id, created_at, change_seq, recipient_count,"
                " delivered_count, read_count) VALUES " + ", ".join([row_marks] * n),
                params,
            )
        groups: list[Any] = []
        members: list[Any] = []
        for g in range(GROUPS):
            rows = per_group[g]
            last = rows[-1] if rows else 0
            groups += [ids[g], f"group {g}", None, f"gm{g}-0", now, None, GROUP_MEMBERS,
                       len(rows), last, now, first_row]
            people = [f"gm{g}-{k}" for k in range(GROUP_MEMBERS - 1)]
            people.append("g0" if g < G0_GROUPS else f"gm{g}-x")
            for k, user in enumerate(people):
                unread = min(len(rows), 3) if user == "g0" else 0
                read_upto = rows[-1 - unread] if len(rows) > unread else 0
                members += [ids[g], user, 1 if k == 0 else 0, True, now, 0, read_upto, read_upto,
                            len(rows) - unread, 0, first_row]
        group_marks = "(" + ", ".join([mark] * 11) + ")"
        member_marks = "(" + ", ".join([mark] * 11) + ")"
        for start in range(0, GROUPS, 500):
            part = groups[start * 11 : (start + 500) * 11]
            await conn.execute_query(
                "INSERT INTO chat_group (id, title, avatar, created_by, created_at,"
                " client_request_id, member_count, message_count, last_message_id, last_at,"
                " change_seq) VALUES " + ", ".join([group_marks] * (len(part) // 11)),
                part,
            )
        for start in range(0, len(members), 11 * 1000):
            part = members[start : start + 11 * 1000]
            await conn.execute_query(
                "INSERT INTO chat_group_member (group_id, user_id, role, active, joined_at,"
                " joined_row, delivered_upto, read_upto, read_messages, own_unread, change_seq)"
                " VALUES " + ", ".join([member_marks] * (len(part) // 11)),
                part,
            )


async def group_writes(db_url: str, sizes: tuple[int, ...] = (10, 1000), sends: int = 100) -> dict[str, Any]:
    """Rows the database wrote per group message and per read, for groups of each size.

    Counted by MariaDB itself (Handler_write + Handler_update + Handler_delete:
    rows the storage engine wrote, global, so the benchmark's machine should be
    otherwise idle). A message is written once
    whatever the group's size; a read moves the reader's row and the counts of
    the messages it passes.
    """
    from app.config import Config
    from app.storage.db import Database
    from app.storage.store import Storage

    config = Config(database_url=db_url, jwt_secret="x" * 40)
    if config.dialect != "mysql":
        return {}
    db = Database(config)
    await db.open()
    storage = Storage(db, 60, config.dialect)

    async def written() -> int:
        with db.bound() as orm:
            rows = await orm.db().execute_query_dict("SHOW GLOBAL STATUS LIKE 'Handler_%'")
        counted = {r["Variable_name"]: int(r["Value"]) for r in rows}
        assert {"Handler_write", "Handler_update"} <= set(counted), sorted(counted)
        return counted["Handler_write"] + counted["Handler_update"] + counted.get("Handler_delete", 0)

    result: dict[str, Any] = {}
    for size in sizes:
        members = tuple(f"s{size}-m{k}" for k in range(1, size))
        group = (await storage.groups.create(f"s{size}-m0", f"size {size}", members, None)).group
        before = await written()
        for n in range(sends):  # one at a time: each its own batch
            await storage.messages.insert_in_group(f"s{size}-m0", group.id, f"m{n}", None)
        per_send = (await written() - before) / sends
        readers = members[:10]
        before = await written()
        for reader in readers:  # each reads the 100 messages at once
            await storage.groups.mark_read(reader, group.id)
        per_read = (await written() - before) / len(readers)
        result[str(size)] = {"rows_per_message": per_send, "rows_per_read_of_100": per_read}
    await storage.close()
    await db.close()
    return result
