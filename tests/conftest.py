"""Fixtures: the real app on a real port, real Socket.IO clients, SQLite and MariaDB.

Helpers that tests import by name are in tests/support.py.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from app.config import Config
from app.storage.db import Database, migrate
from app.main import create_app
from models import Conversation, Counter, Group, GroupMember, Message, User
from tests.support import (
    EVENT_TIMEOUT_S,
    MYSQL_ADMIN_URL,
    REQUIRE_SERVICES,
    OwnRedis,
    SECRET,
    ChatClient,
    Connect,
    SERVER_SCRIPT,
    Serve,
    Served,
    ServerFactory,
    db_snapshot,
    free_port,
    make_token,
    mysql_admin,
    mysql_url,
    server_url,
    service_missing,
    wait_listening,
)

# -- databases --------------------------------------------------------------


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
        asyncio.run(mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
    except Exception as e:  # noqa: BLE001 - any failure to reach it means "absent"
        service_missing(f"MariaDB at {MYSQL_ADMIN_URL}", e)
    url = mysql_url(name)
    try:
        asyncio.run(migrate(Config(database_url=url, jwt_secret=SECRET)))
        yield url
    finally:
        asyncio.run(mysql_admin(f"DROP DATABASE IF EXISTS `{name}`"))


@pytest.fixture(params=["sqlite", "mariadb"])
def database_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture
def config(database_url: str) -> Config:
    return Config(database_url=database_url, jwt_secret=SECRET).validated()


@pytest.fixture
async def clean_database(config: Config) -> Config:
    """The test database with every row removed: each test starts from nothing."""
    db = Database(config)
    await db.open()
    try:
        with db.bound():
            for model in (Message, Conversation, User, Group, GroupMember):
                await model.all().delete()
            await Counter.filter(name="change").update(value=0)
    finally:
        await db.close()
    return config


# -- server -----------------------------------------------------------------

@pytest.fixture
async def start_server(
    aiohttp_server: Callable[..., Awaitable[TestServer]], clean_database: Config
) -> ServerFactory:
    """start(**overrides): the real app on a free port, on the (clean) test database."""

    async def start(**overrides: Any) -> TestServer:
        return await aiohttp_server(create_app(replace(clean_database, **overrides).validated()))

    return start


@pytest.fixture
async def server(start_server: ServerFactory) -> TestServer:
    return await start_server()


@pytest.fixture
async def serve(clean_database: Config, tmp_path: Path) -> AsyncIterator[Serve]:
    """serve(**env) -> Served: `chat-server serve` as its own process on the clean test database.

    For what only a real process shows: signals, its log, its exit. Each
    process started is killed (by its pid) at teardown if still running.
    """
    procs: list[subprocess.Popen[bytes]] = []

    async def start(**env: str) -> Served:
        port = int(env.get("CHAT_PORT") or free_port())  # a given port: a restart in place
        full_env = {
            **os.environ,
            "CHAT_DATABASE_URL": clean_database.database_url,
            "CHAT_JWT_SECRET": SECRET,
            "CHAT_PORT": str(port),
            "CHAT_RATE_LIMIT_PER_S": "10000",
            "CHAT_RATE_LIMIT_BURST": "10000",
            **env,
        }
        log = tmp_path / f"server-{port}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [SERVER_SCRIPT, "serve"], env=full_env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        await wait_listening(port, proc)
        return Served(proc, f"http://127.0.0.1:{port}", port, log)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture
async def own_redis(tmp_path: Path) -> AsyncIterator[OwnRedis]:
    """A redis-server of this test's own (it may kill it); killed at teardown."""
    executable = shutil.which("redis-server")
    if executable is None:
        service_missing("redis-server", "not on PATH; apt-get install redis-server")
    redis = OwnRedis(str(executable), tmp_path)
    await redis.start()
    yield redis
    redis.kill()


# -- clients ------------------------------------------------------------------

@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """connect(server, user, ...) -> a connected ChatClient, greeted; all disconnected at teardown."""
    clients: list[ChatClient] = []

    async def _connect(
        server: TestServer,
        user: str,
        *,
        token: str | None = None,
        transports: list[str] | None = None,
        greet: bool = True,
        **claims: Any,
    ) -> ChatClient:
        client = ChatClient(user)
        clients.append(client)
        await client.sio.connect(
            server_url(server),
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


@pytest.fixture
def db_state(server: TestServer) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A snapshot of what is stored, to show that a failed call changed nothing."""

    async def snapshot() -> dict[str, Any]:
        return await db_snapshot(server)

    return snapshot


@pytest.fixture
def tmp_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- what a run did not test ----------------------------------------------------


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """List the skipped tests by reason, so a green local run is not taken for the whole suite.

    Skips say which service or tool was missing (MariaDB, Redis, nginx,
    Chromium, node modules); one line per reason, with how many tests and
    which files.
    """
    skipped = terminalreporter.stats.get("skipped", [])
    if not skipped:
        return
    groups: dict[str, list[str]] = {}
    for report in skipped:
        groups.setdefault(_skip_reason(report), []).append(report.nodeid)
    terminalreporter.section(
        f"{len(skipped)} test{'s' if len(skipped) != 1 else ''} skipped: NOT tested in this run",
        sep="=", yellow=True, bold=True,
    )
    for reason, nodeids in sorted(groups.items(), key=lambda group: (-len(group[1]), group[0])):
        files = sorted({nodeid.split("::")[0] for nodeid in nodeids})
        terminalreporter.line(f"{len(nodeids):4d} x {reason}", yellow=True)
        terminalreporter.line(f"       in {', '.join(files)}")
    if not REQUIRE_SERVICES:
        terminalreporter.line("CHAT_REQUIRE_SERVICES=1 makes each of these a failure instead.")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # (path, line, "Skipped: why")
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)
