"""The write path's own database connections: every step bounded, none reused after it hangs.

Group commits (app/storage/store.py) run on connections of their own rather than on
the ORM's pool, because a write that stops half-way needs what a pool does
not do:

- Every step (connect, BEGIN, each statement, COMMIT) is bounded by the call
  time limit. A connection whose step ran out of time or failed is in an
  unknown state: it is closed and never used again, and the next batch opens
  a fresh one as soon as the database answers.
- On MySQL/MariaDB a connection we gave up on may still be alive on the
  server (a frozen network path sends no FIN and no reset), holding the change
  counter's row lock: every later batch would wait on that lock until the
  server's ``wait_timeout`` (hours). So its server thread is killed from the
  next connection that works, before that connection writes anything.
- When the COMMIT gets no answer the batch may or may not be stored. Its
  callers are not answered until that is known: the old session is killed
  (so it can no longer commit) and gone, then the batch's own rows are looked
  for on a fresh connection. ``unavailable`` therefore always means "not
  stored". Only a shutdown can stop the looking: those callers then get
  :class:`OutcomeUnknown`, which the edge answers with nothing at all.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from app.errors import OutcomeUnknown
from app.storage.failures import is_storage_failure

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Between two attempts to learn an unanswered COMMIT's outcome.
RESOLVE_RETRY_S = 0.5
# A write connection used within this is trusted to be alive without a round trip.
TRUST_IDLE_S = 1.0
# Closing a connection we gave up on must not hold anything up.
DISCARD_TIMEOUT_S = 2.0


class Tx(Protocol):
    """What a batch's work sees of its transaction."""

    # INSERT ... RETURNING works (SQLite, MariaDB): inserted rows come back in
    # the same round trip instead of being read back.
    returning: bool

    async def query(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]: ...

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> int: ...

    async def bump(self, table: str, column: str, key: str, value: Any) -> int | None:
        """``column = column + 1`` in the row whose `key` is `value`: the new value, in one
        round trip (None: no such row)."""


class Link(Tx, Protocol):
    """One open connection of a driver."""

    thread_id: int | None  # the server's id for it (MySQL), to kill it with

    async def begin(self, check: bool) -> None:
        """Start a transaction; with `check`, by a round trip that proves the link alive."""

    async def commit(self) -> None: ...

    async def rollback(self) -> None: ...

    def abort(self) -> None:
        """Close at once, without a goodbye to the server."""

    async def close(self) -> None:
        """Close a healthy connection."""


class Driver(Protocol):
    async def open(self) -> Link: ...

    async def kill(self, link: Link, thread_id: int) -> None:
        """End another connection's server session and wait until it is gone."""


