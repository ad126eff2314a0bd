"""Fixtures: the real app on a real port, real Socket.IO clients, SQLite and MariaDB."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jwt
import pytest
import socketio
from aiohttp import web
from aiohttp.test_utils import TestServer

from app.config import Config
from app.db import migrate
from app.keys import DB
from app.main import create_app
from models import Conversation, Counter, Message, User

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


# -- databases --------------------------------------------------------------


def _mysql_connect_kwargs() -> dict[str, Any]:
    from urllib.parse import urlsplit

    parts = urlsplit(MYSQL_ADMIN_URL)
    return {
        "host": parts.hostname or "127.0.0.1",
        "port": parts.port or 3306,
        "user": parts.username or "root",
        "password": parts.password or "",
    }


async def _mysql_admin(sql: str) -> None:
    import asyncmy

    conn = await asyncmy.connect(**_mysql_connect_kwargs(), connect_timeout=3)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
    finally:
        conn.close()


def mysql_url(database: str) -> str:
    return f"{MYSQL_ADMIN_URL.rstrip('/')}/{database}"


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("sqlite") / "chat.sqlite3"
    url = f"sqlite://{path}"
    asyncio.run(migrate(Config(database_url=url, jwt_secret=SECRET)))
    return url


@pytest.fixture(scope="session")
def mariadb_url() -> Iterator[str]:
    """A fresh, migrated MariaDB database for this test run, dropped at the end."""
    name = f"chat_test_{uuid.uuid4().hex[:10]}"
    try:
        asyncio.run(_mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as e:  # noqa: BLE001 - any failure to reach it means "absent"
        service_missing(f"MariaDB at {MYSQL_ADMIN_URL}", e)
    url = mysql_url(name)
    try:
        asyncio.run(migrate(Config(database_url=url, jwt_secret=SECRET)))
        yield url
    finally:
        asyncio.run(_mysql_admin(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def config(database_url: str) -> Config:
    return Config(database_url=database_url, jwt_secret=SECRET).validated()


async def wipe(app: web.Application) -> None:
    with app[DB].bound():
        for model in (Message, Conversation, User):
            await model.all().delete()
        await Counter.filter(name="change").update(value=0)


# -- server -----------------------------------------------------------------

ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
async def start_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]], config: Config
) -> ServerFactory:
    """Start the real app on a free port; the first start wipes the shared test database."""
    wiped = False

    async def start(**overrides: Any) -> TestServer:
        nonlocal wiped
        app = create_app(replace(config, **overrides).validated())
        server = await aiohttp_server(app)
        if not wiped:
            await wipe(app)
            wiped = True
        return server

    return start


@pytest.fixture
async def server(start_server: ServerFactory) -> TestServer:
    return await start_server()


# -- tokens and clients -----------------------------------------------------


def make_token(
    user_id: Any = None, *, ttl_s: float = 3600, secret: str = SECRET, algorithm: str = "HS256",
    **claims: Any,
) -> str:
    payload: dict[str, Any] = {"exp": int(time.time() + ttl_s), **claims}
    if user_id is not None:
        payload["id"] = user_id
    return jwt.encode(payload, secret, algorithm=algorithm)


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


Connect = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
async def connect(server: TestServer) -> AsyncIterator[Connect]:
    """connect(user, ...) -> a connected ChatClient, greeted; all disconnected at teardown."""
    clients: list[ChatClient] = []

    async def _connect(
        user: str,
        *,
        token: str | None = None,
        target: TestServer | None = None,
        transports: list[str] | None = None,
        greet: bool = True,
        **claims: Any,
    ) -> ChatClient:
        client = ChatClient(user)
        clients.append(client)
        url = str((target or server).make_url("")).rstrip("/")
        await client.sio.connect(
            url,
            namespaces=["/chat"],
            auth={"token": token or make_token(user, **claims)},
            transports=transports or ["websocket"],
            wait_timeout=EVENT_TIMEOUT_S,
        )
        if greet:
            await client.wait_for("Notify")
        return client

    yield _connect
    await asyncio.gather(*(c.sio.disconnect() for c in clients if c.sio.connected))


async def flush(target: ChatClient, via: ChatClient) -> None:
    """Wait until every event the server sent `target` so far has arrived.

    `via` sends `target`'s user a typing notice; the server writes to each
    socket in order, so once it arrives anything emitted before it has too.
    That makes "X must NOT get event E" checks exact instead of timed.
    """
    before = len(target.named("UserTyping"))
    await via.ok("Typing", target.user, True)
    await target.wait_for("UserTyping", before + 1)


@pytest.fixture
def db_state(server: TestServer) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A snapshot of what is stored, to show that a failed call changed nothing."""

    async def snapshot() -> dict[str, Any]:
        with server.app[DB].bound():
            return {
                "messages": await Message.all().order_by("id").values(),
                "conversations": await Conversation.all().order_by("id").values(),
                "users": await User.all().order_by("id").values(),
                "counter": await Counter.all().values(),
            }

    return snapshot


@pytest.fixture
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path
