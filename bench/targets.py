"""The processes `make bench` measures: this server and the three relays, each on a free port.

| key    | what                                                                  |
|--------|-----------------------------------------------------------------------|
| server | `chat-server serve`: a fresh, migrated database, durable writes       |
| a      | bench/relay.py: python-socketio at its defaults, no storage           |
| b      | bench/relay.py --tuned: the knobs this server turns, no storage       |
| c      | bench/relay.mjs: Node socket.io 4, no storage                         |

Also the pieces they need (a database, a redis-server of the benchmark's own)
and the two things every measurement waits for: a port that listens, and
processes that have gone quiet.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
PYTHON = sys.executable
SERVER = [str(Path(PYTHON).with_name("chat-server")), "serve"]
MYSQL = os.environ.get("CHAT_BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
# The per-socket budget (20/s) is for people; a benchmark sender exceeds it by design.
BENCH_RATE_LIMIT = "100000"
# Every benchmark client comes from 127.0.0.1: the cap on one address's sessions that have
# not yet joined /chat (256) is for a real address, and would refuse most of a connect storm.
BENCH_PENDING_PER_ADDRESS = "100000"
# A process is settled when it used less than this share of a core over SETTLE_WINDOW_S,
# twice in a row: the previous load's sockets are closed and its writes committed.
SETTLE_CPU_SHARE = 0.03
SETTLE_WINDOW_S = 0.5
SETTLE_TIMEOUT_S = 90.0


@dataclass(frozen=True)
class Target:
    key: str
    label: str
    # "create": the protocol's CreateGroup; "join": the relays' own JoinGroup.
    groups: str
    argv: Callable[[int, str], list[str]]


TARGETS = (
    Target("server", "this server", "create", lambda port, secret: SERVER),
    Target("a", "(a) python-socketio relay, defaults", "join",
           # "--": a random secret may start with "-", which argparse would take for an option.
           lambda port, secret: [PYTHON, str(BENCH / "relay.py"), "--", str(port), secret]),
    Target("b", "(b) python-socketio relay, tuned", "join",
           lambda port, secret: [PYTHON, str(BENCH / "relay.py"), "--tuned", "--", str(port), secret]),
    Target("c", "(c) Node socket.io 4 relay", "join",
           lambda port, secret: ["node", str(BENCH / "relay.mjs"), str(port), secret]),
)
RELAYS = tuple(t for t in TARGETS if t.key != "server")


@dataclass(frozen=True)
class Running:
    target: Target
    url: str
    pid: int


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """The process's resident memory now (VmRSS) or at its peak (VmHWM), KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} for {pid}")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot: the whole machine, other people's work too."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return sum(values) - idle, sum(values)


def busy_cores(before: tuple[int, int], after: tuple[int, int]) -> float:
    total = after[1] - before[1]
    return (after[0] - before[0]) / total * (os.cpu_count() or 1) if total else 0.0


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port} after {timeout_s} s")


def settle(pids: list[int]) -> float:
    """Wait until the processes are quiet; return the seconds it took.

    A process still closing the last load's thousands of sockets, or committing
    its writes, would take CPU from the next measurement, whichever target that is.
    """
    started = time.monotonic()
    quiet = 0
    while quiet < 2:
        before = sum(cpu_s(p) for p in pids)
        time.sleep(SETTLE_WINDOW_S)
        used = sum(cpu_s(p) for p in pids) - before
        quiet = quiet + 1 if used < SETTLE_CPU_SHARE * SETTLE_WINDOW_S else 0
        if time.monotonic() - started > SETTLE_TIMEOUT_S:
            print(f"  (not settled after {SETTLE_TIMEOUT_S:.0f} s: measuring anyway)", file=sys.stderr)
            break
    return time.monotonic() - started


async def mysql(sql: str, db: str | None = None) -> list[tuple[object, ...]]:
    import asyncmy
    from urllib.parse import urlsplit

    u = urlsplit(MYSQL)
    conn = await asyncmy.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                                 password=u.password or "", db=db)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
            rows = list(await cur.fetchall())
        await conn.commit()
        return rows
    finally:
        conn.close()


@contextmanager
def database(kind: str, tag: str) -> Iterator[str]:
    """A fresh, migrated database; dropped afterwards."""
    if kind == "sqlite":
        path = ROOT / "data" / f"bench-{tag}-{os.getpid()}.sqlite3"
        path.parent.mkdir(exist_ok=True)
        url = f"sqlite://{path}"
    else:
        name = f"chat_bench_{tag}_{uuid.uuid4().hex[:8]}"
        asyncio.run(mysql(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4"))
        url = f"{MYSQL}/{name}"
    env = {**os.environ, "CHAT_DATABASE_URL": url, "CHAT_JWT_SECRET": "x" * 40}
    try:
        subprocess.run([SERVER[0], "migrate"], env=env, check=True, capture_output=True)
        yield url
    finally:
        if kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            asyncio.run(mysql(f"DROP DATABASE IF EXISTS `{name}`"))


@contextmanager
def process(argv: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours, listening on `port`; terminated (then killed) by its pid afterwards."""
    log = open(ROOT / "data" / f"bench-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_listening(port, proc)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def server_env(db_url: str, secret: str, port: int) -> dict[str, str]:
    return {**os.environ, "CHAT_DATABASE_URL": db_url, "CHAT_JWT_SECRET": secret,
            "CHAT_PORT": str(port), "CHAT_RATE_LIMIT_PER_S": BENCH_RATE_LIMIT,
            "CHAT_RATE_LIMIT_BURST": BENCH_RATE_LIMIT, "CHAT_LOG_LEVEL": "WARNING",
            "CHAT_MAX_PENDING_PER_ADDRESS": BENCH_PENDING_PER_ADDRESS}


@contextmanager
def start_all(db_kind: str, secret: str, tag: str) -> Iterator[dict[str, Running]]:
    """All four targets, each in its own process, until the block ends.

    They run side by side, but only one is under load at a time: the others
    sit idle with no sockets, settled (see `settle`) before each measurement.
    """
    with ExitStack() as stack:
        running: dict[str, Running] = {}
        for target in TARGETS:
            port = free_port()
            if target.key == "server":
                db_url = stack.enter_context(database(db_kind, tag))
                env = server_env(db_url, secret, port)
            else:
                env = dict(os.environ)
            proc = stack.enter_context(process(target.argv(port, secret), env, port))
            running[target.key] = Running(target, f"http://127.0.0.1:{port}", proc.pid)
        yield running


@contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server of the benchmark's own on a free port (never the shared one)."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, proc, 10)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()
