"""Clients that try to cost the server more than their share: each is cut off, alone.

A reader that never reads, frames engine.io cannot decode, sessions that never
authenticate (one at a time or a thousand from one address), and HTTP requests
that never finish. Each test runs a real `chat-server serve` process, so what
is measured (its memory, its file descriptors, its log) is the server's own.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
import time
from pathlib import Path

import aiohttp
import pytest

from tests.support import (
    eventually,
    Connect,
    RawSocket,
    Serve,
    make_token,
)

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def metric(url: str, line_start: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as r:
        text = await r.text()
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


class StubbornReader:
    """A WebSocket client that sends and never reads, with a tiny receive buffer.

    Written on a bare socket so that nothing (no client library's buffer)
    reads on its behalf: what the server sends piles up at the server.
    """

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += self.sock.recv(1)  # the upgrade answer only, byte by byte
        assert b" 101 " in head.split(b"\r\n", 1)[0], head

    def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        n = len(payload)
        if n < 126:
            header = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def closed(self) -> bool:
        """Whether the server has dropped the connection (a reset, or EOF behind the data)."""
        try:
            self.sock.setblocking(False)
            while True:
                data = self.sock.recv(1 << 20)
                if not data:
                    return True
        except BlockingIOError:
            return False
        except OSError:
            return True
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


async def test_a_reader_that_never_reads_is_cut_off_at_its_buffer(
    serve: Serve, connect: Connect
) -> None:
    served = await serve(CHAT_MAX_SOCKET_BUFFER=str(1024 * 1024))
    alice = await connect(served, "alice")
    text = "long message " * 230  # ~3,000 characters: a Sync page of 500 is ~1.6 MB
    await asyncio.gather(
        *(alice.ok("SendMessage", "alice", "bob", text, f"m{i}") for i in range(500))
    )
    before = rss_kib(served.proc.pid)

    stubborn = StubbornReader(served.port)
    try:
        stubborn.send('40/chat,{"token":"%s"}' % make_token("bob"))
        for n in range(40):  # 64 MB of answers if they were all kept
            try:
                stubborn.send(f'42/chat,{n}["Sync",null,500]')
            except OSError:
                break  # cut off already
            await asyncio.sleep(0.02)
        await eventually(
            lambda: metric(served.url, 'chat_sessions_cut_off_total{why="slow consumer"}'),
            "the slow consumer to be cut off",
            10,
        )
        await eventually(_async(stubborn.closed), "its connection to close", 5)
        grew_mib = (rss_kib(served.proc.pid) - before) / 1024
        # Its buffer (1 MiB), what sits in the kernel and one page being encoded: not 1.4 GB.
        assert grew_mib < 48, f"RSS grew {grew_mib:.0f} MiB"
    finally:
        stubborn.close()
    # Everyone else is served as before.
    assert len(await alice.ok("GetMessageHistory", "alice", "bob", 0, 100)) == 100
    log = served.log_text()
    assert "Traceback" not in log
    assert log.count("a slow consumer") == 1


def _async(check):  # type: ignore[no-untyped-def]
    async def run() -> bool:
        return bool(check())

    return run


@pytest.mark.parametrize("authenticated", [False, True], ids=["before-token", "after-token"])
async def test_malformed_engine_io_frames_close_the_socket_with_one_line(
    serve: Serve, authenticated: bool
) -> None:
    served = await serve()
    frames = ["7", "8", "9", "", "\x00", "x", "0", "9" * 100, "\ufeff4"]
    for frame in frames:
        raw = await RawSocket.open(served.url)
        try:
            if authenticated:
                await raw.connect_chat(make_token("mallory"))
                assert (await raw.receive() or "").startswith("40/chat,")
            for _ in range(50):  # a flood of them: still one line
                try:
                    await raw.send(frame)
                except ConnectionResetError:
                    break
            assert await raw.closed_within(3), f"still open after {frame!r}"
        finally:
            await raw.close()
    log = served.log_text()
    assert "Traceback" not in log, log[-3000:]
    lines = [line for line in log.splitlines() if "malformed engine.io packet" in line]
    assert len(lines) == len(frames), lines


async def test_a_polling_post_engine_io_cannot_decode_is_refused_in_one_line(serve: Serve) -> None:
    served = await serve()
    bodies = [b"7", b"", b"\xff\xfe not utf-8", b"4hello\x1e8", b"bAAAA", b"d=4x"]
    async with aiohttp.ClientSession() as http:
        for body in bodies:
            url = f"{served.url}/socket.io/?EIO=4&transport=polling"
            async with http.get(url) as r:
                sid = (await r.text()).split('"sid":"')[1].split('"')[0]
            async with http.post(f"{url}&sid={sid}", data=body) as r:
                assert r.status == 400, (body, r.status)
            async with http.get(f"{url}&sid={sid}") as r:
                assert r.status == 400  # the session is gone
    log = served.log_text()
    assert "Traceback" not in log, log[-3000:]
    assert sum("closing engine.io session" in line for line in log.splitlines()) == len(bodies)


async def test_sessions_that_never_authenticate_free_their_descriptors_at_the_deadline(
    serve: Serve,
) -> None:
    served = await serve(CHAT_HANDSHAKE_TIMEOUT_S="3")
    baseline = open_fds(served.proc.pid)
    started = time.monotonic()
    sockets = list(await asyncio.gather(*(RawSocket.open(served.url) for _ in range(200))))
    try:
        assert time.monotonic() - started < 3, "opening took longer than the deadline"
        assert open_fds(served.proc.pid) >= baseline + 195  # give or take the odd file

        async def released() -> bool:
            return open_fds(served.proc.pid) <= baseline + 5

        await eventually(released, "the idle sessions' descriptors to be released", 8)
        assert time.monotonic() - started < 3 + 1.5  # the deadline plus at most a second
        for raw in sockets[:5]:
            assert await raw.receive(timeout=2) is None  # the TCP connection, not just CLOSE
    finally:
        await asyncio.gather(*(raw.close() for raw in sockets))


async def test_slow_and_idle_http_connections_are_closed_after_the_deadline(serve: Serve) -> None:
    served = await serve(CHAT_HTTP_IDLE_TIMEOUT_S="2")
    idle = socket.create_connection(("127.0.0.1", served.port))
    loris = socket.create_connection(("127.0.0.1", served.port))
    started = time.monotonic()
    try:
        loris.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        for sock in (idle, loris):
            sock.settimeout(0.5)
        closed: set[str] = set()
        while len(closed) < 2 and time.monotonic() - started < 6:
            loris.sendall(b"X")  # a header, a byte at a time
            for name, sock in (("idle", idle), ("loris", loris)):
                try:
                    if sock.recv(1024) == b"":
                        closed.add(name)
                except TimeoutError:
                    pass
                except OSError:
                    closed.add(name)
            await asyncio.sleep(0.2)
        assert closed == {"idle", "loris"}
        assert time.monotonic() - started < 3.5
    finally:
        idle.close()
        loris.close()


async def test_a_flood_of_unauthenticated_sessions_from_one_address_spares_everyone_else(
    serve: Serve, connect: Connect
) -> None:
    served = await serve()
    assert await metric(served.url, "process_max_fds") == await metric(
        served.url, "chat_max_fds_hard"
    )
    flood = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(local_addr=("127.0.0.2", 0), limit=0)
    )
    held: list[aiohttp.ClientWebSocketResponse] = []
    refused = 0
    try:
        async def one() -> None:
            nonlocal refused
            try:
                held.append(
                    await flood.ws_connect(f"{served.url}/socket.io/?EIO=4&transport=websocket")
                )
            except aiohttp.WSServerHandshakeError:
                refused += 1

        await asyncio.gather(*(one() for _ in range(1000)))
        assert len(held) == 256 and refused == 744  # CHAT_MAX_PENDING_PER_ADDRESS

        # Someone else, from another address, is unaffected.
        started = time.monotonic()
        alice, bob = await connect(served, "alice"), await connect(served, "bob")
        for n in range(20):
            await alice.ok("SendMessage", "alice", "bob", f"hello {n}")
        await bob.wait_for("ReceiveMessage", 20)
        assert time.monotonic() - started < 3
    finally:
        await asyncio.gather(*(ws.close() for ws in held), return_exceptions=True)
        await flood.close()
    log = served.log_text()
    assert log.count("refusing new sessions from 127.0.0.2") == 1
    assert "Traceback" not in log
