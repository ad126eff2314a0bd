"""Test helpers: tokens, a recording Socket.IO client, service checks, MariaDB admin.

Fixtures live in conftest.py; everything a test imports by name lives here.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import aiohttp
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


SERVER_SCRIPT = str(Path(sys.executable).with_name("chat-server"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while asyncio.get_running_loop().time() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise AssertionError(f"nothing listens on {port}")


@dataclass
class Served:
    """A real `chat-server serve` process started by the `serve` fixture."""

    proc: subprocess.Popen[bytes]
    url: str
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


async def terminate(served: Served, grace_s: float) -> tuple[float, int]:
    """SIGTERM the server; return how long it took to exit and its exit status.

    Waits up to grace + 5 s (the promise is grace + 1 s): a server still
    running then fails the test, which kills it at teardown.
    """
    started = time.monotonic()
    served.proc.send_signal(signal.SIGTERM)
    while served.proc.poll() is None and time.monotonic() - started < grace_s + 5:
        await asyncio.sleep(0.02)
    took = time.monotonic() - started
    status = served.proc.poll()
    assert status is not None, f"the server still runs {took:.1f} s after SIGTERM"
    return took, status


class Serve(Protocol):
    async def __call__(self, **env: str) -> Served: ...


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


async def mysql_kill_connections(database: str) -> int:
    """KILL every connection using `database` (as a crash or a failover would); how many."""
    import asyncmy

    conn = await asyncmy.connect(**mysql_connect_kwargs(), connect_timeout=3)
    killed = 0
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT id FROM information_schema.processlist WHERE db = %s", (database,)
            )
            for (conn_id,) in await cur.fetchall():
                try:
                    await cur.execute(f"KILL {int(conn_id)}")
                    killed += 1
                except Exception:  # noqa: BLE001 - it may have ended on its own
                    pass
    finally:
        conn.close()
    return killed


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


async def db_snapshot(server: TestServer) -> dict[str, Any]:
    """Everything the server has stored, to show that a refused call changed nothing."""
    from app.appkeys import DB
    from models import Conversation, Counter, Group, GroupMember, Message, User

    with server.app[DB].bound():
        return {
            "messages": await Message.all().order_by("id").values(),
            "conversations": await Conversation.all().order_by("id").values(),
            "users": await User.all().order_by("id").values(),
            "groups": await Group.all().order_by("id").values(),
            "members": await GroupMember.all().order_by("id").values(),
            "counter": await Counter.all().values(),
        }


def server_url(server: TestServer | Served) -> str:
    if isinstance(server, Served):
        return server.url
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


async def eventually(
    check: Callable[[], bool | Awaitable[bool]], what: str, timeout_s: float = EVENT_TIMEOUT_S
) -> float:
    """Poll `check` (plain or async) until it holds; the seconds it took.

    For conditions no event announces (a log line written, a place freed).
    Fails after `timeout_s`, saying what it waited for.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return loop.time() - started
        if loop.time() - started >= timeout_s:
            raise AssertionError(f"waited {timeout_s} s for {what}")
        await asyncio.sleep(0.05)


async def flush(target: ChatClient, via: ChatClient) -> None:
    """Wait until every event the server sent `target` so far has arrived.

    `via` sends `target`'s user a typing notice; the server writes to each
    socket in order, so once it arrives anything emitted before it has too.
    That makes "X must NOT get event E" checks exact instead of timed.
    """
    before = len(target.named("UserTyping"))
    await via.ok("Typing", target.user, True)
    await target.wait_for("UserTyping", before + 1)


class RawSocket:
    """A bare engine.io v4 WebSocket, for frames no Socket.IO client would send.

    Frames are engine.io packets as text: ``"40/chat,{...}"`` is a Socket.IO
    CONNECT to /chat, ``"42/chat,[...]"`` an EVENT; bytes go as binary frames.
    """

    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._session = session
        self.ws = ws
        self.frames: list[str | bytes] = []

    @classmethod
    async def open(cls, url: str) -> RawSocket:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(f"{url}/socket.io/?EIO=4&transport=websocket")
            opened = await ws.receive_str(timeout=EVENT_TIMEOUT_S)
        except BaseException:
            await session.close()
            raise
        assert opened.startswith("0{"), opened
        return cls(session, ws)

    async def send(self, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            await self.ws.send_bytes(frame)
        else:
            await self.ws.send_str(frame)

    async def connect_chat(self, token: str) -> None:
        await self.send('40/chat,{"token":"%s"}' % token)

    async def receive(self, timeout: float = EVENT_TIMEOUT_S) -> str | bytes | None:
        """The next frame (answering pings), or None once the server has closed the socket."""
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                            aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR):
                return None
            if msg.data == "2":
                await self.ws.send_str("3")
                continue
            self.frames.append(msg.data)
            return msg.data  # type: ignore[no-any-return]

    async def closed_within(self, timeout: float) -> bool:
        """Read until the server closes the socket; False if it is still open after `timeout`."""
        deadline = asyncio.get_running_loop().time() + timeout
        while (remaining := deadline - asyncio.get_running_loop().time()) > 0:
            try:
                frame = await self.receive(timeout=remaining)
            except TimeoutError:
                return False
            if frame is None or frame == "1":  # a close frame, or engine.io's CLOSE packet
                return True
        return False

    async def close(self) -> None:
        await self.ws.close()
        await self._session.close()


# -- a Redis of the test's own ----------------------------------------------------


class OwnRedis:
    """A `redis-server` on a free port that the test may kill and start again.

    Never the shared Redis: only this process, by its pid.
    """

    def __init__(self, executable: str, workdir: Path) -> None:
        self.executable = executable
        self.port = free_port()
        self.workdir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.workdir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        await wait_listening(self.port, self.proc)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def command(self, *args: str) -> Any:
        from redis.asyncio import Redis

        client = Redis(host="127.0.0.1", port=self.port)
        try:
            return await client.execute_command(*args)
        finally:
            await client.aclose()
