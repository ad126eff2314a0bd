"""Groups (protocol v2.0): every rule of the Groups section, on SQLite and MariaDB.

Written from the protocol's words: who may call what, what each call answers,
who hears which event, and that a refused call changes nothing that is stored.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support import ChatClient, Connect, ServerFactory, db_snapshot, flush, make_token

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
GROUP_KEYS = {"id", "title", "avatar", "createdBy", "createdAt", "memberCount", "members"}
DbState = Callable[[], Awaitable[dict[str, Any]]]


@pytest.fixture
async def server(start_server: ServerFactory) -> TestServer:
    # These tests make many calls per user; the call budget is not what they test.
    return await start_server(rate_limit_per_s=10_000.0, rate_limit_burst=10_000)


async def create(admin: ChatClient, members: list[str], title: str = "Care team") -> str:
    """A new group of `admin` and `members`; its id."""
    return str((await admin.ok("CreateGroup", title, members))["id"])


def roles(group: dict[str, Any]) -> dict[str, str]:
    return {m["userId"]: m["role"] for m in group["members"]}


def ids(messages: list[dict[str, Any]]) -> list[str]:
    return [m["id"] for m in messages]


async def rest(server: TestServer, path: str, user: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {make_token(user)}"} if user else {}
    async with aiohttp.ClientSession() as http, http.get(server.make_url(path), headers=headers) as r:
        return r.status, await r.json()


async def next_millisecond() -> None:
    """Let the clock pass a millisecond: timestamps (ms) then order what comes after.

    Not synchronisation: the test orders conversations by their latest activity,
    and two writes inside one millisecond would tie.
    """
    await asyncio.sleep(0.002)


# -- CreateGroup ---------------------------------------------------------------------------


async def test_create_group_makes_the_caller_its_one_admin_and_tells_every_member(
    server: TestServer, connect: Connect
) -> None:
    alice = await connect(server, "alice", name="Alice")
    alice_tab2 = await connect(server, "alice", name="Alice")
    bob, carol, dave = (
        await connect(server, "bob", name="Bob"), await connect(server, "carol"),
        await connect(server, "dave"),
    )

    # Duplicates and the caller are ignored.
    group = await alice.ok("CreateGroup", "Care team", ["bob", "carol", "bob", "alice"])

    assert set(group) == GROUP_KEYS
    assert isinstance(group["id"], str) and 0 < len(group["id"]) <= 64
    assert (group["title"], group["avatar"], group["createdBy"]) == ("Care team", None, "alice")
    assert ISO_MS.match(group["createdAt"])
    assert group["memberCount"] == 3 == len(group["members"])
    assert roles(group) == {"alice": "admin", "bob": "member", "carol": "member"}
    assert {m["userId"]: m["name"] for m in group["members"]} == {
        "alice": "Alice", "bob": "Bob", "carol": "carol",
    }
    for member in group["members"]:
        assert set(member) == {"userId", "name", "role", "joinedAt"}
        assert ISO_MS.match(member["joinedAt"])

    # Every socket of every member hears of it, the calling one too; nobody else.
    for client in (alice, alice_tab2, bob, carol):
        assert await client.wait_for("GroupChanged") == [(group,)]
    await flush(dave, via=alice)
    assert dave.named("GroupChanged") == []
    assert await bob.ok("GetGroup", group["id"]) == group
    assert await carol.ok("GetGroup", group["id"]) == group
    # Members are named by their latest display name.
    await bob.ok("RegisterUser", "Robert")
    named = await carol.ok("GetGroup", group["id"])
    assert {m["userId"]: m["name"] for m in named["members"]}["bob"] == "Robert"


async def test_create_group_cleans_the_title_and_accepts_a_group_of_one(
    server: TestServer, connect: Connect
) -> None:
    alice = await connect(server, "alice")

    cleaned = await alice.ok("CreateGroup", "  Care\n\tteam \u202e ", ["bob"])
    assert cleaned["title"] == "Care team"
    longest = await alice.ok("CreateGroup", "é" * 100, [])
    assert longest["title"] == "é" * 100 and roles(longest) == {"alice": "admin"}
    emoji = await alice.ok("CreateGroup", "👩‍⚕️ team 🇺🇦", ["bob"])
    assert emoji["title"] == "👩‍⚕️ team 🇺🇦"


async def test_create_group_refuses_bad_titles_and_member_lists_and_changes_nothing(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice = await connect(server, "alice")
    await alice.ok("CreateGroup", "Existing", ["bob"])
    before = await db_state()
    bad_calls: list[tuple[Any, ...]] = [
        ("", ["bob"]),
        ("   \n\t", ["bob"]),
        ("x" * 101, ["bob"]),
        ("\u202e\u200f", ["bob"]),  # nothing visible once cleaned
        ("\x1b[31m\x1b[0m", ["bob"]),
        ("bad \ud800 title", ["bob"]),
        (42, ["bob"]),
        (None, ["bob"]),
        ("Team", "bob"),
        ("Team", None),
        ("Team", {"bob": True}),
        ("Team", [""]),
        ("Team", ["b" * 65]),
        ("Team", [" bob"]),
        ("Team", ["bob\n"]),
        ("Team", [42]),
        ("Team", [None]),
        ("Team", [["bob"]]),
        ("Team", ["bob"], 7),
        ("Team", ["bob"], ""),
        ("Team", ["bob"], "r" * 65),
        ("Team",),
        ("Team", ["bob"], "r-1", "extra"),
        (),
    ]
    for args in bad_calls:
        assert await alice.error("CreateGroup", *args) == "invalid_argument", args
    assert await db_state() == before


async def test_create_group_holds_the_size_limit_caller_included(
    start_server: ServerFactory, connect: Connect
) -> None:
    server = await start_server(max_group_size=3)
    alice = await connect(server, "alice")
    before = await db_snapshot(server)

    assert await alice.error("CreateGroup", "Four", ["bob", "carol", "dave"]) == "invalid_argument"
    assert await db_snapshot(server) == before

    full = await alice.ok("CreateGroup", "Three", ["bob", "carol"])
    assert full["memberCount"] == 3
    # Duplicates and the caller are ignored before the size is counted.
    repeated = await alice.ok("CreateGroup", "Two", ["bob", "bob", "bob", "alice", "bob"])
    assert roles(repeated) == {"alice": "admin", "bob": "member"}
    with_self = await alice.ok("CreateGroup", "Three again", ["alice", "bob", "carol"])
    assert with_self["memberCount"] == 3


async def test_a_repeated_create_with_the_same_request_id_returns_the_first_group(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    first = await alice.ok("CreateGroup", "Team", ["bob"], "req-1")
    await bob.wait_for("GroupChanged")
    before = await db_state()

    again = await alice.ok("CreateGroup", "Team", ["bob"], "req-1")

    assert again == first
    assert await db_state() == before
    await flush(bob, via=alice)
    assert len(bob.named("GroupChanged")) == 1, "a repeat told the members again"

    other = await alice.ok("CreateGroup", "Team", ["bob"], "req-2")
    bobs = await bob.ok("CreateGroup", "Team", ["alice"], "req-1")  # the key is per caller
    assert len({first["id"], other["id"], bobs["id"]}) == 3

    # Racing repeats (one batch, or several) create one group.
    racing = await asyncio.gather(
        *(alice.ok("CreateGroup", "Racing", ["bob"], "req-3") for _ in range(4))
    )
    assert len({g["id"] for g in racing}) == 1
    assert len([g for g in (await db_state())["groups"] if g["title"] == "Racing"]) == 1


# -- GetGroup ---------------------------------------------------------------------------


async def test_get_group_is_for_members_and_an_unknown_id_is_not_found(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, eve = await connect(server, "alice"), await connect(server, "eve")
    gid = await create(alice, ["bob"])
    before = await db_state()

    assert await eve.error("GetGroup", gid) == "forbidden"
    assert await alice.error("GetGroup", str(uuid.uuid4())) == "not_found"
    assert await eve.error("GetGroup", "no-such-group") == "not_found"
    for args in [("",), ("g" * 65,), (42,), (None,), (), (gid, "extra")]:
        assert await alice.error("GetGroup", *args) == "invalid_argument", args
    assert await db_state() == before


# -- AddGroupMembers -------------------------------------------------------------------------


async def test_admins_add_members_and_members_already_in_are_ignored(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, carol, dave, erin = [
        await connect(server, u) for u in ("alice", "bob", "carol", "dave", "erin")
    ]
    gid = await create(alice, ["bob"])
    await bob.wait_for("GroupChanged")
    before = await db_state()

    assert await bob.error("AddGroupMembers", gid, ["carol"]) == "forbidden"  # not an admin
    assert await carol.error("AddGroupMembers", gid, ["carol"]) == "forbidden"  # not a member
    assert await alice.error("AddGroupMembers", str(uuid.uuid4()), ["carol"]) == "not_found"
    for args in [(gid, "carol"), (gid, [""]), (gid, ["c" * 65]), (gid, [7]), (gid, None), (gid,)]:
        assert await alice.error("AddGroupMembers", *args) == "invalid_argument", args
    assert await db_state() == before

    grown = await alice.ok("AddGroupMembers", gid, ["bob", "carol", "carol", "alice", "dave"])

    assert set(grown) == GROUP_KEYS and grown["id"] == gid
    assert roles(grown) == {"alice": "admin", "bob": "member", "carol": "member", "dave": "member"}
    assert grown["memberCount"] == 4
    for client in (alice, bob, carol, dave):
        assert (await client.wait_for("GroupChanged"))[-1] == (grown,)
    assert await dave.ok("GetGroup", gid) == grown
    await flush(erin, via=alice)
    assert erin.named("GroupChanged") == []

    # Nobody new: nothing changes, nobody hears of it.
    before = await db_state()
    assert await alice.ok("AddGroupMembers", gid, ["bob", "carol"]) == grown
    assert await db_state() == before
    await flush(bob, via=alice)
    assert len(bob.named("GroupChanged")) == 2  # the creation and the one addition


async def test_adding_past_the_size_limit_adds_nobody(
    start_server: ServerFactory, connect: Connect
) -> None:
    server = await start_server(max_group_size=4)
    alice, dave = await connect(server, "alice"), await connect(server, "dave")
    gid = await create(alice, ["bob", "carol"])
    before = await db_snapshot(server)

    assert await alice.error("AddGroupMembers", gid, ["dave", "erin"]) == "invalid_argument"

    assert await db_snapshot(server) == before
    assert (await alice.ok("GetGroup", gid))["memberCount"] == 3
    assert await dave.error("GetGroup", gid) == "forbidden"
    # Members already in do not count against the limit.
    assert (await alice.ok("AddGroupMembers", gid, ["bob", "dave", "dave"]))["memberCount"] == 4
    assert await alice.error("AddGroupMembers", gid, ["erin"]) == "invalid_argument"

    # Two adds racing for the last place: one gets it, the other adds nobody.
    await alice.ok("RemoveGroupMember", gid, "dave")
    racing = await asyncio.gather(
        alice.call("AddGroupMembers", gid, ["erin"]), alice.call("AddGroupMembers", gid, ["frank"])
    )
    assert sorted(r["ok"] for r in racing) == [False, True], racing
    assert {r["error"]["code"] for r in racing if not r["ok"]} == {"invalid_argument"}
    assert (await alice.ok("GetGroup", gid))["memberCount"] == 4


# -- RemoveGroupMember -----------------------------------------------------------------------


async def test_an_admin_removes_anyone_and_anyone_may_leave(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, carol, dave, eve = [
        await connect(server, u) for u in ("alice", "bob", "carol", "dave", "eve")
    ]
    gid = await create(alice, ["bob", "carol", "dave"])
    before = await db_state()

    assert await bob.error("RemoveGroupMember", gid, "carol") == "forbidden"
    assert await bob.error("RemoveGroupMember", gid, "alice") == "forbidden"
    assert await eve.error("RemoveGroupMember", gid, "bob") == "forbidden"
    assert await eve.error("RemoveGroupMember", gid, "eve") == "forbidden"
    assert await alice.error("RemoveGroupMember", gid, "eve") == "not_found"  # not in it
    assert await alice.error("RemoveGroupMember", str(uuid.uuid4()), "bob") == "not_found"
    for args in [(gid, ""), (gid, 7), (gid, ["bob"]), (gid,), ("", "bob")]:
        assert await alice.error("RemoveGroupMember", *args) == "invalid_argument", args
    assert await db_state() == before

    assert await alice.ok("RemoveGroupMember", gid, "bob") is None

    # Everyone hears, the one who went too; he is no longer in `members`.
    for client in (alice, bob, carol, dave):
        (changed,) = (await client.wait_for("GroupChanged", 2))[1]
        assert roles(changed) == {"alice": "admin", "carol": "member", "dave": "member"}
        assert changed["memberCount"] == 3
    await flush(eve, via=alice)
    assert eve.named("GroupChanged") == []

    assert await carol.ok("RemoveGroupMember", gid, "carol") is None  # leaving
    for client in (alice, carol, dave):
        (changed,) = (await client.wait_for("GroupChanged", 3))[2]
        assert roles(changed) == {"alice": "admin", "dave": "member"}
    await flush(bob, via=alice)
    assert len(bob.named("GroupChanged")) == 2, "bob, gone, heard of a later change"
    assert await carol.error("RemoveGroupMember", gid, "carol") == "forbidden"  # gone already
    assert roles(await dave.ok("GetGroup", gid)) == {"alice": "admin", "dave": "member"}


async def test_when_the_last_admin_leaves_the_member_who_joined_first_becomes_admin(
    server: TestServer, connect: Connect
) -> None:
    alice, bob, carol, dave = [await connect(server, u) for u in ("alice", "bob", "carol", "dave")]
    gid = await create(alice, ["bob", "carol"])
    # bob leaves and comes back: he has now joined after carol, whatever his row says.
    await bob.ok("RemoveGroupMember", gid, "bob")
    await next_millisecond()
    await alice.ok("AddGroupMembers", gid, ["bob"])
    await next_millisecond()
    await alice.ok("AddGroupMembers", gid, ["dave"])

    await alice.ok("RemoveGroupMember", gid, "alice")

    group = await carol.ok("GetGroup", gid)
    assert roles(group) == {"carol": "admin", "bob": "member", "dave": "member"}
    assert (await dave.wait_for("GroupChanged", 2))[-1] == (group,)
    assert (await alice.wait_for("GroupChanged"))[-1] == (group,)
    # The new admin acts as one; the others still cannot.
    assert await bob.error("RenameGroup", gid, "Mine") == "forbidden"
    assert (await carol.ok("RenameGroup", gid, "Carol's"))["title"] == "Carol's"

    await carol.ok("RemoveGroupMember", gid, "carol")
    assert roles(await bob.ok("GetGroup", gid)) == {"bob": "admin", "dave": "member"}
    # An admin who leaves while members remain always leaves one behind.
    await bob.ok("RemoveGroupMember", gid, "bob")
    assert roles(await dave.ok("GetGroup", gid)) == {"dave": "admin"}


async def test_a_removed_member_is_forbidden_everywhere_and_hears_nothing_more(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, bob_tab2, carol = [
        await connect(server, u) for u in ("alice", "bob", "bob", "carol")
    ]
    gid = await create(alice, ["bob", "carol"])
    before_removal = (await bob.ok("Sync", None))["cursor"]
    m1 = await alice.ok("SendGroupMessage", gid, "before")
    await bob.wait_for("ReceiveGroupMessage")
    await alice.ok("RemoveGroupMember", gid, "bob")
    for tab in (bob, bob_tab2):
        await tab.wait_for("GroupChanged", 2)
    before = await db_state()

    refused: list[tuple[str, tuple[Any, ...]]] = [
        ("GetGroup", (gid,)),
        ("AddGroupMembers", (gid, ["bob"])),
        ("RemoveGroupMember", (gid, "bob")),
        ("RemoveGroupMember", (gid, "carol")),
        ("RenameGroup", (gid, "Bob's now")),
        ("SendGroupMessage", (gid, "let me back in")),
        ("GetGroupHistory", (gid,)),
        ("MarkGroupRead", (gid,)),
        ("GroupTyping", (gid, True)),
        ("MessageReceived", (m1,)),
        ("MessageRead", (m1,)),
    ]
    for event, args in refused:
        assert await bob.error(event, *args) == "forbidden", event
    for path in (f"/api/groups/{gid}", f"/api/groups/{gid}/messages"):
        status, body = await rest(server, path, "bob")
        assert status == 403 and body["error"]["code"] == "forbidden", (path, body)
    assert await db_state() == before

    # The group goes on without him.
    m2 = await alice.ok("SendGroupMessage", gid, "after")
    await alice.ok("GroupTyping", gid, True)
    await alice.ok("RenameGroup", gid, "Without bob")
    await alice.ok("AddGroupMembers", gid, ["dave"])
    (arrived,) = (await carol.wait_for("ReceiveGroupMessage", 2))[1:]
    assert arrived[1]["id"] == m2
    await carol.wait_for("UserTypingInGroup")
    await carol.wait_for("GroupChanged", 4)
    for tab in (bob, bob_tab2):
        await flush(tab, via=alice)
        assert [a[1]["id"] for a in tab.named("ReceiveGroupMessage")] == [m1]
        assert tab.named("UserTypingInGroup") == []
        assert len(tab.named("GroupChanged")) == 2  # the creation, his removal
        assert tab.named("MessageStatusChanged") == []
    assert (await alice.ok("GetMessageReceipts", m2))["recipientCount"] == 1

    # His Sync shows the group he went from, without him, and nothing said after.
    page = await bob.ok("Sync", before_removal)
    assert m2 not in ids(page["messages"])
    (group,) = page["groups"]
    assert group["id"] == gid and "bob" not in roles(group)
    assert [c["id"] for c in await bob.ok("GetConversations")] == []


async def test_a_sender_who_left_hears_nothing_of_his_messages_aggregate(
    server: TestServer, connect: Connect
) -> None:
    alice, bob, carol = [await connect(server, u) for u in ("alice", "bob", "carol")]
    gid = await create(alice, ["bob", "carol"])
    mid = await bob.ok("SendGroupMessage", gid, "bye")
    await bob.ok("RemoveGroupMember", gid, "bob")

    await alice.ok("MessageRead", mid)
    await carol.ok("MessageRead", mid)

    await flush(bob, via=alice)
    assert bob.named("MessageStatusChanged") == []
    # "A former member gets forbidden from its methods": the receipts of the group too.
    assert await bob.error("GetMessageReceipts", mid) == "forbidden"


# -- RenameGroup --------------------------------------------------------------------------------


async def test_admins_rename_and_every_member_hears_of_it(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, eve = [await connect(server, u) for u in ("alice", "bob", "eve")]
    gid = await create(alice, ["bob"], title="Old")
    await bob.wait_for("GroupChanged")
    before = await db_state()

    assert await bob.error("RenameGroup", gid, "Bob's") == "forbidden"
    assert await eve.error("RenameGroup", gid, "Eve's") == "forbidden"
    assert await alice.error("RenameGroup", str(uuid.uuid4()), "New") == "not_found"
    for args in [(gid, ""), (gid, "  "), (gid, "x" * 101), (gid, "\u202e"), (gid, 5), (gid,)]:
        assert await alice.error("RenameGroup", *args) == "invalid_argument", args
    assert await db_state() == before

    renamed = await alice.ok("RenameGroup", gid, "  New\tname ")

    assert renamed["title"] == "New name" and renamed["id"] == gid
    for client in (alice, bob):
        assert (await client.wait_for("GroupChanged", 2))[-1] == (renamed,)
    assert (await bob.ok("GetGroup", gid))["title"] == "New name"
    await flush(eve, via=alice)
    assert eve.named("GroupChanged") == []


# -- SendGroupMessage -----------------------------------------------------------------------------


async def test_a_group_message_reaches_every_socket_of_every_other_member(
    server: TestServer, connect: Connect
) -> None:
    alice, alice_tab2 = await connect(server, "alice"), await connect(server, "alice")
    bob, bob_tab2 = await connect(server, "bob"), await connect(server, "bob")
    carol, eve = await connect(server, "carol"), await connect(server, "eve")
    gid = await create(alice, ["bob", "carol"])

    mid = await alice.ok("SendGroupMessage", gid, "hello team", "c-1")

    assert uuid.UUID(mid)
    for tab in (bob, bob_tab2, carol):
        ((group_id, dto),) = await tab.wait_for("ReceiveGroupMessage")
        assert group_id == gid
        assert dto == {
            "id": mid, "senderId": "alice", "receiverId": None, "text": "hello team",
            "status": "sent", "timestamp": dto["timestamp"], "clientMessageId": "c-1",
            "groupId": gid,
        }
        assert ISO_MS.match(dto["timestamp"])
    ((echo,),) = await alice_tab2.wait_for("MessageSent")
    assert echo["id"] == mid and echo["groupId"] == gid and echo["receiverId"] is None

    # Not the sending socket, not the sender's others as a receive, not a bystander.
    await flush(alice, via=eve)
    await flush(alice_tab2, via=eve)
    await flush(eve, via=alice)
    assert alice.named("MessageSent") == [] and alice.named("ReceiveGroupMessage") == []
    assert alice_tab2.named("ReceiveGroupMessage") == []
    assert eve.named("ReceiveGroupMessage") == [] and eve.named("MessageSent") == []
    assert bob.named("MessageSent") == [] and bob.named("ReceiveMessage") == []
    assert ids(await carol.ok("GetGroupHistory", gid)) == [mid]
    # Group messages are not direct ones: not in a direct history, not handed over as pending.
    assert await bob.ok("GetMessageHistory", "alice", "bob") == []
    assert (await bob.ok("RegisterUser", "Bob"))["pending"] == 0


async def test_send_group_message_follows_the_text_and_idempotency_rules_of_send_message(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, eve = [await connect(server, u) for u in ("alice", "bob", "eve")]
    gid = await create(alice, ["bob"])
    other_gid = await create(alice, ["bob"], title="Other")
    before = await db_state()

    assert await eve.error("SendGroupMessage", gid, "let me in") == "forbidden"
    assert await alice.error("SendGroupMessage", str(uuid.uuid4()), "anyone?") == "not_found"
    for args in [
        (gid, ""), (gid, "  \n\t"), (gid, "x" * 4001), (gid, 42), (gid, None), (gid, "bad \ud800"),
        (gid, "nul \x00"), (gid, "hi", 7), (gid, "hi", "c" * 65), (gid, "hi", ""), ("", "hi"),
        (gid,), (gid, "hi", "c-0", "extra"),
    ]:
        assert await alice.error("SendGroupMessage", *args) == "invalid_argument", args
    assert await db_state() == before

    long_text = "é" * 4000
    assert await alice.ok("SendGroupMessage", gid, long_text)
    first = await alice.ok("SendGroupMessage", gid, "once", "key-1")
    again = await alice.ok("SendGroupMessage", gid, "once", "key-1")
    assert again == first
    await flush(bob, via=alice)
    assert [a[1]["id"] for a in bob.named("ReceiveGroupMessage")][1:] == [first]

    # The same key for another message (group, text, or a direct one) is refused.
    before = await db_state()
    for event, args in [
        ("SendGroupMessage", (other_gid, "once", "key-1")),
        ("SendGroupMessage", (gid, "another text", "key-1")),
        ("SendMessage", ("alice", "bob", "once", "key-1")),
    ]:
        reply = await alice.call(event, *args)
        assert reply["ok"] is False and reply["error"]["code"] == "invalid_argument", (args, reply)
        assert "clientMessageId" in reply["error"]["message"]
    direct = await alice.ok("SendMessage", "alice", "bob", "direct", "key-2")
    assert await db_state() != before
    before = await db_state()
    assert await alice.error("SendGroupMessage", gid, "direct", "key-2") == "invalid_argument"
    assert await db_state() == before
    assert await alice.ok("SendMessage", "alice", "bob", "direct", "key-2") == direct

    # In one batch too: the second of two racing sends with one key is refused.
    racing = await asyncio.gather(
        alice.call("SendGroupMessage", gid, "one", "key-3"),
        alice.call("SendGroupMessage", gid, "two", "key-3"),
    )
    assert sorted(r["ok"] for r in racing) == [False, True], racing
    assert len(await bob.ok("GetGroupHistory", gid)) == 3


# -- GetGroupHistory ------------------------------------------------------------------------------


async def test_group_history_is_newest_first_paged_and_starts_at_the_last_join(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, carol, eve = [await connect(server, u) for u in ("alice", "bob", "carol", "eve")]
    gid = await create(alice, ["bob"])
    sent = [await alice.ok("SendGroupMessage", gid, f"m{i}") for i in range(3)]
    await alice.ok("AddGroupMembers", gid, ["carol"])
    sent.append(await bob.ok("SendGroupMessage", gid, "m3"))
    sent.append(await carol.ok("SendGroupMessage", gid, "m4"))
    newest_first = list(reversed(sent))

    history = await alice.ok("GetGroupHistory", gid)
    assert ids(history) == newest_first
    assert all(m["groupId"] == gid and m["receiverId"] is None for m in history)
    assert [m["text"] for m in history] == ["m4", "m3", "m2", "m1", "m0"]
    assert ids(await bob.ok("GetGroupHistory", gid, 1, 2)) == newest_first[1:3]
    assert ids(await bob.ok("GetGroupHistory", gid, 4, 50)) == newest_first[4:]
    assert await bob.ok("GetGroupHistory", gid, 5, 100) == []
    # carol joined after m2: she sees what was said since.
    assert ids(await carol.ok("GetGroupHistory", gid)) == newest_first[:2]

    # Back after leaving: only what was said since she (last) joined.
    await carol.ok("RemoveGroupMember", gid, "carol")
    await alice.ok("SendGroupMessage", gid, "while carol was away")
    await alice.ok("AddGroupMembers", gid, ["carol"])
    latest = await bob.ok("SendGroupMessage", gid, "welcome back")
    assert ids(await carol.ok("GetGroupHistory", gid)) == [latest]
    (entry,) = await carol.ok("GetConversations")
    assert (entry["id"], entry["unreadCount"], entry["previewMessage"]) == (gid, 1, "welcome back")

    before = await db_state()
    assert await eve.error("GetGroupHistory", gid) == "forbidden"
    assert await alice.error("GetGroupHistory", str(uuid.uuid4())) == "not_found"
    for args in [(gid, -1), (gid, 0, 0), (gid, 0, 101), (gid, "0"), (gid, 0, True), (gid, 10**30), ()]:
        assert await alice.error("GetGroupHistory", *args) == "invalid_argument", args
    assert await db_state() == before


# -- MarkGroupRead, and receipts on group messages -------------------------------------------------


async def test_mark_group_read_counts_moves_the_position_and_tells_the_other_devices(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, bob_tab2, carol, eve = [
        await connect(server, u) for u in ("alice", "bob", "bob", "carol", "eve")
    ]
    gid = await create(alice, ["bob", "carol"])
    before = await db_state()
    assert await bob.ok("MarkGroupRead", gid) == 0  # nothing said yet
    assert await db_state() == before
    m1 = await alice.ok("SendGroupMessage", gid, "from alice")
    m2 = await carol.ok("SendGroupMessage", gid, "from carol")
    m3 = await bob.ok("SendGroupMessage", gid, "from bob")

    assert await bob.ok("MarkGroupRead", gid) == 2  # his own does not count

    assert await bob_tab2.wait_for("GroupReadPositionChanged") == [(gid, m3)]
    assert await bob.ok("MarkGroupRead", gid) == 0
    await flush(bob, via=alice)
    await flush(bob_tab2, via=alice)
    assert bob.named("GroupReadPositionChanged") == []  # the caller knows
    assert len(bob_tab2.named("GroupReadPositionChanged")) == 1  # a second call moved nothing
    (group_entry,) = [c for c in await bob.ok("GetConversations") if c["id"] == gid]
    assert group_entry["unreadCount"] == 0

    # The aggregate moves once every recipient has read: m1 (bob, carol).
    assert await carol.ok("MarkGroupRead", gid) == 2
    assert await alice.wait_for("MessageStatusChanged") == [(m1, "read")]
    assert await alice.ok("MarkGroupRead", gid) == 2
    assert sorted(await carol.wait_for("MessageStatusChanged")) == [(m2, "read")]
    assert sorted(await bob.wait_for("MessageStatusChanged")) == [(m3, "read")]
    assert {m["status"] for m in await alice.ok("GetGroupHistory", gid)} == {"read"}

    before = await db_state()
    assert await eve.error("MarkGroupRead", gid) == "forbidden"
    assert await eve.error("MarkGroupRead", str(uuid.uuid4())) == "not_found"
    for args in [("",), (5,), ()]:
        assert await bob.error("MarkGroupRead", *args) == "invalid_argument", args
    assert await db_state() == before


async def test_group_receipts_move_positions_and_the_aggregate_reaches_the_sender(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, alice_tab2 = await connect(server, "alice"), await connect(server, "alice")
    bob, bob_tab2, carol, dave = [await connect(server, u) for u in ("bob", "bob", "carol", "dave")]
    gid = await create(alice, ["bob", "carol"])
    m1 = await alice.ok("SendGroupMessage", gid, "one")
    m2 = await alice.ok("SendGroupMessage", gid, "two")

    async def receipts(mid: str) -> tuple[int, int, int, list[str] | None]:
        r = await alice.ok("GetMessageReceipts", mid)
        assert set(r) == {"recipientCount", "deliveredCount", "readCount", "readBy"}
        by = sorted(r["readBy"]) if r["readBy"] is not None else None
        return r["recipientCount"], r["deliveredCount"], r["readCount"], by

    assert await receipts(m1) == (2, 0, 0, [])

    # bob has m2: that covers m1. Not everyone has them yet: no event.
    assert await bob.ok("MessageReceived", m2) is None
    assert await receipts(m1) == (2, 1, 0, [])
    assert await receipts(m2) == (2, 1, 0, [])
    await flush(alice, via=carol)
    assert alice.named("MessageStatusChanged") == []

    # carol has m1: m1 is delivered to every recipient, m2 not yet.
    assert await carol.ok("MessageReceived", m1) is None
    for tab in (alice, alice_tab2):
        assert await tab.wait_for("MessageStatusChanged") == [(m1, "delivered")]

    # carol reads m2 (reading implies receiving): m2 delivered to all, read by one.
    assert await carol.ok("MessageRead", m2) is None
    assert (await alice.wait_for("MessageStatusChanged", 2))[1] == (m2, "delivered")
    assert await receipts(m2) == (2, 2, 1, ["carol"])

    # bob reads m2: both are read by everyone; his other device moves its read position.
    assert await bob.ok("MessageRead", m2) is None
    moved = (await alice.wait_for("MessageStatusChanged", 4))[2:]
    assert sorted(moved) == sorted([(m1, "read"), (m2, "read")])
    assert await bob_tab2.wait_for("GroupReadPositionChanged") == [(gid, m2)]
    assert await receipts(m1) == (2, 2, 2, ["bob", "carol"])
    assert {m["status"] for m in await bob.ok("GetGroupHistory", gid)} == {"read"}

    # A position reached already: success, nothing moves, nobody hears.
    before = await db_state()
    assert await bob.ok("MessageRead", m1) is None
    assert await bob.ok("MessageReceived", m2) is None
    assert await db_state() == before
    for client in (alice, bob, bob_tab2, carol):
        await flush(client, via=dave)
    assert len(alice.named("MessageStatusChanged")) == 4
    assert len(bob_tab2.named("GroupReadPositionChanged")) == 1
    assert bob.named("MessageStatusChanged") == carol.named("MessageStatusChanged") == []
    assert bob.named("GroupReadPositionChanged") == []

    # recipientCount is frozen at send; a later joiner is not a recipient of what came before.
    await alice.ok("AddGroupMembers", gid, ["dave"])
    m3 = await bob.ok("SendGroupMessage", gid, "three")
    assert await receipts(m1) == (2, 2, 2, ["bob", "carol"])
    assert (await bob.ok("GetMessageReceipts", m3))["recipientCount"] == 3
    before = await db_state()
    assert await dave.error("MessageRead", m1) == "forbidden"
    assert await dave.error("MessageReceived", m2) == "forbidden"
    assert await alice.error("MessageReceived", m1) == "forbidden"  # the sender
    assert await bob.error("MessageRead", m3) == "forbidden"  # his own
    assert await bob.error("GetMessageReceipts", m1) == "forbidden"  # not the sender
    assert await alice.error("GetMessageReceipts", str(uuid.uuid4())) == "not_found"
    assert await alice.error("MessageRead", str(uuid.uuid4())) == "not_found"
    assert await db_state() == before

    # A removed member is no longer a recipient who may acknowledge.
    await alice.ok("RemoveGroupMember", gid, "carol")
    assert await carol.error("MessageRead", m3) == "forbidden"
    assert await dave.ok("MessageRead", m3) is None
    assert await alice.ok("MessageRead", m3) is None
    assert (await bob.ok("GetMessageReceipts", m3))["readCount"] == 2
    (latest,) = await bob.ok("GetGroupHistory", gid, 0, 1)
    assert latest["status"] == "sent"  # carol never had it, and cannot now


async def test_receipts_of_a_direct_message_are_for_its_sender(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, bob, eve = [await connect(server, u) for u in ("alice", "bob", "eve")]
    mid = await alice.ok("SendMessage", "alice", "bob", "hi")

    async def receipts() -> Any:
        return await alice.ok("GetMessageReceipts", mid)

    assert await receipts() == {"recipientCount": 1, "deliveredCount": 0, "readCount": 0, "readBy": []}
    before = await db_state()
    assert await bob.error("GetMessageReceipts", mid) == "forbidden"
    assert await eve.error("GetMessageReceipts", mid) == "forbidden"
    assert await alice.error("GetMessageReceipts", str(uuid.uuid4())) == "not_found"
    for args in [(7,), (None,), ()]:
        assert await alice.error("GetMessageReceipts", *args) == "invalid_argument", args
    assert await db_state() == before

    await bob.ok("MessageReceived", mid)
    assert await receipts() == {"recipientCount": 1, "deliveredCount": 1, "readCount": 0, "readBy": []}
    await bob.ok("MessageRead", mid)
    assert await receipts() == {
        "recipientCount": 1, "deliveredCount": 1, "readCount": 1, "readBy": ["bob"],
    }


async def test_read_by_is_listed_up_to_100_recipients_and_null_above(
    server: TestServer, connect: Connect
) -> None:
    alice, reader = await connect(server, "alice"), await connect(server, "u000")
    others = [f"u{i:03d}" for i in range(101)]
    hundred = await create(alice, others[:100], title="101 members")
    crowd = await create(alice, others, title="102 members")
    small = await alice.ok("SendGroupMessage", hundred, "to 100")
    large = await alice.ok("SendGroupMessage", crowd, "to 101")
    await reader.ok("MessageRead", small)
    await reader.ok("MessageRead", large)

    assert await alice.ok("GetMessageReceipts", small) == {
        "recipientCount": 100, "deliveredCount": 1, "readCount": 1, "readBy": ["u000"],
    }
    assert await alice.ok("GetMessageReceipts", large) == {
        "recipientCount": 101, "deliveredCount": 1, "readCount": 1, "readBy": None,
    }


@pytest.mark.xfail(
    strict=True,
    reason="a member row keeps only the last join (joined_row), so read_by() cannot tell that a"
    " reader who left and came back was a recipient: readCount counts them, readBy drops them",
)
async def test_read_by_lists_a_reader_who_left_and_came_back(
    server: TestServer, connect: Connect
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    gid = await create(alice, ["bob", "carol"])
    mid = await alice.ok("SendGroupMessage", gid, "read me")
    await bob.ok("MessageRead", mid)
    await bob.ok("RemoveGroupMember", gid, "bob")
    gone = await alice.ok("GetMessageReceipts", mid)
    assert (gone["readCount"], gone["readBy"]) == (1, ["bob"])

    await alice.ok("AddGroupMembers", gid, ["bob"])

    back = await alice.ok("GetMessageReceipts", mid)
    assert (back["readCount"], back["readBy"]) == (1, ["bob"])


# -- GroupTyping --------------------------------------------------------------------------------------


async def test_group_typing_reaches_the_other_members_only(
    server: TestServer, connect: Connect, db_state: DbState
) -> None:
    alice, alice_tab2 = await connect(server, "alice"), await connect(server, "alice")
    bob, bob_tab2, carol, eve = [await connect(server, u) for u in ("bob", "bob", "carol", "eve")]
    gid = await create(alice, ["bob", "carol"])
    before = await db_state()

    assert await alice.ok("GroupTyping", gid, True) is None
    assert await alice.ok("GroupTyping", gid, False) is None

    for tab in (bob, bob_tab2, carol):
        assert await tab.wait_for("UserTypingInGroup", 2) == [
            (gid, "alice", True), (gid, "alice", False),
        ]
    for tab in (alice, alice_tab2, eve):
        await flush(tab, via=carol)
        assert tab.named("UserTypingInGroup") == [], tab.user
    assert await eve.error("GroupTyping", gid, True) == "forbidden"
    assert await alice.error("GroupTyping", str(uuid.uuid4()), True) == "not_found"
    for args in [(gid, "yes"), (gid, 1), (gid,), ("", True), (None, False)]:
        assert await alice.error("GroupTyping", *args) == "invalid_argument", args
    assert await db_state() == before  # not stored


# -- the conversation list ------------------------------------------------------------------------


async def test_conversations_list_groups_with_their_unread_count_beside_direct_ones(
    server: TestServer, connect: Connect
) -> None:
    alice, bob, carol = [await connect(server, u) for u in ("alice", "bob", "carol")]
    await alice.ok("SendMessage", "alice", "bob", "direct 1")
    await next_millisecond()
    gid = await create(alice, ["bob", "carol"], title="Team")
    g1 = await alice.ok("SendGroupMessage", gid, "g1")
    await carol.ok("SendGroupMessage", gid, "g2")
    await bob.ok("SendGroupMessage", gid, "g3")  # his own: never unread for him
    (g3_dto,) = await bob.ok("GetGroupHistory", gid, 0, 1)

    group_entry, direct_entry = await bob.ok("GetConversations")

    assert group_entry == {
        "kind": "group", "id": gid, "name": "Team", "avatar": None, "previewMessage": "g3",
        "lastActive": g3_dto["timestamp"], "isActive": False, "unreadCount": 2, "memberCount": 3,
    }
    assert direct_entry["kind"] == "direct" and direct_entry["id"] == "alice"
    assert direct_entry["unreadCount"] == 1 and "memberCount" not in direct_entry
    carols = {c["id"]: c for c in await carol.ok("GetConversations")}
    assert carols[gid]["unreadCount"] == 2  # g1, g3

    # Latest activity first, whatever the kind.
    await next_millisecond()
    await alice.ok("SendMessage", "alice", "bob", "direct 2")
    listed = await bob.ok("GetConversations")
    assert [(c["kind"], c["id"]) for c in listed] == [("direct", "alice"), ("group", gid)]

    # The unread count follows the read position.
    await bob.ok("MessageRead", g1)
    assert {c["id"]: c["unreadCount"] for c in await bob.ok("GetConversations")}[gid] == 1
    await bob.ok("MarkGroupRead", gid)
    listed = await bob.ok("GetConversations")
    assert {c["id"]: c["unreadCount"] for c in listed} == {gid: 0, "alice": 2}
    status, body = await rest(server, "/api/conversations", "bob")
    assert status == 200 and body == {"conversations": listed}

    # The member count follows the members.
    await alice.ok("AddGroupMembers", gid, ["dave"])
    assert {c["id"]: c.get("memberCount") for c in await bob.ok("GetConversations")}[gid] == 4


# -- Sync -------------------------------------------------------------------------------------------


async def sync_pages(client: ChatClient, cursor: str | None, limit: int) -> tuple[
    list[dict[str, Any]], list[dict[str, Any]], str
]:
    """Every message and group of every page after `cursor`, as pages list them; the end cursor."""
    messages: list[dict[str, Any]] = []
    groups: list[dict[str, Any]] = []
    pages = 0
    while True:
        page = await client.ok("Sync", cursor, limit)
        assert set(page) == {"messages", "cursor", "hasMore", "groups"}
        assert len(page["messages"]) <= limit
        messages += page["messages"]
        groups += page["groups"]
        cursor = page["cursor"]
        pages += 1
        assert pages < 1000, "Sync never said hasMore: false"
        if not page["hasMore"]:
            return messages, groups, cursor


def latest(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each item by id, as it was seen last."""
    return {item["id"]: item for item in items}


