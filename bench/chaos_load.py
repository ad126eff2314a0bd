"""The steady load `make chaos` plays its faults under (bench/chaos.py).

PAIRS sender/receiver pairs of python-socketio clients. Each sender sends with
a unique clientMessageId and waits for the ack (with a deadline) before the
next, at a steady RATE per second; a send that answers with an error or not at
all is retried with the same clientMessageId until it is acked, as a client
following the protocol does. Every attempt is recorded: when it started and
ended, and how it ended. Receivers acknowledge each message with
MessageReceived, as apps do. A client whose socket drops connects again, to the
first instance that takes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import jwt
import socketio

OK = "ok"
# Outcomes of an attempt that got no answer (the rest are the envelope's error codes).
NO_ANSWER = "no_answer"  # the ack deadline passed
DISCONNECTED = "disconnected"  # the socket dropped while the call waited
# Between tries after an error answer, and between rounds of failed connects.
RETRY_PAUSE_S = 0.2
CONNECT_PAUSE_S = 0.5
CONNECT_TIMEOUT_S = 3.0
TOKEN_TTL_S = 3600


def now() -> float:
    return time.monotonic()


@dataclass(frozen=True)
class Attempt:
    """One SendMessage call, or one connect that failed."""

    sender: str
    cid: str | None  # None: a failed connect
    started: float
    ended: float
    outcome: str  # OK, an error code, NO_ANSWER or DISCONNECTED
    message_id: str | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK

    @property
    def answered(self) -> bool:
        return self.outcome not in (NO_ANSWER, DISCONNECTED) and self.cid is not None


class Client:
    """One socket on /chat that notices at once when it drops."""

    def __init__(self, user: str, secret: str) -> None:
        self.user = user
        self.secret = secret
        self.sio = socketio.AsyncClient(reconnection=False)
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.refusal: str | None = None
        self.sio.on("disconnect", self._on_disconnect, namespace="/chat")
        self.sio.on("connect_error", self._on_connect_error, namespace="/chat")

    async def _on_disconnect(self, *_reason: Any) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    async def _on_connect_error(self, data: Any) -> None:
        self.refusal = data.get("code") if isinstance(data, dict) else str(data)

    def token(self) -> str:
        claims = {"id": self.user, "exp": int(time.time()) + TOKEN_TTL_S}
        return jwt.encode(claims, self.secret, algorithm="HS256")

    async def connect(self, url: str) -> bool:
        try:
            await asyncio.wait_for(
                self.sio.connect(url, namespaces=["/chat"], auth={"token": self.token()},
                                 transports=["websocket"], wait_timeout=CONNECT_TIMEOUT_S),
                CONNECT_TIMEOUT_S + 1,
            )
        except Exception:  # noqa: BLE001 - refused, unreachable or hung: all mean "not here"
            await self.close()
            return False
        return True

    @property
    def connected(self) -> bool:
        return self.sio.connected and not self.gone.done()

    async def call(self, timeout_s: float, event: str, *args: Any) -> tuple[str, Any]:
        """(OK, data), (error code, None), (NO_ANSWER, None) or (DISCONNECTED, None)."""
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        def on_ack(*reply: Any) -> None:
            if not answer.done():
                answer.set_result(reply[0] if reply else None)

        try:
            await self.sio.emit(event, args, namespace="/chat", callback=on_ack)
        except Exception:  # noqa: BLE001 - the socket is gone
            return DISCONNECTED, None
        await asyncio.wait({answer, self.gone}, timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)
        if not answer.done():
            answer.cancel()
            return (DISCONNECTED if self.gone.done() else NO_ANSWER), None
        reply = answer.result()
        if isinstance(reply, dict) and reply.get("ok") is True:
            return OK, reply.get("data")
        error = reply.get("error") if isinstance(reply, dict) else None
        return str(error.get("code") if isinstance(error, dict) else "malformed_ack"), None

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.sio.disconnect(), 2)
        except Exception:  # noqa: BLE001 - closing a broken socket may fail; it is gone either way
            pass


@dataclass
class SenderState:
    last_ok: float = 0.0
    busy_since: float | None = None  # an attempt is waiting for its answer since then


@dataclass
class Load:
    """The pairs of one fault's run: users `{tag}-s{i}` send to `{tag}-r{i}`."""

    tag: str
    send_urls: list[str]  # senders try these in order (instance a first)
    receive_urls: list[str]  # receivers likewise (instance b first)
    secret: str
    pairs: int
    rate_per_s: float
    ack_timeout_s: float
    attempts: list[Attempt] = field(default_factory=list)
    acked: dict[tuple[str, str], str] = field(default_factory=dict)  # (sender, cid) -> id
    pending: dict[str, str] = field(default_factory=dict)  # sender -> cid not acked yet
    received: set[str] = field(default_factory=set)
    receipts: Counter[str] = field(default_factory=Counter)
    state: dict[str, SenderState] = field(default_factory=dict)
    _stopping: bool = False
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _clients: list[Client] = field(default_factory=list)

    def senders(self) -> list[str]:
        return [f"{self.tag}-s{i}" for i in range(self.pairs)]

    async def start(self, deadline_s: float = 30) -> None:
        """Connect every receiver, then every sender, and start sending."""
        receivers = [Client(f"{self.tag}-r{i}", self.secret) for i in range(self.pairs)]
        for r in receivers:
            r.sio.on("ReceiveMessage", self._receipt_for(r), namespace="/chat")
        await asyncio.gather(*(self._first_connect(r, self.receive_urls, deadline_s) for r in receivers))
        self._tasks += [asyncio.ensure_future(self._keep_receiving(r)) for r in receivers]
        senders = [Client(user, self.secret) for user in self.senders()]
        await asyncio.gather(*(self._first_connect(s, self.send_urls, deadline_s) for s in senders))
        for i, s in enumerate(senders):
            self.state[s.user] = SenderState()
            self._tasks.append(asyncio.ensure_future(self._send(s, f"{self.tag}-r{i}")))

    async def _first_connect(self, client: Client, urls: list[str], deadline_s: float) -> None:
        give_up = now() + deadline_s
        while not await client.connect(urls[0]):
            if now() > give_up:
                raise RuntimeError(f"{client.user} could not connect to {urls[0]} "
                                   f"within {deadline_s} s ({client.refusal})")
            await asyncio.sleep(CONNECT_PAUSE_S)
        self._clients.append(client)

    async def _reconnect(self, client: Client, urls: list[str], record: bool,
                         receiving: bool = False) -> Client | None:
        """A new socket for the same user on the first instance that takes it; None once stopping."""
        while not self._stopping:
            started = now()
            for url in urls:
                fresh = Client(client.user, client.secret)
                if receiving:  # before connecting: a message right after the handshake counts too
                    fresh.sio.on("ReceiveMessage", self._receipt_for(fresh), namespace="/chat")
                if await fresh.connect(url):
                    self._clients.append(fresh)
                    return fresh
            if record:  # no instance took it: a failure the user sees (one that did is a failover)
                self.attempts.append(Attempt(client.user, None, started, now(),
                                             f"connect:{fresh.refusal or 'failed'}"))
            await asyncio.sleep(CONNECT_PAUSE_S)
        return None

    async def _send(self, first: Client, receiver: str) -> None:
        user = first.user
        state = self.state[user]
        client: Client | None = first
        n = 0
        next_at = now()
        while not self._stopping and client is not None:
            if not client.connected:
                await client.close()
                client = await self._reconnect(client, self.send_urls, record=True)
                continue
            cid = f"m{n}"
            self.pending[user] = cid
            state.busy_since = started = now()
            outcome, data = await client.call(
                self.ack_timeout_s, "SendMessage", user, receiver, f"{user} {cid}", cid
            )
            state.busy_since = None
            self.attempts.append(Attempt(user, cid, started, now(), outcome,
                                         str(data) if outcome == OK else None))
            if outcome != OK:
                if outcome not in (NO_ANSWER, DISCONNECTED):
                    await asyncio.sleep(RETRY_PAUSE_S)  # an error answer: a polite client waits a little
                continue  # the same clientMessageId again
            self.acked[(user, cid)] = str(data)
            del self.pending[user]
            state.last_ok = now()
            n += 1
            # A steady rate, not a closed loop: behind schedule (after an outage), start afresh.
            next_at = max(next_at + 1 / self.rate_per_s, now())
            await asyncio.sleep(next_at - now())

    def _receipt_for(self, receiver: Client) -> Any:
        async def on_message(_sender: str, _text: str, message_id: str, *_rest: Any) -> None:
            self.received.add(message_id)
            # Not awaited by the handler: a slow receipt must not hold up the next message.
            task = asyncio.ensure_future(self._receipt(receiver, message_id))
            self._tasks.append(task)

        return on_message

    async def _receipt(self, receiver: Client, message_id: str) -> None:
        outcome, _ = await receiver.call(self.ack_timeout_s, "MessageReceived", message_id)
        self.receipts[outcome] += 1

    async def _keep_receiving(self, client: Client) -> None:
        while not self._stopping:
            await asyncio.wait({client.gone}, timeout=0.5)
            if client.gone.done() and not self._stopping:
                await client.close()
                fresh = await self._reconnect(client, self.receive_urls, record=False,
                                              receiving=True)
                if fresh is None:
                    return
                client = fresh

    def recovered_since(self, since: float, stuck_s: float) -> bool:
        """Every sender has been acked after `since` and after the last failure, and none
        is waiting longer than `stuck_s` for an answer."""
        failures = [a.ended for a in self.attempts if not a.ok]
        after = max([since, *failures])
        t = now()
        return all(
            s.last_ok > after and (s.busy_since is None or t - s.busy_since < stuck_s)
            for s in self.state.values()
        )

    async def stop(self, deadline_s: float) -> None:
        """Stop sending; calls still waiting end by their own deadline (or are cancelled)."""
        self._stopping = True
        _, late = await asyncio.wait(self._tasks, timeout=deadline_s) if self._tasks else ((), ())
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in self._clients))
