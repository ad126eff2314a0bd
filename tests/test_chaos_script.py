"""`make chaos` (bench/chaos.py): one short fault end to end, and how the table marks a miss.

The script is run as `make chaos` runs it, as its own process with its own
MariaDB database, redis-server and server instances, so it cannot rot unseen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

from bench.chaos import Row, _failed, _ok_again, _writes_failing, judge, table
from bench.chaos_load import DISCONNECTED, OK, Attempt
from bench.chaos_parts import Exit, mysql_rows
from tests.support import mysql_admin, service_missing

ROOT = Path(__file__).resolve().parent.parent
# Setup, 1 s of load, 2 s of fault, recovery and teardown take ~10 s on a quiet machine.
SCRIPT_DEADLINE_S = 120


def test_a_short_database_refusal_is_played_and_reported(tmp_path: Path) -> None:
    try:
        asyncio.run(mysql_admin("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - any failure to reach it means "absent"
        service_missing("MariaDB", e)
    if shutil.which("redis-server") is None:
        service_missing("redis-server", "not on PATH; apt-get install redis-server")
    out = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "chaos.py"), "--only", "db-refuse", "--pairs", "4",
         "--warm", "1", "--seconds", "2", "--settle", "1", "--recover", "15", "--out", str(out)],
        capture_output=True, text=True, timeout=SCRIPT_DEADLINE_S, cwd=ROOT, check=False,
    )
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr[-3000:]}"
    assert "| fault | acked | stored | lost | duplicated | internal |" in done.stdout
    assert "\n| db-refuse | " in done.stdout and "Every target met." in done.stdout

    report = json.loads(out.read_text())
    (row,) = report["rows"]
    outcomes = row["extra"]["outcomes"]
    assert outcomes.get("unavailable", 0) > 0, f"the refusal was never felt: {outcomes}"
    assert row["acked"] > 20 and row["lost"] == 0 and row["duplicated"] == 0
    assert row["stored"] >= row["acked"]
    assert row["ready_503_s"] is not None, "/readyz never answered 503 while the database refused"
    assert row["ok_again_s"] is not None and row["sigterm"]["killed"] is False
    # The database the script made for itself was dropped at the end.
    found = asyncio.run(mysql_rows("SHOW DATABASES LIKE %s", None, (report["database"],)))
    assert found == [], f"{report['database']} was left behind"


def _attempt(started: float, outcome: str, took: float = 0.05) -> Attempt:
    return Attempt("s0", "m0", started, started + took, outcome, "id" if outcome == OK else None)


def test_recovery_and_writes_failing_are_read_from_the_attempts() -> None:
    # Fault on at 10, off at 18: failures until 19.0, then ok again at 19.3.
    attempts = [_attempt(9.0, OK), _attempt(10.1, "unavailable"), _attempt(13.0, "unavailable"),
                _attempt(18.95, "unavailable"), _attempt(19.25, OK), _attempt(19.5, OK)]
    assert round(_ok_again(attempts, 10.0, 18.0), 2) == 1.3
    assert _writes_failing(attempts, attempts[1:4], 10.0) == 10.1  # nothing acked for 2 s after
    # A send that hung until SIGTERM (at 14) closed its socket failed; one sent after it
    # only raced the close.
    hung, raced = _attempt(12.0, DISCONNECTED, took=2.5), _attempt(14.2, DISCONNECTED)
    assert [_failed(x, 14.0) for x in (hung, raced)] == [True, False]
    # A lone failure the other sends get past is not "writes failing".
    blip = [_attempt(10.1, "unavailable"), _attempt(10.3, OK), _attempt(15.0, OK)]
    assert _writes_failing(blip, blip[:1], 10.0) is None
    assert _ok_again([_attempt(9.0, OK), _attempt(12.0, OK)], 10.0, 18.0) == 0.0


def test_a_missed_target_is_marked_in_the_table() -> None:
    hung = Exit(seconds=8.0, code=-9, killed=True)
    row = Row("db-freeze", acked=100, stored=98, lost=2, duplicated=0, internal=0, no_answer=3,
              max_ack_latency_s=6.0, max_ack_unanswered=True, ok_again_s=None, ready_503_s=2.5,
              writes_failed_s=0.1, sigterm=hung)
    judge(row, "db", argparse.Namespace(recover=30))
    assert row.missed == ["2 acked messages lost", "answers not ok again within 30 s",
                          "/readyz 503 2.40 s after writes failed",
                          "SIGTERM: still running after 8 s, SIGKILLed"]
    line = table([row]).splitlines()[-1]
    assert line == ("| db-freeze | 100 | 98 | 2 ✗ | 0 | 0 | 3 | ≥ 6.0 | not ok ✗ | 2.50 ✗ "
                    "| killed at 8.0 ✗ |")