async def test_sync_covers_group_messages_and_changes_with_one_cursor(
    server: TestServer, connect: Connect
) -> None:
    alice, bob, carol = [await connect(server, u) for u in ("alice", "bob", "carol")]
    start = (await bob.ok("Sync", None))["cursor"]
    gid = await create(alice, ["bob", "carol"], title="Team")
    m1 = await alice.ok("SendGroupMessage", gid, "g1")
    m2 = await carol.ok("SendGroupMessage", gid, "g2")
    d1 = await alice.ok("SendMessage", "alice", "bob", "direct")
    elsewhere = await create(alice, ["carol"], title="Not bob's")
    await alice.ok("SendGroupMessage", elsewhere, "not for bob")

    page = await bob.ok("Sync", start)

    assert ids(page["messages"]) == [m1, m2, d1] and page["hasMore"] is False
    assert [m["groupId"] for m in page["messages"]] == [gid, gid, None]
    (group,) = page["groups"]
    assert group == await bob.ok("GetGroup", gid)
    after_sends = page["cursor"]
    assert await bob.ok("Sync", after_sends) == {
        "messages": [], "cursor": after_sends, "hasMore": False, "groups": [],
    }

    # A rename and a new member: the group again, as it is now; no message.
    await alice.ok("RenameGroup", gid, "Renamed")
    await alice.ok("AddGroupMembers", gid, ["dave"])
    page = await bob.ok("Sync", after_sends)
    assert page["messages"] == []
    (group,) = page["groups"]
    assert group["title"] == "Renamed" and "dave" in roles(group)
    after_changes = page["cursor"]

    # An aggregate that moves brings the message again, with its new status.
    await bob.ok("MarkGroupRead", gid)
    await carol.ok("MarkGroupRead", gid)  # m1: read by bob and carol
    page = await alice.ok("Sync", after_changes)
    assert {m["id"]: m["status"] for m in page["messages"]}[m1] == "read"
    page = await bob.ok("Sync", after_changes)
    assert {m["id"]: m["status"] for m in page["messages"]} == {m1: "read"}
    assert page["groups"] == []

    # The one who goes sees the group without them, and nothing said after.
    await alice.ok("RemoveGroupMember", gid, "carol")
    await alice.ok("SendGroupMessage", gid, "after carol")
    page = await carol.ok("Sync", after_changes)
    assert [g["id"] for g in page["groups"]] == [gid]
    assert "carol" not in roles(page["groups"][0])
    assert "after carol" not in [m["text"] for m in page["messages"]]
    page = await bob.ok("Sync", after_changes)
    assert [m["text"] for m in page["messages"]][-1] == "after carol"
    assert [g["id"] for g in page["groups"]] == [gid]

    # A later joiner's Sync: the group, and what was said since he joined.
    dave = await connect(server, "dave")
    page = await dave.ok("Sync", None)
    assert [m["text"] for m in page["messages"]] == ["after carol"]
    assert [g["id"] for g in page["groups"]] == [gid]

    # Pages of one miss nothing: the same messages, groups and final state as one page.
    whole, whole_groups, end = await sync_pages(bob, start, 500)
    paged, paged_groups, paged_end = await sync_pages(bob, start, 1)
    assert latest(paged) == latest(whole)
    assert latest(paged_groups) == latest(whole_groups) == {gid: await bob.ok("GetGroup", gid)}
    assert paged_end == end
    seen = [(m["id"], m["status"]) for m in paged]
    assert len(seen) == len(set(seen)), "a page repeated a change"