class WriteConnections:
    """Run batches, each on a connection of its own, as transactions that cannot hang."""

    def __init__(self, driver: Driver, timeout_s: float) -> None:
        self._driver = driver
        self._timeout_s = timeout_s
        self._idle: list[tuple[Link, float]] = []  # and since when
        # Server threads of connections we gave up on, killed before the next write.
        self._zombies: set[int] = set()
        self._closing = asyncio.Event()

    async def run(
        self,
        work: Callable[[Tx], Awaitable[T]],
        committed: Callable[[Tx], Awaitable[bool]],
        needed: Callable[[], bool] = lambda: True,
        on_commit: Callable[[], None] | None = None,
    ) -> T:
        """Run `work` in a transaction and commit it; return its result once stored.

        Raises a storage failure (never stored), or :class:`OutcomeUnknown`
        at shutdown. `committed` answers, on a fresh connection, whether the
        work's effects are stored; it is asked only when the COMMIT went
        unanswered. When `needed` says the work changed nothing that must
        stay (only retries and refusals), the transaction is rolled back.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        committing = False
        link: Link | None = None
        try:
            async with asyncio.timeout_at(deadline):
                link = await self._begin()
                result = await work(link)
                if not needed():
                    await link.rollback()
                else:
                    committing = True
                    if on_commit is not None:
                        on_commit()  # what is left is the COMMIT's wait: the next batch may start
                    await link.commit()
        except BaseException as exc:
            if link is not None:
                self._give_up(link)
            if not committing or isinstance(exc, asyncio.CancelledError):
                raise
            logger.error("storage failure: a COMMIT got no answer (%r); learning its outcome", exc)
            if await self._resolve(committed):
                return result
            raise
        self._idle.append((link, loop.time()))
        return result

    async def _begin(self) -> Link:
        """A connection in a new transaction.

        A connection idle for a while may have died meanwhile (the database
        restarted): its transaction starts with a round trip that proves it
        alive (nothing was sent on it yet, so a fresh one is tried at once).
        One used a moment ago starts its transaction with the batch's first
        statement: a round trip less per batch under load.
        """
        if self._idle:
            link, since = self._idle.pop()
            try:
                await link.begin(check=asyncio.get_running_loop().time() - since > TRUST_IDLE_S)
                return link
            except BaseException as exc:
                self._give_up(link)
                if isinstance(exc, asyncio.CancelledError) or not is_storage_failure(exc):
                    raise
        link = await self._link()
        try:
            await link.begin(check=False)
        except BaseException:
            self._give_up(link)
            raise
        return link

    async def _link(self) -> Link:
        """A fresh connection, once the sessions we gave up on are gone."""
        link = await self._driver.open()
        try:
            for thread_id in list(self._zombies):
                # Before this connection writes: a zombie may hold the counter's lock.
                await self._driver.kill(link, thread_id)
                self._zombies.discard(thread_id)
        except BaseException:
            link.abort()
            raise
        return link

    def _give_up(self, link: Link) -> None:
        if link.thread_id is not None:
            self._zombies.add(link.thread_id)
        link.abort()

    async def _resolve(self, committed: Callable[[Tx], Awaitable[bool]]) -> bool:
        """Whether the unanswered batch is stored, asked until the database answers."""
        while not self._closing.is_set():
            try:
                link = None
                async with asyncio.timeout(self._timeout_s):
                    link = await self._link()  # kills the old session first, and waits for it
                    # In a transaction of its own: on SQLite BEGIN IMMEDIATE waits
                    # until a stalled writer's transaction is over, one way or the other.
                    await link.begin(check=False)
                    stored = await committed(link)
                    await link.commit()
                self._idle.append((link, asyncio.get_running_loop().time()))
                logger.warning(
                    "storage: the unanswered COMMIT was %s", "stored" if stored else "not stored"
                )
                return stored
            except Exception as exc:  # noqa: BLE001 - still down: ask again
                if link is not None:
                    self._give_up(link)
                if not is_storage_failure(exc):
                    raise
                logger.warning("storage: cannot learn the COMMIT's outcome yet (%r)", exc)
            try:
                await asyncio.wait_for(self._closing.wait(), RESOLVE_RETRY_S)
            except TimeoutError:
                pass
        raise OutcomeUnknown("the server shut down before this write's outcome was known")

    def stop_resolving(self) -> None:
        """Shutdown: callers waiting on an unanswered COMMIT get OutcomeUnknown."""
        self._closing.set()

    async def close(self, timeout_s: float = DISCARD_TIMEOUT_S) -> None:
        """Close the idle connections together, within `timeout_s`; drop the ones that do not answer."""
        self._closing.set()
        idle, self._idle = self._idle, []
        closing = {asyncio.ensure_future(link.close()): link for link, _ in idle}
        if not closing:
            return
        _, late = await asyncio.wait(closing, timeout=timeout_s)
        for task, link in closing.items():
            if task in late:
                task.cancel()
            if task in late or task.exception() is not None:
                link.abort()  # closing regardless


# -- MySQL / MariaDB ----------------------------------------------------------


class MySQLLink:
    def __init__(self, conn: Any, returning: bool) -> None:
        self._conn = conn
        self.thread_id: int | None = conn.thread_id()
        self.returning = returning

    async def begin(self, check: bool) -> None:
        # Autocommit is off: the first statement starts the transaction by itself.
        if check:
            await self._conn.begin()

    async def commit(self) -> None:
        await self._conn.commit()

    async def rollback(self) -> None:
        await self._conn.rollback()

    async def query(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        from asyncmy.cursors import DictCursor

        async with self._conn.cursor(DictCursor) as cursor:
            await cursor.execute(statement, list(params))
            return list(await cursor.fetchall())

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        async with self._conn.cursor() as cursor:
            return int(await cursor.execute(statement, list(params)))

    async def bump(self, table: str, column: str, key: str, value: Any) -> int | None:
        # MariaDB has no UPDATE ... RETURNING; LAST_INSERT_ID(expr) hands the new
        # value back in the statement's own OK packet (the documented sequence idiom).
        async with self._conn.cursor() as cursor:
            changed = await cursor.execute(
                f"UPDATE {table} SET {column} = LAST_INSERT_ID({column} + 1) WHERE {key} = %s",
                [value],
            )
            return int(cursor.lastrowid) if changed else None

    def abort(self) -> None:
        self._conn.close()  # asyncmy's close() drops the transport, no QUIT

    async def close(self) -> None:
        await self._conn.ensure_closed()


class MySQL:
    """Opens connections like the ORM's (utf8mb4, the lock wait limit), one at a time."""

    def __init__(self, url: str, connect_timeout_s: float) -> None:
        """`url` with the defaults in (with_defaults): the ORM's charset and lock wait."""
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        self._options = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 3306,
            "user": unquote(parts.username or "root"),
            "password": unquote(parts.password or ""),
            "db": parts.path.lstrip("/"),
            "charset": query["charset"],
            "autocommit": False,
            "connect_timeout": connect_timeout_s,
            # A lock that cannot be had fails the statement inside the call's time.
            "init_command": query["init_command"],
        }

    async def open(self) -> Link:
        import asyncmy

        conn = await asyncmy.connect(**self._options)
        link = MySQLLink(conn, returning=_has_insert_returning(str(conn.get_server_info())))
        try:
            # Each statement reads what is committed when it runs (not a snapshot
            # from the transaction's first read): a batch reads group state after
            # taking the change counter's lock, and must see what the holder
            # before it committed. (Binary logging then needs ROW or MIXED, the
            # defaults of MySQL 8 and MariaDB.)
            await link.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
            await link.commit()
        except BaseException:
            link.abort()
            raise
        return link

    async def kill(self, link: Link, thread_id: int) -> None:
        try:
            await link.execute("KILL CONNECTION %s", [thread_id])
        except Exception as exc:  # noqa: BLE001
            if "1094" not in str(exc):  # "Unknown thread id": gone already
                raise
        # KILL only flags the thread: wait until its session (and transaction) is over.
        while await link.query(
            "SELECT 1 FROM information_schema.PROCESSLIST WHERE ID = %s", [thread_id]
        ):
            await asyncio.sleep(0.02)


