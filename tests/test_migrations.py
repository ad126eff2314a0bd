"""aerich migrations: build the schema from empty on both dialects and match the models,
and carry a v1 database with data over to v2 (groups) keeping every row."""

from __future__ import annotations

import asyncio
import contextvars
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from app.config import Config
from app.storage.db import APP_LABEL, Database, migrate, migrations_location, tortoise_config
from models import Message
from tests.support import (
    SECRET,
    SERVER_SCRIPT,
    Connect,
    mysql_admin,
    mysql_connect_kwargs,
    mysql_url,
)


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


# -- from a v1 database with data to v2 (groups) ----------------------------------------------

V1_TABLES = {
    "chat_message": "id, uuid, sender_id, receiver_id, pair_key, text, status, client_message_id,"
    " created_at, change_seq",
    "chat_conversation": "id, owner_id, peer_id, last_message_id, last_at",
    "chat_user": "id, display_name, token_name, avatar, updated_at",
    "chat_counter": "name, value",
}
V1_CHANGE = 7  # the change counter as the v1 data below leaves it
ServerMaker = Callable[..., Awaitable[TestServer]]  # the aiohttp_server fixture


async def _upgrade_to_v1(config: Config, tmp_path: Path) -> None:
    """The schema as the v1 server left it: only the first migration, applied by aerich."""
    from aerich import Command

    location = tmp_path / "v1-migrations"
    (location / APP_LABEL).mkdir(parents=True)
    (first,) = (migrations_location(config) / APP_LABEL).glob("0_*.py")
    shutil.copy(first, location / APP_LABEL / first.name)

    async def run() -> list[str]:
        async with Command(
            tortoise_config(config.database_url), app=APP_LABEL, location=str(location)
        ) as command:
            return await command.upgrade(run_in_transaction=True)

    applied = await asyncio.create_task(run(), context=contextvars.Context())
    assert len(applied) == 1, applied


def _v1_data() -> tuple[list[tuple[str, list[Any]]], dict[str, Any]]:
    """What a v1 server stored: messages in every status, both heads of each conversation,
    users named by RegisterUser, by a token or not at all, the change counter; and the ids."""
    from app.storage.sql import pair_key

    base = datetime(2026, 11, 22, 3, 4, 5, 123000, tzinfo=UTC)
    # row, sender, receiver, text, status, clientMessageId, change number
    messages = [
        (1, "alice", "bob", "one", 2, "c1", 5),
        (2, "bob", "alice", "two", 1, None, 4),
        (3, "alice", "bob", "three", 0, "c3", 3),
        (4, "carol", "alice", "four", 0, None, 6),
        (5, "alice", "carol", "five 😀", 2, None, V1_CHANGE),
    ]
    uuids = {row: str(uuid.uuid4()) for row, *_ in messages}
    statements: list[tuple[str, list[Any]]] = [
        (
            "INSERT INTO chat_message (id, uuid, sender_id, receiver_id, pair_key, text, status,"
            " client_message_id, created_at, change_seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [row, uuids[row], s, r, pair_key(s, r), text, status, cid,
             base + timedelta(seconds=row), seq],
        )
        for row, s, r, text, status, cid, seq in messages
    ]
    for owner, peer, last in (("alice", "bob", 3), ("bob", "alice", 3), ("alice", "carol", 5),
                              ("carol", "alice", 5)):
        statements.append((
            "INSERT INTO chat_conversation (owner_id, peer_id, last_message_id, last_at)"
            " VALUES (?, ?, ?, ?)",
            [owner, peer, last, base + timedelta(seconds=last)],
        ))
    for user, display, token, avatar in (("alice", "Alice", "alice from a token", "https://a/x.png"),
                                         ("bob", None, "Bob", None), ("carol", None, None, None)):
        statements.append((
            "INSERT INTO chat_user (id, display_name, token_name, avatar, updated_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [user, display, token, avatar, base],
        ))
    statements.append(("UPDATE chat_counter SET value = ? WHERE name = 'change'", [V1_CHANGE]))
    return statements, {"uuids": uuids}


