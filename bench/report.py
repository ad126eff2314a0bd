"""What a `make bench` run prints (one Markdown table, bench/README.md quotes it)
and what it keeps (bench/results/<date>-<name>.json: every round, the machine,
the commit, the settings)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from targets import BENCH, MYSQL, ROOT, TARGETS, mysql

RESULTS = BENCH / "results"
LABELS = {t.key: t.label for t in TARGETS}
RELAY_KEYS = [t.key for t in TARGETS if t.key != "server"]
# The baseline README.md and bench/README.md quote: the relay with the same knobs as the server.
QUOTED = "b"


def spread(values: list[float], digits: int = 0) -> str:
    """The median, and the min-max when there is more than one value: `2,184 (1,900–2,300)`."""
    if not values:
        return "—"
    f = f"{{:,.{digits}f}}"
    median = f.format(statistics.median(values))
    if len(values) == 1:
        return median
    return f"{median} ({f.format(min(values))}–{f.format(max(values))})"


def median(values: list[float]) -> str:
    return f"{statistics.median(values):.1f}" if values else "—"


def ratio_cell(server: list[float], other: list[float], lower_is_better: bool = False) -> str:
    """The server's median over the target's, and the min-max of the per-round ratios.

    Rounds are interleaved, so round i of the server and round i of a target ran
    minutes apart under much the same machine: their ratio is the paired figure.
    """
    if not server or not other:
        return "—"
    median = statistics.median(server) / statistics.median(other)
    paired = [s / o for s, o in zip(server, other, strict=False) if o]
    text = f"{median:.2f}"
    if len(paired) > 1:
        text += f" ({min(paired):.2f}–{max(paired):.2f})"
    return text


def column(r: dict[str, Any], phase: str, key: str, field: str) -> list[float]:
    return [x[field] for x in r.get(phase, {}).get(key, []) if x.get(field) is not None]


def report(doc: dict[str, Any]) -> str:
    """The table of a run, from its results document (a fresh one, or one read back from a file)."""
    r, a, m = doc["results"], argparse.Namespace(**doc["settings"]), doc["machine"]
    started = datetime.fromisoformat(doc["date"])
    lines = [f"{started:%Y-%m-%d %H:%M} UTC, {m['host']}, {m['cores']} cores, database {a.db}, "
             f"commit {doc['git']['commit'][:10]}{' (uncommitted changes)' if doc['git']['dirty'] else ''}; "
             f"load average {m['loadavg_at_start']} at the start, {m['loadavg_at_end']} at the end", ""]
    if "failed" in r:
        lines += [f"**The run failed** ({r['failed']}): what follows is what it measured before.", ""]
    if "closed" in r:
        lines += _load_table(r, a)
    if "group" in r:
        lines += ["", *_group_table(r, a)]
    if "cluster" in r:
        lines += _cluster_table(r["cluster"], a)
    if r.get("queries"):
        queries = {int(rows): times for rows, times in r["queries"].items()}  # JSON keys are strings
        sizes = sorted(queries)
        lines += ["", "| query (median ms) | " + " | ".join(f"{n:,} rows" for n in sizes) + " | ratio |",
                  "|---|" + "---|" * (len(sizes) + 1)]
        for q in ("history", "conversations", "sync_recent", "sync_start", "group_list"):
            if not all(q in queries[n] for n in sizes):
                continue  # a run from before the row existed
            values = [queries[n][q] for n in sizes]
            lines.append(f"| {q} | " + " | ".join(f"{v:.2f}" for v in values)
                         + f" | {values[-1] / values[0]:.2f} |")
    if r.get("group_writes"):
        w = r["group_writes"]
        lines += ["", "| rows written (MariaDB's own counters) | "
                  + " | ".join(f"group of {int(k):,}" for k in w) + " |",
                  "|---|" + "---|" * len(w),
                  "| per group message sent | " + " | ".join(f"{v['rows_per_message']:.1f}" for v in w.values()) + " |",
                  "| per member reading 100 messages | "
                  + " | ".join(f"{v['rows_per_read_of_100']:.1f}" for v in w.values()) + " |"]
    return "\n".join(lines)


def _load_table(r: dict[str, Any], a: argparse.Namespace) -> list[str]:
    keys = list(r["closed"])

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(cell(k) for k in keys) + " |"

    def ms(phase: str) -> Any:
        return lambda k: f"{median(column(r, phase, k, 'p50'))} / {median(column(r, phase, k, 'p99'))}"

    def total(phase: str, field: str) -> Any:
        return lambda k: f"{sum(column(r, phase, k, field)):,.0f}"

    rates = {k: column(r, "closed", k, "rate") for k in keys}
    cpus = {k: column(r, "closed", k, "cpu_us_per_msg") for k in keys}
    n = len(rates[keys[0]])
    lines = [
        f"{n} interleaved rounds (server, a, b, c, ...): median (min–max) of the rounds.", "",
        "| measure | " + " | ".join(LABELS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
        row(f"closed loop, {a.pairs} pairs × {a.inflight} in flight: acked msg/s", lambda k: spread(rates[k])),
        row("closed loop: ack p50 / p99 ms", ms("closed")),
        row("closed loop: CPU µs per message (the target's process)", lambda k: spread(cpus[k])),
        row("closed loop: errors, all rounds", total("closed", "errors")),
        row(f"open loop, {a.clients:,} clients offered {a.rate} msg/s: acked msg/s",
            lambda k: spread(column(r, "open", k, "rate"))),
        row("open loop: ack p50 / p99 ms", ms("open")),
        row("open loop: errors, all rounds", total("open", "errors")),
        # The open loop alone keeps well under the two cores busy: more is other people's work.
        row("open loop: whole machine busy, cores",
            lambda k: spread(column(r, "open", k, "machine_busy_cores"), 2)),
    ]
    if "connect" in r:
        lines.append(row(f"{a.connects:,} clients connecting at once: s (refused)",
                         lambda k: f"{r['connect'][k]['seconds']:.1f} ({r['connect'][k]['refused']})"))
    if "idle" in r:
        lines.append(row(f"KiB RSS per idle connection, {a.connects:,} open, fresh process",
                         lambda k: f"{r['idle'][k]['idle_kib']:.0f}"
                         + (f" ({r['idle'][k]['idle_refused']} refused)" if r["idle"][k]["idle_refused"] else "")))
    if "peak_rss_mib" in r:
        lines.append(row("peak RSS MiB", lambda k: f"{r['peak_rss_mib'][k]:.0f}"))
    lines += [
        row("**closed loop msg/s, this server ÷ column** (per-round min–max)",
            lambda k: "—" if k == "server" else
            (f"**{ratio_cell(rates['server'], rates[k])}**" if k == QUOTED else ratio_cell(rates["server"], rates[k]))),
        row("closed loop CPU per message, this server ÷ column (below 1: cheaper)",
            lambda k: "—" if k == "server" else ratio_cell(cpus["server"], cpus[k])),
    ]
    return lines


def _group_table(r: dict[str, Any], a: argparse.Namespace) -> list[str]:
    keys = list(r["group"])
    skipped = {k: next((x["skipped"] for x in r["group"][k] if x.get("skipped")), None) for k in keys}

    def row(label: str, cell: Any) -> str:
        return f"| {label} | " + " | ".join(skipped[k] or cell(k) for k in keys) + " |"

    rates = {k: column(r, "group", k, "rate") for k in keys}
    lines = [
        "| measure | " + " | ".join(LABELS[k] for k in keys) + " |",
        "|---|" + "---|" * len(keys),
        row(f"group of {a.members:,}, 1 sender × {a.group_inflight} in flight"
            f"{', receipts on' if a.receipts else ''}: deliveries/s", lambda k: spread(rates[k])),
        row("group: send → last member p50 / p99 ms",
            lambda k: f"{median(column(r, 'group', k, 'p50'))} / {median(column(r, 'group', k, 'p99'))}"),
        row("group: errors / not delivered to every member, all rounds",
            lambda k: f"{sum(column(r, 'group', k, 'errors')):.0f} / {sum(column(r, 'group', k, 'incomplete')):.0f}"),
    ]
    if skipped["server"] is None:
        lines.append(row("group deliveries/s, this server ÷ column",
                         lambda k: "—" if k == "server" else ratio_cell(rates["server"], rates[k])))
    return lines


def _cluster_table(c: dict[str, Any], a: argparse.Namespace) -> list[str]:
    lines = [f"| closed loop, {a.pairs} pairs x {a.inflight} in flight, MariaDB | msg/s | "
             "ack p50 / p99 ms | errors |", "|---|---|---|---|"]
    for key, label in (("single", "one instance"),
                       ("backplane", "one instance, Redis backplane on"),
                       ("cross", "two instances: senders on a, receivers on b")):
        x = c[key]
        lines.append(f"| {label} | {x['rate']:.0f} | {x['p50']:.1f} / {x['p99']:.1f} | {x['errors']} |")
    return lines


# -- the raw results file ------------------------------------------------------


def document(r: dict[str, Any], a: argparse.Namespace, started: datetime, load_at_start: str) -> dict[str, Any]:
    """Everything a run's table comes from, and what it ran on."""
    return {
        "date": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "git": git_commit(),
        "machine": {**machine(a.db), "loadavg_at_start": load_at_start},
        "settings": vars(a),
        "targets": {t.key: t.label for t in TARGETS},
        "results": r,
    }


