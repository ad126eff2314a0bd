"""The Angular app (client-demo/angular) in Chromium against a real `chat-server serve`.

The browser side is client-demo/browser/angular-app.mjs (Playwright driving Debian's
Chromium). The server is a real process (the `serve` fixture) in dev mode, so the
direct-chat test can stop it and start it again on the same port in the middle,
when the script asks, and the app must reconnect and show every message sent
meanwhile. Screenshots land in client-demo/browser/screenshots/ (git ignores it).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import aiohttp
import pytest
from yarl import URL

from tests.support import SECRET, Serve, Served, service_missing
from tests.test_js_clients import CHROMIUM, CLIENTS, NODE_TIMEOUT_S, require_node

SQLITE_ONLY = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

NGAPP = CLIENTS / "angular"
BUILT = NGAPP / "dist" / "chat-app" / "browser" / "index.html"
SHOTS = Path(os.environ.get("CHAT_SCREENSHOT_DIR") or CLIENTS / "browser" / "screenshots")
STOP_TIMEOUT_S = 20


def newest_source() -> float:
    sources = [*NGAPP.joinpath("src").rglob("*"), NGAPP / "angular.json",
               *(CLIENTS / "client" / "dist-pack").glob("*.tgz")]
    return max(p.stat().st_mtime for p in sources if p.is_file())


@pytest.fixture(scope="module")
def angular_app() -> str:
    """The built app; built here with `ng build` when missing or older than its sources."""
    node = require_node()
    ng = NGAPP / "node_modules" / ".bin" / "ng"
    if not (NGAPP / "node_modules" / "@chat-server" / "client").is_dir() or not ng.exists():
        service_missing("client-demo/angular/node_modules", "run `make app` (npm ci, the packed client)")
    if not Path(CHROMIUM).exists():
        service_missing("Chromium", f"{CHROMIUM} not found; apt-get install chromium")
    if not BUILT.is_file() or BUILT.stat().st_mtime < newest_source():
        result = subprocess.run(
            [str(ng), "build"], cwd=NGAPP, capture_output=True, text=True, timeout=NODE_TIMEOUT_S,
            env={**os.environ, "NG_CLI_ANALYTICS": "false"},
        )
        assert result.returncode == 0, f"ng build failed:\n{result.stdout}{result.stderr}"
    return node


async def dev_server(serve: Serve, port: int | None = None) -> Served:
    env = {"CHAT_DEV": "1"}
    return await serve(**env, **({"CHAT_PORT": str(port)} if port else {}))


async def drive(node: str, mode: str, serve: Serve) -> None:
    """Run the script; answer its "stop" and "start" by stopping and restarting the server."""
    served = await dev_server(serve)
    proc = await asyncio.create_subprocess_exec(
        node, "browser/angular-app.mjs", mode,
        cwd=CLIENTS,
        env={**os.environ, "CHAT_URL": served.url, "CHAT_SECRET": SECRET,
             "CHAT_CHROMIUM": CHROMIUM, "CHAT_SCREENSHOT_DIR": str(SHOTS)},
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdin is not None and proc.stdout is not None
    out: list[str] = []

    async def converse() -> None:
        nonlocal served
        async for raw in proc.stdout:  # type: ignore[union-attr]
            line = raw.decode(errors="replace").rstrip("\n")
            out.append(line)
            if line == "stop":
                served.proc.send_signal(signal.SIGTERM)  # a graceful stop, as a deploy does
                await asyncio.wait_for(asyncio.to_thread(served.proc.wait), STOP_TIMEOUT_S)
                reply = "stopped"
            elif line == "start":
                served = await dev_server(serve, served.port)
                reply = "started"
            else:
                continue
            proc.stdin.write(f"{reply}\n".encode())  # type: ignore[union-attr]
            await proc.stdin.drain()  # type: ignore[union-attr]

    try:
        await asyncio.wait_for(asyncio.gather(converse(), proc.wait()), NODE_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError("angular-app.mjs timed out:\n" + "\n".join(out)) from None
    text = "\n".join(out)
    assert proc.returncode == 0, (
        f"angular-app.mjs {mode} exited {proc.returncode}:\n{text}\n"
        f"--- server log:\n{served.log_text()[-4000:]}"
    )
    assert f"angular-app {mode}: ok" in text, text


@SQLITE_ONLY
async def test_two_people_chat_in_the_angular_app_across_a_server_restart(
    serve: Serve, angular_app: str
) -> None:
    await drive(angular_app, "direct", serve)
    assert (SHOTS / "app-alice.png").is_file() and (SHOTS / "app-bob-phone.png").is_file()


@SQLITE_ONLY
async def test_a_group_in_the_angular_app_read_by_counts_and_a_member_leaving(
    serve: Serve, angular_app: str
) -> None:
    await drive(angular_app, "groups", serve)
    assert (SHOTS / "app-group-alice.png").is_file()


@SQLITE_ONLY
async def test_the_app_is_served_at_app_beside_the_demo_page(serve: Serve, angular_app: str) -> None:
    served = await dev_server(serve)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{served.url}/app", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/app/"
        async with http.get(f"{served.url}/app/") as r:
            html = await r.text()
            assert r.status == 200 and "<chat-root>" in html and '<base href="/app/">' in html
        script = next(p.name for p in BUILT.parent.glob("main-*.js"))
        async with http.get(f"{served.url}/app/{script}") as r:
            assert r.status == 200 and "javascript" in r.headers["Content-Type"]
        for bad in ("/app/..", "/app/.hidden", "/app/nope.js", "/app/%2e%2e%2fpyproject.toml"):
            async with http.get(URL(f"{served.url}{bad}", encoded=True)) as r:  # sent as written
                assert r.status == 404, bad
        async with http.get(f"{served.url}/") as r:
            assert r.status == 200 and "demo/app.js" in await r.text()
