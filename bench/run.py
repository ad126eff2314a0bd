"""`make bench`: this server beside three relays, under the same Node load.

The targets (bench/targets.py): this server (`chat-server serve`, MariaDB by
default, durable writes, a fresh database) and three relays that speak the
same protocol shape with no storage: (a) python-socketio at its defaults,
(b) the same relay with every knob this server turns, (c) a Node socket.io 4
relay. The real Node socket.io-client (bench/load.mjs) drives each in turn:

- closed loop: PAIRS sender/receiver pairs, INFLIGHT sends in flight per sender,
  every receiver acknowledging with MessageReceived: acked msg/s, ack p50/p99,
  the target's CPU per message;
- open loop: CLIENTS clients offered RATE msg/s: acked msg/s, errors, ack p50/p99;
- connect: CONNECTS clients connecting at once: seconds and refusals;
- idle: KiB of RSS per idle connection, with CONNECTS connected, on fresh processes;
- queries: history, conversations and Sync times with ROWS stored messages;
- with --group: one sender to a group of MEMBERS: deliveries/s, send -> last
  member p50/p99 (the server's row waits for groups: it says so and is skipped);
- with --cluster only: the closed loop on one instance, on one instance with
  the Redis backplane, and across two instances (senders on one, receivers
  on the other), all on one MariaDB database and a redis-server of its own.

The closed and open loops run in interleaved rounds (server, a, b, c, server,
a, b, c, ...), each on settled processes: noise from the shared machine falls
on every target alike, and each is reported as the median and the min-max of
its rounds. The connect storm and idle memory run once per target.

    python bench/run.py [--db mariadb|sqlite] [--rounds N] [--quick] [--group] [--cluster]

Prints one Markdown table (bench/README.md quotes it) and writes every round
of every target, the machine, the date, the commit and the settings to
bench/results/<date>-<name>.json; `--table FILE` prints a saved run's table again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from queries import group_writes, query_times
from report import document, loadavg, report, save
from targets import (
    BENCH,
    ROOT,
    SERVER,
    Running,
    busy_cores,
    cpu_s,
    database,
    free_port,
    machine_jiffies,
    own_redis,
    process,
    rss_kib,
    server_env,
    settle,
    start_all,
)

LOAD = ["node", str(BENCH / "load.mjs")]


def load(*args: object, timeout_s: float = 600) -> dict[str, Any]:
    out = subprocess.run([*LOAD, *map(str, args)], capture_output=True, text=True,
                         timeout=timeout_s, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"load {args[0]} against {args[1]} failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(target: Running, others: list[int], *args: object) -> dict[str, Any]:
    """One load against one settled target, with the CPU it and the whole machine used."""
    settled_s = settle(others)
    cpu, machine, t0 = cpu_s(target.pid), machine_jiffies(), time.monotonic()
    result = load(args[0], target.url, *args[1:])
    result["cpu_s"] = cpu_s(target.pid) - cpu
    if result.get("acked"):
        result["cpu_us_per_msg"] = result["cpu_s"] * 1e6 / result["acked"]
    result["machine_busy_cores"] = busy_cores(machine, machine_jiffies())
    result["wall_s"] = time.monotonic() - t0
    result["settled_s"] = settled_s
    return result


def rounds(running: dict[str, Running], phase: str, n: int, args_of: Any) -> dict[str, list[dict[str, Any]]]:
    """`n` interleaved rounds of one load: server, a, b, c, server, a, b, c, ..."""
    pids = [r.pid for r in running.values()]
    out: dict[str, list[dict[str, Any]]] = {key: [] for key in running}
    for i in range(n):
        for key, target in running.items():
            print(f"  {phase} round {i + 1}/{n}: {target.target.label}", file=sys.stderr, flush=True)
            out[key].append(measured(target, pids, phase, *args_of(target)))
    return out


def check(running: dict[str, Running], secret: str) -> dict[str, dict[str, Any]]:
    """The protocol shape every load relies on, once per target: a fast wrong answer fails the run."""
    return {key: load("check", r.url, secret, r.target.groups, timeout_s=60) for key, r in running.items()}


def group_rounds(running: dict[str, Running], secret: str, a: argparse.Namespace) -> dict[str, Any]:
    pids = [r.pid for r in running.values()]
    out: dict[str, list[dict[str, Any]]] = {key: [] for key in running}
    for i in range(a.rounds):
        for key, target in running.items():
            if out[key] and out[key][0].get("skipped"):
                continue  # said once; it will not have groups by the next round
            print(f"  group round {i + 1}/{a.rounds}: {target.target.label}", file=sys.stderr, flush=True)
            result = measured(target, pids, "group", secret, a.members, a.group_inflight, a.seconds,
                              target.target.groups, int(a.receipts))
            if result.get("skipped"):
                print(f"    {target.target.label}: skipped, {result['skipped']}", file=sys.stderr)
            out[key].append(result)
    return out


def idle_rss(target: Running, pids: list[int], secret: str, clients: int) -> dict[str, Any]:
    """KiB of the target's RSS per idle connection, and how many were refused."""
    settle(pids)
    before = rss_kib(target.pid)
    node = subprocess.Popen([*LOAD, "idle", target.url, secret, str(clients)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert node.stdout is not None and node.stdin is not None
    try:
        ready = json.loads(node.stdout.readline())
        settle([target.pid])  # heartbeats and buffers in place
        after = rss_kib(target.pid)
    finally:
        node.stdin.close()
        node.wait(60)
    return {"idle_kib": (after - before) / max(1, clients - ready["refused"]), "idle_refused": ready["refused"]}


def loads(a: argparse.Namespace, secret: str, results: dict[str, Any]) -> None:
    """The message loads in interleaved rounds, the connect storms; then idle memory on fresh processes.

    Fills `results` as it goes, so a phase that fails leaves the earlier ones saved.
    """
    with start_all(a.db, secret, "load") as running:
        pids = [r.pid for r in running.values()]
        print("checking the protocol shape of every target", file=sys.stderr, flush=True)
        results["checks"] = check(running, secret)
        results["closed"] = rounds(running, "closed", a.rounds,
                                   lambda t: (secret, a.pairs, a.inflight, a.seconds))
        results["open"] = rounds(running, "open", a.rounds,
                                 lambda t: (secret, a.clients, a.rate, a.seconds))
        if a.group:
            results["group"] = group_rounds(running, secret, a)
        results["connect"] = {}
        for key, target in running.items():
            print(f"  {a.connects} connects: {target.target.label}", file=sys.stderr, flush=True)
            results["connect"][key] = measured(target, pids, "connect", secret, a.connects)
        results["peak_rss_mib"] = {key: rss_kib(r.pid, "VmHWM") / 1024 for key, r in running.items()}
    # Idle memory on fresh processes: after the loads the heap has already grown,
    # and new sockets would reuse it and look cheaper than they are.
    with start_all(a.db, secret, "idle") as running:
        pids = [r.pid for r in running.values()]
        results["idle"] = {}
        for key, target in running.items():
            print(f"  idle RSS: {target.target.label}", file=sys.stderr, flush=True)
            results["idle"][key] = idle_rss(target, pids, secret, a.connects)


def cluster_loads(a: argparse.Namespace, secret: str) -> dict[str, Any]:
    """The closed loop on one instance, one with the backplane, and across two instances."""
    results: dict[str, Any] = {}
    closed = (secret, a.pairs, a.inflight, a.seconds)
    with database("mariadb", "cluster") as db_url:
        port = free_port()
        with process(SERVER, server_env(db_url, secret, port), port):
            print("cluster: one instance", file=sys.stderr, flush=True)
            results["single"] = load("closed", f"http://127.0.0.1:{port}", *closed)
        with own_redis() as redis_url:
            env = {"CHAT_REDIS_URL": redis_url}
            port = free_port()
            with process(SERVER, {**server_env(db_url, secret, port), **env, "CHAT_INSTANCE_ID": "solo"},
                         port) as solo:
                settle([solo.pid])
                print("cluster: one instance with the backplane", file=sys.stderr, flush=True)
                results["backplane"] = load("closed", f"http://127.0.0.1:{port}", *closed)
            pa, pb = free_port(), free_port()
            with process(SERVER, {**server_env(db_url, secret, pa), **env, "CHAT_INSTANCE_ID": "a"}, pa) as ia, \
                    process(SERVER, {**server_env(db_url, secret, pb), **env, "CHAT_INSTANCE_ID": "b"}, pb) as ib:
                settle([ia.pid, ib.pid])
                print("cluster: across two instances", file=sys.stderr, flush=True)
                results["cross"] = load("closed", f"http://127.0.0.1:{pa}", *closed, f"http://127.0.0.1:{pb}")
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", choices=["mariadb", "sqlite"], default="mariadb")
    parser.add_argument("--quick", action="store_true", help="small loads, 2 rounds: a smoke run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the message loads")
    parser.add_argument("--pairs", type=int, default=50)
    parser.add_argument("--inflight", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--connects", type=int, default=5000)
    parser.add_argument("--rows", default="10000,1000000")
    parser.add_argument("--group", action="store_true", help="also the group load (one sender, MEMBERS)")
    parser.add_argument("--members", type=int, default=1000, help="group size, the sender included")
    parser.add_argument("--group-inflight", type=int, default=2)
    parser.add_argument("--no-receipts", dest="receipts", action="store_false",
                        help="group members do not answer MessageReceived")
    parser.add_argument("--skip-queries", action="store_true")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--cluster", action="store_true",
                        help="only the cross-instance closed loop (MariaDB and redis-server)")
    parser.add_argument("--name", help="results file name: bench/results/<date>-<name>.json")
    parser.add_argument("--table", metavar="RESULTS_JSON", help="print the table of a saved run, measure nothing")
    a = parser.parse_args()
    if a.table:
        print(report(json.loads(Path(a.table).read_text())))
        return 0
    if a.quick:
        a.pairs, a.seconds, a.clients, a.rate, a.connects, a.rows = 10, 3, 100, 100, 300, "1000,20000"
        a.members, a.rounds = 100, min(a.rounds, 2)
    if a.rounds < 1:
        parser.error("--rounds must be at least 1")
    (ROOT / "data").mkdir(exist_ok=True)
    secret = secrets.token_urlsafe(48)
    started, load_at_start = datetime.now(UTC), loadavg()
    results: dict[str, Any] = {}
    try:
        if a.cluster:
            results["cluster"] = cluster_loads(a, secret)
        else:
            if not a.skip_load:
                loads(a, secret, results)
            if not a.skip_queries:
                results["queries"] = {}
                for rows in [int(r) for r in a.rows.split(",")]:
                    print(f"queries at {rows} rows", file=sys.stderr, flush=True)
                    with database(a.db, f"q{rows}") as db_url:
                        results["queries"][rows] = asyncio.run(query_times(db_url, rows))
                if a.group:
                    print("rows written per group message", file=sys.stderr, flush=True)
                    with database(a.db, "gw") as db_url:
                        results["group_writes"] = asyncio.run(group_writes(db_url))
    except BaseException as e:
        # Twenty minutes of rounds are worth keeping when the last phase fails.
        results["failed"] = f"{type(e).__name__}: {e}"
        path = save(document(results, a, started, load_at_start))
        print(f"the run failed; what it measured is in {path.relative_to(ROOT)}", file=sys.stderr)
        raise
    doc = document(results, a, started, load_at_start)
    path = save(doc)
    print(report(doc))
    print(f"\nraw results: {path.relative_to(ROOT)}")
    return 0

if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # the queries phase drives the server's own store
    sys.exit(main())