def save(doc: dict[str, Any]) -> Path:
    """bench/results/<date>-<name>.json, with the table as printed."""
    a, started = argparse.Namespace(**doc["settings"]), datetime.fromisoformat(doc["date"])
    parts = ["cluster" if a.cluster else a.db, "quick" if a.quick else "", f"{started:%H%M}"]
    name = a.name or "-".join(p for p in parts if p)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{started:%Y-%m-%d}-{name}.json"
    # The numbers first: should the table fail to render, they are kept all the same.
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    path.write_text(json.dumps({**doc, "table": report(doc)}, indent=1, default=str) + "\n")
    return path


def git_commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
            # Uncommitted changes to what runs: not the run's own output, not the docs.
            "dirty": bool(git("status", "--porcelain", "--", ".", ":!bench/results", ":!*.md"))}


def machine(db: str) -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor())
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    info: dict[str, Any] = {
        "host": platform.node(), "cpu": model, "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 2**20, 1), "kernel": platform.release(),
        "python": platform.python_version(), "loadavg_at_end": loadavg(),
        "node": subprocess.run(["node", "--version"], capture_output=True, text=True, check=False).stdout.strip(),
        "python_packages": {p: _version(p) for p in ("python-socketio", "python-engineio", "aiohttp",
                                                      "uvloop", "orjson", "tortoise-orm", "asyncmy")},
        "npm_packages": {p: _npm_version(p) for p in ("socket.io", "jsonwebtoken")},
    }
    if db == "mariadb":
        info["mariadb"] = str(asyncio.run(mysql("SELECT VERSION()"))[0][0])
        info["mariadb_url"] = MYSQL.split("@")[-1]  # no password
    else:
        import sqlite3

        info["sqlite"] = sqlite3.sqlite_version
    return info


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _npm_version(package: str) -> str | None:
    manifest = BENCH / "node_modules" / package / "package.json"
    return json.loads(manifest.read_text())["version"] if manifest.is_file() else None