def _has_insert_returning(version: str) -> bool:
    """MariaDB 10.5 and later answer INSERT ... RETURNING; MySQL does not."""
    if "mariadb" not in version.lower():
        return False
    numbers = version.removeprefix("5.5.5-").split("-")[0].split(".")
    try:
        return (int(numbers[0]), int(numbers[1])) >= (10, 5)
    except (ValueError, IndexError):
        return False


# -- SQLite ---------------------------------------------------------------------


class SQLiteLink:
    thread_id: int | None = None  # SQLite has no server session to kill
    returning = True  # SQLite 3.35 and later

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def begin(self, check: bool) -> None:
        # IMMEDIATE takes the write lock now: batches are ordered like MySQL's counter lock.
        await self._conn.execute("BEGIN IMMEDIATE")

    async def commit(self) -> None:
        await self._conn.execute("COMMIT")

    async def rollback(self) -> None:
        await self._conn.execute("ROLLBACK")

    async def query(self, statement: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        return [dict(row) for row in await self._conn.execute_fetchall(statement, list(params))]

    async def execute(self, statement: str, params: Sequence[Any] = ()) -> int:
        cursor = await self._conn.execute(statement, list(params))
        try:
            return int(cursor.rowcount)
        finally:
            await cursor.close()

    async def bump(self, table: str, column: str, key: str, value: Any) -> int | None:
        rows = await self._conn.execute_fetchall(
            f"UPDATE {table} SET {column} = {column} + 1 WHERE {key} = ? RETURNING {column}",
            [value],
        )
        return int(rows[0][0]) if rows else None

    def abort(self) -> None:
        # aiosqlite closes on its own thread; a stalled one never returns, so don't wait.
        task = asyncio.ensure_future(self._conn.close())
        task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def close(self) -> None:
        await self._conn.close()


class SQLite:
    """The same pragmas as the ORM's connection: WAL, fsync on every commit, a busy wait."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._path = Path(parts.netloc + parts.path)
        query = dict(parse_qsl(parts.query))
        self._pragmas = {
            "journal_mode": "WAL",
            "synchronous": query["synchronous"],
            "busy_timeout": query["busy_timeout"],
            "foreign_keys": "ON",
        }

    async def open(self) -> Link:
        import aiosqlite

        conn = await aiosqlite.connect(self._path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        for name, value in self._pragmas.items():
            await (await conn.execute(f"PRAGMA {name}={value}")).close()
        return SQLiteLink(conn)

    async def kill(self, link: Link, thread_id: int) -> None:
        pass  # never called: SQLite links have no thread id


def driver_for(database_url: str, lock_wait_s: int, connect_timeout_s: float) -> Driver:
    url = with_defaults(database_url, lock_wait_s)
    if url.startswith("mysql://"):
        return MySQL(url, connect_timeout_s)
    return SQLite(url)


def with_defaults(url: str, lock_wait_s: int | None = None) -> str:
    """Add the driver options this server relies on unless the URL sets them.

    The ORM's connections and the write path's own ones both open from it, so
    they cannot drift apart.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    if parts.scheme == "sqlite":
        # An acknowledged message must survive a crash: fsync every commit.
        query.setdefault("synchronous", "FULL")
        query.setdefault("busy_timeout", "5000")
        path = Path(parts.netloc + parts.path)
        if path.parent != Path("."):
            path.parent.mkdir(parents=True, exist_ok=True)
    else:
        # utf8mb4 is what makes emoji round-trip on MySQL.
        query.setdefault("charset", "utf8mb4")
        query.setdefault("maxsize", "20")
        if lock_wait_s is not None:
            # Let the database give up on a lock it cannot get, inside the call's
            # time limit: the statement fails and the transaction rolls back
            # cleanly, where cancelling it from Python would break the connection.
            query.setdefault("init_command", f"SET SESSION innodb_lock_wait_timeout={lock_wait_s}")
    return urlunsplit(parts._replace(query=urlencode(query)))
