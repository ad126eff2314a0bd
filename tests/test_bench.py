"""The baselines of `make bench` speak the protocol shape the loads measure.

`make bench` compares this server with three relays (bench/relay.py at
python-socketio's defaults, the same with --tuned, bench/relay.mjs on Node
socket.io 4). A relay that answered fast but wrong would win the comparison,
so bench/load.mjs has a `check` (a bad token refused with `unauthorized`,
SendMessage -> ReceiveMessage, a receipt -> MessageStatusChanged, a group
broadcast and its aggregate receipt) that every run does first; here it runs
against each relay, started as its own process, and against the real server.
The tuned relay leans on library internals (see bench/relay.py), which these
tests catch breaking.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from tests.support import SECRET, ServerFactory, free_port, server_url, service_missing, wait_listening

BENCH = Path(__file__).resolve().parent.parent / "bench"
CLIENTS = BENCH.parent / "client-demo"
NODE_TIMEOUT_S = 60
RELAYS = {
    "a": [sys.executable, str(BENCH / "relay.py")],
    "b": [sys.executable, str(BENCH / "relay.py"), "--tuned"],
    "c": ["node", str(BENCH / "relay.mjs")],
}

StartRelay = Callable[[str], Awaitable[str]]


def require_node(*packages: Path) -> None:
    if shutil.which("node") is None:
        service_missing("node", "not on PATH")
    for package in (CLIENTS / "node_modules" / "socket.io-client", *packages):
        if not package.is_dir():
            service_missing(str(package.relative_to(BENCH.parent)), "run `make setup` (npm ci)")


@pytest.fixture
async def start_relay(tmp_path: Path) -> AsyncIterator[StartRelay]:
    """start_relay(key) -> its URL: a relay process on a free port, killed by its pid at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    async def start(key: str) -> str:
        port = free_port()
        argv = [*RELAYS[key][:2], str(port), SECRET, *RELAYS[key][2:]]
        with open(tmp_path / f"relay-{key}.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        await wait_listening(port, proc)
        return f"http://127.0.0.1:{port}"

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


async def bench_check(url: str, groups: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(BENCH / "load.mjs"), "check", url, SECRET, groups,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        raise
    assert proc.returncode == 0, f"load.mjs check against {url} failed:\n{err.decode(errors='replace')}"
    return json.loads(out.decode().strip().splitlines()[-1])


@pytest.mark.parametrize("key", ["a", "b", "c"])
async def test_relay_speaks_the_protocol_shape_the_loads_measure(start_relay: StartRelay, key: str) -> None:
    require_node(*([BENCH / "node_modules" / "socket.io"] if key == "c" else []))
    url = await start_relay(key)
    assert await bench_check(url, "join") == {"mode": "check", "ok": True, "groups": "ok"}


@pytest.mark.parametrize(("key", "offered"), [("a", True), ("b", False), ("c", False)])
async def test_only_the_default_relay_offers_permessage_deflate(
    start_relay: StartRelay, key: str, offered: bool
) -> None:
    """python-socketio offers compression by default; the tuned relay turns it off as the
    server does, and socket.io 4 leaves it off."""
    if key == "c":
        require_node(BENCH / "node_modules" / "socket.io")
    url = await start_relay(key)
    async with aiohttp.ClientSession() as http, http.ws_connect(
        f"{url}/socket.io/?EIO=4&transport=websocket", compress=15
    ) as ws:
        handshake = await ws.receive_str(timeout=5)
        assert handshake.startswith("0{"), handshake  # engine.io OPEN: the socket works
        assert bool(ws.compress) is offered  # the window bits the server agreed to, 0 for none


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_benchmark_check_passes_against_the_server(start_server: ServerFactory) -> None:
    require_node()
    server: TestServer = await start_server()
    # The group part makes its group with CreateGroup (PROTOCOL.md "Groups"); against a
    # server without groups it would say "server has no groups yet" instead of "ok".
    assert await bench_check(server_url(server), "create") == {"mode": "check", "ok": True, "groups": "ok"}