async def _rows(config: Config, tables: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    from app.storage.sql import Sql
    from app.storage.writer import driver_for

    sql = Sql(config.dialect)
    link = await driver_for(config.database_url, 5, 5.0).open()
    try:
        return {
            table: await link.query(sql(f"SELECT {columns} FROM {table} ORDER BY 1"))
            for table, columns in tables.items()
        }
    finally:
        await link.close()


async def _write(config: Config, statements: list[tuple[str, list[Any]]]) -> None:
    from app.storage.sql import Sql
    from app.storage.writer import driver_for

    sql = Sql(config.dialect)
    link = await driver_for(config.database_url, 5, 5.0).open()
    try:
        await link.begin(check=True)
        for statement, params in statements:
            await link.execute(sql(statement), params)
        await link.commit()
    finally:
        await link.close()


async def _check_v1_data_survives_the_migration(
    config: Config, tmp_path: Path, aiohttp_server: ServerMaker, connect: Connect
) -> None:
    from app.main import create_app

    await _upgrade_to_v1(config, tmp_path)
    statements, made = _v1_data()
    await _write(config, statements)
    v1 = await _rows(config, V1_TABLES)
    assert [len(v1[t]) for t in V1_TABLES] == [5, 4, 3, 1]
    uuids: dict[int, str] = made["uuids"]

    applied = await migrate(config)

    assert applied == _migration_files(config)[1:], "not just the groups migration"
    assert await _rows(config, V1_TABLES) == v1, "a v1 row changed in the migration"
    new = await _rows(config, {"chat_message": "group_id, recipient_count", "chat_group": "id",
                               "chat_group_member": "id"})
    assert {(r["group_id"], r["recipient_count"]) for r in new["chat_message"]} == {(None, 1)}
    assert new["chat_group"] == new["chat_group_member"] == []

    # The server answers on it as the v1 server did.
    server = await aiohttp_server(create_app(replace(config, rate_limit_burst=1000).validated()))
    alice = await connect(server, "alice")
    history = await alice.ok("GetMessageHistory", "alice", "bob")
    assert [(m["id"], m["text"], m["status"], m["clientMessageId"], m["groupId"]) for m in history] == [
        (uuids[3], "three", "sent", "c3", None),
        (uuids[2], "two", "delivered", None, None),
        (uuids[1], "one", "read", "c1", None),
    ]
    assert history[-1]["timestamp"] == "2026-11-22T03:04:06.123Z"
    conversations = await alice.ok("GetConversations")
    assert [(c["kind"], c["id"], c["name"], c["previewMessage"], c["unreadCount"])
            for c in conversations] == [
        ("direct", "carol", "carol", "five 😀", 1),
        ("direct", "bob", "Bob", "three", 1),
    ]
    page = await alice.ok("Sync", None)
    assert [(m["id"], m["status"]) for m in page["messages"]] == [
        (uuids[3], "sent"), (uuids[2], "delivered"), (uuids[1], "read"), (uuids[4], "sent"),
        (uuids[5], "read"),
    ]
    assert page["groups"] == [] and page["hasMore"] is False
    cursor = page["cursor"]
    # Idempotency keys carry over; what was waiting is handed over.
    assert await alice.ok("SendMessage", "alice", "bob", "one", "c1") == uuids[1]
    bob = await connect(server, "bob")
    assert (await bob.ok("RegisterUser", "Bob"))["pending"] == 1
    assert [args[2] for args in await bob.wait_for("ReceiveMessage")] == [uuids[3]]
    await bob.ok("MessageRead", uuids[3])
    assert await alice.wait_for("MessageStatusChanged") == [(uuids[3], "read")]

    # Groups work on it, and their changes come after every v1 change.
    group = await alice.ok("CreateGroup", "After the upgrade", ["bob", "carol"])
    gid = group["id"]
    mid = await alice.ok("SendGroupMessage", gid, "hello group")
    ((group_id, dto),) = await bob.wait_for("ReceiveGroupMessage")
    assert (group_id, dto["id"]) == (gid, mid)
    page = await alice.ok("Sync", cursor)
    assert [(m["id"], m["status"]) for m in page["messages"]] == [(uuids[3], "read"), (mid, "sent")]
    assert [g["id"] for g in page["groups"]] == [gid]
    listed = await bob.ok("GetConversations")
    assert [(c["kind"], c["id"], c["unreadCount"]) for c in listed] == [
        ("group", gid, 1), ("direct", "alice", 0),
    ]
    (counter,) = (await _rows(config, {"chat_counter": "name, value"}))["chat_counter"]
    assert counter["value"] > V1_CHANGE
    await server.close()  # before the database goes


async def test_a_v1_sqlite_database_with_data_migrates_to_groups_keeping_everything(
    tmp_path: Path, aiohttp_server: ServerMaker, connect: Connect
) -> None:
    config = Config(database_url=f"sqlite://{tmp_path}/v1.sqlite3", jwt_secret=SECRET)
    await _check_v1_data_survives_the_migration(config, tmp_path, aiohttp_server, connect)


async def test_a_v1_mariadb_database_with_data_migrates_to_groups_keeping_everything(
    tmp_path: Path, mariadb_url: str, aiohttp_server: ServerMaker, connect: Connect
) -> None:
    async with empty_mariadb("chat_v1", tmp_path) as url:
        config = Config(database_url=url, jwt_secret=SECRET)
        await _check_v1_data_survives_the_migration(config, tmp_path, aiohttp_server, connect)
