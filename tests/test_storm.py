"""Connect storms: hundreds of sockets at once are all accepted, and reconnects write nothing."""

from __future__ import annotations

import asyncio

from aiohttp.test_utils import TestServer

from app.appkeys import DB
from models import User
from tests.support import EVENT_TIMEOUT_S, ChatClient, make_token, server_url

STORM = 200


async def storm(server: TestServer, users: list[str]) -> list[ChatClient]:
    clients = [ChatClient(u) for u in users]

    async def one(client: ChatClient) -> None:
        await client.sio.connect(
            server_url(server),
            namespaces=["/chat"],
            auth={"token": make_token(client.user, name=f"Name of {client.user}")},
            transports=["websocket"],
            wait_timeout=EVENT_TIMEOUT_S * 4,
        )
        await client.wait_for("Notify", timeout=EVENT_TIMEOUT_S * 4)

    results = await asyncio.gather(*(one(c) for c in clients), return_exceptions=True)
    refused = [(c.user, r, c.connect_error) for c, r in zip(clients, results) if r is not None]
    assert refused == [], f"{len(refused)} of {len(clients)} refused, e.g. {refused[:3]}"
    return clients


async def test_a_connect_storm_is_accepted_whole_and_a_reconnect_storm_writes_nothing(
    server: TestServer,
) -> None:
    users = [f"storm-{i}" for i in range(STORM)]
    clients = await storm(server, users)
    try:
        assert sorted(await clients[0].ok("GetOnlineUsers")) == sorted(users)
        with server.app[DB].bound():
            stored = {u.id: (u.token_name, u.updated_at) for u in await User.all()}
        assert {u: name for u, (name, _) in stored.items()} == {u: f"Name of {u}" for u in users}
    finally:
        await asyncio.gather(*(c.sio.disconnect() for c in clients))

    await asyncio.sleep(0.002)  # a rewrite would get a later updated_at
    clients = await storm(server, users)
    try:
        with server.app[DB].bound():
            again = {u.id: (u.token_name, u.updated_at) for u in await User.all()}
        assert again == stored, "the same token claims were written again"
    finally:
        await asyncio.gather(*(c.sio.disconnect() for c in clients))
