"""One user floods REST; everyone else carries on as if nothing happened.

The outside probe's case: one user looping over
``GET /api/conversations/{peer}/messages?limit=100`` (pages of 100 long
messages, ~400 KB each) slowed another user's SendMessage from 4 ms to 327 ms
at p50. The server runs as its own process with the default budgets, the
flooder as another (so that its client work is not measured as the server's),
and the quiet user's sends are timed from this one, idle and under the flood.
"""

from __future__ import annotations

import asyncio
import json
import signal
import statistics
import sys
import time

import pytest

from tests.support import Connect, Serve, make_token

pytestmark = pytest.mark.parametrize("database_url", ["mariadb"], indirect=True)

WINDOW_S = 1.0
WINDOWS = 8  # alternating: flood, quiet, flood, quiet...
FLOOD_LOOPS = 4
TEXT = "x" * 4000

# The flooder: FLOOD_LOOPS requests at a time, each loop as fast as answers come,
# until its stdin closes; then it prints what it got.
FLOODER = r"""
import asyncio, json, sys
import aiohttp

async def main(url, token, loops):
    counts, retry_after, refusal = {}, set(), None
    stop = asyncio.Event()
    stdin = asyncio.StreamReader()
    await asyncio.get_running_loop().connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)

    async def until_told():
        await stdin.read()
        stop.set()

    async def flood():
        nonlocal refusal
        while not stop.is_set():
            async with http.get(url) as r:
                body = await r.read()
                counts[r.status] = counts.get(r.status, 0) + 1
                if r.status == 429:
                    retry_after.add(r.headers.get("Retry-After"))
                    refusal = json.loads(body)

    told = asyncio.ensure_future(until_told())
    async with aiohttp.ClientSession(headers={"Authorization": "Bearer " + token}) as http:
        await asyncio.gather(*(flood() for _ in range(loops)))
    await told
    print(json.dumps({"counts": counts, "retry_after": sorted(retry_after), "refusal": refusal}))

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


async def test_a_rest_flood_costs_the_flooder_429s_and_nobody_else_anything(
    serve: Serve, connect: Connect
) -> None:
    server = await serve(CHAT_RATE_LIMIT_PER_S="20", CHAT_RATE_LIMIT_BURST="60")
    mallory, peer = await connect(server, "mallory"), await connect(server, "peer")
    for n in range(50):  # a long thread to page through: 100 messages of 4000 characters
        await mallory.ok("SendMessage", "mallory", "peer", TEXT)
        await peer.ok("SendMessage", "peer", "mallory", TEXT)
    quiet = await connect(server, "quiet")
    await connect(server, "friend")
    for _ in range(5):  # warm
        await quiet.ok("SendMessage", "quiet", "friend", "hello")
    await asyncio.sleep(3.0)  # mallory's budget refills: the flood starts with a full burst

    # At the lowest priority: an attacker's CPU is not the server's, and on a test
    # machine the flooder would otherwise take a core from the server and its database.
    flooder = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", sys.executable, "-c", FLOODER,
        f"{server.url}/api/conversations/peer/messages?limit=100", make_token("mallory"),
        str(FLOOD_LOOPS), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )
    # The flood comes and goes (the flooder stopped and continued by its pid), so
    # that both kinds of window see the same load from anything else on the machine.
    flooding = True
    times: dict[bool, list[float]] = {True: [], False: []}
    done = asyncio.Event()

    async def quiet_keeps_sending() -> None:
        while not done.is_set():
            during, started = flooding, time.perf_counter()
            await quiet.ok("SendMessage", "quiet", "friend", "hello")
            if flooding == during:
                times[during].append(time.perf_counter() - started)
            await asyncio.sleep(0.05)

    try:
        sending = asyncio.ensure_future(quiet_keeps_sending())
        for window in range(WINDOWS):
            flooding = window % 2 == 0
            flooder.send_signal(signal.SIGCONT if flooding else signal.SIGSTOP)
            await asyncio.sleep(WINDOW_S)
        flooder.send_signal(signal.SIGCONT)
        done.set()
        await sending
        assert flooder.stdin is not None
        flooder.stdin.close()
        out, _ = await asyncio.wait_for(flooder.communicate(), 30)
    finally:
        if flooder.returncode is None:
            flooder.send_signal(signal.SIGCONT)
            flooder.kill()
            await flooder.wait()
    result = json.loads(out)
    counts = {int(k): v for k, v in result["counts"].items()}

    flooded_s = WINDOW_S * WINDOWS / 2
    assert set(counts) == {200, 429}, counts
    assert counts[200] <= 60 + 20 * (WINDOW_S * WINDOWS + 1), f"past its budget: {counts}"
    assert counts[429] > 10 * counts[200], counts
    assert result["refusal"]["error"]["code"] == "rate_limited"
    assert all(int(s) >= 1 for s in result["retry_after"]), result["retry_after"]
    p50_quiet, p50_flood = statistics.median(times[False]), statistics.median(times[True])
    print(
        f"\nquiet's SendMessage p50: {p50_quiet * 1000:.1f} ms without the flood, "
        f"{p50_flood * 1000:.1f} ms under it ({p50_flood / p50_quiet:.2f}x), "
        f"{len(times[True])} + {len(times[False])} sends; the flooder in {flooded_s:.0f} s: {counts}"
    )
    # The target is 2x; a few ms of margin for a machine shared with other work.
    assert p50_flood <= 2 * p50_quiet + 0.005, (p50_quiet, p50_flood)
