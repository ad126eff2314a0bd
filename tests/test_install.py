"""`pip install .` (not editable) into a fresh venv works away from the checkout.

The package is built from a copy of the checkout's files (client-demo/ left
out) and installed with its dependencies into a venv of its own; then, from
another directory, `chat-server migrate` and `chat-server serve` run on
SQLite (in dev mode, as `make run` does) and on a MariaDB database of the
test's own, answer /readyz and a Socket.IO round trip, and exit cleanly on
SIGTERM. `chat-server cluster --check` finds its nginx config.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from asyncmy.errors import MySQLError

from tests.support import (
    MYSQL_ADMIN_URL,
    SECRET,
    ChatClient,
    free_port,
    make_token,
    mysql_admin,
    mysql_url,
    service_missing,
    wait_listening,
)

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
INSTALL_TIMEOUT_S = 300  # a venv, a wheel build and ~45 dependencies (pip's cache helps)
COMMAND_TIMEOUT_S = 60
ROUND_TRIP_TIMEOUT_S = 15


def _sources(destination: Path) -> None:
    """Copy what a clean checkout holds (tracked and new files, not ignored ones)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode().split("\0")
    for name in listed:
        if not name or name.startswith("client-demo/") or not (ROOT / name).is_file():
            continue  # the demo needs npm: it is not part of the Python package
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)


def _run(args: list[str | Path], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
        timeout=COMMAND_TIMEOUT_S, check=False,
    )


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the package installed from a copy of the checkout; its bin/."""
    if shutil.which("git") is None:
        service_missing("git", "not on PATH; it lists the checkout's files to package")
    base = tmp_path_factory.mktemp("install")
    source = base / "source"
    _sources(source)
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True)
    bin_dir = base / "venv" / "bin"
    installed = subprocess.run(
        [str(bin_dir / "pip"), "install", "--quiet", "--disable-pip-version-check",
         "-c", str(ROOT / "constraints.txt"), str(source)],
        capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S, check=False,
    )
    assert installed.returncode == 0, f"pip install . failed:\n{installed.stderr[-3000:]}"
    return bin_dir


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing of the checkout in it."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def _env(**chat: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CHAT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, **chat}


@pytest.fixture(params=["sqlite", "mariadb"])
async def database_env(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The server's environment for each database: SQLite in dev mode, or MariaDB.

    SQLite runs as `make run` does: dev mode, its secret made and kept under
    ./data, no demo. MariaDB gets a database of this test's own, dropped at the end.
    """
    if request.param == "sqlite":
        yield _env(CHAT_DEV="1", CHAT_DATABASE_URL="sqlite://data/chat.sqlite3")
        return
    name = f"chat_install_{uuid.uuid4().hex[:10]}"
    try:
        await mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    except (OSError, MySQLError) as e:
        service_missing(f"MariaDB at {MYSQL_ADMIN_URL}", e)
    try:
        yield _env(CHAT_DATABASE_URL=mysql_url(name), CHAT_JWT_SECRET=SECRET)
    finally:
        await mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")


def test_the_package_holds_its_code_migrations_and_nginx_config(venv: Path, elsewhere: Path) -> None:
    python = venv / "python"
    where = _run([python, "-c", "import app, handlers, models, app.devcluster as d; "
                  "print(app.__file__, handlers.__file__, models.__file__, d.shipped_site())"],
                 elsewhere, _env())
    assert where.returncode == 0, where.stderr
    site_packages = venv.parent / "lib"
    for path in where.stdout.split():
        assert Path(path).is_relative_to(site_packages), f"{path} is not from the installed package"
    assert where.stdout.split()[-1].endswith("app/deploy/nginx.conf"), where.stdout

    # Every migration of every dialect, by glob: a new one the packaging missed fails here.
    in_checkout = sorted(p.relative_to(ROOT).as_posix()
                         for p in ROOT.glob("migrations/*/models/[0-9]*_*.py"))
    installed_root = next(site_packages.glob("python3*/site-packages"))
    installed = sorted(p.relative_to(installed_root).as_posix()
                       for p in installed_root.glob("migrations/*/models/[0-9]*_*.py"))
    assert installed == in_checkout, "migrations missing from the package (pyproject.toml)"

    checked = _run([venv / "chat-server", "cluster", "--check"], elsewhere, _env())
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        assert checked.returncode == 2 and "nginx is required" in checked.stderr, checked
    else:
        assert checked.returncode == 0, checked.stderr
        assert "nginx accepts" in checked.stdout and "app/deploy/nginx.conf" in checked.stdout


async def test_the_installed_server_migrates_and_serves_from_another_directory(
    venv: Path, elsewhere: Path, database_env: dict[str, str]
) -> None:
    port = free_port()
    dev = database_env.get("CHAT_DEV") == "1"
    env = {**database_env, "CHAT_PORT": str(port)}

    migrated = _run([venv / "chat-server", "migrate"], elsewhere, env)
    assert migrated.returncode == 0, migrated.stderr[-3000:]
    assert "migrations applied: 0_" in migrated.stderr, migrated.stderr

    def token(user: str) -> str:
        if not dev:
            return make_token(user)
        issued = _run([venv / "chat-server", "token", user], elsewhere, env)
        assert issued.returncode == 0, issued.stderr
        return issued.stdout.strip()

    log = elsewhere / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([venv / "chat-server", "serve"], cwd=elsewhere, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    clients = [ChatClient("alice"), ChatClient("bob")]
    try:
        await wait_listening(port, proc)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http, http.get(f"{base}/readyz") as r:
            assert r.status == 200, await r.text()
        for client in clients:
            await client.sio.connect(base, namespaces=["/chat"],
                                     auth={"token": token(client.user)},
                                     transports=["websocket"], wait_timeout=10)
        alice, bob = clients
        # A first write on a fresh database (fsync on SQLite): generous under load.
        reply = await alice.call("SendMessage", "alice", "bob", "from an installed server",
                                 timeout=ROUND_TRIP_TIMEOUT_S)
        assert reply["ok"], reply
        (arrived,) = await bob.wait_for("ReceiveMessage", timeout=ROUND_TRIP_TIMEOUT_S)
        assert arrived[1:3] == ("from an installed server", reply["data"])
        for client in clients:
            await client.sio.disconnect()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 15) == 0
    except BaseException:
        print(f"--- the server's log ---\n{log.read_text(errors='replace')[-4000:]}")
        raise
    finally:
        for client in clients:
            if client.sio.connected:
                await client.sio.disconnect()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    assert "Traceback" not in text, text[-3000:]
    if dev:
        assert "no demo page or Angular app" in text, text[-3000:]
