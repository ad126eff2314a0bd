"""Message throughput and latency against a real `chat-server serve` process.

    .venv/bin/python bench/send_throughput.py --db sqlite --pairs 20 --messages 100
    .venv/bin/python bench/send_throughput.py --db mariadb --pairs 20 --messages 100

Starts the server on a free loopback port with a fresh database, connects
`pairs` sender/receiver pairs, and has every sender send `messages` messages one
after another (each waits for its ack, as a person's client does), all pairs at
once. Reports acked messages per second, ack latency (send -> ack, i.e. stored),
delivery latency (send -> ReceiveMessage at the receiver), and the server's peak
memory. Traffic stays on 127.0.0.1 and the run is bounded by its counts.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import aiohttp
import jwt
import socketio

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-" + "0123456789abcdef" * 4
MYSQL = os.environ.get("CHAT_BENCH_MYSQL_URL", "mysql://root:@127.0.0.1:3306")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(user: str) -> str:
    return jwt.encode({"id": user, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")


def mysql_admin(sql: str) -> None:
    subprocess.run(["mysql", "-h127.0.0.1", "-uroot", "-e", sql], check=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def wait_healthy(url: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(200):
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                async with http.get(f"{url}/readyz") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise SystemExit("server did not become ready")


async def run_pair(url: str, index: int, messages: int, transport: str) -> tuple[list[float], list[float]]:
    sender_id, receiver_id = f"s{index}", f"r{index}"
    sender = socketio.AsyncClient(reconnection=False)
    receiver = socketio.AsyncClient(reconnection=False)
    sent_at: dict[str, float] = {}
    delivered: list[float] = []
    done = asyncio.Event()

    async def on_receive(_s: str, _t: str, message_id: str, _st: str, dto: dict) -> None:
        delivered.append(time.perf_counter() - sent_at[dto["clientMessageId"]])
        if len(delivered) == messages:
            done.set()

    receiver.on("ReceiveMessage", on_receive, namespace="/chat")
    for client, user in ((receiver, receiver_id), (sender, sender_id)):
        await client.connect(url, namespaces=["/chat"], auth={"token": token(user)}, transports=[transport])
    acks: list[float] = []
    try:
        for i in range(messages):
            cid = f"{index}-{i}"
            sent_at[cid] = started = time.perf_counter()
            reply = await sender.call("SendMessage", (sender_id, receiver_id, f"message {i}", cid),
                                      namespace="/chat", timeout=30)
            assert reply["ok"], reply
            acks.append(time.perf_counter() - started)
        await asyncio.wait_for(done.wait(), 30)
    finally:
        await sender.disconnect()
        await receiver.disconnect()
    return acks, delivered


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "mariadb"], default="sqlite")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--messages", type=int, default=100)
    parser.add_argument("--transport", choices=["websocket", "polling"], default="websocket")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="chat-bench-"))
    database = None
    if args.db == "sqlite":
        db_url = f"sqlite://{tmp}/bench.sqlite3"
    else:
        database = f"chat_bench_{uuid.uuid4().hex[:8]}"
        mysql_admin(f"CREATE DATABASE {database} CHARACTER SET utf8mb4")
        db_url = f"{MYSQL}/{database}"
    port = free_port()
    env = {
        **os.environ, "CHAT_DATABASE_URL": db_url, "CHAT_JWT_SECRET": SECRET,
        "CHAT_PORT": str(port), "CHAT_LOG_LEVEL": "WARNING",
        # The bench is the only client; keep the per-socket limit out of the way.
        "CHAT_RATE_LIMIT_PER_S": "100000", "CHAT_RATE_LIMIT_BURST": "100000",
    }
    chat_server = [sys.executable, "-m", "app.cli"]
    subprocess.run([*chat_server, "migrate"], env=env, cwd=tmp, check=True, capture_output=True)
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen([*chat_server, "serve"], env=env, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(url, proc)
        started = time.perf_counter()
        results = await asyncio.gather(
            *(run_pair(url, i, args.messages, args.transport) for i in range(args.pairs))
        )
        elapsed = time.perf_counter() - started
        acks = [a for r in results for a in r[0]]
        delivered = [d for r in results for d in r[1]]
        total = args.pairs * args.messages
        assert len(acks) == total and len(delivered) == total
        ms = lambda v: f"{v * 1000:.1f} ms"  # noqa: E731
        print(f"database: {args.db}, transport: {args.transport}, "
              f"{args.pairs} pairs x {args.messages} messages = {total} messages")
        print(f"throughput: {total / elapsed:.0f} acked messages/s ({elapsed:.2f} s)")
        print(f"ack latency: p50 {ms(statistics.median(acks))}, p95 {ms(percentile(acks, 95))}, "
              f"p99 {ms(percentile(acks, 99))}, max {ms(max(acks))}")
        print(f"delivery latency: p50 {ms(statistics.median(delivered))}, "
              f"p99 {ms(percentile(delivered, 99))}")
        print(f"server peak RSS: {peak_rss_mib(proc.pid):.0f} MiB")
    finally:
        proc.terminate()
        proc.wait(10)
        if database:
            mysql_admin(f"DROP DATABASE IF EXISTS {database}")


if __name__ == "__main__":
    asyncio.run(main())
