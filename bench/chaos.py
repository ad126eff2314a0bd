"""`make chaos`: network faults between the server and MariaDB or Redis, under a steady load.

Starts a MariaDB database and a redis-server of its own, a fault proxy
(tests/faultproxy.py) in front of each, and two `chat-server serve` instances
(a and b) that reach both only through the proxies. Then, for each fault:

1. PAIRS sender/receiver pairs: senders on a, receivers on b, each sender at
   RATE msg/s, waiting for every ack and retrying the same clientMessageId
   until it is acked (bench/chaos_load.py); /readyz polled every 100 ms;
2. WARM seconds of load, then the fault on for SECONDS, then off;
3. SECONDS/2 into the fault, SIGTERM to instance a (the senders' one, calls in
   flight): its exit time, SIGKILL if it has not exited GRACE+5 s later; its
   senders reconnect to b, as clients behind a balancer would;
4. load until every sender is acked again (or RECOVER seconds pass), then
   instance a is started again for the next fault;
5. the acked ids against what the database holds, read directly (not through
   the proxy).

One markdown table, a row per fault, goes to stdout, the raw figures to
bench/results/chaos-<date>.json. Targets missed are marked ✗ and make the exit
status 2 (1 is the script's own failure).

    python bench/chaos.py [--only db-freeze,redis-sigstop] [--seconds 8] [--pairs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import json
import os
import platform
import secrets
import shutil
import signal
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.chaos_load import DISCONNECTED, NO_ANSWER, Attempt, Load, now  # noqa: E402
from bench.chaos_parts import (  # noqa: E402
    Exit,
    Instance,
    ReadyProbe,
    Stored,
    own_database,
    ready_within,
    stored,
)
from tests.faultproxy import FaultProxy  # noqa: E402
from tests.support import OwnRedis, mysql_connect_kwargs  # noqa: E402

KINDS = ("refuse", "reset", "freeze", "blackhole", "latency")
FAULTS = (*(f"db-{k}" for k in KINDS), *(f"redis-{k}" for k in KINDS), "redis-sigstop")
WHAT = {
    "refuse": "open connections reset, new ones refused (the service is down)",
    "reset": "every open connection reset each second (a flapping link, a restarting service)",
    "freeze": "open connections stop carrying bytes, new ones work (a hung peer, a dead NAT entry)",
    "blackhole": "open connections frozen, new ones accepted and never answered (the host is gone)",
    "latency": "each chunk held 200 ms, both ways",
    "sigstop": "SIGSTOP to the redis-server itself, SIGCONT at the end",
}
LATENCY_S = 0.2
RESET_EVERY_S = 1.0
# The server's settings for the run: faults must resolve within one run.
CALL_TIMEOUT_S = 3
GRACE_S = 3
RATE_LIMIT = "100000"
# The targets.
OK_AGAIN_TARGET_S = 5.0
READY_TARGET_S = 2.0
SIGTERM_SLACK_S = 1.0  # exit within grace + this
KILL_AFTER_SLACK_S = 5.0  # SIGKILL after grace + this
# Before each fault every instance must answer /readyz 200 within this, or be restarted.
READY_WAIT_S = 15.0
# A sender waiting longer than this for its ack is not "ok again" yet.
STUCK_S = 2.0


# -- faults ----------------------------------------------------------------------


class Switch:
    """Turns one fault on and off: on a proxy, or on the redis-server process."""

    def __init__(self, kind: str, proxy: FaultProxy, redis: OwnRedis) -> None:
        self.kind = kind
        self.proxy = proxy
        self.redis = redis
        self._resetting: asyncio.Task[None] | None = None

    async def on(self) -> None:
        p = self.proxy
        if self.kind == "refuse":
            await p.refuse(True)
            p.reset()
        elif self.kind == "reset":
            self._resetting = asyncio.ensure_future(self._keep_resetting())
        elif self.kind == "freeze":
            p.freeze()
        elif self.kind == "blackhole":
            p.freeze()
            p.blackhole(True)
        elif self.kind == "latency":
            p.latency_s = LATENCY_S
        elif self.kind == "sigstop":
            self._signal(signal.SIGSTOP)
        else:
            raise ValueError(self.kind)

    async def _keep_resetting(self) -> None:
        while True:
            self.proxy.reset()
            await asyncio.sleep(RESET_EVERY_S)

    async def off(self) -> None:
        if self._resetting is not None:
            self._resetting.cancel()
            await asyncio.gather(self._resetting, return_exceptions=True)
        await self.proxy.refuse(False)
        self.proxy.heal()
        self._signal(signal.SIGCONT)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self.redis.proc
        if self.kind == "sigstop" and proc is not None and proc.poll() is None:
            proc.send_signal(sig)


# -- the rig: services, proxies, instances ----------------------------------------


@dataclass
class Rig:
    database: str
    redis: OwnRedis
    db_proxy: FaultProxy
    redis_proxy: FaultProxy
    a: Instance
    b: Instance

    @property
    def instances(self) -> list[Instance]:
        return [self.a, self.b]

    def proxy(self, target: str) -> FaultProxy:
        return self.db_proxy if target == "db" else self.redis_proxy

    async def ensure_ready(self, restart: bool) -> list[str]:
        """Every instance running and answering /readyz 200 before the next fault; one that
        is not (or every one, with `restart`) is stopped and started again. What was done."""
        done = []
        for inst in self.instances:
            if not inst.running:
                await inst.start()
                done.append(f"{inst.name} started again")
            elif restart:
                stop = await inst.terminate(GRACE_S + KILL_AFTER_SLACK_S)
                await inst.start()
                done.append(f"{inst.name} restarted (not recovered; "
                            f"{'SIGKILLed' if stop.killed else 'exited'} in {stop.seconds:.1f} s)")
        for inst in self.instances:
            if not await ready_within(inst, READY_WAIT_S):
                stop = await inst.terminate(GRACE_S + KILL_AFTER_SLACK_S)
                await inst.start()
                done.append(f"{inst.name} restarted (/readyz not 200 for {READY_WAIT_S:g} s; "
                            f"{'SIGKILLed' if stop.killed else 'exited'} in {stop.seconds:.1f} s)")
        for inst in self.instances:
            if not await ready_within(inst, READY_WAIT_S):
                raise RuntimeError(f"instance {inst.name} is not ready even after a restart")
        return done


# -- one fault -------------------------------------------------------------------------


@dataclass
class Row:
    fault: str
    acked: int
    stored: int
    lost: int
    duplicated: int
    internal: int
    no_answer: int
    max_ack_latency_s: float | None  # the longest a send waited
    max_ack_unanswered: bool  # ... and it got no answer: the latency was at least that
    ok_again_s: float | None  # None: not within the run
    ready_503_s: float | None  # from fault on; None: never
    # From fault on: the start of the first failed send after which none was acked for
    # READY_TARGET_S (writes failing, not a blip); None: never.
    writes_failed_s: float | None
    sigterm: Exit | None
    error: str | None = None  # the script could not play this fault
    missed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # worth knowing, not one of the targets
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def failed(cls, fault: str, error: str) -> Row:
        return cls(fault, 0, 0, 0, 0, 0, 0, None, False, None, None, None, None, error=error,
                   missed=[f"could not be played: {error}"])


async def play(fault: str, rig: Rig, a: argparse.Namespace, secret: str) -> Row:
    target, kind = fault.split("-", 1)
    print(f"{fault}: {WHAT[kind]}", file=sys.stderr, flush=True)
    load = Load(fault, [rig.a.url, rig.b.url], [rig.b.url, rig.a.url], secret, a.pairs, a.rate,
                a.ack_timeout)
    offsets = {inst.name: inst.log_size() for inst in rig.instances}
    probe = ReadyProbe(rig.instances)
    switch = Switch(kind, rig.proxy(target), rig.redis)
    sigterm: asyncio.Task[Exit] | None = None
    try:
        await load.start()
        probe.start()
        await asyncio.sleep(a.warm)
        t_on = now()
        await switch.on()
        sigterm = asyncio.ensure_future(_sigterm_later(rig.a, a.seconds / 2))
        await asyncio.sleep(a.seconds)
        t_off = now()
        await switch.off()
        recovered = await _until_recovered(load, t_off, sigterm, a)
        stop = await asyncio.wait_for(sigterm, GRACE_S + KILL_AFTER_SLACK_S + 15)
    finally:
        await switch.off()  # idempotent: whatever happened, the next fault starts clean
        await load.stop(a.ack_timeout + 1)
        await probe.stop()
        if sigterm is not None and not sigterm.done():
            sigterm.cancel()
            await asyncio.gather(sigterm, return_exceptions=True)
    crashed = [inst.name for inst in rig.instances if not inst.running and inst.terminated_at is None]
    held = await stored(rig.database, load.senders())
    row = figures(fault, load, held, probe, rig, t_on, t_off, stop, recovered)
    row.extra["tracebacks_in_logs"] = {
        inst.name: inst.tracebacks_since(offsets[inst.name]) for inst in rig.instances
    }
    row.extra["crashed"] = crashed
    judge(row, target, a)
    return row


async def _sigterm_later(inst: Instance, after_s: float) -> Exit:
    await asyncio.sleep(after_s)
    return await inst.terminate(GRACE_S + KILL_AFTER_SLACK_S)


async def _until_recovered(load: Load, t_off: float, sigterm: asyncio.Task[Exit],
                           a: argparse.Namespace) -> bool:
    """Load on until every sender has been acked after the last failure and that held
    for SETTLE seconds; False if RECOVER seconds pass first."""
    deadline = t_off + a.recover
    held_since: float | None = None
    while now() < deadline:
        if sigterm.done() and load.recovered_since(t_off, STUCK_S):
            held_since = held_since or now()
            if now() - held_since >= a.settle:
                return True
        else:
            held_since = None
        await asyncio.sleep(0.1)
    return False


def figures(fault: str, load: Load, held: Stored, probe: ReadyProbe, rig: Rig, t_on: float,
            t_off: float, stop: Exit, recovered: bool) -> Row:
    sends = [x for x in load.attempts if x.cid is not None]
    outcomes = Counter(x.outcome for x in load.attempts)
    lost = [k for k, mid in load.acked.items() if mid not in held.ids.get(k, [])]
    terminated = rig.a.terminated_at or float("inf")
    failed = [x for x in sends if _failed(x, terminated)]
    # The longest a send waited, answered or not: a hung call shows here even when it
    # ended by its socket closing.
    slowest = max(sends, key=lambda x: x.ended - x.started, default=None)
    writes_failing = _writes_failing(sends, failed, t_on)
    ready_503 = _first_503(probe, rig, t_on)
    closed = [x for x in sends if x.outcome == DISCONNECTED]
    row = Row(
        fault=fault,
        acked=len(load.acked),
        stored=held.rows,
        lost=len(lost),
        duplicated=max(held.duplicated_keys, held.duplicated_texts),
        internal=outcomes["internal"] + load.receipts["internal"],
        no_answer=outcomes[NO_ANSWER] + outcomes[DISCONNECTED],
        max_ack_latency_s=None if slowest is None else slowest.ended - slowest.started,
        max_ack_unanswered=slowest is not None and not slowest.answered,
        ok_again_s=_ok_again(load.attempts, t_on, t_off) if recovered else None,
        ready_503_s=None if ready_503 is None else ready_503 - t_on,
        writes_failed_s=None if writes_failing is None else writes_failing - t_on,
        sigterm=stop,
    )
    row.extra = {
        "outcomes": dict(outcomes),
        "receipts": dict(load.receipts),
        "received_live": len(load.received),
        "lost_examples": [list(k) for k in sorted(lost)[:5]],
        "duplicated_keys": held.duplicated_keys,
        "duplicated_texts": held.duplicated_texts,
        "failed_sends": len(failed),
        "unacked_at_stop": len(load.pending),
        # Sends whose socket closed before an answer: sent before SIGTERM (in flight, which the
        # drain should have answered) or after it (racing the close; the client retries).
        "closed_unanswered": {"sent_before_sigterm": sum(x.started < terminated for x in closed),
                              "sent_after_sigterm": sum(x.started >= terminated for x in closed)},
        "recovered": recovered,
        "timeline": _timeline(load.attempts, t_on),
        "readyz": _ready_transitions(probe, rig, t_on),
    }
    return row


def _failed(x: Attempt, sigterm_at: float) -> bool:
    """A send that failed: an error, silence, or a socket closed while it waited, except
    a send made after the SIGTERM (it raced the close; the client simply retries)."""
    return not x.ok and not (x.outcome == DISCONNECTED and x.started >= sigterm_at)


def _writes_failing(sends: list[Attempt], failed: list[Attempt], t_on: float) -> float | None:
    """When writes began failing: the start of the first failed send after which no send
    was acked for READY_TARGET_S. A failure the other sends get past is a blip no balancer
    needs to hear of."""
    oks = sorted(x.ended for x in sends if x.ok)
    for x in sorted((x for x in failed if x.started >= t_on), key=lambda x: x.started):
        i = bisect.bisect_right(oks, x.started)
        if i == len(oks) or oks[i] > x.started + READY_TARGET_S:
            return x.started
    return None


def _ok_again(attempts: list[Attempt], t_on: float, t_off: float) -> float:
    """Seconds from fault off to the first ok ack after the last failure (0: none failed after)."""
    failures = [x.ended for x in attempts if not x.ok and x.ended >= t_on]
    if not failures:
        return 0.0
    last = max(failures)
    first_ok = min((x.ended for x in attempts if x.ok and x.ended > last), default=last)
    return max(0.0, first_ok - t_off)


def _first_503(probe: ReadyProbe, rig: Rig, t_on: float) -> float | None:
    """When the first 503 answered after fault on, not counting a draining instance's."""
    stopped_at = {inst.name: inst.terminated_at or float("inf") for inst in rig.instances}
    times = [p.answered for p in probe.probes
             if p.status == 503 and p.sent >= t_on and p.sent < stopped_at[p.instance]]
    return min(times, default=None)


