"""``BackpressureQueue`` on its own: full-queue strategies, bounded size, FIFO order, and the
parking of events whose concurrency key, trigger slot or rate-limit token is not free, without
holding up anyone else (DESIGN §3, steps 3 and 4)."""

from __future__ import annotations

import asyncio
from collections.abc import Hashable
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from sagaz.engine.backpressure import BackpressureQueue
from sagaz.engine.limits import TokenBucket
from sagaz.engine.work_item import WorkItem
from sagaz.testing import FakeClock


def trigger(
    trigger_id: str = "orders.on_order",
    *,
    max_concurrent: int | None = None,
    bucket: TokenBucket | None = None,
) -> Any:
    """The part of an ``ActiveTrigger`` the queue reads."""
    return SimpleNamespace(
        trigger_id=trigger_id, max_concurrent=max_concurrent, bucket=bucket, cluster=None
    )


ORDERS = trigger()


def item(name: str, key: Hashable | None = None, of: Any = ORDERS) -> WorkItem:
    return WorkItem(
        trigger=of,
        delivery=None,  # type: ignore[arg-type]  # the queue never touches the delivery
        key=name,
        saga_id=name,
        context={"name": name},
        concurrency_key=key,
    )


def names(items: list[WorkItem]) -> list[str]:
    return [i.key for i in items]


async def fill(queue: BackpressureQueue, *items: WorkItem) -> None:
    for each in items:
        assert (await queue.put(each)).accepted


async def take(queue: BackpressureQueue, count: int) -> list[WorkItem]:
    """The next ``count`` events that may start; fails if one of them cannot start now."""
    return [await asyncio.wait_for(queue.get(), 1) for _ in range(count)]


async def still_waiting(task: asyncio.Task[Any]) -> bool:
    """Let every ready task run; then whether ``task`` is still blocked."""
    for _ in range(20):
        await asyncio.sleep(0)
    return not task.done()


# -- full-queue strategies and size ----------------------------------------------------------
async def test_block_makes_the_producer_wait_until_an_event_starts() -> None:
    queue = BackpressureQueue(2, "block")
    await fill(queue, item("a"), item("b"))
    producer = asyncio.create_task(queue.put(item("c")))
    assert await still_waiting(producer)
    assert len(queue) == 2

    assert names(await take(queue, 1)) == ["a"]
    result = await asyncio.wait_for(producer, 1)
    assert result.accepted and result.evicted is None
    assert names(await take(queue, 2)) == ["b", "c"]


async def test_close_releases_a_blocked_producer_without_accepting_its_event() -> None:
    queue = BackpressureQueue(1, "block")
    await fill(queue, item("a"))
    producer = asyncio.create_task(queue.put(item("b")))
    assert await still_waiting(producer)
    queue.close()
    assert not (await asyncio.wait_for(producer, 1)).accepted
    assert names(queue.drain()) == ["a"]


async def test_drop_oldest_evicts_the_oldest_buffered_event_and_hands_it_back() -> None:
    queue = BackpressureQueue(2, "drop_oldest")
    await fill(queue, item("a"), item("b"))
    result = await queue.put(item("c"))
    assert result.accepted
    assert result.evicted is not None and result.evicted.key == "a"  # to be acked and counted
    assert len(queue) == 2
    assert names(await take(queue, 2)) == ["b", "c"]


@pytest.mark.parametrize("strategy", ["drop_newest", "reject"])
async def test_drop_newest_and_reject_refuse_the_incoming_event(strategy: Any) -> None:
    queue = BackpressureQueue(2, strategy)
    await fill(queue, item("a"), item("b"))
    result = await queue.put(item("c"))
    assert not result.accepted and result.evicted is None
    assert names(await take(queue, 2)) == ["a", "b"]


async def test_the_queue_never_holds_more_than_its_capacity() -> None:
    queue = BackpressureQueue(5, "drop_oldest")
    sizes = []
    for n in range(100):
        await queue.put(item(str(n)))
        sizes.append(len(queue))
    assert max(sizes) == 5
    assert names(await take(queue, 5)) == ["95", "96", "97", "98", "99"]


