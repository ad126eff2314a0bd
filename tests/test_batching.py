"""The group-commit queue on its own: batch forming, per-item errors, time limits."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from app.batching import Abandoned, BatchingQueue


class Recorder:
    def __init__(self, delay_s: float = 0.0) -> None:
        self.batches: list[list[int]] = []
        self.delay_s = delay_s
        self.release = asyncio.Event()
        self.release.set()

    async def __call__(
        self, items: list[int], hand_on: Callable[[], None]
    ) -> list[int | BaseException]:
        self.batches.append(items)
        await self.release.wait()
        await asyncio.sleep(self.delay_s)
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_a_lone_item_runs_at_once_in_a_batch_of_one() -> None:
    work = Recorder()
    queue = BatchingQueue("t", work, max_batch=8)
    assert await asyncio.wait_for(queue.submit(1, 5), 0.5) == 10
    assert work.batches == [[1]]


async def test_items_that_arrive_while_a_batch_runs_go_together_bounded_in_size() -> None:
    work = Recorder()
    work.release.clear()
    queue = BatchingQueue("t", work, max_batch=4)
    first = asyncio.ensure_future(queue.submit(0, 5))
    await asyncio.sleep(0.01)  # batch [0] is running and held
    rest = [asyncio.ensure_future(queue.submit(i, 5)) for i in range(1, 11)]
    await asyncio.sleep(0.01)
    assert work.batches == [[0]], "one batch in flight at a time"
    work.release.set()
    assert await first == 0 and [await r for r in rest] == [i * 10 for i in range(1, 11)]
    assert work.batches == [[0], [1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]


async def test_one_items_error_does_not_fail_its_neighbours() -> None:
    queue = BatchingQueue("t", Recorder(), max_batch=8)
    results = await asyncio.gather(
        queue.submit(1, 5), queue.submit(-1, 5), queue.submit(2, 5), return_exceptions=True
    )
    assert results[0] == 10 and results[2] == 20
    assert isinstance(results[1], ValueError)


async def test_a_failing_batch_fails_each_of_its_items_and_the_next_batch_runs() -> None:
    calls = 0

    async def flaky(items: list[int], hand_on: Callable[[], None]) -> list[int]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database went away")
        return items

    queue = BatchingQueue("t", flaky, max_batch=8)
    failed = await asyncio.gather(queue.submit(1, 5), queue.submit(2, 5), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in failed)
    assert await queue.submit(3, 5) == 3


async def test_an_item_not_started_in_time_is_dropped_but_a_started_one_is_awaited() -> None:
    work = Recorder()
    work.release.clear()
    queue = BatchingQueue("t", work, max_batch=1)
    started = asyncio.ensure_future(queue.submit(1, 0.05))
    await asyncio.sleep(0)
    waiting = asyncio.ensure_future(queue.submit(2, 0.05))
    with pytest.raises(Abandoned):
        await waiting  # never ran
    await asyncio.sleep(0.1)
    assert not started.done(), "a started item waits for its batch past the time limit"
    work.release.set()
    assert await started == 10
    assert work.batches == [[1]], "the dropped item never reached the database"


async def test_a_batch_that_hands_on_lets_the_next_start_and_two_at_most_run() -> None:
    """The group commit's overlap: the next batch starts when the previous one's COMMIT waits."""
    running: list[int] = []
    most = 0
    gates: dict[int, asyncio.Event] = {}

    async def work(items: list[int], hand_on: Callable[[], None]) -> list[int]:
        nonlocal most
        running.append(items[0])
        most = max(most, len(running))
        hand_on()  # from here on, only waiting: the next batch may start
        gates.setdefault(items[0], asyncio.Event())
        await gates[items[0]].wait()
        running.remove(items[0])
        return [i * 10 for i in items]

    queue = BatchingQueue("t", work, max_batch=1, max_in_flight=2)
    calls = [asyncio.ensure_future(queue.submit(i, 5)) for i in range(4)]
    await asyncio.sleep(0.01)
    assert running == [0, 1], "the second started when the first handed on; the third waits"
    for i in range(4):
        gates.setdefault(i, asyncio.Event()).set()
        await asyncio.sleep(0.01)
    assert [await c for c in calls] == [0, 10, 20, 30]
    assert most == 2


async def test_a_batch_that_does_not_hand_on_runs_alone() -> None:
    work = Recorder()
    work.release.clear()
    queue = BatchingQueue("t", work, max_batch=1, max_in_flight=2)
    calls = [asyncio.ensure_future(queue.submit(i, 5)) for i in range(3)]
    await asyncio.sleep(0.01)
    assert work.batches == [[0]]
    work.release.set()
    assert [await c for c in calls] == [0, 10, 20]
