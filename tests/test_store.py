"""Group commit against the real databases: batches, idempotency, atomic failure, Sync order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.config import Config
from app.storage.db import Database
from app.domain import START, Status
from app.errors import Unavailable
from app.storage.store import MessageStore, ReceiptResult
from models import Conversation, Message


@pytest.fixture
async def store(clean_database: Config) -> AsyncIterator[tuple[MessageStore, Database, list[int]]]:
    db = Database(clean_database)
    await db.open()
    batches: list[int] = []
    store = MessageStore(db, 5.0, clean_database.dialect, on_batch=batches.append)
    try:
        yield store, db, batches
    finally:
        await store.close()
        await db.close()


async def test_concurrent_writes_share_one_batch_and_a_lone_write_goes_alone(store) -> None:
    s, _, batches = store
    await s.insert_message("alice", "bob", "alone", None)
    assert batches == [1]

    results = await asyncio.gather(
        *(s.insert_message(f"u{i}", "bob", f"hi {i}", None) for i in range(40))
    )
    assert batches[1:] == [40]
    assert all(created for _, created in results)
    seqs = {m.change_seq for m, _ in results}
    assert len(seqs) == 1, "one batch takes one change number"
    assert len({m.id for m, _ in results}) == 40


async def test_two_sends_with_one_client_message_id_in_one_batch_give_one_row(store) -> None:
    s, db, batches = store
    (first, created_1), (second, created_2), (other, created_3) = await asyncio.gather(
        s.insert_message("alice", "bob", "once", "cid-1"),
        s.insert_message("alice", "bob", "once", "cid-1"),
        s.insert_message("carol", "bob", "same cid, other sender", "cid-1"),
    )
    assert batches == [3]
    assert first.id == second.id and {created_1, created_2} == {True, False}
    assert created_3 and other.id != first.id
    with db.bound():
        assert await Message.filter(sender_id="alice").count() == 1
    # A repeat in a later batch is still the same message.
    again, created = await s.insert_message("alice", "bob", "once", "cid-1")
    assert (again.id, created) == (first.id, False)


async def test_receipts_in_one_batch_answer_each_caller_by_its_own_rules(store) -> None:
    s, _, batches = store
    m1, _ = await s.insert_message("alice", "bob", "one", None)
    m2, _ = await s.insert_message("alice", "bob", "two", None)
    batches.clear()
    delivered, read, forbidden, missing, again = await asyncio.gather(
        s.receipt("bob", m1.id, Status.DELIVERED),
        s.receipt("bob", m2.id, Status.READ),
        s.receipt("mallory", m1.id, Status.READ),
        s.receipt("bob", "00000000-0000-4000-8000-000000000000", Status.READ),
        s.receipt("bob", m2.id, Status.DELIVERED),
    )
    assert batches == [5]
    assert delivered[0] is ReceiptResult.CHANGED and delivered[1].status is Status.DELIVERED
    assert read[0] is ReceiptResult.CHANGED and read[1].status is Status.READ
    assert forbidden == (ReceiptResult.NOT_RECEIVER, None)
    assert missing == (ReceiptResult.MISSING, None)
    assert again == (ReceiptResult.ALREADY, None)
    changed = await s.changes("bob", START, 10)
    assert {(m.id, m.status) for m in changed} == {(m1.id, Status.DELIVERED), (m2.id, Status.READ)}


async def test_a_failing_batch_answers_every_call_unavailable_and_stores_nothing(store) -> None:
    s, db, _ = store
    await s.insert_message("alice", "bob", "before", None)
    rename = "ALTER TABLE chat_conversation RENAME TO chat_conversation_gone"
    back = "ALTER TABLE chat_conversation_gone RENAME TO chat_conversation"
    with db.bound() as orm:
        await orm.db().execute_script(rename)
    try:
        results = await asyncio.gather(
            *(s.insert_message("alice", "bob", f"lost {i}", f"c{i}") for i in range(5)),
            return_exceptions=True,
        )
    finally:
        with db.bound() as orm:
            await orm.db().execute_script(back)
    assert all(isinstance(r, Unavailable) for r in results), results
    with db.bound():
        # The messages went in before the conversation heads failed: all rolled back.
        assert [m.text for m in await Message.all()] == ["before"]
        assert await Conversation.all().count() == 2
    # The same calls retried now succeed, once each.
    retried = await asyncio.gather(
        *(s.insert_message("alice", "bob", f"lost {i}", f"c{i}") for i in range(5))
    )
    assert all(created for _, created in retried)


async def test_sync_never_skips_across_concurrent_batches(store) -> None:
    s, _, batches = store
    seen: list[str] = []
    cursor = START
    stored: list[str] = []
    receipts: list[str] = []

    async def writer(n: int) -> None:
        for i in range(n):
            message, _ = await s.insert_message(f"w{i % 7}", "reader", f"m{i}", None)
            stored.append(message.id)
            if i % 3 == 0:
                await s.receipt("reader", message.id, Status.DELIVERED)
                receipts.append(message.id)

    async def reader() -> None:
        nonlocal cursor
        for _ in range(200):
            page = await s.changes("reader", cursor, 7)
            seen.extend(m.id for m in page)
            if page:
                cursor = page[-1].position
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(30) for _ in range(4)), reader())
    while page := await s.changes("reader", cursor, 50):
        seen.extend(m.id for m in page)
        cursor = page[-1].position
    assert max(batches) > 1, "writers overlapped, so some batches held several writes"
    # Polling while batches committed saw every message; from the start, each once, as it is now.
    assert set(seen) == set(stored)
    final = await s.changes("reader", START, 500)
    assert sorted(m.id for m in final) == sorted(stored)
    assert {m.id for m in final if m.status is Status.DELIVERED} == set(receipts)