def test_a_queue_needs_room_for_one_event() -> None:
    with pytest.raises(ValueError, match="queue_size must be >= 1"):
        BackpressureQueue(0)


async def test_events_start_in_arrival_order() -> None:
    queue = BackpressureQueue(10)
    await fill(queue, *(item(str(n)) for n in range(10)))
    assert names(await take(queue, 10)) == [str(n) for n in range(10)]


# -- concurrency keys ------------------------------------------------------------------------
async def test_a_busy_key_parks_its_events_without_blocking_other_keys() -> None:
    queue = BackpressureQueue(10)
    await fill(queue, item("alice-1", "alice"), item("alice-2", "alice"), item("bob-1", "bob"))
    alice_1, bob_1 = await take(queue, 2)
    assert names([alice_1, bob_1]) == ["alice-1", "bob-1"]  # alice-2 waits, bob-1 does not

    waiting = asyncio.create_task(queue.get())
    assert await still_waiting(waiting)  # alice-2 may not start while alice-1 runs
    assert len(queue) == 1  # a parked event is still buffered
    queue.done(alice_1)
    assert (await asyncio.wait_for(waiting, 1)).key == "alice-2"


async def test_events_of_one_key_run_one_at_a_time_in_arrival_order() -> None:
    queue = BackpressureQueue(10)
    await fill(queue, *(item(f"a{n}", "a") for n in range(4)))
    started = []
    for _ in range(4):
        (running,) = await take(queue, 1)
        started.append(running.key)
        queue.done(running)
    assert started == ["a0", "a1", "a2", "a3"]


async def test_a_parked_event_handed_back_goes_before_events_that_arrived_after_it() -> None:
    queue = BackpressureQueue(10)
    await fill(queue, item("a1", "a"), item("a2", "a"), item("x"))
    a1, x = await take(queue, 2)
    assert names([a1, x]) == ["a1", "x"]  # a2 parked behind a1
    await fill(queue, item("y"))
    queue.done(a1)
    assert names(await take(queue, 2)) == ["a2", "y"]


async def test_parked_events_count_against_the_capacity() -> None:
    queue = BackpressureQueue(2, "drop_newest")
    await fill(queue, item("a1", "a"))
    assert names(await take(queue, 1)) == ["a1"]
    await fill(queue, item("a2", "a"), item("a3", "a"))
    waiting = asyncio.create_task(queue.get())
    assert await still_waiting(waiting)  # both parked behind a1
    assert not (await queue.put(item("b"))).accepted  # full, though nothing can start
    waiting.cancel()


async def test_a_parked_event_evicted_by_drop_oldest_never_starts() -> None:
    queue = BackpressureQueue(2, "drop_oldest")
    await fill(queue, item("a1", "a"))
    (a1,) = await take(queue, 1)
    await fill(queue, item("a2", "a"), item("b"))
    assert names(await take(queue, 1)) == ["b"]  # a2 is parked now
    await fill(queue, item("c"))
    evicted = (await queue.put(item("d"))).evicted
    assert evicted is not None and evicted.key == "a2"
    queue.done(a1)
    assert names(await take(queue, 2)) == ["c", "d"]


# -- max_concurrent_sagas per trigger --------------------------------------------------------
async def test_a_trigger_at_its_limit_parks_its_events_without_blocking_other_triggers() -> None:
    limited = trigger("reports.on_tick", max_concurrent=1)
    queue = BackpressureQueue(10)
    await fill(
        queue, item("r1", of=limited), item("r2", of=limited), item("o1"), item("r3", of=limited)
    )
    r1, o1 = await take(queue, 2)
    assert names([r1, o1]) == ["r1", "o1"]
    assert queue.running("reports.on_tick") == 1

    waiting = asyncio.create_task(queue.get())
    assert await still_waiting(waiting)
    queue.done(r1)
    r2 = await asyncio.wait_for(waiting, 1)
    assert r2.key == "r2"  # in arrival order
    queue.done(r2)
    assert names(await take(queue, 1)) == ["r3"]


