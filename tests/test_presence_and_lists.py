"""Presence, the conversation list, pending hand-over on RegisterUser, and Sync."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestServer

from tests.support import ChatClient, Connect, ServerFactory, flush, make_token


async def test_presence_fires_on_first_connect_and_last_disconnect_only(server: TestServer, connect: Connect) -> None:
    watcher = await connect(server, "watcher")
    assert await watcher.ok("SubscribePresence", ["alice"]) == {"alice": "Offline"}

    tab1 = await connect(server, "alice")
    assert await watcher.wait_for("UserStatusChanged") == [("alice", "Online")]
    tab2 = await connect(server, "alice")
    await tab2.sio.disconnect()  # second tab opens and closes: no flicker
    await flush(watcher, via=tab1)
    assert watcher.named("UserStatusChanged") == [("alice", "Online")]
    assert await watcher.ok("GetOnlineStatus", "alice") is True

    await tab1.sio.disconnect()
    assert await watcher.wait_for("UserStatusChanged", 2) == [
        ("alice", "Online"),
        ("alice", "Offline"),
    ]
    assert await watcher.ok("GetOnlineStatus", "alice") is False


async def test_online_users_and_status(server: TestServer, connect: Connect) -> None:
    alice = await connect(server, "alice")
    await connect(server, "bob")
    assert sorted(await alice.ok("GetOnlineUsers")) == ["alice", "bob"]
    assert await alice.ok("GetOnlineStatus", "bob") is True
    assert await alice.ok("GetOnlineStatus", "nobody") is False
    assert await alice.error("GetOnlineStatus", 5) == "invalid_argument"
    assert await alice.error("GetOnlineUsers", "extra") == "invalid_argument"


async def test_by_default_only_users_who_share_a_conversation_hear_presence(
    server: TestServer, connect: Connect
) -> None:
    bob = await connect(server, "bob")
    stranger = await connect(server, "stranger")
    alice = await connect(server, "alice")
    await alice.ok("SendMessage", "alice", "bob", "hi")
    await alice.sio.disconnect()

    assert await bob.wait_for("UserStatusChanged") == [("alice", "Offline")]
    await flush(stranger, via=bob)
    assert stranger.named("UserStatusChanged") == []


async def test_register_user_hands_over_pending_messages_oldest_first(server: TestServer, connect: Connect) -> None:
    alice = await connect(server, "alice")
    ids = [await alice.ok("SendMessage", "alice", "bob", f"while you were away {i}") for i in range(3)]
    bob_early = await connect(server, "bob")
    await bob_early.ok("MessageReceived", ids[1])  # delivered already: not pending any more
    await bob_early.sio.disconnect()

    bob = await connect(server, "bob")
    assert await bob.ok("RegisterUser", "Bob") == {"userId": "bob", "pending": 2}

    received = await bob.wait_for("ReceiveMessage", 2)
    assert [args[2] for args in received] == [ids[0], ids[2]]
    assert all(args[3] == "sent" for args in received)
    assert await bob.error("RegisterUser", "   ") == "invalid_argument"
    assert await bob.error("RegisterUser", "x" * 101) == "invalid_argument"


async def test_display_names_are_text_not_terminal_or_layout_control(
    server: TestServer, connect: Connect
) -> None:
    bob = await connect(server, "bob")
    # From the token's name claim: an ANSI colour and a newline.
    eve = await connect(server, "eve", name="\x1b[31mEve\x1b[0m\nAdmin")
    # From RegisterUser: a bidi override that would show "exe.gnp" backwards, decomposed
    # accents (NFC makes them one form), a tab, and an emoji sequence kept whole.
    mallory = await connect(server, "mallory")
    await mallory.ok("RegisterUser", "Mal\u202elory\t e\u0301cole \U0001F468\u200d\U0001F467")
    for sender in (eve, mallory):
        await sender.ok("SendMessage", sender.user, "bob", "hi")
    names = {c["id"]: c["name"] for c in await bob.ok("GetConversations")}
    assert names == {
        "eve": "Eve Admin",
        "mallory": "Mallory \u00e9cole \U0001F468\u200d\U0001F467",
    }
    assert await bob.error("RegisterUser", "\x1b[0m\u202e\n") == "invalid_argument"
    # Ids are never rewritten: an id with an accent in another form is another user.
    assert await bob.ok("SendMessage", "bob", "e\u0301", "x") != await bob.ok(
        "SendMessage", "bob", "\u00e9", "x"
    )
    assert {c["id"] for c in await bob.ok("GetConversations")} >= {"e\u0301", "\u00e9"}


async def test_conversation_list_shows_preview_unread_names_and_activity(server: TestServer, connect: Connect) -> None:
    bob = await connect(server, "bob")
    alice = await connect(server, "alice", name="Alice From Token", avatar="https://example.test/a.png")
    carol = await connect(server, "carol")
    await carol.ok("RegisterUser", "Carol C.")
    await alice.ok("SendMessage", "alice", "bob", "one")
    await alice.ok("SendMessage", "alice", "bob", "two")
    await bob.ok("SendMessage", "bob", "dave", "to someone never seen")
    await carol.ok("SendMessage", "carol", "bob", "latest")
    await carol.sio.disconnect()

    conversations = await bob.ok("GetConversations")

    assert [c["id"] for c in conversations] == ["carol", "dave", "alice"]
    carol_c, dave_c, alice_c = conversations
    assert carol_c == {
        "kind": "direct", "id": "carol", "name": "Carol C.", "avatar": None, "previewMessage": "latest",
        "lastActive": carol_c["lastActive"], "isActive": False, "unreadCount": 1,
    }
    assert dave_c["name"] == "dave" and dave_c["unreadCount"] == 0 and dave_c["isActive"] is False
    assert alice_c["name"] == "Alice From Token"
    assert alice_c["avatar"] == "https://example.test/a.png"
    assert alice_c["isActive"] is True and alice_c["unreadCount"] == 2
    assert alice_c["previewMessage"] == "two"
    assert carol_c["lastActive"] >= alice_c["lastActive"]
    # Either direction counts as the latest message.
    await bob.ok("SendMessage", "bob", "alice", "reply")
    assert (await bob.ok("GetConversations"))[0]["previewMessage"] == "reply"
    alice_view = (await alice.ok("GetConversations"))[0]
    assert (alice_view["id"], alice_view["unreadCount"]) == ("bob", 1)


async def test_mark_conversation_read_marks_all_and_tells_the_sender(server: TestServer, connect: Connect) -> None:
    alice, bob, bob_tab2 = await connect(server, "alice"), await connect(server, "bob"), await connect(server, "bob")
    ids = [await alice.ok("SendMessage", "alice", "bob", f"m{i}") for i in range(3)]
    await bob.ok("MessageRead", ids[0])
    mine = await bob.ok("SendMessage", "bob", "alice", "mine stays unread for alice")

    assert await bob.ok("MarkConversationRead", "alice") == 2
    assert await bob.ok("MarkConversationRead", "alice") == 0

    changes = await alice.wait_for("MessageStatusChanged", 3)
    assert sorted(changes) == sorted([(ids[0], "read"), (ids[1], "read"), (ids[2], "read")])
    assert len(await bob_tab2.wait_for("MessageStatusChanged", 3)) == 3
    assert (await bob.ok("GetConversations"))[0]["unreadCount"] == 0
    assert (await alice.ok("GetConversations"))[0]["unreadCount"] == 1
    statuses = {m["id"]: m["status"] for m in await alice.ok("GetMessageHistory", "alice", "bob")}
    assert statuses == {ids[0]: "read", ids[1]: "read", ids[2]: "read", mine: "sent"}
    assert await bob.error("MarkConversationRead", "") == "invalid_argument"


async def test_sync_pages_in_change_order_and_misses_nothing_across_a_disconnect(
    server: TestServer,
    connect: Connect,
) -> None:
    alice = await connect(server, "alice")
    bob = await connect(server, "bob")
    first = [await alice.ok("SendMessage", "alice", "bob", f"a{i}") for i in range(5)]
    await bob.ok("SendMessage", "bob", "carol", "not for alice")

    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await bob.ok("Sync", cursor, 2)
        seen.extend(m["id"] for m in page["messages"])
        cursor = page["cursor"]
        pages += 1
        if not page["hasMore"]:
            break
    assert len(seen) == 6 and seen[:5] == first and pages == 3
    await bob.sio.disconnect()

    # While bob is away: a new message, and an old one changes status.
    late = await alice.ok("SendMessage", "alice", "bob", "while you were offline")
    bob_phone = await connect(server, "bob")
    await bob_phone.ok("MessageRead", first[0])

    bob_back = await connect(server, "bob")
    page = await bob_back.ok("Sync", cursor, 500)
    assert [(m["id"], m["status"]) for m in page["messages"]] == [
        (late, "sent"),
        (first[0], "read"),
    ]
    assert page["hasMore"] is False
    again = await bob_back.ok("Sync", page["cursor"])
    assert again["messages"] == [] and again["cursor"] == page["cursor"]

    for args in [("garbage",), (None, 0), (None, 501), (12,), (None, "10")]:
        assert await bob_back.error("Sync", *args) == "invalid_argument", args


async def test_sync_sees_every_message_sent_concurrently(server: TestServer, connect: Connect) -> None:
    alice, carol, bob = await connect(server, "alice"), await connect(server, "carol"), await connect(server, "bob")
    cursor = (await bob.ok("Sync", None))["cursor"]

    async def send_many(client: ChatClient, user: str) -> list[str]:
        return [await client.ok("SendMessage", user, "bob", f"{user} {i}") for i in range(15)]

    async def poll() -> list[str]:
        nonlocal cursor
        got: list[str] = []
        for _ in range(40):
            page = await bob.ok("Sync", cursor, 7)
            got.extend(m["id"] for m in page["messages"])
            cursor = page["cursor"]
            await asyncio.sleep(0)
        return got

    sent_a, sent_c, polled = await asyncio.gather(
        send_many(alice, "alice"), send_many(carol, "carol"), poll()
    )
    while True:
        page = await bob.ok("Sync", cursor, 500)
        polled.extend(m["id"] for m in page["messages"])
        cursor = page["cursor"]
        if not page["hasMore"]:
            break
    assert sorted(polled) == sorted(sent_a + sent_c)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_rate_limit_answers_rate_limited(start_server: ServerFactory, connect: Connect) -> None:
    server = await start_server(rate_limit_burst=5, rate_limit_per_s=1.0)
    alice = await connect(server, "alice")
    replies = [await alice.call("GetOnlineUsers") for _ in range(8)]
    codes = [r["error"]["code"] for r in replies if not r["ok"]]
    assert sum(r["ok"] for r in replies) == 5
    assert codes == ["rate_limited"] * 3


async def test_token_name_and_avatar_claims_identify_the_user(server: TestServer, connect: Connect) -> None:
    bob = await connect(server, "bob")
    alice = await connect(server, "alice", token=make_token("alice", name="Al"))
    await alice.ok("SendMessage", "alice", "bob", "hi")
    assert (await bob.ok("GetConversations"))[0]["name"] == "Al"
    await alice.ok("RegisterUser", "Alice Registered")
    assert (await bob.ok("GetConversations"))[0]["name"] == "Alice Registered"


async def test_scope_all_tells_every_connected_user(start_server: ServerFactory, connect: Connect) -> None:
    server = await start_server(presence_scope="all")
    stranger = await connect(server, "stranger")
    alice = await connect(server, "alice")
    assert await stranger.wait_for("UserStatusChanged") == [("alice", "Online")]
    await alice.sio.disconnect()
    assert await stranger.wait_for("UserStatusChanged", 2) == [("alice", "Online"), ("alice", "Offline")]
    await flush(alice_again := await connect(server, "alice"), via=stranger)
    assert alice_again.named("UserStatusChanged") == []  # not told of its own arrival


async def test_subscribe_presence_answers_now_and_reports_changes_to_that_socket_only(
    server: TestServer, connect: Connect
) -> None:
    bob = await connect(server, "bob")
    watcher, watcher_tab2 = await connect(server, "watcher"), await connect(server, "watcher")
    bystander = await connect(server, "bystander")

    assert await watcher.ok("SubscribePresence", ["bob", "alice", "bob"]) == {
        "bob": "Online", "alice": "Offline",
    }
    alice = await connect(server, "alice")
    assert await watcher.wait_for("UserStatusChanged") == [("alice", "Online")]
    # A subscription belongs to one socket: the watcher's other tab and others hear nothing.
    await flush(watcher_tab2, via=bob)
    await flush(bystander, via=bob)
    assert watcher_tab2.named("UserStatusChanged") == []
    assert bystander.named("UserStatusChanged") == []

    # Each call replaces the list: alice is no longer watched, bob is.
    assert await watcher.ok("SubscribePresence", ["bob"]) == {"bob": "Online"}
    await alice.sio.disconnect()
    await bob.sio.disconnect()
    assert await watcher.wait_for("UserStatusChanged", 2) == [("alice", "Online"), ("bob", "Offline")]
    await flush(watcher, via=bystander)
    assert len(watcher.named("UserStatusChanged")) == 2

    # An empty list unsubscribes from everyone.
    assert await watcher.ok("SubscribePresence", []) == {}
    await connect(server, "bob")
    await flush(watcher, via=bystander)
    assert len(watcher.named("UserStatusChanged")) == 2


async def test_subscribe_presence_refuses_bad_lists_and_keeps_the_old_one(
    server: TestServer, connect: Connect
) -> None:
    watcher = await connect(server, "watcher")
    await watcher.ok("SubscribePresence", ["alice"])
    for bad in (["x"] * 501, [""], [5], ["a" * 65], "alice", None, {"alice": 1}):
        assert await watcher.error("SubscribePresence", bad) == "invalid_argument", bad
    assert await watcher.error("SubscribePresence") == "invalid_argument"
    assert len(await watcher.ok("SubscribePresence", [f"u{i}" for i in range(500)])) == 500
    await watcher.ok("SubscribePresence", ["alice"])
    await connect(server, "alice")
    assert await watcher.wait_for("UserStatusChanged") == [("alice", "Online")]


async def test_a_subscription_ends_with_its_socket(server: TestServer, connect: Connect) -> None:
    watcher = await connect(server, "watcher")
    await watcher.ok("SubscribePresence", ["alice"])
    await watcher.sio.disconnect()
    other = await connect(server, "other")
    await other.ok("SubscribePresence", ["alice"])
    await connect(server, "alice")
    assert await other.wait_for("UserStatusChanged") == [("alice", "Online")]
    assert watcher.named("UserStatusChanged") == []
