"""Group commit against the real databases: batches, idempotency, atomic failure, Sync order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.config import Config
from app.storage.db import Database
from app.domain import START, Status
from app.errors import Unavailable
from app.storage.messages import ReceiptOutcome, ReceiptResult
from app.storage.store import Storage
from models import Conversation, Message


@pytest.fixture
async def store(clean_database: Config) -> AsyncIterator[tuple[Storage, Database, list[int]]]:
    db = Database(clean_database)
    await db.open()
    batches: list[int] = []
    store = Storage(db, 5.0, clean_database.dialect, on_batch=batches.append)
    try:
        yield store, db, batches
    finally:
        await store.close()
        await db.close()


async def test_concurrent_writes_share_one_batch_and_a_lone_write_goes_alone(store) -> None:
    s, _, batches = store
    await s.messages.insert("alice", "bob", "alone", None)
    assert batches == [1]

    results = await asyncio.gather(
        *(s.messages.insert(f"u{i}", "bob", f"hi {i}", None) for i in range(40))
    )
    assert batches[1:] == [40]
    assert all(r.created for r in results)
    seqs = {r.message.change_seq for r in results}
    assert len(seqs) == 1, "one batch takes one change number"
    assert len({r.message.id for r in results}) == 40


async def test_two_sends_with_one_client_message_id_in_one_batch_give_one_row(store) -> None:
    s, db, batches = store
    one, two, three = await asyncio.gather(
        s.messages.insert("alice", "bob", "once", "cid-1"),
        s.messages.insert("alice", "bob", "once", "cid-1"),
        s.messages.insert("carol", "bob", "same cid, other sender", "cid-1"),
    )
    (first, created_1), (second, created_2) = (one.message, one.created), (two.message, two.created)
    other, created_3 = three.message, three.created
    assert batches == [3]
    assert first.id == second.id and {created_1, created_2} == {True, False}
    assert created_3 and other.id != first.id
    with db.bound():
        assert await Message.filter(sender_id="alice").count() == 1
    # A repeat in a later batch is still the same message.
    again = await s.messages.insert("alice", "bob", "once", "cid-1")
    assert (again.message.id, again.created) == (first.id, False)


async def test_receipts_in_one_batch_answer_each_caller_by_its_own_rules(store) -> None:
    s, _, batches = store
    m1 = (await s.messages.insert("alice", "bob", "one", None)).message
    m2 = (await s.messages.insert("alice", "bob", "two", None)).message
    batches.clear()
    delivered, read, forbidden, missing, again = await asyncio.gather(
        s.messages.receipt("bob", m1.id, Status.DELIVERED),
        s.messages.receipt("bob", m2.id, Status.READ),
        s.messages.receipt("mallory", m1.id, Status.READ),
        s.messages.receipt("bob", "00000000-0000-4000-8000-000000000000", Status.READ),
        s.messages.receipt("bob", m2.id, Status.DELIVERED),
    )
    assert batches == [5]
    assert delivered.result is ReceiptResult.CHANGED
    assert [m.status for m in delivered.moved] == [Status.DELIVERED]
    assert read.result is ReceiptResult.CHANGED and [m.status for m in read.moved] == [Status.READ]
    assert forbidden == ReceiptOutcome(ReceiptResult.NOT_RECEIVER)
    assert missing == ReceiptOutcome(ReceiptResult.MISSING)
    assert again == ReceiptOutcome(ReceiptResult.ALREADY)
    changed, _ = await s.changes.changes("bob", START, 10)
    assert {(m.id, m.status) for m in changed} == {(m1.id, Status.DELIVERED), (m2.id, Status.READ)}


async def test_a_failing_batch_answers_every_call_unavailable_and_stores_nothing(store) -> None:
    s, db, _ = store
    await s.messages.insert("alice", "bob", "before", None)
    rename = "ALTER TABLE chat_conversation RENAME TO chat_conversation_gone"
    back = "ALTER TABLE chat_conversation_gone RENAME TO chat_conversation"
    with db.bound() as orm:
        await orm.db().execute_script(rename)
    try:
        results = await asyncio.gather(
            *(s.messages.insert("alice", "bob", f"lost {i}", f"c{i}") for i in range(5)),
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
        *(s.messages.insert("alice", "bob", f"lost {i}", f"c{i}") for i in range(5))
    )
    assert all(r.created for r in retried)


async def test_sync_never_skips_across_concurrent_batches(store) -> None:
    s, _, batches = store
    seen: list[str] = []
    cursor = START
    stored: list[str] = []
    receipts: list[str] = []

    async def writer(n: int) -> None:
        for i in range(n):
            message = (await s.messages.insert(f"w{i % 7}", "reader", f"m{i}", None)).message
            stored.append(message.id)
            if i % 3 == 0:
                await s.messages.receipt("reader", message.id, Status.DELIVERED)
                receipts.append(message.id)

    async def reader() -> None:
        nonlocal cursor
        for _ in range(200):
            page, _ = await s.changes.changes("reader", cursor, 7)
            seen.extend(m.id for m in page)
            if page:
                cursor = page[-1].position
            await asyncio.sleep(0)

    await asyncio.gather(*(writer(30) for _ in range(4)), reader())
    while page := (await s.changes.changes("reader", cursor, 50))[0]:
        seen.extend(m.id for m in page)
        cursor = page[-1].position
    assert max(batches) > 1, "writers overlapped, so some batches held several writes"
    # Polling while batches committed saw every message; from the start, each once, as it is now.
    assert set(seen) == set(stored)
    final, _ = await s.changes.changes("reader", START, 500)
    assert sorted(m.id for m in final) == sorted(stored)
    assert {m.id for m in final if m.status is Status.DELIVERED} == set(receipts)
