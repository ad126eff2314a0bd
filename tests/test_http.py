"""Liveness, readiness and metrics over real HTTP."""

from __future__ import annotations

import ipaddress

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from handlers.http import client_address
from tests.support import Connect, ServerFactory


async def test_health_and_readiness(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/healthz")) as r:
            assert r.status == 200 and (await r.json())["status"] == "ok"
        async with http.get(server.make_url("/readyz")) as r:
            assert r.status == 200
            assert await r.json() == {"status": "ready", "checks": {"database": "ok"}}


async def test_metrics_count_connections_messages_and_errors(
    server: TestServer, connect: Connect
) -> None:
    alice = await connect(server, "alice")
    await alice.ok("SendMessage", "alice", "bob", "counted")
    await alice.ok("SendMessage", "alice", "bob", "counted", )
    await alice.error("SendMessage", "mallory", "bob", "no")
    await alice.error("NoSuchMethod")

    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url("/metrics")) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/plain")
            text = await r.text()
    lines = dict(
        line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#")
    )
    assert float(lines["chat_connections"]) == 1.0
    assert float(lines["chat_messages_sent_total"]) == 2.0
    assert float(lines['chat_errors_total{code="forbidden"}']) == 1.0
    assert float(lines['chat_errors_total{code="unknown_event"}']) == 1.0
    assert 'chat_event_seconds_count{event="SendMessage"}' in lines


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("enabled", [False, True])
async def test_websocket_compression_is_negotiated_only_when_configured(
    start_server: ServerFactory, enabled: bool
) -> None:
    server = await start_server(ws_compression=enabled)
    async with aiohttp.ClientSession() as http:
        # A client that offers permessage-deflate, as browsers do.
        async with http.ws_connect(
            server.make_url("/socket.io/?EIO=4&transport=websocket"), compress=15
        ) as ws:
            extensions = ws._response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) is enabled
            assert (ws.compress != 0) is enabled
            opened = await ws.receive_str()
            assert opened.startswith("0{")  # the engine.io handshake works either way


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_with_a_cors_list_the_servers_own_origin_is_still_allowed(
    start_server: ServerFactory,
) -> None:
    server = await start_server(cors_origins=("https://app.example",))
    own = f"http://{server.host}:{server.port}"
    handshake = server.make_url("/socket.io/?EIO=4&transport=polling")
    async with aiohttp.ClientSession() as http:
        for origin, allowed in ((own, True), ("https://app.example", True), ("https://evil.example", False)):
            async with http.get(handshake, headers={"Origin": origin}) as r:
                assert (r.status == 200) is allowed, (origin, r.status)
                if allowed:
                    assert r.headers.get("Access-Control-Allow-Origin") == origin


def test_the_client_address_trusts_forwarded_for_only_from_trusted_proxies() -> None:
    proxies = [ipaddress.ip_network("10.0.0.0/8")]
    # A client that writes its own header is counted under its own address.
    assert client_address("203.0.113.9", "198.51.100.1", proxies) == "203.0.113.9"
    assert client_address("10.0.0.5", "198.51.100.1", []) == "10.0.0.5"
    # Behind the proxies: the right-most hop that is not one of them; what the
    # client prepended itself (left of it) is ignored.
    assert client_address("10.0.0.5", "1.1.1.1, 198.51.100.1", proxies) == "198.51.100.1"
    assert client_address("10.0.0.5", "198.51.100.1, 10.0.0.7", proxies) == "198.51.100.1"
    assert client_address("10.0.0.5", None, proxies) == "10.0.0.5"