@pytest.mark.xfail(
    strict=True,
    reason="Sync shows a group the caller left as it is now (chat_group holds only the current"
    " title and members), so a removed member learns of renames and members added after he went",
)
async def test_sync_shows_a_removed_member_nothing_of_the_group_after_he_went(
    server: TestServer, connect: Connect
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    gid = await create(alice, ["bob", "carol"], title="Team")
    start = (await bob.ok("Sync", None))["cursor"]
    await alice.ok("RemoveGroupMember", gid, "bob")
    await alice.ok("RenameGroup", gid, "Without bob")
    await alice.ok("AddGroupMembers", gid, ["dave"])

    _, groups, _ = await sync_pages(bob, start, 200)

    assert [g["id"] for g in groups] == [gid]
    assert groups[-1]["title"] == "Team"
    assert set(roles(groups[-1])) == {"alice", "carol"}


async def test_sync_limit_bounds(server: TestServer, connect: Connect) -> None:
    bob = await connect(server, "bob")
    for args in [(None, 0), (None, 501), (None, "5"), ("not a cursor",)]:
        assert await bob.error("Sync", *args) == "invalid_argument", args


# -- REST ---------------------------------------------------------------------------------------------


async def test_rest_serves_a_group_and_its_messages_to_members_only(
    server: TestServer, connect: Connect
) -> None:
    alice, carol = await connect(server, "alice"), await connect(server, "carol")
    gid = await create(alice, ["bob"])
    sent = [await alice.ok("SendGroupMessage", gid, f"m{i}") for i in range(3)]
    await alice.ok("AddGroupMembers", gid, ["carol"])
    sent += [await carol.ok("SendGroupMessage", gid, f"m{i}") for i in range(3, 5)]

    status, body = await rest(server, f"/api/groups/{gid}", "bob")
    assert status == 200 and body == await alice.ok("GetGroup", gid)

    async def page(user: str, query: str) -> tuple[list[str], str | None]:
        status, body = await rest(server, f"/api/groups/{gid}/messages{query}", user)
        assert status == 200, body
        assert set(body) == {"messages", "nextBefore"}
        assert all(m["groupId"] == gid for m in body["messages"])
        return ids(body["messages"]), body["nextBefore"]

    assert await page("bob", "") == (sent[::-1], None)
    assert await page("bob", "?limit=2") == ([sent[4], sent[3]], sent[3])
    assert await page("bob", f"?limit=2&before={sent[3]}") == ([sent[2], sent[1]], sent[1])
    assert await page("bob", f"?limit=2&before={sent[1]}") == ([sent[0]], None)
    # carol joined after m2: her pages start there.
    assert await page("carol", "?limit=1") == ([sent[4]], sent[4])
    assert await page("carol", f"?before={sent[4]}") == ([sent[3]], None)

    for user, path, expected in [
        ("eve", f"/api/groups/{gid}", (403, "forbidden")),
        ("eve", f"/api/groups/{gid}/messages", (403, "forbidden")),
        ("bob", f"/api/groups/{uuid.uuid4()}", (404, "not_found")),
        ("bob", f"/api/groups/{uuid.uuid4()}/messages", (404, "not_found")),
        ("bob", f"/api/groups/{gid}/messages?limit=0", (400, "invalid_argument")),
        ("bob", f"/api/groups/{gid}/messages?limit=101", (400, "invalid_argument")),
        ("bob", f"/api/groups/{gid}/messages?limit=ten", (400, "invalid_argument")),
        ("carol", f"/api/groups/{gid}/messages?before={sent[1]}", (404, "not_found")),
    ]:
        status, body = await rest(server, path, user)
        assert (status, body["error"]["code"]) == expected, (user, path, body)
    status, body = await rest(server, f"/api/groups/{gid}", None)
    assert status == 401 and body["error"]["code"] == "unauthorized"
