"""The handshake: who gets in, how refusals look, and what happens when a token expires."""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jwt
import pytest
import socketio
from aiohttp.test_utils import TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import SECRET, ChatClient, Connect, ServerFactory, make_token

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def _unsigned(claims: dict[str, object]) -> str:
    def part(obj: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def refusal(server: TestServer, **connect_kwargs: object) -> tuple[object, float]:
    """Connect expecting a refusal; return the connect_error data and how long it took."""
    client = ChatClient("refused")
    url = str(server.make_url("")).rstrip("/")
    started = time.monotonic()
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(
            url, namespaces=["/chat"], transports=["websocket"], wait_timeout=3, **connect_kwargs
        )
    elapsed = time.monotonic() - started
    if client.sio.connected:
        await client.sio.disconnect()
    # The packet is what socket.io-client turns into err.message and err.data.
    packet = client.connect_error
    assert isinstance(packet, dict) and packet["message"] == packet["data"]["message"], packet
    return packet["data"], elapsed


BAD_TOKENS = {
    "missing": None,
    "empty": "",
    "malformed": "not.a.jwt",
    "garbage": "%%%",
    "bad signature": make_token("alice", secret="another-secret-that-is-32-bytes-long!!"),
    "expired": make_token("alice", ttl_s=-10),
    "alg none": _unsigned({"id": "alice", "exp": int(time.time()) + 3600}),
    "wrong algorithm": make_token("alice", algorithm="HS512"),
    "no user id": make_token(None, name="nobody"),
    "no exp": jwt.encode({"id": "alice"}, SECRET, algorithm="HS256"),
    "id not usable": make_token(" alice "),
}


@pytest.mark.parametrize("case", list(BAD_TOKENS))
async def test_bad_tokens_are_refused_with_unauthorized_within_a_second(
    server: TestServer, case: str
) -> None:
    token = BAD_TOKENS[case]
    auth = None if token is None else {"token": token}

    data, elapsed = await refusal(server, auth=auth)

    assert isinstance(data, dict), data
    assert data["code"] == "unauthorized"
    assert isinstance(data["message"], str) and data["message"]
    assert "Traceback" not in data["message"] and SECRET not in data["message"]
    assert elapsed < 1.0


async def test_token_in_query_string_is_not_accepted(server: TestServer) -> None:
    client = ChatClient("alice")
    url = str(server.make_url("")).rstrip("/") + f"?token={make_token('alice')}"
    with pytest.raises(socketio.exceptions.ConnectionError):
        await client.sio.connect(url, namespaces=["/chat"], transports=["websocket"], wait_timeout=3)
    assert client.connect_error["data"]["code"] == "unauthorized"


async def test_bearer_header_is_accepted_for_native_clients(server: TestServer) -> None:
    client = ChatClient("alice")
    url = str(server.make_url("")).rstrip("/")
    await client.sio.connect(
        url,
        namespaces=["/chat"],
        headers={"Authorization": f"Bearer {make_token('alice')}"},
        transports=["polling"],
        wait_timeout=3,
    )
    try:
        await client.wait_for("Notify")
        assert (await client.ok("RegisterUser", "Alice"))["userId"] == "alice"
    finally:
        await client.sio.disconnect()


async def test_connect_is_greeted_with_notify(server: TestServer, connect: Connect) -> None:
    alice = await connect(server, "alice")
    assert alice.named("Notify") == [("Welcome to the chat!",)]


async def test_numeric_id_claim_becomes_a_decimal_string(server: TestServer, connect: Connect) -> None:
    client = await connect(server, "42", token=make_token(42))
    assert (await client.ok("RegisterUser", "Forty-two"))["userId"] == "42"


async def test_sub_claim_is_used_when_there_is_no_id(server: TestServer, connect: Connect) -> None:
    client = await connect(server, "sub-user", token=make_token(None, sub="sub-user"))
    assert (await client.ok("RegisterUser", "Sub"))["userId"] == "sub-user"


async def test_expiring_token_gets_session_expired_then_disconnect(
    server: TestServer,
) -> None:
    client = ChatClient("alice")
    disconnected = asyncio.Event()
    client.sio.on("disconnect", lambda *a: disconnected.set(), namespace="/chat")
    await client.sio.connect(
        str(server.make_url("")).rstrip("/"),
        namespaces=["/chat"],
        auth={"token": make_token("alice", ttl_s=1.5)},
        transports=["websocket"],
    )
    await client.wait_for("Notify")
    assert client.named("SessionExpired") == []

    await client.wait_for("SessionExpired", timeout=5)
    await asyncio.wait_for(disconnected.wait(), 5)
    assert [e for e, _ in client.events][-1] == "SessionExpired"


async def test_public_key_config_verifies_es256_and_refuses_hs256(
    start_server: ServerFactory,
) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    server = await start_server(jwt_algorithm="ES256", jwt_public_key=public_pem, jwt_secret=None)
    good = jwt.encode({"id": "alice", "exp": int(time.time()) + 60}, private, algorithm="ES256")

    client = ChatClient("alice")
    await client.sio.connect(
        str(server.make_url("")).rstrip("/"), namespaces=["/chat"], auth={"token": good},
        transports=["websocket"],
    )
    await client.wait_for("Notify")
    await client.sio.disconnect()

    # An HMAC token "signed" with the public key must not pass (algorithm confusion).
    data, _ = await refusal(server, auth={"token": make_token("alice")})
    assert data["code"] == "unauthorized"
