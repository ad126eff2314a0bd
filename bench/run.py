"""`make bench`: this server beside the stock python-socketio relay, under the same Node load.

Starts `chat-server serve` (MariaDB by default, durable writes, a fresh database)
and `bench/relay.py` as their own processes, drives both with the real Node
socket.io-client (bench/load.mjs), and prints one table:

- closed loop: PAIRS sender/receiver pairs, INFLIGHT sends in flight per sender,
  every receiver acknowledging with MessageReceived: msg/s and the ratio to the relay;
- open loop: CLIENTS clients offered RATE msg/s: errors, ack p50/p99;
- connect: CONNECTS clients connecting at once: seconds and refusals;
- idle: KiB of server RSS per idle connection, with CONNECTS connected;
- queries: history, conversations and Sync times with ROWS stored messages;
- with --cluster only: the closed loop on one instance, on one instance with
  the Redis backplane, and across two instances (senders on one, receivers
  on the other), all on one MariaDB database and a redis-server of its own.

    python bench/run.py [--db mariadb|sqlite] [--quick] [--cluster]

The machine is shared and noisy: the figure that counts is the ratio to the
relay measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
SERVER = [str(Path(PYTHON).with_name("chat-server")), "serve"]
MYSQL = os.environ.get("CHAT_BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306")
# The per-socket budget (20/s) is for people; a benchmark sender exceeds it by design.
BENCH_RATE_LIMIT = "100000"
U0_MESSAGES = 600
# Pause between load phases, so one phase's sockets are gone before the next starts.
SETTLE_S = 5


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_http(port: int, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), 0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


async def mysql(sql: str, db: str | None = None) -> None:
    import asyncmy
    from urllib.parse import urlsplit

    u = urlsplit(MYSQL)
    conn = await asyncmy.connect(host=u.hostname, port=u.port or 3306, user=u.username or "root",
                                 password=u.password or "", db=db)
    try:
        async with conn.cursor() as cur:
            await cur.execute(sql)
        await conn.commit()
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
    subprocess.run([SERVER[0], "migrate"], env=env, check=True, capture_output=True)
    try:
        yield url
    finally:
        if kind == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        else:
            asyncio.run(mysql(f"DROP DATABASE IF EXISTS `{name}`"))


@contextmanager
def process(argv: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    log = open(ROOT / "data" / f"bench-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_http(port)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def load(*args: object, timeout_s: float = 600) -> dict[str, Any]:
    out = subprocess.run(
        ["node", str(ROOT / "bench" / "load.mjs"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout_s, check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"load {args[:1]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def idle_rss(url: str, secret: str, pid: int, clients: int) -> tuple[float, int]:
    """KiB of the server's RSS per idle connection, and how many were refused."""
    time.sleep(1)
    before = rss_kib(pid)
    node = subprocess.Popen(
        ["node", str(ROOT / "bench" / "load.mjs"), "idle", url, secret, str(clients)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert node.stdout is not None and node.stdin is not None
    ready = json.loads(node.stdout.readline())
    time.sleep(3)  # let the heartbeats and buffers settle
    after = rss_kib(pid)
    node.stdin.close()
    node.wait(60)
    return (after - before) / max(1, clients - ready["refused"]), ready["refused"]


def measure(name: str, url: str, secret: str, pid: int, a: argparse.Namespace) -> dict[str, Any]:
    """The message loads, then the connect storm, on one process started for them.

    The closed loop goes first, on a fresh process: a phase that follows
    thousands of sockets going away would share the CPU with their teardown.
    """
    print(f"  {name}: closed loop", file=sys.stderr, flush=True)
    cpu = cpu_s(pid)
    closed = load("closed", url, secret, a.pairs, a.inflight, a.seconds)
    closed["cpu_us_per_msg"] = (cpu_s(pid) - cpu) * 1e6 / max(1, closed["acked"])
    time.sleep(SETTLE_S)
    print(f"  {name}: open loop", file=sys.stderr, flush=True)
    opened = load("open", url, secret, a.clients, a.rate, a.seconds)
    time.sleep(SETTLE_S)
    print(f"  {name}: {a.connects} connects", file=sys.stderr, flush=True)
    storm = load("connect", url, secret, a.connects)
    return {"closed": closed, "open": opened, "connect": storm, "peak_rss_mib": rss_kib(pid) / 1024}


def measure_idle(name: str, url: str, secret: str, pid: int, a: argparse.Namespace) -> dict[str, Any]:
    """Idle memory on a process of its own: after the other loads the heap has already
    grown, and new sockets would reuse it and look cheaper than they are."""
    print(f"  {name}: idle RSS", file=sys.stderr, flush=True)
    per_conn, refused = idle_rss(url, secret, pid, a.connects)
    return {"idle_kib": per_conn, "idle_refused": refused}


# -- query times at two table sizes ------------------------------------------


async def query_times(db_url: str, rows: int) -> dict[str, float]:
    """Seed `rows` messages among 2,000 users, then time the reads a client makes."""
    from app.config import Config
    from app.storage.db import Database
    from app.metrics import Metrics
    from app.presence import Audience, LocalPresence
    from app.service import ChatService
    from app.storage.store import MessageStore

    config = Config(database_url=db_url, jwt_secret="x" * 40)
    db = Database(config)
    await db.open()
    store = MessageStore(db, 60, config.dialect)
    chat = ChatService(store, LocalPresence(Audience(config.presence_scope, store)), Metrics())
    await seed(db, config.dialect, rows)
    samples: dict[str, list[float]] = {"history": [], "conversations": [], "sync_recent": [], "sync_start": []}
    # A cursor 100 changes before u0's latest: "what did I miss since a minute ago".
    cursor = (await chat.sync("u0", None, U0_MESSAGES - 100)).cursor
    # Warm reads: one untimed pass first. The seed has just churned the database's
    # cache, and a first read of any conversation costs page I/O, at any table size.
    for rounds, timed in ((10, False), (30, True)):
        await _query_round(chat, cursor, rounds, samples if timed else None)
    await store.close()
    await db.close()
    return {k: statistics.median(v) * 1000 for k, v in samples.items()}


async def _query_round(chat: Any, cursor: Any, rounds: int, samples: dict[str, list[float]] | None) -> None:
    from app.domain import START

    for i in range(rounds):
        t0 = time.perf_counter()
        await chat.history("u0", "u0", "u1", i % 4 * 50, 50)
        t1 = time.perf_counter()
        await chat.conversations("u0")
        t2 = time.perf_counter()
        await chat.sync("u0", cursor.encode(), 200)
        t3 = time.perf_counter()
        await chat.sync("u0", START.encode(), 200)
        t4 = time.perf_counter()
        if samples is not None:
            samples["history"].append(t1 - t0)
            samples["conversations"].append(t2 - t1)
            samples["sync_recent"].append(t3 - t2)
            samples["sync_start"].append(t4 - t3)


async def seed(db: Any, dialect: str, rows: int) -> None:
    """`rows` messages among 2,000 users. The measured user u0 has the same 600 at every
    size (300 with u1, the rest with u2..u40), spread evenly through the table: the
    reads return the same amount, and only the table around them grows."""
    rng = random.Random(1)
    now = datetime.now(UTC).replace(tzinfo=None)
    chunk = 2000
    with db.bound() as orm:
        conn = orm.db()
        mark = "%s" if dialect == "mysql" else "?"
        row = "(" + ", ".join([mark] * 9) + ")"
        heads: dict[tuple[str, str], int] = {}
        for start in range(0, rows, chunk):
            params: list[Any] = []
            n = min(chunk, rows - start)
            for i in range(start, start + n):
                mine = i % max(1, rows // U0_MESSAGES) == 0 and i // max(1, rows // U0_MESSAGES) < U0_MESSAGES
                if mine:
                    a, b = "u0", ("u1" if rng.random() < 0.5 else f"u{rng.randrange(2, 41)}")
                else:
                    a, b = f"u{rng.randrange(1, 2000)}", f"u{rng.randrange(1, 2000)}"
                if not mine and "u0" in (a, b):
                    a, b = "u1998", "u1999"
                if a == b:
                    b = "u1999" if a != "u1999" else "u1998"
                if rng.random() < 0.5:
                    a, b = b, a
                low, high = sorted((a, b))
                status = 2 if i < rows - 5000 else rng.randrange(0, 3)
                params += [str(uuid.UUID(int=rng.getrandbits(128), version=4)), a, b,
                           f"{len(low)}:{low}|{high}", f"message {i}", status, None,
                           now, i + 1]
                heads[(a, b)] = i + 1
                heads[(b, a)] = i + 1
            await conn.execute_query(
                "INSERT INTO chat_message (uuid, sender_id, receiver_id, pair_key, text, status,"
                " client_message_id, created_at, change_seq) VALUES " + ", ".join([row] * n),
                params,
            )
        items = list(heads.items())
        for start in range(0, len(items), chunk):
            part = items[start : start + chunk]
            marks = ", ".join([f"({mark}, {mark}, {mark}, {mark})"] * len(part))
            await conn.execute_query(
                "INSERT INTO chat_conversation (owner_id, peer_id, last_message_id, last_at) VALUES "
                + marks,
                [v for (o, p), seq in part for v in (o, p, seq, now)],
            )
        await conn.execute_query(
            f"UPDATE chat_counter SET value = {mark} WHERE name = 'change'", [rows]
        )


# -- main --------------------------------------------------------------------


def loads(a: argparse.Namespace, secret: str) -> dict[str, Any]:
    """The relay, then this server, each alone on the machine while it is measured."""
    results: dict[str, Any] = {}
    relay_port = free_port()
    relay_argv = [PYTHON, str(ROOT / "bench" / "relay.py"), str(relay_port), secret]
    # One at a time: a process still tearing down thousands of sockets would
    # steal CPU from the other's measurements.
    for phase in (measure, measure_idle):
        with process(relay_argv, dict(os.environ), relay_port) as relay:
            print("relay (stock python-socketio, no storage):", file=sys.stderr)
            results.setdefault("relay", {}).update(
                phase("relay", f"http://127.0.0.1:{relay_port}", secret, relay.pid, a)
            )
        with database(a.db, "load") as db_url:
            port = free_port()
            env = {**os.environ, "CHAT_DATABASE_URL": db_url, "CHAT_JWT_SECRET": secret,
                   "CHAT_PORT": str(port), "CHAT_RATE_LIMIT_PER_S": BENCH_RATE_LIMIT,
                   "CHAT_RATE_LIMIT_BURST": BENCH_RATE_LIMIT, "CHAT_LOG_LEVEL": "WARNING"}
            with process(SERVER, env, port) as server:
                print(f"this server ({a.db}):", file=sys.stderr)
                results.setdefault("server", {}).update(
                    phase("server", f"http://127.0.0.1:{port}", secret, server.pid, a)
                )
    return results


@contextmanager
def own_redis() -> Iterator[str]:
    """A redis-server of the benchmark's own on a free port (never the shared one)."""
    port = free_port()
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def cluster_loads(a: argparse.Namespace, secret: str) -> dict[str, Any]:
    """The closed loop on one instance, one with the backplane, and across two instances."""
    results: dict[str, Any] = {}
    with database("mariadb", "cluster") as db_url:
        env = {**os.environ, "CHAT_DATABASE_URL": db_url, "CHAT_JWT_SECRET": secret,
               "CHAT_RATE_LIMIT_PER_S": BENCH_RATE_LIMIT, "CHAT_RATE_LIMIT_BURST": BENCH_RATE_LIMIT,
               "CHAT_LOG_LEVEL": "WARNING"}
        port = free_port()
        with process(SERVER, {**env, "CHAT_PORT": str(port)}, port):
            print("cluster: one instance", file=sys.stderr, flush=True)
            url = f"http://127.0.0.1:{port}"
            results["single"] = load("closed", url, secret, a.pairs, a.inflight, a.seconds)
        time.sleep(SETTLE_S)
        with own_redis() as redis_url:
            env["CHAT_REDIS_URL"] = redis_url
            port = free_port()
            with process(SERVER, {**env, "CHAT_PORT": str(port), "CHAT_INSTANCE_ID": "solo"}, port):
                print("cluster: one instance with the backplane", file=sys.stderr, flush=True)
                url = f"http://127.0.0.1:{port}"
                results["backplane"] = load("closed", url, secret, a.pairs, a.inflight, a.seconds)
            time.sleep(SETTLE_S)
            pa, pb = free_port(), free_port()
            with process(SERVER, {**env, "CHAT_PORT": str(pa), "CHAT_INSTANCE_ID": "a"}, pa), \
                    process(SERVER, {**env, "CHAT_PORT": str(pb), "CHAT_INSTANCE_ID": "b"}, pb):
                print("cluster: across two instances", file=sys.stderr, flush=True)
                results["cross"] = load(
                    "closed", f"http://127.0.0.1:{pa}", secret, a.pairs, a.inflight, a.seconds,
                    f"http://127.0.0.1:{pb}",
                )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["mariadb", "sqlite"], default="mariadb")
    parser.add_argument("--quick", action="store_true", help="small loads: a smoke run")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--connects", type=int, default=5000)
    parser.add_argument("--rows", default="10000,1000000")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--cluster", action="store_true",
                        help="only the cross-instance closed loop (MariaDB and redis-server)")
    a = parser.parse_args()
    if a.quick:
        a.pairs, a.seconds, a.clients, a.rate, a.connects, a.rows = 10, 3, 100, 100, 300, "1000,20000"
    (ROOT / "data").mkdir(exist_ok=True)
    secret = secrets.token_urlsafe(48)
    results: dict[str, Any] = {}
    if a.cluster:
        results["cluster"] = cluster_loads(a, secret)
        print(report(results, a))
        return 0
    if not a.skip_load:
        results.update(loads(a, secret))
    if not a.skip_queries:
        results["queries"] = {}
        for rows in [int(r) for r in a.rows.split(",")]:
            print(f"queries at {rows} rows", file=sys.stderr, flush=True)
            with database(a.db, f"q{rows}") as db_url:
                results["queries"][rows] = asyncio.run(query_times(db_url, rows))
    print(report(results, a))
    return 0


def report(r: dict[str, Any], a: argparse.Namespace) -> str:
    lines = [f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, {os.cpu_count()} cores, "
             f"database {a.db}", ""]
    if "server" in r:
        s, rl = r["server"], r["relay"]
        ratio = s["closed"]["rate"] / rl["closed"]["rate"]
        lines += [
            "| measure | this server | stock relay | ratio |",
            "|---|---|---|---|",
            f"| closed loop, {a.pairs} pairs x {a.inflight} in flight: msg/s | "
            f"{s['closed']['rate']:.0f} | {rl['closed']['rate']:.0f} | {ratio:.2f} |",
            f"| closed loop: ack p50 / p99 ms | {s['closed']['p50']:.1f} / {s['closed']['p99']:.1f} | "
            f"{rl['closed']['p50']:.1f} / {rl['closed']['p99']:.1f} | |",
            f"| closed loop: errors | {s['closed']['errors']} | {rl['closed']['errors']} | |",
            f"| closed loop: server CPU per message, µs | {s['closed']['cpu_us_per_msg']:.0f} | "
            f"{rl['closed']['cpu_us_per_msg']:.0f} | "
            f"{s['closed']['cpu_us_per_msg'] / rl['closed']['cpu_us_per_msg']:.2f} |",
            f"| open loop, {a.clients} clients x {a.rate} msg/s: achieved msg/s | "
            f"{s['open']['achieved']:.0f} | {rl['open']['achieved']:.0f} | |",
            f"| open loop: errors | {s['open']['errors']} | {rl['open']['errors']} | |",
            f"| open loop: ack p50 / p99 ms | {s['open']['p50']:.1f} / {s['open']['p99']:.1f} | "
            f"{rl['open']['p50']:.1f} / {rl['open']['p99']:.1f} | |",
            f"| {a.connects} clients connecting: s (refused) | {s['connect']['seconds']:.1f} "
            f"({s['connect']['refused']}) | {rl['connect']['seconds']:.1f} ({rl['connect']['refused']}) | |",
            f"| KiB RSS per idle connection at {a.connects} | {s['idle_kib']:.0f} | {rl['idle_kib']:.0f} | |",
            f"| peak RSS MiB | {s['peak_rss_mib']:.0f} | {rl['peak_rss_mib']:.0f} | |",
        ]
    if "cluster" in r:
        c = r["cluster"]
        lines += [
            f"| closed loop, {a.pairs} pairs x {a.inflight} in flight, MariaDB | msg/s | "
            "ack p50 / p99 ms | errors |",
            "|---|---|---|---|",
        ]
        for key, label in (("single", "one instance"),
                           ("backplane", "one instance, Redis backplane on"),
                           ("cross", "two instances: senders on a, receivers on b")):
            x = c[key]
            lines.append(f"| {label} | {x['rate']:.0f} | {x['p50']:.1f} / {x['p99']:.1f} | {x['errors']} |")
    if "queries" in r:
        sizes = sorted(r["queries"])
        lines += ["", "| query (median ms) | " + " | ".join(f"{n:,} rows" for n in sizes) + " | ratio |",
                  "|---|" + "---|" * (len(sizes) + 1)]
        for q in ("history", "conversations", "sync_recent", "sync_start"):
            values = [r["queries"][n][q] for n in sizes]
            lines.append(f"| {q} | " + " | ".join(f"{v:.2f}" for v in values)
                         + f" | {values[-1] / values[0]:.2f} |")
    lines += ["", "```json", json.dumps(r, indent=1, default=str), "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
