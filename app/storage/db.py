"""Database wiring: the Tortoise config, migrations, and storage sessions.

A storage session binds Tortoise's context, bounds the work in time and turns
every storage failure, whatever driver raised it, into ``Unavailable``: above
this module nobody needs to know which database is behind the store.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tortoise import context as tortoise_context
from tortoise.backends.base.client import TransactionContextPooled, TransactionalDBClient
from tortoise.connection import get_connections
from tortoise.context import TortoiseContext
from tortoise.transactions import in_transaction

from app.config import Config, ConfigError
from app.errors import Unavailable
from app.storage.failures import is_storage_failure
from app.storage.writer import WriteConnections, driver_for, with_defaults

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
APP_LABEL = "models"

def tortoise_config(database_url: str, lock_wait_s: int | None = None) -> dict[str, Any]:
    # The connection is named after its dialect because Tortoise caches compiled
    # INSERTs process-wide by (connection name, table): a SQLite app and then a
    # MySQL app in one process (the test suite does this) must not share a name.
    # Models also remember their connection name per class, so apps of two
    # different dialects cannot be open at the same time in one process.
    name = urlsplit(database_url).scheme
    return {
        "connections": {name: with_defaults(database_url, lock_wait_s)},
        "apps": {APP_LABEL: {"models": ["models", "aerich.models"], "default_connection": name}},
        "use_tz": True,
        "timezone": "UTC",
    }


def lock_wait_s(config: Config) -> int:
    """How long a statement may wait for a row lock: half the call's time limit."""
    return max(1, int(config.call_timeout_s // 2))


def migrations_location(config: Config) -> Path:
    # aerich writes raw SQL for one dialect, so each dialect keeps its own set.
    return MIGRATIONS_DIR / config.dialect


# How long `migrate` waits for another instance's migrate to finish.
MIGRATE_LOCK_WAIT_S = 300


async def migrate(config: Config) -> list[str]:
    """Apply pending aerich migrations; return the names of those applied.

    Instances started together may each run ``chat-server migrate``. aerich
    does not guard against that: both see the migration pending and both
    apply it. So the whole upgrade runs under a lock that the database itself
    holds for us: MySQL's GET_LOCK (named after the database), or an exclusive
    lock on a file beside the SQLite database. The second runner waits, then
    finds nothing pending.
    """
    async with _migrate_lock(config):
        return await _upgrade(config)


async def _upgrade(config: Config) -> list[str]:
    async def run() -> list[str]:
        from aerich import Command

        async with Command(
            tortoise_config(config.database_url),
            app=APP_LABEL,
            location=str(migrations_location(config)),
        ) as command:
            return await command.upgrade(run_in_transaction=True)

    # aerich initialises Tortoise's context-local state; keep it out of the caller's.
    return await asyncio.create_task(run(), context=contextvars.Context())


@asynccontextmanager
async def _migrate_lock(config: Config) -> AsyncIterator[None]:
    parts = urlsplit(config.database_url)
    if config.dialect == "sqlite":
        path = Path(parts.netloc + parts.path)
        if path.parent != Path("."):
            path.parent.mkdir(parents=True, exist_ok=True)
        with open(f"{path}.migrate-lock", "a+b") as lock_file:
            await asyncio.to_thread(fcntl.flock, lock_file.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)
        return
    import asyncmy

    database = parts.path.lstrip("/")
    name = f"chat-server migrate {database}"[:64]  # GET_LOCK names are server-wide
    conn = await asyncmy.connect(
        host=parts.hostname or "127.0.0.1", port=parts.port or 3306,
        user=unquote(parts.username or "root"), password=unquote(parts.password or ""),
        connect_timeout=10,
    )
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT GET_LOCK(%s, %s)", (name, MIGRATE_LOCK_WAIT_S))
            (got,) = await cur.fetchone()
            if got != 1:
                raise ConfigError(
                    f"CHAT_DATABASE_URL: another migrate held the lock for {MIGRATE_LOCK_WAIT_S} s"
                )
            try:
                yield
            finally:
                await cur.execute("SELECT RELEASE_LOCK(%s)", (name,))
    finally:
        conn.close()


class Database:
    """The app's Tortoise context, entered explicitly by every entry point.

    Tortoise 1.x keeps its state in a context variable. Entering our own
    context per socket event and per request (instead of relying on whatever
    the startup task left behind) keeps two apps in one process - tests, a
    scale-out demo - from ever sharing connections.
    """

    def __init__(self, config: Config) -> None:
        self._config = config
        self._orm: TortoiseContext | None = None
        # Group commits run on connections of their own (app/storage/writer.py).
        self.writes = WriteConnections(
            driver_for(config.database_url, lock_wait_s(config), config.call_timeout_s),
            config.call_timeout_s,
        )
        self._suspected_at = 0.0
        self._clearing: asyncio.Task[None] | None = None

    async def open(self) -> None:
        orm = TortoiseContext()
        self._orm = orm
        try:
            config = tortoise_config(self._config.database_url, lock_wait_s(self._config))
            with self.bound():  # init binds models to the current context
                await orm.init(config=config)
        except BaseException:
            self._orm = None
            raise
        if self._config.dialect == "sqlite":
            # Open the file now. Tortoise's SQLite client keeps its lock when the
            # first open fails, which would hang every later query; a file that
            # cannot be opened is a configuration error, so fail at startup.
            try:
                await self.ping()
            except Exception as e:
                await self.close()
                raise ConfigError(f"CHAT_DATABASE_URL: cannot open the SQLite database: {e}") from e

    async def close(self, timeout_s: float = 5.0) -> None:
        """Close every connection, within `timeout_s` whatever the database does.

        The ORM's pool waits for connections still in use; one stuck on a dead
        network path would make it wait forever, so past the limit they are
        dropped.
        """
        loop = asyncio.get_running_loop()
        by = loop.time() + timeout_s
        await self.writes.close(timeout_s)
        if self._orm is None:
            return
        with self.bound():
            try:
                await asyncio.wait_for(self._orm.close_connections(), max(0.0, by - loop.time()))
            except (TimeoutError, Exception) as exc:  # noqa: BLE001 - closing regardless
                logger.warning("storage: connections did not close in time (%r); dropped", exc)
                for pool in self._pools():
                    pool.terminate()
        self._orm = None

    @contextmanager
    def bound(self) -> Iterator[TortoiseContext]:
        """Make this database current for ORM calls inside the block.

        TortoiseContext's own ``with`` keeps its reset token on the shared
        context object, so two concurrent tasks entering it clobber each
        other's token. We set Tortoise's context variable ourselves: the
        token lives on this frame, and each task's copy of the variable is
        its own.
        """
        if self._orm is None:
            raise RuntimeError("database is not open")
        token = tortoise_context._current_context.set(self._orm)
        try:
            yield self._orm
        finally:
            tortoise_context._current_context.reset(token)

    @asynccontextmanager
    async def session(
        self, timeout_s: float | None, where: str = "storage"
    ) -> AsyncIterator[TortoiseContext]:
        """Bound to this database, limited in time (None: the caller limits), failures as ``Unavailable``."""
        with self.bound() as orm:
            try:
                async with asyncio.timeout(timeout_s):
                    yield orm
            except Exception as exc:
                if not is_storage_failure(exc):
                    raise
                # The database going away is an outage to report, not a bug to trace.
                logger.error("storage failure in %s: %r", where, exc)
                self.suspect()
                raise Unavailable("storage is unavailable, try again later") from exc

    def suspect(self) -> None:
        """A storage step failed: the pool's idle connections may be dead without knowing it.

        A connection frozen on a dead network path looks healthy to the pool
        until a query on it runs out of time; after an outage every idle one
        would cost a caller the whole time limit. They are closed instead (at
        most once a second), and the pool opens fresh ones as they are needed.
        """
        loop = asyncio.get_running_loop()
        if loop.time() - self._suspected_at < 1.0 or self._clearing is not None:
            return
        self._suspected_at = loop.time()

        async def clear() -> None:
            try:
                for pool in self._pools():
                    await asyncio.wait_for(pool.clear(), 2.0)
            except Exception as exc:  # noqa: BLE001 - best effort; the pool drops dead ones too
                logger.debug("storage: clearing idle connections failed: %r", exc)
            finally:
                self._clearing = None

        self._clearing = loop.create_task(clear())

    def _pools(self) -> list[Any]:
        """The asyncmy pools behind the ORM's MySQL connections (none on SQLite)."""
        if self._orm is None:
            return []
        pools = []
        for client in self._orm.connections.all():
            pool = getattr(client, "_pool", None)
            if pool is not None:
                pools.append(pool)
        return pools

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TransactionalDBClient]:
        """Tortoise's ``in_transaction()``, without its connection leak.

        With a pool (MySQL), ``__aenter__`` takes a connection and then sends
        BEGIN; when BEGIN fails (the server killed that connection while it sat
        in the pool) it raises, so ``__aexit__``, which gives the connection
        back, never runs. Each such failure cost the pool one connection for
        good, and closing the pool then waited for it forever. Here the
        connection goes back, and the task's connection context is restored.
        """
        context = in_transaction()
        async with AsyncExitStack() as stack:
            try:
                client = await context.__aenter__()
            except BaseException:
                await _give_back(context)
                raise
            stack.push_async_exit(context.__aexit__)
            yield client

    async def query(self, statement: str, params: list[Any]) -> list[dict[str, Any]]:
        """A raw read on this database's ORM connection (inside ``session()``)."""
        if self._orm is None:
            raise RuntimeError("database is not open")
        return list(await self._orm.db().execute_query_dict(statement, params))

    async def ping(self) -> None:
        """Raise if the database does not answer a trivial query."""
        with self.bound() as orm:
            await orm.db().execute_query("SELECT 1")


async def _give_back(context: Any) -> None:
    """Undo what a failed ``TransactionContextPooled.__aenter__`` left behind."""
    if not isinstance(context, TransactionContextPooled):
        return  # SQLite's context takes nothing it could leak before BEGIN
    client = context.client
    token = getattr(context, "token", None)
    if token is not None:
        get_connections().reset(token)
    connection = getattr(client, "_connection", None)
    pool = client._parent._pool
    if connection is not None and pool is not None:
        try:
            await pool.release(connection)
        except Exception:  # noqa: BLE001 - a broken connection; the pool drops it either way
            logger.debug("releasing a failed transaction's connection", exc_info=True)
