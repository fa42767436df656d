"""``TokenBucket`` (``rate_limit_per_second``) on fake time: burst, refill rate, delay(), and
waiters served in arrival order."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from sagaz.engine.limits import TokenBucket
from sagaz.testing import FakeClock


def taken(bucket: TokenBucket) -> int:
    """How many tokens can be taken right now."""
    count = 0
    while bucket.try_take():
        count += 1
    return count


def test_a_full_bucket_gives_its_burst_at_once_then_nothing() -> None:
    assert taken(TokenBucket(2, FakeClock(), burst=5)) == 5
    assert taken(TokenBucket(2, FakeClock())) == 1  # burst 1 by default


async def test_tokens_come_back_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(4, clock)  # one every 0.25 s
    assert taken(bucket) == 1
    await clock.advance(0.2)
    assert not bucket.try_take()
    await clock.advance(0.05)
    assert bucket.try_take()
    assert not bucket.try_take()


async def test_an_idle_bucket_fills_up_to_its_burst_only() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10, clock, burst=3)
    assert taken(bucket) == 3
    await clock.advance(3600)
    assert taken(bucket) == 3


async def test_over_a_long_run_the_rate_is_kept() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5, clock)
    started = taken(bucket)
    for _ in range(100):  # 10 s in steps of 0.1 s
        await clock.advance(0.1)
        started += taken(bucket)
    assert started == 1 + 50


async def test_delay_is_the_time_until_the_next_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, clock)
    assert bucket.delay() == 0  # a token is there
    bucket.try_take()
    assert bucket.delay() == pytest.approx(0.5)
    await clock.advance(0.2)
    assert bucket.delay() == pytest.approx(0.3)
    await clock.advance(0.3)
    assert bucket.delay() == 0


async def test_acquire_waits_on_the_clock_for_a_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(2, clock)
    await asyncio.wait_for(bucket.acquire(), 1)  # the first token is there
    second = asyncio.create_task(bucket.acquire())
    await clock.settle()
    assert not second.done() and clock.sleepers == 1
    await clock.advance(0.4)
    assert not second.done()
    await clock.advance(0.1)
    await asyncio.wait_for(second, 1)


async def test_acquire_serves_waiters_in_arrival_order_one_per_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, clock)
    order: list[int] = []

    async def waiter(n: int) -> None:
        await bucket.acquire()
        order.append(n)

    tasks = []
    for n in range(4):
        tasks.append(asyncio.create_task(waiter(n)))
        await clock.settle()
    assert order == [0]
    for expected in ([0, 1], [0, 1, 2], [0, 1, 2, 3]):
        await clock.advance(1)
        assert order == expected
    await asyncio.gather(*tasks)


async def test_a_newcomer_never_takes_the_token_a_waiter_is_waiting_for() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1, clock)
    order: list[str] = []

    async def acquire(name: str) -> None:
        await bucket.acquire()
        order.append(name)

    await acquire("first")
    waiter = asyncio.create_task(acquire("waiter"))
    await clock.settle()  # asleep until t=1
    clock.set_time(clock.now() + timedelta(seconds=1))  # the token is due, the waiter not woken
    newcomer = asyncio.create_task(acquire("newcomer"))
    await clock.settle()
    assert order == ["first"]
    await clock.advance(0)  # wakes the waiter
    assert order == ["first", "waiter"]
    await clock.advance(1)
    await asyncio.gather(waiter, newcomer)
    assert order == ["first", "waiter", "newcomer"]


@pytest.mark.parametrize("rate", [0, -1])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ValueError, match="rate_limit_per_second must be > 0"):
        TokenBucket(rate, FakeClock())
