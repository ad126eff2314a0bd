"""Group commit: callers add work and await their own result; one processor runs it in batches.

The shape of Synapse's ``BatchingQueue``: the processor starts on the next
loop tick with everything queued so far, and keeps going until the queue is
drained. Batches form from concurrency, not from a timer, so a lone item is
never delayed, and they are bounded in size.

A batch may hand on before it ends: its processor calls ``hand_on()`` when
the rest of its work is waiting, not working (a COMMIT waiting for the
disk), and the next batch, formed meanwhile, starts then. At most
``max_in_flight`` batches run at once (one: each starts when the previous
has ended).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar


I = TypeVar("I")  # noqa: E741 - an item
R = TypeVar("R")

@dataclass(eq=False, slots=True)
class _Entry(Generic[I, R]):
    item: I
    future: asyncio.Future[R]
    deadline: float  # when it is dropped if no batch has taken it yet


class Abandoned(Exception):
    """An item whose caller stopped waiting before its batch started: it was never run."""


class Interrupted(Exception):
    """An item whose batch was cancelled (shutdown) while it ran: its outcome is unknown."""


class BatchingQueue(Generic[I, R]):
    def __init__(
        self,
        name: str,
        process: Callable[[list[I], Callable[[], None]], Awaitable[Sequence[R | BaseException]]],
        max_batch: int,
        on_batch: Callable[[int], None] | None = None,
        max_in_flight: int = 1,
    ) -> None:
        self._name = name
        self._process = process
        self._max_batch = max_batch
        self._on_batch = on_batch
        self._max_in_flight = max_in_flight
        self._queue: deque[_Entry[I, R]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def submit(self, item: I, timeout_s: float) -> R:
        """Queue `item` and wait for its result.

        If `timeout_s` passes while the item still waits for a batch, it is
        dropped and ``Abandoned`` raised: nothing of it ran. Once its batch has
        started, the caller waits for the batch's answer, whatever it is: an
        item that may have been committed is never reported as not done.
        Callers of one queue pass the same `timeout_s` (items expire in order).
        """
        if self._closed:
            raise Abandoned(f"{self._name}: shut down")
        loop = asyncio.get_running_loop()
        entry: _Entry[I, R] = _Entry(item, loop.create_future(), loop.time() + timeout_s)
        self._queue.append(entry)
        if self._runner is None:
            self._runner = loop.create_task(self._run())
        if self._sweeper is None:
            self._sweeper = loop.call_at(entry.deadline, self._sweep)
        return await entry.future

    def _sweep(self) -> None:
        """Drop the items whose time ran out before their batch started.

        One timer per queue, not one per item: items wait in arrival order with
        the same limit, so the oldest is always the next to expire. (A timer per
        item left tens of thousands of cancelled timers in asyncio's heap.)
        """
        self._sweeper = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        while self._queue and self._queue[0].deadline <= now:
            entry = self._queue.popleft()
            _settle(entry.future, Abandoned(f"{self._name}: not started in time"))
        if self._queue:
            self._sweeper = loop.call_at(self._queue[0].deadline, self._sweep)

    def __len__(self) -> int:
        return len(self._queue)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        in_flight = self._in_flight
        try:
            while self._queue or in_flight:
                if not self._queue or len(in_flight) >= self._max_in_flight:
                    await asyncio.wait(set(in_flight), return_when=asyncio.FIRST_COMPLETED)
                    continue
                # Out of the queue means taken: the sweeper no longer sees it.
                batch = [self._queue.popleft() for _ in range(min(self._max_batch, len(self._queue)))]
                if self._on_batch is not None:
                    self._on_batch(len(batch))
                handed_on = asyncio.Event()
                task = loop.create_task(self._one(batch, handed_on.set))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                # The next batch forms while this one works; it may start once
                # this one hands on, or ends.
                waiting = loop.create_task(handed_on.wait())
                await asyncio.wait({task, waiting}, return_when=asyncio.FIRST_COMPLETED)
                waiting.cancel()
        finally:
            for task in list(in_flight):  # cancelled (shutdown): so are the batches running
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
            self._runner = None
            while self._queue:  # cancelled (shutdown) with work still queued
                _settle(self._queue.popleft().future, Abandoned(f"{self._name}: shut down"))

    async def _one(self, batch: list[_Entry[I, R]], hand_on: Callable[[], None]) -> None:
        """Run one batch and answer each of its callers."""
        try:
            outcomes = await self._process([e.item for e in batch], hand_on)
        except Exception as exc:  # the whole batch failed: each of its callers hears why
            for entry in batch:
                _settle(entry.future, exc)
            return
        except BaseException:  # cancelled mid-batch (shutdown)
            for entry in batch:
                _settle(entry.future, Interrupted(f"{self._name}: cancelled mid-batch"))
            raise
        for entry, outcome in zip(batch, outcomes, strict=True):
            _settle(entry.future, outcome)

    async def close(self, timeout_s: float) -> bool:
        """Shutdown: take nothing new; let the queue drain so every caller gets its answer.

        Returns False when it has not drained within `timeout_s` (see cancel).
        """
        self._closed = True
        if self._runner is None:
            return True
        done, _ = await asyncio.wait({self._runner}, timeout=timeout_s)
        return bool(done)

    async def cancel(self) -> None:
        """Stop the batch in flight; its callers get Interrupted, the queued ones Abandoned."""
        runner = self._runner
        if runner is not None:
            runner.cancel()
            await asyncio.gather(runner, return_exceptions=True)


def _settle(future: asyncio.Future[R], outcome: R | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
        # A caller that stopped waiting never reads it; don't let asyncio complain.
        future.add_done_callback(lambda f: f.exception())
    else:
        future.set_result(outcome)
