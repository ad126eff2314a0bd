"""The processes and probes `make chaos` runs (bench/chaos.py).

Every process here is the script's own, started on a free port and stopped by
its pid: a MariaDB database of its own on the shared MariaDB (created, migrated,
dropped) and the `chat-server serve` instances; the redis-server of its own is
the tests' OwnRedis (tests/support.py). Every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from bench.chaos_load import now
from tests.support import (
    MYSQL_ADMIN_URL,
    SERVER_SCRIPT as SERVER,
    free_port,
    mysql_connect_kwargs,
    wait_listening,
)

START_TIMEOUT_S = 30.0  # for an instance to listen
READY_EVERY_S = 0.1
# A readiness probe that has not answered by then counts as no answer, as a balancer's would.
READY_TIMEOUT_S = 3.0
# For one statement on the shared MariaDB (a DROP waits for the locks of open transactions).
MYSQL_TIMEOUT_S = 30.0


# -- the database ------------------------------------------------------------------


async def mysql_rows(sql: str, database: str | None = None,
                     params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run one statement on the MariaDB itself, never through the proxy."""
    import asyncmy

    conn = await asyncmy.connect(**mysql_connect_kwargs(), db=database, connect_timeout=5)
    try:
        async with conn.cursor() as cur:
            await asyncio.wait_for(cur.execute(sql, params), MYSQL_TIMEOUT_S)
            rows = list(await cur.fetchall())
        await conn.commit()
        return rows
    finally:
        conn.close()


@asynccontextmanager
async def own_database(secret: str) -> AsyncIterator[str]:
    """A database `chat_chaos_<random>`, migrated with `chat-server migrate`; dropped at the end."""
    name = f"chat_chaos_{uuid.uuid4().hex[:10]}"
    await mysql_rows(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        env = {**os.environ, "CHAT_DATABASE_URL": f"{MYSQL_ADMIN_URL.rstrip('/')}/{name}",
               "CHAT_JWT_SECRET": secret}
        migrate = await asyncio.create_subprocess_exec(
            SERVER, "migrate", env=env, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(migrate.communicate(), 120)
        if migrate.returncode != 0:
            raise RuntimeError(f"chat-server migrate failed: {out.decode(errors='replace')[-2000:]}")
        yield name
    finally:
        await mysql_rows(f"DROP DATABASE IF EXISTS `{name}`")


@dataclass(frozen=True)
class Stored:
    """What the database holds for some senders: (sender, clientMessageId) -> ids, texts."""

    ids: dict[tuple[str, str], list[str]]
    texts: Counter[str]

    @property
    def rows(self) -> int:
        return sum(self.texts.values())

    @property
    def duplicated_keys(self) -> int:
        return sum(len(v) - 1 for v in self.ids.values())

    @property
    def duplicated_texts(self) -> int:
        return sum(n - 1 for n in self.texts.values())


async def stored(database: str, senders: list[str]) -> Stored:
    marks = ", ".join(["%s"] * len(senders))
    rows = await mysql_rows(
        "SELECT sender_id, client_message_id, uuid, text FROM chat_message"
        f" WHERE sender_id IN ({marks})", database, tuple(senders),
    )
    ids: dict[tuple[str, str], list[str]] = {}
    texts: Counter[str] = Counter()
    for sender, cid, uid, text in rows:
        ids.setdefault((sender, cid), []).append(str(uid))
        texts[text] += 1
    return Stored(ids, texts)


# -- chat-server instances --------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    """How an instance ended after SIGTERM."""

    seconds: float  # from SIGTERM to exit (to SIGKILL's exit when killed)
    code: int | None
    killed: bool  # still running at the deadline: SIGKILLed


class Instance:
    """One `chat-server serve` process; its log is appended to across restarts."""

    def __init__(self, name: str, env: dict[str, str], log: Path) -> None:
        self.name = name
        self.port = free_port()
        self.env = {**env, "CHAT_PORT": str(self.port), "CHAT_INSTANCE_ID": name}
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None
        self.terminated_at: float | None = None  # SIGTERM sent then; None while serving

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self) -> None:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen([SERVER, "serve"], env=self.env, stdout=out,
                                         stderr=subprocess.STDOUT)
        self.terminated_at = None
        await wait_listening(self.port, self.proc, START_TIMEOUT_S)

    async def terminate(self, kill_after_s: float) -> Exit:
        """SIGTERM; SIGKILL if it has not exited `kill_after_s` later."""
        proc = self.proc
        assert proc is not None
        self.terminated_at = sent = now()
        proc.send_signal(signal.SIGTERM)
        try:
            code: int | None = await asyncio.to_thread(proc.wait, kill_after_s)
            return Exit(now() - sent, code, killed=False)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = await asyncio.to_thread(proc.wait, 10)
            return Exit(now() - sent, code, killed=True)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def tracebacks_since(self, offset: int) -> int:
        with open(self.log, "rb") as f:
            f.seek(offset)
            return f.read().count(b"Traceback (most recent call last)")


# -- readiness ------------------------------------------------------------------------------


async def ready_within(inst: Instance, timeout_s: float) -> bool:
    """Whether /readyz answers 200 within `timeout_s`."""
    deadline = now() + timeout_s
    timeout = aiohttp.ClientTimeout(total=READY_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        while now() < deadline:
            try:
                async with http.get(inst.url + "/readyz") as r:
                    if r.status == 200:
                        return True
            except (aiohttp.ClientError, TimeoutError, OSError):
                pass
            await asyncio.sleep(0.2)
    return False


@dataclass(frozen=True)
class Probe:
    instance: str
    sent: float
    answered: float
    status: int | None  # None: refused or no answer within READY_TIMEOUT_S


@dataclass
class ReadyProbe:
    """GET /readyz on every instance every READY_EVERY_S, each probe with its own deadline."""

    instances: list[Instance]
    probes: list[Probe] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    _inflight: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=READY_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                for inst in self.instances:
                    task = asyncio.ensure_future(self._probe(http, inst))
                    self._inflight.add(task)
                    task.add_done_callback(self._inflight.discard)
                await asyncio.sleep(READY_EVERY_S)

    async def _probe(self, http: aiohttp.ClientSession, inst: Instance) -> None:
        sent = now()
        status: int | None
        try:
            async with http.get(inst.url + "/readyz") as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = None
        self.probes.append(Probe(inst.name, sent, now(), status))

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._inflight) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