def _timeline(attempts: list[Attempt], t_on: float) -> dict[str, dict[str, int]]:
    """Per second from fault on (negative: before it), how attempts ended."""
    seconds: dict[int, Counter[str]] = {}
    for x in attempts:
        seconds.setdefault(int((x.ended - t_on) // 1), Counter())[x.outcome] += 1
    return {str(s): dict(c) for s, c in sorted(seconds.items())}


def _ready_transitions(probe: ReadyProbe, rig: Rig, t_on: float) -> dict[str, list[Any]]:
    """Per instance, each change of /readyz's answer: (seconds from fault on, status), up to
    its SIGTERM (after which its listener is closed; "SIGTERM" marks when)."""
    stopped_at = {inst.name: inst.terminated_at for inst in rig.instances}
    out: dict[str, list[Any]] = {}
    for p in sorted(probe.probes, key=lambda p: p.answered):
        seen = out.setdefault(p.instance, [])
        stopped = stopped_at[p.instance]
        if stopped is not None and p.sent >= stopped:
            continue
        if not seen or seen[-1][1] != p.status:
            seen.append((round(p.answered - t_on, 2), p.status))
    for name, stopped in stopped_at.items():
        if stopped is not None:
            out.setdefault(name, []).append((round(stopped - t_on, 2), "SIGTERM"))
    return out


def judge(row: Row, target: str, a: argparse.Namespace) -> None:
    """Which of the issue's targets this fault missed."""
    if row.lost:
        row.missed.append(f"{row.lost} acked messages lost")
    if row.duplicated:
        row.missed.append(f"{row.duplicated} duplicates")
    if row.ok_again_s is None:
        row.missed.append(f"answers not ok again within {a.recover:g} s")
    elif row.ok_again_s > OK_AGAIN_TARGET_S:
        row.missed.append(f"answers ok again only {row.ok_again_s:.1f} s after the fault")
    if target == "db" and row.writes_failed_s is not None:
        if row.ready_503_s is None:
            row.missed.append("/readyz never 503 while writes failed")
        elif row.ready_503_s > row.writes_failed_s + READY_TARGET_S:
            row.missed.append(f"/readyz 503 {row.ready_503_s - row.writes_failed_s:.2f} s "
                              "after writes failed")
    if row.internal:
        row.notes.append(f"{row.internal} answers `internal` (a storage or Redis fault should "
                         "answer `unavailable`)")
    if target == "db" and not row.extra.get("failed_sends") and row.ready_503_s is not None:
        row.notes.append(f"/readyz 503 at {row.ready_503_s:.1f} s while every write succeeded")
    if target == "redis" and row.ready_503_s is not None:
        row.missed.append("/readyz 503 on a Redis fault (documented: stays 200)")
    if row.sigterm is not None:
        if row.sigterm.killed:
            row.missed.append(f"SIGTERM: still running after {GRACE_S + KILL_AFTER_SLACK_S:g} s, SIGKILLed")
        elif row.sigterm.seconds > GRACE_S + SIGTERM_SLACK_S:
            row.missed.append(f"SIGTERM exit took {row.sigterm.seconds:.1f} s")
    for name, count in row.extra.get("tracebacks_in_logs", {}).items():
        if count:
            row.notes.append(f"{count} tracebacks in instance {name}'s log")
    if row.extra.get("crashed"):
        row.missed.append(f"instance {', '.join(row.extra['crashed'])} exited on its own")


# -- the table ---------------------------------------------------------------------------


def header(a: argparse.Namespace) -> str:
    return (
        f"`make chaos`, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.node()}, "
        f"{os.cpu_count()} cores. Two instances on MariaDB and a redis-server of their own, each "
        f"reached through a fault proxy; {a.pairs} pairs (senders on a, receivers on b) at "
        f"{a.rate:g} msg/s per sender, retrying until acked (ack deadline {a.ack_timeout:g} s); "
        f"{a.warm:g} s of load, then the fault for {a.seconds:g} s; SIGTERM to a "
        f"{a.seconds / 2:g} s into it. Servers: CHAT_CALL_TIMEOUT_S={CALL_TIMEOUT_S}, "
        f"CHAT_SHUTDOWN_GRACE_S={GRACE_S}, CHAT_RATE_LIMIT_PER_S=CHAT_RATE_LIMIT_BURST={RATE_LIMIT}. "
        "✗: a target missed."
    )


COLUMNS = ("fault", "acked", "stored", "lost", "duplicated", "internal", "no answer",
           "max ack latency s", "ok again after s", "/readyz 503 after s", "SIGTERM exit s")


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|---|" + "---:|" * (len(COLUMNS) - 1)]
    for r in rows:
        miss = " ".join(r.missed)

        def mark(text: str, *words: str) -> str:
            return f"{text} ✗" if any(w in miss for w in words) else text

        if r.error is not None:
            lines.append(f"| {r.fault} | " + " | ".join(["-"] * (len(COLUMNS) - 1)) + " |")
            continue
        stop = r.sigterm
        sigterm = ("-" if stop is None else
                   f"killed at {stop.seconds:.1f}" if stop.killed else f"{stop.seconds:.1f}")
        cells = [
            r.fault, str(r.acked), str(r.stored), mark(str(r.lost), "lost"),
            mark(str(r.duplicated), "duplicates"), str(r.internal), str(r.no_answer),
            "-" if r.max_ack_latency_s is None else
            f"{'≥ ' if r.max_ack_unanswered else ''}{r.max_ack_latency_s:.1f}",
            mark("not ok" if r.ok_again_s is None else f"{r.ok_again_s:.1f}", "ok again"),
            mark("-" if r.ready_503_s is None else f"{r.ready_503_s:.2f}", "/readyz"),
            mark(sigterm, "SIGTERM"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------


async def run(a: argparse.Namespace, faults: list[str]) -> tuple[list[Row], dict[str, Any]]:
    secret = secrets.token_urlsafe(48)
    logdir = ROOT / "data" / f"chaos-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    logdir.mkdir(parents=True, exist_ok=True)
    print(f"server logs: {logdir}", file=sys.stderr, flush=True)
    redis = OwnRedis(shutil.which("redis-server") or "redis-server", logdir)
    proxies: list[FaultProxy] = []
    instances: list[Instance] = []
    rows: list[Row] = []
    meta = {"logs": str(logdir)}

    async def stop_all() -> None:
        # Before the database is dropped: open transactions would hold it up.
        for inst in instances:
            inst.kill()
        for proxy in proxies:
            await proxy.close()
        redis.kill()

    async with own_database(secret) as database:
        meta["database"] = database
        mysql = mysql_connect_kwargs()
        try:
            await redis.start()
            db_proxy = FaultProxy(mysql["host"], mysql["port"])
            redis_proxy = FaultProxy("127.0.0.1", redis.port)
            proxies += [db_proxy, redis_proxy]
            await db_proxy.start()
            await redis_proxy.start()
            env = {
                **os.environ,
                "CHAT_DATABASE_URL": f"mysql://{mysql['user']}:{mysql['password']}@127.0.0.1:"
                                     f"{db_proxy.port}/{database}",
                "CHAT_REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
                "CHAT_JWT_SECRET": secret,
                "CHAT_CALL_TIMEOUT_S": str(CALL_TIMEOUT_S),
                "CHAT_SHUTDOWN_GRACE_S": str(GRACE_S),
                "CHAT_RATE_LIMIT_PER_S": RATE_LIMIT,
                "CHAT_RATE_LIMIT_BURST": RATE_LIMIT,
                "CHAT_LOG_LEVEL": "WARNING",
            }
            instances += [Instance(n, env, logdir / f"{n}.log") for n in ("a", "b")]
            rig = Rig(database, redis, db_proxy, redis_proxy, *instances)
            await asyncio.gather(*(i.start() for i in instances))
            await rig.ensure_ready(restart=False)
            for i, fault in enumerate(faults):
                try:
                    r = await play(fault, rig, a, secret)
                except Exception as e:  # noqa: BLE001 - one fault's failure is a row, not the end
                    r = Row.failed(fault, f"{type(e).__name__}: {e}")
                rows.append(r)
                print(f"  {fault}: acked {r.acked}, lost {r.lost}, duplicated {r.duplicated}; "
                      + ("; ".join(r.missed) or "every target met"), file=sys.stderr, flush=True)
                if i + 1 < len(faults):
                    try:
                        r.extra["before_next"] = await rig.ensure_ready(restart=r.ok_again_s is None)
                    except Exception as e:  # noqa: BLE001 - the table of what was played still prints
                        rows += [Row.failed(f, f"not played: {e}") for f in faults[i + 1:]]
                        break
                    r.notes += [f"before the next fault: {x}" for x in r.extra["before_next"]
                                if "started again" not in x]
        finally:
            await stop_all()
    return rows, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="", help=f"comma-separated faults, of: {', '.join(FAULTS)}")
    parser.add_argument("--pairs", type=int, default=20)
    parser.add_argument("--rate", type=float, default=10, help="msg/s per sender")
    parser.add_argument("--warm", type=float, default=3, help="seconds of load before the fault")
    parser.add_argument("--seconds", type=float, default=8, help="seconds the fault is on")
    parser.add_argument("--settle", type=float, default=2,
                        help="seconds every sender must stay ok to call it recovered")
    parser.add_argument("--recover", type=float, default=30,
                        help="seconds after the fault to wait for recovery, at most")
    parser.add_argument("--ack-timeout", type=float, default=10,
                        help="seconds a sender waits for an ack before retrying")
    parser.add_argument("--out", type=Path, default=None,
                        help="the JSON file (default bench/results/chaos-<date>.json)")
    a = parser.parse_args(argv)
    faults = [f.strip() for f in a.only.split(",") if f.strip()] or list(FAULTS)
    unknown = [f for f in faults if f not in FAULTS]
    if unknown:
        parser.error(f"unknown fault {', '.join(unknown)}; known: {', '.join(FAULTS)}")
    rows, meta = asyncio.run(run(a, faults))
    out = a.out or ROOT / "bench" / "results" / f"chaos-{datetime.now(UTC):%Y-%m-%d-%H%M}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in vars(a).items() if k != "out"}
    out.write_text(json.dumps({
        "when": datetime.now(UTC).isoformat(), "host": platform.node(), "settings": settings,
        "server_env": {"CHAT_CALL_TIMEOUT_S": CALL_TIMEOUT_S, "CHAT_SHUTDOWN_GRACE_S": GRACE_S,
                       "CHAT_RATE_LIMIT_PER_S": RATE_LIMIT},
        "faults": {k: WHAT[k] for k in KINDS + ("sigstop",)},
        "rows": [asdict(r) for r in rows], **meta,
    }, indent=1, default=str) + "\n")
    missed = [f"{r.fault}: {m}" for r in rows for m in r.missed]
    notes = [f"{r.fault}: {m}" for r in rows for m in r.notes]
    print(header(a) + "\n\n" + table(rows) + "\n")
    print("Targets missed:\n" + "\n".join(f"- {m}" for m in missed) if missed
          else "Every target met.")
    if notes:
        print("\nAlso seen:\n" + "\n".join(f"- {m}" for m in notes))
    print(f"raw figures: {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}",
          file=sys.stderr)
    return 2 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