async def test_running_counts_started_and_unfinished_sagas_per_trigger() -> None:
    queue = BackpressureQueue(10)
    await fill(queue, item("a"), item("b"))
    a, _ = await take(queue, 2)
    assert queue.running(ORDERS.trigger_id) == 2
    queue.done(a)
    assert queue.running(ORDERS.trigger_id) == 1


# -- rate limits -----------------------------------------------------------------------------
async def test_a_trigger_out_of_tokens_parks_its_events_without_blocking_other_triggers() -> None:
    clock = FakeClock()
    limited = trigger("billing.on_invoice", bucket=TokenBucket(2, clock))  # 1 every 0.5 s
    queue = BackpressureQueue(10)
    try:
        await fill(queue, *(item(f"i{n}", of=limited) for n in range(3)), item("o1"))
        assert names(await take(queue, 2)) == ["i0", "o1"]  # i1 waits for a token, o1 does not
        waiting = asyncio.create_task(queue.get())
        assert await still_waiting(waiting)

        await clock.advance(0.5)
        assert (await asyncio.wait_for(waiting, 1)).key == "i1"
        waiting = asyncio.create_task(queue.get())
        await clock.advance(0.4)
        assert await still_waiting(waiting)
        await clock.advance(0.1)
        assert (await asyncio.wait_for(waiting, 1)).key == "i2"
    finally:
        queue.close()


async def test_a_later_event_never_takes_a_token_ahead_of_the_parked_ones() -> None:
    clock = FakeClock()
    limited = trigger("billing.on_invoice", bucket=TokenBucket(2, clock))  # 1 every 0.5 s
    queue = BackpressureQueue(10)
    try:
        await fill(queue, item("i0", of=limited), item("i1", of=limited))
        assert names(await take(queue, 1)) == ["i0"]
        waiting = asyncio.create_task(queue.get())
        assert await still_waiting(waiting)  # i1 parked for a token
        clock.set_time(clock.now() + timedelta(seconds=1))  # a token is due, nobody woken yet
        await fill(queue, item("i2", of=limited))
        assert await still_waiting(waiting)  # i2 must not take i1's token
        await clock.advance(0)
        assert (await asyncio.wait_for(waiting, 1)).key == "i1"
        await clock.advance(0.5)
        assert names(await take(queue, 1)) == ["i2"]
    finally:
        queue.close()


# -- shutdown --------------------------------------------------------------------------------
async def test_drain_hands_back_every_buffered_event_parked_ones_included() -> None:
    queue = BackpressureQueue(10)
    await fill(queue, item("a1", "a"), item("a2", "a"), item("b"))
    assert names(await take(queue, 2)) == ["a1", "b"]
    await fill(queue, item("c"))
    assert names(queue.drain()) == ["a2", "c"]  # not started: to be nacked
    assert len(queue) == 0


async def test_depth_counts_the_buffered_events_of_each_trigger() -> None:
    """Ready and parked events count; started, evicted and drained ones no longer do."""
    queue = BackpressureQueue(3, "drop_oldest")
    refunds = trigger("refunds.on_refund", max_concurrent=1)
    await fill(queue, item("o1"), item("r1", of=refunds), item("r2", of=refunds))
    assert (queue.depth(ORDERS.trigger_id), queue.depth("refunds.on_refund")) == (1, 2)
    assert (await queue.put(item("o2"))).evicted.key == "o1"  # type: ignore[union-attr]
    assert (queue.depth(ORDERS.trigger_id), queue.depth("refunds.on_refund")) == (1, 2)
    started = await take(queue, 2)  # r1 and o2; r2 is parked behind r1's trigger slot
    assert sorted(names(started)) == ["o2", "r1"]
    assert (queue.depth(ORDERS.trigger_id), queue.depth("refunds.on_refund")) == (0, 1)
    assert queue.depth("unknown.trigger") == 0
    assert names(queue.drain()) == ["r2"]
    assert queue.depth("refunds.on_refund") == 0
