"""The JavaScript side against the real server: tsc, socket.io-client, ChatClient, a browser.

ChatClient is the client package in client-demo/client (the node tests import its
build); the Angular app built on it has its own tests in tests/test_angular_app.py.

Each test starts the app in-process on a real port and runs Node as a
subprocess against it. Where Node, the npm packages or Chromium are missing the
test skips saying so; under CHAT_REQUIRE_SERVICES=1 it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.support import UNREACHABLE_MYSQL, SECRET, ServerFactory, service_missing

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

CLIENTS = Path(__file__).resolve().parent.parent / "client-demo"
CLIENT_PACKAGE = CLIENTS / "client"
CHROMIUM = os.environ.get("CHAT_CHROMIUM", "/usr/bin/chromium")
NODE_TIMEOUT_S = 180


def require_node() -> str:
    node = shutil.which("node")
    if node is None:
        service_missing("node", "not on PATH")
    if not (CLIENTS / "node_modules" / "socket.io-client").is_dir():
        service_missing("client-demo/node_modules", "run `make setup` (npm ci)")
    return str(node)


async def run(*argv: str, env: dict[str, str] | None = None) -> str:
    """Run a command without blocking the event loop the server lives on; fail on non-zero."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=CLIENTS,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        raise
    text = out.decode(errors="replace")
    assert proc.returncode == 0, f"{' '.join(argv)} exited {proc.returncode}:\n{text}"
    return text


# The group tests (protocol v2.0 groups) run on their own; every other file in tests/ together.
GROUP_TESTS = "groups.test.js"
DIRECT_TESTS = sorted(
    f"tests/{p.name}" for p in (CLIENTS / "tests").glob("*.test.js") if p.name != GROUP_TESTS
)


def url(server: TestServer) -> str:
    return str(server.make_url("")).rstrip("/")


@pytest.fixture(scope="module")
def compiled() -> str:
    """tsc over client-demo/client (strict), its own build; the node tests import dist/."""
    node = require_node()
    tsc = CLIENT_PACKAGE / "node_modules" / "typescript" / "bin" / "tsc"
    if not tsc.is_file():
        service_missing("client-demo/client/node_modules", "run `make setup` (npm ci there)")
    result = subprocess.run(
        [node, str(tsc), "-p", "tsconfig.json"],
        cwd=CLIENT_PACKAGE, capture_output=True, text=True, timeout=NODE_TIMEOUT_S,
    )
    assert result.returncode == 0, f"tsc failed:\n{result.stdout}{result.stderr}"
    return node


def test_client_package_compiles_with_tsc(compiled: str) -> None:
    for name in ("index", "client", "protocol"):
        assert (CLIENT_PACKAGE / "dist" / f"{name}.js").is_file()
        assert (CLIENT_PACKAGE / "dist" / f"{name}.d.ts").is_file()


@SQLITE_ONLY
async def test_node_clients_against_a_live_server(
    start_server: ServerFactory, compiled: str
) -> None:
    node = compiled
    server = await start_server()
    tight = await start_server(rate_limit_burst=3, rate_limit_per_s=1.0)
    out = await run(
        node, "--test", "--test-reporter=spec", *DIRECT_TESTS,
        env={"CHAT_URL": url(server), "CHAT_TIGHT_URL": url(tight), "CHAT_SECRET": SECRET},
    )
    assert "ℹ fail 0" in out and "ℹ skipped 0" in out and "ℹ pass 0" not in out, out


@SQLITE_ONLY
async def test_node_client_groups_against_a_live_server(
    start_server: ServerFactory, compiled: str
) -> None:
    server = await start_server()
    out = await run(
        compiled, "--test", "--test-reporter=spec", f"tests/{GROUP_TESTS}",
        env={"CHAT_URL": url(server), "CHAT_SECRET": SECRET},
    )
    assert "ℹ fail 0" in out and "ℹ pass 2" in out, out


@pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)
async def test_node_clients_see_unavailable_when_the_database_is_down(
    start_server: ServerFactory, compiled: str
) -> None:
    node = compiled
    server = await start_server()
    dead = await start_server(database_url=UNREACHABLE_MYSQL)
    out = await run(
        node, "--test", "--test-reporter=spec", "--test-name-pattern=refused", *DIRECT_TESTS,
        env={"CHAT_URL": url(server), "CHAT_DEAD_URL": url(dead), "CHAT_SECRET": SECRET},
    )
    assert "ℹ fail 0" in out and "ℹ pass 2" in out, out


@SQLITE_ONLY
async def test_two_people_chat_in_real_browsers(start_server: ServerFactory) -> None:
    node = require_node()
    if not Path(CHROMIUM).exists():
        service_missing("Chromium", f"{CHROMIUM} not found; apt-get install chromium")
    server = await start_server(dev_mode=True)
    out = await run(
        node, "browser/two-people.mjs",
        env={"CHAT_URL": url(server), "CHAT_CHROMIUM": CHROMIUM,
             "CHAT_SCREENSHOT_DIR": os.environ.get("CHAT_SCREENSHOT_DIR", "")},
    )
    assert "two-people: ok" in out, out
