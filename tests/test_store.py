"""Group commit against the real databases: batches, idempotency, atomic failure, Sync order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from app.config import Config
from app.storage.db import Database
from app.domain import START, ChatMessage, Group, Status, SyncPage
from app.errors import Unavailable
from app.groups import GroupService
from app.metrics import Metrics
from app.presence import Audience, LocalPresence
from app.service import ChatService
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


async def test_sync_with_groups_never_skips_across_concurrent_writers(store) -> None:
    """Direct and group messages, receipts that move statuses and aggregates, and group
    changes, all written concurrently while the reader pages through Sync with a small
    limit: every change once, in order, nothing skipped, every group's last state."""
    s, _, batches = store
    metrics = Metrics()
    chat = ChatService(s, LocalPresence(Audience("contacts", s.conversations)), metrics)
    groups = GroupService(s, metrics, 1000)
    people = ["reader", "g0", "g1", "g2"]
    gids = [
        (await groups.create(f"g{k}", f"group {k}", [p for p in people if p != f"g{k}"], None)).value.id
        for k in range(3)
    ]
    stored: set[str] = set()
    writing = asyncio.Event()
    pages: list[SyncPage] = []
    read_while_writing = 0

    async def direct_writer(w: int, n: int) -> None:
        for i in range(n):
            mid = (await chat.send_message(f"d{w}", f"d{w}", "reader", f"d{w}-{i}")).value
            stored.add(mid)
            if i % 3 == 0:
                await chat.mark_status("reader", mid, Status.DELIVERED)
            if i % 4 == 1:
                reply = (await chat.send_message("reader", "reader", f"d{w}", f"re {i}")).value
                stored.add(reply)
                await chat.mark_status(f"d{w}", reply, Status.READ)

    async def group_writer(k: int, n: int) -> None:
        gid = gids[k]
        for i in range(n):
            mid = (await groups.send(f"g{k}", gid, f"g{k}-{i}", None)).value
            stored.add(mid)
            await chat.mark_status(f"g{(k + 1) % 3}", mid, Status.READ if i % 2 else Status.DELIVERED)
            if i % 5 == 4:
                await groups.mark_read(f"g{(k + 2) % 3}", gid)
            if i % 3 == 2:
                await chat.mark_status("reader", mid, Status.READ)

    async def membership_writer(n: int) -> None:
        for i in range(n):
            await groups.rename("g0", gids[0], f"group 0, take {i}")
            await groups.add_members("g1", gids[1], [f"x{i}"])
            if i % 2:
                await groups.remove_member("g1", gids[1], f"x{i - 1}")

    async def reader() -> None:
        nonlocal read_while_writing
        cursor: str | None = None
        while True:
            finished = not writing.is_set()
            page = await chat.sync("reader", cursor, 5)
            pages.append(page)
            read_while_writing += bool(page.messages) and not finished
            cursor = page.cursor.encode()
            if finished and not page.has_more:
                return
            await asyncio.sleep(0)  # a yield, so the writers' batches interleave with the pages

    async def writers() -> None:
        try:
            await asyncio.gather(
                *(direct_writer(w, 16) for w in range(3)),
                *(group_writer(k, 16) for k in range(3)),
                membership_writer(8),
            )
        finally:
            writing.clear()

    writing.set()
    await asyncio.gather(writers(), reader())

    assert max(batches) > 1, "writers overlapped, so some batches held several writes"
    assert read_while_writing > 10, "the reader did not page while the writers wrote"
    seen: list[ChatMessage] = [m for page in pages for m in page.messages]
    positions = [(m.change_seq, m.row) for m in seen]
    assert positions == sorted(positions), "Sync went back in the change order"
    assert len(set(positions)) == len(positions), "a change came twice"
    assert {m.id for m in seen} == stored, "a message was skipped (or one not the reader's came)"
    # What the reader saw last of each message is what it is now.
    final: dict[str, Status] = {}
    cursor: str | None = None
    while True:
        page = await chat.sync("reader", cursor, 500)
        final.update((m.id, m.status) for m in page.messages)
        cursor = page.cursor.encode()
        if not page.has_more:
            break
    assert {m.id: m.status for m in seen} == final
    assert Status.READ in {m.status for m in seen if m.group_id is not None}, "no aggregate moved"
    # Every group the reader is in, as it is now, was the last the reader saw of it.
    last_seen: dict[str, Group] = {}
    for page in pages:
        last_seen.update((g.id, g) for g in page.groups)
    assert last_seen == {gid: await s.groups.group(gid) for gid in gids}
    assert last_seen[gids[0]].title == "group 0, take 7"

    # Leaving is a change of the group the reader sees, once, without them in it.
    await groups.remove_member("reader", gids[2], "reader")
    page = await chat.sync("reader", pages[-1].cursor.encode(), 5)
    assert [g.id for g in page.groups] == [gids[2]]
    assert "reader" not in page.groups[0].member_ids and not page.has_more
    again = await chat.sync("reader", page.cursor.encode(), 5)
    assert (again.messages, again.groups) == ([], [])


async def test_a_member_who_reads_and_sends_in_one_batch_keeps_both(store) -> None:
    """MarkGroupRead and a send to the same group by one member, in one batch: the
    send's step must build on the position the read just moved, not on a copy read
    before it (which would undo the read, and count the same messages again later)."""
    s, _, batches = store
    groups = GroupService(s, Metrics(), 1000)
    gid = (await groups.create("alice", "team", ["bob", "carol"], None)).value.id
    for i in range(3):
        await groups.send("bob", gid, f"b{i}", None)
    before = len(batches)
    read, sent = await asyncio.gather(
        groups.mark_read("alice", gid), groups.send("alice", gid, "mine", None)
    )
    assert batches[before:] == [2], "the read and the send went in one batch"
    assert read.value == 3
    alice = {c.id: c for c in await s.conversations.of("alice")}
    assert alice[gid].unread == 0, "her own message is not unread, and bob's were read"
    again = await groups.mark_read("alice", gid)
    assert again.value == 0, "the read stayed read: nothing is counted twice"
    receipts = await ChatService(
        s, LocalPresence(Audience("contacts", s.conversations)), Metrics()
    ).receipts("bob", (await groups.history("bob", gid, 0, 10))[-1].id)
    assert receipts.read_count == 1, receipts
