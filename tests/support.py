"""Test helpers: tokens, a recording Socket.IO client, service checks, MariaDB admin.

Fixtures live in conftest.py; everything a test imports by name lives here.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import jwt
import pytest
import socketio
from aiohttp.test_utils import TestServer

SECRET = "test-secret-" + "0123456789abcdef" * 4  # 76 bytes: enough for HS512 too
MYSQL_ADMIN_URL = os.environ.get("CHAT_TEST_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
REDIS_URL = os.environ.get("CHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
REQUIRE_SERVICES = os.environ.get("CHAT_REQUIRE_SERVICES") == "1"
EVENT_TIMEOUT_S = 5.0
# Nothing listens on port 1. Only for MariaDB-backed tests: apps of two dialects
# cannot be open at once in one process.
UNREACHABLE_MYSQL = "mysql://root:@127.0.0.1:1/nowhere"


def service_missing(what: str, why: object) -> None:
    """Skip, saying why; under CHAT_REQUIRE_SERVICES=1 fail instead."""
    message = f"{what} is not reachable ({why})"
    if REQUIRE_SERVICES:
        pytest.fail(f"{message} and CHAT_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(message)


# -- MariaDB administration ---------------------------------------------------


def mysql_connect_kwargs() -> dict[str, Any]:
    """asyncmy.connect() arguments for the MariaDB server the tests use."""
    parts = urlsplit(MYSQL_ADMIN_URL)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }


async def mysql_admin(sql: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(**mysql_connect_kwargs(), connect_timeout=3)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


def mysql_url(database: str) -> str:
    return f"{MYSQL_ADMIN_URL.rstrip('/')}/{database}"


# -- tokens and clients -------------------------------------------------------


def make_token(
    user_id: Any = None, *, ttl_s: float = 3600, secret: str = SECRET, algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"exp": int(time.time() + ttl_s), **claims}
    if user_id is not None:
        payload["id"] = user_id
    return jwt.encode(payload, secret, algorithm=algorithm)


# What the `start_server` and `connect` fixtures hand a test.
ServerFactory = Callable[..., Awaitable[TestServer]]
Connect = Callable[..., Awaitable["ChatClient"]]


def server_url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


class ChatClient:
    """A real python-socketio client on /chat that records every event it receives."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, tuple[Any, ...]]] = []
        self.connect_error: Any = None
        self._changed = asyncio.Event()
        self.sio.on("*", self._record, namespace="/chat")
        self.sio.on("connect_error", self._on_connect_error, namespace="/chat")

    async def _record(self, event: str, *args: Any) -> None:
        self.events.append((event, args))
        self._changed.set()

    async def _on_connect_error(self, data: Any) -> None:
        self.connect_error = data

    async def call(self, event: str, *args: Any, timeout: float = EVENT_TIMEOUT_S) -> Any:
        return await self.sio.call(event, tuple(args), namespace="/chat", timeout=timeout)

    async def ok(self, event: str, *args: Any) -> Any:
        """Call, assert success, return the data."""
        reply = await self.call(event, *args)
        assert reply.get("ok") is True, f"{event}{args} failed: {reply}"
        return reply["data"]

    async def error(self, event: str, *args: Any) -> str:
        """Call, assert failure, return the error code."""
        reply = await self.call(event, *args)
        assert reply.get("ok") is False, f"{event}{args} unexpectedly succeeded: {reply}"
        assert set(reply["error"]) == {"code", "message"}
        return str(reply["error"]["code"])

    def named(self, event: str) -> list[tuple[Any, ...]]:
        return [args for name, args in self.events if name == event]

    async def wait_for(
        self, event: str, count: int = 1, timeout: float = EVENT_TIMEOUT_S
    ) -> list[tuple[Any, ...]]:
        deadline = asyncio.get_running_loop().time() + timeout
        while len(self.named(event)) < count:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(
                    f"{self.user}: waited {timeout}s for {count} x {event}; got {self.events}"
                )
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                pass
        return self.named(event)

    def clear(self) -> None:
        self.events.clear()


async def flush(target: ChatClient, via: ChatClient) -> None:
    """Wait until every event the server sent `target` so far has arrived.

    `via` sends `target`'s user a typing notice; the server writes to each
    socket in order, so once it arrives anything emitted before it has too.
    That makes "X must NOT get event E" checks exact instead of timed.
    """
    before = len(target.named("UserTyping"))
    await via.ok("Typing", target.user, True)
    await target.wait_for("UserTyping", before + 1)
