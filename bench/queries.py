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
    samples: dict[str, list[float]] = {"history": [], "conversations": [], "sync_recent": [], "sync_start": []}
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
        if samples is not None:
            samples["history"].append(t1 - t0)
            samples["conversations"].append(t2 - t1)
            samples["sync_recent"].append(t3 - t2)
            samples["sync_start"].append(t4 - t3)


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
