"""REST API: auth, cursor paging, errors, and the OpenAPI document held against real answers."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
from aiohttp.test_utils import TestServer
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from tests.support import Connect, ServerFactory, make_token

OPENAPI = json.loads((Path(__file__).parent.parent / "handlers" / "openapi.json").read_text())
# OpenAPI 3.1 schemas are JSON Schema 2020-12; refs point into the document.
REGISTRY = Registry().with_resource("urn:openapi", DRAFT202012.create_resource(OPENAPI))


def check_against_openapi(path: str, method: str, status: int, body: Any) -> None:
    """Validate a real response body against the schema the document promises."""
    response = OPENAPI["paths"][path][method]["responses"][str(status)]
    if "$ref" in response:  # a shared response under components
        response = OPENAPI["components"]["responses"][response["$ref"].rsplit("/", 1)[1]]
    schema = response["content"]["application/json"]["schema"]
    ref = schema["$ref"].replace("#", "urn:openapi#", 1)
    jsonschema.Draft202012Validator({"$ref": ref}, registry=REGISTRY).validate(body)


async def get(server: TestServer, path: str, user: str | None = "alice", token: str | None = None,
              **params: str) -> tuple[int, Any]:
    headers = {}
    if token is not None or user is not None:
        headers["Authorization"] = f"Bearer {token or make_token(user)}"
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url(path), headers=headers, params=params) as r:
            return r.status, await r.json()


async def test_history_pages_by_cursor_with_nothing_skipped_or_repeated(
    server: TestServer, connect: Connect
) -> None:
    alice, bob = await connect(server, "alice"), await connect(server, "bob")
    sent = []
    for i in range(7):
        sender, receiver, client = (("alice", "bob", alice) if i % 3 else ("bob", "alice", bob))
        sent.append(await client.ok("SendMessage", sender, receiver, f"m{i}"))
    await alice.ok("SendMessage", "alice", "carol", "elsewhere")

    seen: list[str] = []
    before = None
    pages = 0
    while True:
        params = {"limit": "3", **({"before": before} if before else {})}
        status, body = await get(server, "/api/conversations/bob/messages", **params)
        assert status == 200
        check_against_openapi("/api/conversations/{userId}/messages", "get", 200, body)
        seen.extend(m["id"] for m in body["messages"])
        pages += 1
        before = body["nextBefore"]
        if before is None:
            break
    assert seen == list(reversed(sent))
    assert pages == 3


async def test_conversations_and_online_users_match_the_document(
    server: TestServer, connect: Connect
) -> None:
    alice = await connect(server, "alice")
    await alice.ok("SendMessage", "alice", "bob", "hi")

    status, body = await get(server, "/api/conversations")
    assert status == 200 and [c["id"] for c in body["conversations"]] == ["bob"]
    check_against_openapi("/api/conversations", "get", 200, body)

    status, body = await get(server, "/api/users/online", user="bob")
    assert status == 200 and body == {"users": ["alice"]}
    check_against_openapi("/api/users/online", "get", 200, body)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("headers", "label"),
    [
        ({}, "no token"),
        ({"Authorization": "Bearer not-a-jwt"}, "bad token"),
        ({"Authorization": "Basic YWxpY2U6cHc="}, "wrong scheme"),
        ({"Authorization": f"Bearer {make_token('alice', ttl_s=-5)}"}, "expired"),
    ],
)
async def test_missing_or_bad_token_is_401(server: TestServer, headers: dict[str, str], label: str) -> None:
    async with aiohttp.ClientSession() as http:
        for path in ("/api/conversations", "/api/conversations/bob/messages", "/api/users/online"):
            async with http.get(server.make_url(path), headers=headers) as r:
                assert r.status == 401, (label, path)
                body = await r.json()
                assert body["error"]["code"] == "unauthorized"
                check_against_openapi("/api/conversations", "get", 401, body)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_bad_limit_is_400_and_unknown_cursor_is_404(server: TestServer, connect: Connect) -> None:
    alice, carol = await connect(server, "alice"), await connect(server, "carol")
    await alice.ok("SendMessage", "alice", "bob", "hi")
    elsewhere = await alice.ok("SendMessage", "alice", "carol", "not in alice-bob")
    path = "/api/conversations/bob/messages"
    for limit in ("0", "101", "ten", "-1"):
        status, body = await get(server, path, limit=limit)
        assert status == 400 and body["error"]["code"] == "invalid_argument", limit
        check_against_openapi("/api/conversations/{userId}/messages", "get", 400, body)
    status, body = await get(server, "/api/conversations/" + "x" * 65 + "/messages")
    assert status == 400
    for before in ("00000000-0000-0000-0000-000000000000", "garbage", elsewhere):
        status, body = await get(server, path, before=before)
        assert status == 404 and body["error"]["code"] == "not_found", before
        check_against_openapi("/api/conversations/{userId}/messages", "get", 404, body)
    # carol can page her own thread with alice from that message, though.
    status, body = await get(server, "/api/conversations/alice/messages", user="carol", before=elsewhere)
    assert status == 200 and body == {"messages": [], "nextBefore": None}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_dev_token_exists_only_in_dev_mode(start_server: ServerFactory) -> None:
    prod = await start_server()
    dev = await start_server(dev_mode=True)
    async with aiohttp.ClientSession() as http:
        async with http.post(prod.make_url("/api/dev/token"), json={"userId": "alice"}) as r:
            assert r.status == 404
        async with http.post(dev.make_url("/api/dev/token"), json={"userId": "alice", "name": "A"}) as r:
            assert r.status == 200
            body = await r.json()
            check_against_openapi("/api/dev/token", "post", 200, body)
        async with http.get(
            dev.make_url("/api/users/online"), headers={"Authorization": f"Bearer {body['token']}"}
        ) as r:
            assert r.status == 200
        for bad in ({"userId": ""}, {"userId": 5}, {}, [1]):
            async with http.post(dev.make_url("/api/dev/token"), json=bad) as r:
                assert r.status == 400, bad
                check_against_openapi("/api/dev/token", "post", 400, await r.json())


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_openapi_document_is_served_and_describes_every_api_route(server: TestServer) -> None:
    status, served = await get(server, "/api/openapi.json", user=None)
    assert status == 200 and served == OPENAPI
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in server.app.router.routes()
        if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"
    }
    documented = {(m, p) for p, ops in OPENAPI["paths"].items() for m in ops}
    assert routes <= documented


# -- budgets ------------------------------------------------------------------------


async def get_with_headers(
    server: TestServer, path: str, headers: dict[str, str]
) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as http:
        async with http.get(server.make_url(path), headers=headers) as r:
            return r.status, dict(r.headers), await r.json()


def bearer(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_token(user)}"}


def assert_rate_limited(path: str, status: int, headers: dict[str, str], body: Any) -> None:
    assert status == 429, (status, body)
    assert body["error"]["code"] == "rate_limited"
    assert 1 <= int(headers["Retry-After"]) <= 2
    check_against_openapi(path, "get", 429, body)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_rest_spends_the_same_budget_as_the_users_socket_calls(
    start_server: ServerFactory, connect: Connect
) -> None:
    server = await start_server(rate_limit_burst=6, rate_limit_per_s=1.0)
    alice = await connect(server, "alice")
    for _ in range(3):
        await alice.ok("GetOnlineUsers")
    path = "/api/users/online"
    replies = [await get_with_headers(server, path, bearer("alice")) for _ in range(5)]
    assert [status for status, _, _ in replies][:3] == [200, 200, 200]
    assert_rate_limited(path, *replies[-1])
    assert await alice.error("GetOnlineUsers") == "rate_limited", "REST spent the socket's budget"
    status, _, _ = await get_with_headers(server, path, bearer("bob"))
    assert status == 200, "another user's budget is his own"
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/metrics")) as r:
        assert 'chat_rest_rate_limited_total{budget="user"} 2.0' in await r.text()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_requests_without_a_valid_token_spend_their_addresses_budget(
    start_server: ServerFactory,
) -> None:
    server = await start_server(rate_limit_burst=3, rate_limit_per_s=1.0, dev_mode=True)
    path = "/api/conversations"
    anonymous = [await get_with_headers(server, path, {}) for _ in range(2)]
    assert [status for status, _, _ in anonymous] == [401, 401]
    async with aiohttp.ClientSession() as http:
        async with http.post(server.make_url("/api/dev/token"), json={"userId": "eve"}) as r:
            assert r.status == 200, "the dev token endpoint spends from the same budget"
        async with http.post(server.make_url("/api/dev/token"), json={"userId": "eve"}) as r:
            assert r.status == 429 and int(r.headers["Retry-After"]) >= 1
    assert_rate_limited(path, *await get_with_headers(server, path, {"Authorization": "Bearer x"}))
    status, _, _ = await get_with_headers(server, path, bearer("alice"))
    assert status == 200, "a user with a valid token spends their own budget, not the address's"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_behind_a_trusted_proxy_each_client_address_has_its_own_budget(
    start_server: ServerFactory,
) -> None:
    loopback = ipaddress.ip_network("127.0.0.0/8")
    proxied = await start_server(rate_limit_burst=2, rate_limit_per_s=1.0, trusted_proxies=(loopback,))
    path = "/api/users/online"
    one, two = {"X-Forwarded-For": "203.0.113.1"}, {"X-Forwarded-For": "203.0.113.2"}
    assert [(await get_with_headers(proxied, path, one))[0] for _ in range(3)] == [401, 401, 429]
    assert (await get_with_headers(proxied, path, two))[0] == 401, "another client behind it"
    # Without trusted proxies the header is the client's own word: it is not believed.
    direct = await start_server(rate_limit_burst=2, rate_limit_per_s=1.0)
    statuses = [(await get_with_headers(direct, path, h))[0] for h in (one, two, one)]
    assert statuses == [401, 401, 429]
