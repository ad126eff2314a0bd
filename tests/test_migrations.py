"""aerich migrations: build the schema from empty on both dialects and match the models."""

from __future__ import annotations

import asyncio
import contextvars
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from app.config import Config
from app.storage.db import APP_LABEL, Database, migrate, migrations_location, tortoise_config
from models import Message
from tests.support import SECRET, SERVER_SCRIPT, mysql_admin, mysql_connect_kwargs, mysql_url


async def _pending_changes(config: Config, tmp_path: Path) -> str:
    """What `aerich migrate` would generate now; "" when models and migrations agree."""
    from aerich import Command

    location = tmp_path / "migrations"
    shutil.copytree(migrations_location(config), location / APP_LABEL)

    async def run() -> str:
        async with Command(
            tortoise_config(config.database_url), app=APP_LABEL, location=str(location)
        ) as command:
            await command.init(offline=True)
            return await command.migrate("check", no_input=True, offline=True)

    return await asyncio.create_task(run(), context=contextvars.Context())


def _migration_files(config: Config) -> list[str]:
    return sorted(p.name for p in (migrations_location(config) / APP_LABEL).glob("[0-9]*_*.py"))


async def _check_from_empty(config: Config, tmp_path: Path) -> None:
    assert await migrate(config) == _migration_files(config)
    assert await migrate(config) == []  # a second run has nothing to do
    db = Database(config)
    await db.open()
    try:
        with db.bound():
            assert await Message.all().count() == 0
    finally:
        await db.close()
    assert await _pending_changes(config, tmp_path) == ""


async def test_sqlite_schema_builds_from_empty_and_matches_models(tmp_path: Path) -> None:
    config = Config(database_url=f"sqlite://{tmp_path}/fresh.sqlite3", jwt_secret=SECRET)
    await _check_from_empty(config, tmp_path)


@asynccontextmanager
async def empty_mariadb(prefix: str, tmp_path: Path) -> AsyncIterator[str]:
    """The URL of a new, empty MariaDB database, dropped afterwards."""
    name = f"{prefix}_{tmp_path.name[-8:].replace('-', '_')}"
    await mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")
    await mysql_admin(f"CREATE DATABASE `{name}`")
    try:
        yield mysql_url(name)
    finally:
        await mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")


async def test_mariadb_schema_builds_from_empty_and_matches_models(
    tmp_path: Path, mariadb_url: str
) -> None:
    async with empty_mariadb("chat_migrate", tmp_path) as url:
        await _check_from_empty(Config(database_url=url, jwt_secret=SECRET), tmp_path)


async def test_mariadb_tables_compare_ids_byte_for_byte(mariadb_url: str) -> None:
    import asyncmy

    database = mariadb_url.rsplit("/", 1)[1]
    conn = await asyncmy.connect(**mysql_connect_kwargs(), db=database)
    try:
        async with conn.cursor() as cur:
            await cur.execute(
                "SELECT TABLE_COLLATION FROM information_schema.TABLES "
                "WHERE TABLE_SCHEMA=%s AND TABLE_NAME='chat_message'",
                (database,),
            )
            (collation,) = await cur.fetchone()
    finally:
        conn.close()
    assert collation == "utf8mb4_bin"


@pytest.mark.parametrize("dialect", ["sqlite", "mysql"])
def test_each_dialect_has_its_own_migration_set(dialect: str) -> None:
    url = "sqlite://x.db" if dialect == "sqlite" else "mysql://u:p@h:3306/d"
    location = migrations_location(Config(database_url=url, jwt_secret=SECRET))
    assert location.name == dialect
    assert sorted(p.name for p in (location / APP_LABEL).glob("0_*.py"))


async def _migrate_twice_at_once(database_url: str, tmp_path: Path) -> list[str]:
    """Two `chat-server migrate` processes started together; their outputs, both exit 0."""
    env = {**os.environ, "CHAT_DATABASE_URL": database_url, "CHAT_JWT_SECRET": SECRET}
    procs = [
        await asyncio.create_subprocess_exec(
            SERVER_SCRIPT, "migrate", env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        for _ in range(2)
    ]
    outputs = [(await p.communicate())[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    return outputs


def _applied_once(outputs: list[str]) -> None:
    applied = [o for o in outputs if "migrations applied: none pending" not in o]
    assert len(applied) == 1, outputs


async def test_two_migrates_at_once_on_an_empty_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path}/race.sqlite3"
    _applied_once(await _migrate_twice_at_once(url, tmp_path))
    assert await migrate(Config(database_url=url, jwt_secret=SECRET)) == []


async def test_two_migrates_at_once_on_an_empty_mariadb_database(
    tmp_path: Path, mariadb_url: str
) -> None:
    async with empty_mariadb("chat_race", tmp_path) as url:
        _applied_once(await _migrate_twice_at_once(url, tmp_path))
        assert await migrate(Config(database_url=url, jwt_secret=SECRET)) == []
