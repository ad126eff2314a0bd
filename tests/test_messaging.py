"""SendMessage, history, receipts and their events, on SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import re
import uuid

import aiohttp
from aiohttp.test_utils import TestServer

from tests.support import Connect, flush

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


async def test_send_message_is_acked_with_id_and_delivered_to_every_receiver_socket(
    server: TestServer,
    connect: Connect,
) -> None:
    alice, alice_tab2 = await connect(server, "alice"), await connect(server, "alice")
    bob, bob_tab2, carol = await connect(server, "bob"), await connect(server, "bob"), await connect(server, "carol")

    message_id = await alice.ok("SendMessage", "alice", "bob", "hello bob", "c-1")

    assert uuid.UUID(message_id)
    for tab in (bob, bob_tab2):
        (args,) = await tab.wait_for("ReceiveMessage")
        sender, text, mid, status, dto = args
        assert (sender, text, mid, status) == ("alice", "hello bob", message_id, "sent")
        assert dto == {
            "id": message_id,
            "senderId": "alice",
            "receiverId": "bob",
            "text": "hello bob",
            "status": "sent",
            "timestamp": dto["timestamp"],
            "clientMessageId": "c-1",
            "groupId": None,
        }
        assert ISO_MS.match(dto["timestamp"])
    (sent,) = await alice_tab2.wait_for("MessageSent")
    assert sent[0]["id"] == message_id

    # Nobody else hears of it: not the sending socket, not a bystander.
    await flush(alice, via=carol)
    await flush(carol, via=alice)
    assert alice.named("MessageSent") == [] and alice.named("ReceiveMessage") == []
    assert carol.named("ReceiveMessage") == [] and carol.named("MessageSent") == []
    assert bob.named("MessageSent") == []


async def test_spoofed_sender_is_forbidden_and_changes_nothing(server: TestServer, connect: Connect, db_state) -> None:
    mallory, bob = await connect(server, "mallory"), await connect(server, "bob")
    before = await db_state()

    assert await mallory.error("SendMessage", "alice", "bob", "it's me, alice") == "forbidden"

    assert await db_state() == before
    await flush(bob, via=mallory)
    assert bob.named("ReceiveMessage") == []


async def test_bad_send_arguments_are_invalid_and_change_nothing(server: TestServer, connect: Connect, db_state) -> None:
    alice = await connect(server, "alice")
    before = await db_state()
    bad_calls = [
        ("alice", "bob", ""),
        ("alice", "bob", "   \n\t "),
        ("alice", "bob", "x" * 4001),
        ("alice", "", "hi"),
        ("alice", "b" * 65, "hi"),
        ("alice", "bob", 42),
        ("alice", None, "hi"),
        ("alice", ["bob"], "hi"),
        ("alice", "bob", "hi", 7),
        ("alice", "bob", "hi", "c" * 65),
        ("alice", "alice", "note to self"),
        ("alice", "bob"),
        ("alice", "bob", "hi", "c-1", "extra"),
        (),
    ]
    for args in bad_calls:
        assert await alice.error("SendMessage", *args) == "invalid_argument", args
    assert await db_state() == before


async def test_message_limits_accept_4000_characters_and_emoji(server: TestServer, connect: Connect) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    long_text = "é" * 4000
    emoji = "family 👨‍👩‍👧‍👦, flags 🇺🇦🇯🇵, astral 𝄞 and plain 😀"

    await alice.ok("SendMessage", "alice", "bob", long_text)
    await alice.ok("SendMessage", "alice", "bob", emoji)

    history = await bob.ok("GetMessageHistory", "alice", "bob")
    assert [m["text"] for m in history] == [emoji, long_text]
    received = await bob.wait_for("ReceiveMessage", 2)
    assert received[1][1] == emoji


async def test_repeated_client_message_id_returns_first_id_and_delivers_once(
    server: TestServer,
    connect: Connect,
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")

    first = await alice.ok("SendMessage", "alice", "bob", "once", "retry-1")
    again = await alice.ok("SendMessage", "alice", "bob", "once", "retry-1")
    other = await alice.ok("SendMessage", "alice", "bob", "twice", "retry-2")

    assert first == again != other
    await flush(bob, via=alice)
    assert [args[2] for args in bob.named("ReceiveMessage")] == [first, other]
    assert len(await bob.ok("GetMessageHistory", "alice", "bob")) == 2


async def test_a_client_message_id_reused_for_another_message_is_refused_and_stores_nothing(
    server: TestServer, connect: Connect, db_state
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    first = await alice.ok("SendMessage", "alice", "bob", "the first", "key-1")
    before = await db_state()

    # Like a reused idempotency key at a payment API: not taken as the first message.
    for receiver, text in (("carol", "the first"), ("bob", "another text")):
        reply = await alice.call("SendMessage", "alice", receiver, text, "key-1")
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_argument", reply
        assert "clientMessageId" in reply["error"]["message"]
    assert await db_state() == before

    # In one batch too: the second of two racing sends with the key is refused.
    racing = await asyncio.gather(
        alice.call("SendMessage", "alice", "bob", "one", "key-2"),
        alice.call("SendMessage", "alice", "bob", "two", "key-2"),
    )
    assert sorted(r["ok"] for r in racing) == [False, True], racing
    assert await alice.ok("SendMessage", "alice", "bob", "the first", "key-1") == first
    await flush(bob, via=alice)
    assert len(bob.named("ReceiveMessage")) == 2
    assert len(await bob.ok("GetMessageHistory", "alice", "bob")) == 2


async def test_concurrent_sends_with_one_client_message_id_store_one_message(
    server: TestServer,
    connect: Connect,
) -> None:
    alice, alice_tab2, bob = await connect(server, "alice"), await connect(server, "alice"), await connect(server, "bob")

    replies = await asyncio.gather(
        *(
            tab.ok("SendMessage", "alice", "bob", "racing", "race-1")
            for tab in (alice, alice_tab2, alice, alice_tab2)
        )
    )

    assert len(set(replies)) == 1
    assert len(await bob.ok("GetMessageHistory", "alice", "bob")) == 1
    await flush(bob, via=alice)
    assert len(bob.named("ReceiveMessage")) == 1


async def test_same_client_message_id_from_different_senders_are_different_messages(
    server: TestServer,
    connect: Connect,
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    a = await alice.ok("SendMessage", "alice", "bob", "from alice", "same")
    b = await bob.ok("SendMessage", "bob", "alice", "from bob", "same")
    assert a != b


async def test_history_is_newest_first_paged_and_for_participants_only(server: TestServer, connect: Connect) -> None:
    alice, bob, eve = await connect(server, "alice"), await connect(server, "bob"), await connect(server, "eve")
    ids = []
    for i in range(5):
        sender, receiver = ("alice", "bob") if i % 2 == 0 else ("bob", "alice")
        client = alice if sender == "alice" else bob
        ids.append(await client.ok("SendMessage", sender, receiver, f"m{i}"))
    await alice.ok("SendMessage", "alice", "eve", "unrelated")

    newest_first = list(reversed(ids))
    assert [m["id"] for m in await alice.ok("GetMessageHistory", "alice", "bob")] == newest_first
    assert [m["id"] for m in await bob.ok("GetMessageHistory", "alice", "bob", 1, 2)] == newest_first[1:3]
    assert [m["id"] for m in await bob.ok("GetMessageHistory", "bob", "alice", 4, 50)] == newest_first[4:]
    assert await bob.ok("GetMessageHistory", "alice", "bob", 5, 10) == []

    assert await eve.error("GetMessageHistory", "alice", "bob") == "forbidden"
    for args in [("alice", "bob", -1), ("alice", "bob", 0, 0), ("alice", "bob", 0, 101),
                 ("alice", "bob", "0"), ("alice", "bob", 0, True), ("alice",)]:
        assert await alice.error("GetMessageHistory", *args) == "invalid_argument", args


async def test_receipts_move_status_forward_and_notify_the_right_sockets(server: TestServer, connect: Connect) -> None:
    alice, alice_tab2 = await connect(server, "alice"), await connect(server, "alice")
    bob, bob_tab2, carol = await connect(server, "bob"), await connect(server, "bob"), await connect(server, "carol")
    mid = await alice.ok("SendMessage", "alice", "bob", "hi")

    assert await bob.ok("MessageReceived", mid) is None

    for tab in (alice, alice_tab2, bob_tab2):
        assert await tab.wait_for("MessageStatusChanged") == [(mid, "delivered")]
    await flush(bob, via=carol)
    await flush(carol, via=bob)
    assert bob.named("MessageStatusChanged") == [] and carol.named("MessageStatusChanged") == []

    assert await bob_tab2.ok("MessageRead", mid) is None
    for tab in (alice, alice_tab2, bob):
        assert (await tab.wait_for("MessageStatusChanged", 2 if tab is not bob else 1))[-1] == (
            mid,
            "read",
        )
    history = await alice.ok("GetMessageHistory", "alice", "bob")
    assert history[0]["status"] == "read"


async def test_receipt_for_a_status_already_reached_is_a_silent_no_op(server: TestServer, connect: Connect) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    mid = await alice.ok("SendMessage", "alice", "bob", "hi")
    await bob.ok("MessageRead", mid)
    await alice.wait_for("MessageStatusChanged")

    assert await bob.ok("MessageRead", mid) is None
    assert await bob.ok("MessageReceived", mid) is None  # backwards: ignored

    await flush(alice, via=bob)
    assert alice.named("MessageStatusChanged") == [(mid, "read")]
    assert (await alice.ok("GetMessageHistory", "alice", "bob"))[0]["status"] == "read"


async def test_receipts_are_for_the_receiver_of_a_known_message(server: TestServer, connect: Connect, db_state) -> None:
    alice, bob, eve = await connect(server, "alice"), await connect(server, "bob"), await connect(server, "eve")
    mid = await alice.ok("SendMessage", "alice", "bob", "hi")
    before = await db_state()

    assert await alice.error("MessageReceived", mid) == "forbidden"
    assert await eve.error("MessageRead", mid) == "forbidden"
    assert await bob.error("MessageRead", str(uuid.uuid4())) == "not_found"
    assert await bob.error("MessageReceived", "not-a-message-id") == "not_found"
    assert await bob.error("MessageRead", 12) == "invalid_argument"
    assert await bob.error("MessageRead") == "invalid_argument"
    assert await db_state() == before


async def test_typing_reaches_every_socket_of_the_receiver_only(server: TestServer, connect: Connect) -> None:
    alice, bob, bob_tab2, carol = (
        await connect(server, "alice"), await connect(server, "bob"), await connect(server, "bob"), await connect(server, "carol")
    )
    assert await alice.ok("Typing", "bob", True) is None
    assert await alice.ok("Typing", "bob", False) is None
    for tab in (bob, bob_tab2):
        assert await tab.wait_for("UserTyping", 2) == [("alice", True), ("alice", False)]
    await flush(carol, via=bob)
    assert carol.named("UserTyping") == [("bob", True)]  # only the flush probe itself
    for args in [("bob", "yes"), ("bob",), ("", True), (None, False), ("alice", True)]:
        assert await alice.error("Typing", *args) == "invalid_argument", args


async def test_unknown_event_answers_unknown_event(server: TestServer, connect: Connect) -> None:
    alice = await connect(server, "alice")
    assert await alice.error("DeleteEverything", "now") == "unknown_event"
    assert await alice.error("sendMessage", "alice", "bob", "hi") == "unknown_event"


async def test_user_ids_are_case_sensitive_on_every_backend(server: TestServer, connect: Connect) -> None:
    alice = await connect(server, "alice")
    lower = await connect(server, "bob")
    upper = await connect(server, "Bob")
    await alice.ok("SendMessage", "alice", "bob", "to bob")
    await alice.ok("SendMessage", "alice", "Bob", "to Bob")

    assert [m["text"] for m in await lower.ok("GetMessageHistory", "alice", "bob")] == ["to bob"]
    assert [m["text"] for m in await upper.ok("GetMessageHistory", "alice", "Bob")] == ["to Bob"]
    assert sorted(c["id"] for c in await alice.ok("GetConversations")) == ["Bob", "bob"]


async def test_client_cannot_fake_lifecycle_events(server: TestServer, connect: Connect) -> None:
    from socketio import packet

    watcher = await connect(server, "watcher")
    await watcher.ok("SubscribePresence", ["alice"])
    alice = await connect(server, "alice")
    await watcher.wait_for("UserStatusChanged")
    # Client libraries refuse to emit reserved names; a hostile client builds the packet.
    for event in ("disconnect", "connect"):
        await alice.sio._send_packet(
            alice.sio.packet_class(packet.EVENT, namespace="/chat", data=[event, "x"], id=99)
        )
    assert await alice.error("DeleteEverything") == "unknown_event"
    assert await alice.ok("GetOnlineStatus", "alice") is True
    assert await alice.ok("SendMessage", "alice", "watcher", "still here")
    await flush(watcher, via=alice)
    assert watcher.named("UserStatusChanged") == [("alice", "Online")]


async def test_one_bad_text_in_a_crowd_of_sends_fails_alone(
    server: TestServer, connect: Connect, db_state
) -> None:
    # A lone surrogate is valid JSON ("\ud800") but no database can store it: it must
    # be refused before it joins a group commit, where it would fail its neighbours.
    senders = [await connect(server, f"s{i}") for i in range(6)]
    bob = await connect(server, "bob")
    texts = ["fine 0", "fine 1", "bad \ud800 text", "fine 3", "fine 4", "fine 5"]
    replies = await asyncio.gather(
        *(s.call("SendMessage", s.user, "bob", t) for s, t in zip(senders, texts))
    )
    assert replies[2]["ok"] is False and replies[2]["error"]["code"] == "invalid_argument"
    assert "message" in replies[2]["error"]["message"]
    assert all(r["ok"] for i, r in enumerate(replies) if i != 2), replies
    stored = sorted(m["text"] for m in (await db_state())["messages"])
    assert stored == sorted(t for i, t in enumerate(texts) if i != 2)
    assert await senders[0].error("RegisterUser", "Name \udfff") == "invalid_argument"
    await bob.wait_for("ReceiveMessage", 5)


async def test_a_token_name_that_cannot_be_stored_is_dropped_not_refused(
    server: TestServer, connect: Connect
) -> None:
    odd = await connect(server, "odd", name="Broken \ud800 name")
    bob = await connect(server, "bob")
    await odd.ok("SendMessage", "odd", "bob", "hello")
    (conversation,) = await bob.ok("GetConversations")
    assert conversation["name"] == "odd"


async def test_an_event_named_by_a_list_or_object_is_answered_and_counted(
    server: TestServer, connect: Connect
) -> None:
    from socketio import packet

    alice = await connect(server, "alice")
    answers: dict[int, object] = {}
    for name in (["SendMessage"], {"event": "SendMessage"}, 7):
        waiter = asyncio.get_running_loop().create_future()
        ack_id = alice.sio._generate_ack_id("/chat", waiter.set_result)
        # Client libraries only send string names; a hostile client builds the packet.
        await alice.sio._send_packet(
            alice.sio.packet_class(packet.EVENT, namespace="/chat", data=[name, "x"], id=ack_id)
        )
        answers[ack_id] = await asyncio.wait_for(waiter, 5)
    for reply in answers.values():
        assert reply["ok"] is False and reply["error"]["code"] == "unknown_event", reply
    assert await alice.ok("GetOnlineStatus", "alice") is True  # the socket still works
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/metrics")) as r:
            metrics = await r.text()
    assert 'chat_errors_total{code="unknown_event"} 3.0' in metrics


async def test_huge_integer_arguments_are_invalid_before_reaching_storage(
    server: TestServer, connect: Connect, db_state
) -> None:
    alice = await connect(server, "alice")
    await alice.ok("SendMessage", "alice", "bob", "one")
    before = await db_state()
    for args in (("alice", "bob", 10**30), ("alice", "bob", 0, 10**30), ("alice", "bob", -(10**20))):
        assert await alice.error("GetMessageHistory", *args) == "invalid_argument", args
    assert await alice.error("Sync", None, 10**100) == "invalid_argument"
    # A skip past every message, but within bounds, is simply an empty page.
    assert await alice.ok("GetMessageHistory", "alice", "bob", 2**53 - 1, 50) == []
    assert await db_state() == before
