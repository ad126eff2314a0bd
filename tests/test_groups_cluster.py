"""Groups across two instances: real `chat-server serve` processes on one MariaDB and a Redis
of the test's own (the fixtures of tests/test_cluster.py).

A group's members may be connected to any instance: what one instance decides
(a message, a receipt, a removal) must reach the members' sockets on the other,
once, and a removed member's sockets everywhere must stop hearing the group at once.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from tests.support import EVENT_TIMEOUT_S, Connect, flush
from tests.test_cluster import (  # noqa: F401 - fixtures
    Cluster,
    cluster,
    dev_mode,
    listen_to_the_backplane,
)

pytestmark = pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)


def published(messages: list[dict[str, Any]], event: str) -> list[list[Any]]:
    """The data of each backplane message that carried `event`."""
    return [m["data"] for m in messages if m.get("event") == event]


async def test_a_group_spans_instances_and_each_event_is_published_once(
    cluster: Cluster, connect: Connect
) -> None:
    heard: list[dict[str, Any]] = []  # every message the instances publish to each other
    subscribed = asyncio.Event()
    listening = asyncio.ensure_future(listen_to_the_backplane(cluster.redis, heard, subscribed))
    await asyncio.wait_for(subscribed.wait(), EVENT_TIMEOUT_S)
    alice = await connect(cluster.a, "alice")
    alice_phone = await connect(cluster.b, "alice")
    bob, bob_laptop = await connect(cluster.b, "bob"), await connect(cluster.a, "bob")
    carol, dave = await connect(cluster.b, "carol"), await connect(cluster.a, "dave")
    members = [bob, bob_laptop, carol, dave]

    group = await alice.ok("CreateGroup", "Across", ["bob", "carol", "dave"])
    gid = group["id"]
    for client in (alice_phone, *members):
        assert await client.wait_for("GroupChanged") == [(group,)]

    # Sent on a: the members on b (and on a) receive it, alice's phone on b is told.
    mid = await alice.ok("SendGroupMessage", gid, "hello from a")
    for client in members:
        ((group_id, dto),) = await client.wait_for("ReceiveGroupMessage")
        assert (group_id, dto["id"], dto["groupId"], dto["status"]) == (gid, mid, gid, "sent")
    ((echo,),) = await alice_phone.wait_for("MessageSent")
    assert echo["id"] == mid and echo["groupId"] == gid

    # Receipts on b move the aggregate, which reaches every socket of the sender.
    await bob.ok("MessageReceived", mid)
    await carol.ok("MessageReceived", mid)
    await flush(alice, via=carol)
    assert alice.named("MessageStatusChanged") == [], "delivered before dave had it"
    await dave.ok("MessageReceived", mid)
    for tab in (alice, alice_phone):
        assert await tab.wait_for("MessageStatusChanged") == [(mid, "delivered")]
    await bob.ok("MessageRead", mid)
    assert await bob_laptop.wait_for("GroupReadPositionChanged") == [(gid, mid)]
    await carol.ok("MarkGroupRead", gid)
    await dave.ok("MessageRead", mid)
    for tab in (alice, alice_phone):
        assert (await tab.wait_for("MessageStatusChanged", 2))[1] == (mid, "read")

    # Typing on b reaches the members on a, not the typist's own sockets.
    await carol.ok("GroupTyping", gid, True)
    for client in (alice, alice_phone, bob, bob_laptop, dave):
        assert await client.wait_for("UserTypingInGroup") == [(gid, "carol", True)]

    # Everything sent before these flushes has arrived: count what was published.
    for client in (alice, alice_phone, *members):
        await flush(client, via=carol if client is not carol else alice)
    listening.cancel()
    received = published(heard, "ReceiveGroupMessage")
    assert [data[1]["id"] for data in received] == [mid], "one publish for every member"
    assert [data[0]["id"] for data in published(heard, "MessageSent")] == [mid]
    assert Counter(tuple(d) for d in published(heard, "MessageStatusChanged")) == {
        (mid, "delivered"): 1, (mid, "read"): 1,
    }
    assert [d[0]["id"] for d in published(heard, "GroupChanged")] == [gid]
    assert published(heard, "UserTypingInGroup") == [[gid, "carol", True]]
    # One per reader (to their other sockets, wherever they are): bob, carol, dave.
    moved = [(m["room"], m["data"]) for m in heard if m.get("event") == "GroupReadPositionChanged"]
    assert sorted(moved) == [([f"user:{u}"], [gid, mid]) for u in ("bob", "carol", "dave")]


async def test_a_removal_on_one_instance_cuts_off_the_members_sockets_on_the_other(
    cluster: Cluster, connect: Connect
) -> None:
    alice = await connect(cluster.a, "alice")
    bob_b, bob_a = await connect(cluster.b, "bob"), await connect(cluster.a, "bob")
    carol = await connect(cluster.b, "carol")
    gid = (await alice.ok("CreateGroup", "Team", ["bob", "carol"]))["id"]
    # Instance b has used the member list (it caches it): a send and a typing notice from b.
    await carol.ok("SendGroupMessage", gid, "before")
    await carol.ok("GroupTyping", gid, True)
    for bob in (bob_b, bob_a):
        await bob.wait_for("ReceiveGroupMessage")
        await bob.wait_for("UserTypingInGroup")

    await alice.ok("RemoveGroupMember", gid, "bob")

    # At once, on either instance: nothing of the group reaches him any more.
    after = await carol.ok("SendGroupMessage", gid, "after, from b")
    await carol.ok("GroupTyping", gid, False)
    also_after = await alice.ok("SendGroupMessage", gid, "after, from a")
    await alice.ok("GroupTyping", gid, True)
    assert [a[1]["id"] for a in await carol.wait_for("ReceiveGroupMessage")] == [also_after]
    assert (await alice.wait_for("ReceiveGroupMessage", 2))[1][1]["id"] == after
    await carol.wait_for("UserTypingInGroup")
    for bob in (bob_b, bob_a):
        changed = await bob.wait_for("GroupChanged", 2)
        assert "bob" not in {m["userId"] for m in changed[1][0]["members"]}
        for via in (alice, carol):
            await flush(bob, via=via)
        assert [a[1]["text"] for a in bob.named("ReceiveGroupMessage")] == ["before"]
        assert bob.named("UserTypingInGroup") == [(gid, "carol", True)]
    for bob in (bob_b, bob_a):
        assert await bob.error("SendGroupMessage", gid, "still here?") == "forbidden"
        assert await bob.error("GroupTyping", gid, True) == "forbidden"
        assert await bob.error("GetGroup", gid) == "forbidden"

