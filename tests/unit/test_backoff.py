"""``Backoff``: growth, cap, jitter bounds, reset, and sleeping on a ``FakeClock``."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from sagaz.backoff import Backoff
from sagaz.clock import SystemClock
from sagaz.testing import FakeClock


def test_delays_grow_by_factor_up_to_maximum_without_jitter() -> None:
    backoff = Backoff(SystemClock(), initial=0.1, maximum=1.0, factor=2.0, jitter=0.0)
    delays = [backoff.next() for _ in range(7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0])
    assert backoff.attempts == 7


def test_a_long_outage_stays_at_the_maximum() -> None:
    backoff = Backoff(SystemClock(), initial=0.5, maximum=30.0, jitter=0.0)
    for _ in range(5000):  # 0.5 * 2**5000 would overflow a float
        delay = backoff.next()
    assert delay == 30.0


def test_factor_reproduces_a_fixed_schedule() -> None:
    # the Redis source's XACK pauses: 0.05, 0.25, then capped at 1.0
    backoff = Backoff(SystemClock(), initial=0.05, maximum=1.0, factor=5.0, jitter=0.0)
    assert [backoff.next() for _ in range(4)] == pytest.approx([0.05, 0.25, 1.0, 1.0])


@pytest.mark.parametrize("jitter", [0.5, 1.0, 0.2])
def test_jittered_delays_stay_between_the_jitter_floor_and_the_nominal_delay(
    jitter: float,
) -> None:
    rng = random.Random(1234)
    nominal = [min(10.0, 0.2 * 2**n) for n in range(48)]
    for _ in range(50):
        backoff = Backoff(SystemClock(), initial=0.2, maximum=10.0, jitter=jitter, rng=rng)
        for expected in nominal:
            delay = backoff.next()
            assert expected * (1 - jitter) <= delay <= expected
            assert delay <= backoff.maximum


def test_equal_jitter_by_default_spreads_the_delays() -> None:
    backoff = Backoff(SystemClock(), initial=1.0, maximum=1.0, rng=random.Random(5))
    delays = [backoff.next() for _ in range(200)]
    assert min(delays) >= 0.5
    assert max(delays) <= 1.0
    assert max(delays) - min(delays) > 0.3  # not one value: workers do not come back together


def test_the_same_seed_gives_the_same_delays() -> None:
    def delays(seed: int) -> list[float]:
        backoff = Backoff(SystemClock(), initial=0.1, maximum=5.0, rng=random.Random(seed))
        return [backoff.next() for _ in range(10)]

    assert delays(42) == delays(42)
    assert delays(42) != delays(43)


def test_reset_starts_over_from_initial() -> None:
    backoff = Backoff(SystemClock(), initial=0.1, maximum=5.0, jitter=0.0)
    for _ in range(6):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == pytest.approx(0.1)
    assert backoff.attempts == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"initial": 0.0}, "initial=0.0 must be > 0"),
        ({"initial": 2.0, "maximum": 1.0}, "maximum=1.0 must be >= initial=2.0"),
        ({"factor": 0.5}, "factor=0.5 must be >= 1"),
        ({"jitter": 1.5}, "jitter=1.5 must be between 0 and 1"),
    ],
)
def test_bad_arguments_are_rejected(options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(SystemClock(), **options)


async def test_sleep_waits_on_the_fake_clock_without_real_time() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, initial=60.0, maximum=3600.0, jitter=0.0)
    started = time.monotonic()
    sleeping = asyncio.create_task(backoff.sleep())
    await clock.settle()
    assert clock.sleepers == 1
    await clock.advance(59.9)
    assert not sleeping.done()  # the delay is 60 s of the clock
    await clock.advance(0.1)
    assert sleeping.done()
    assert sleeping.result() == 60.0
    assert backoff.attempts == 1

    sleeping = asyncio.create_task(backoff.sleep())  # the next one doubles
    await clock.settle()
    await clock.advance(119)
    assert not sleeping.done()
    await clock.advance(1)
    assert await sleeping == 120.0
    assert clock.monotonic() == 180.0
    assert time.monotonic() - started < 5  # three minutes of backoff took no real time


async def test_sleep_of_a_given_delay_does_not_draw_another() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, initial=1.0, maximum=8.0, jitter=0.0)
    delay = backoff.next()  # e.g. to log "retrying in 1.0s" first
    sleeping = asyncio.create_task(backoff.sleep(delay))
    await clock.settle()
    await clock.advance(1.0)
    assert await sleeping == 1.0
    assert backoff.attempts == 1
    assert backoff.next() == 2.0


async def test_sleep_ends_early_when_the_stop_event_is_set() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, initial=30.0, maximum=30.0)
    stop = asyncio.Event()
    sleeping = asyncio.create_task(backoff.sleep(until=stop))
    await clock.settle()
    assert clock.sleepers == 1
    stop.set()
    await asyncio.wait_for(sleeping, 5)
    assert clock.sleepers == 0  # its clock sleep was cancelled, not left behind
    assert clock.monotonic() == 0.0

    await asyncio.wait_for(backoff.sleep(until=stop), 5)  # already set: no wait at all
    assert clock.sleepers == 0


async def test_cancelling_a_sleep_propagates_and_leaves_no_sleeper() -> None:
    clock = FakeClock()
    backoff = Backoff(clock, initial=5.0, maximum=5.0)
    for until in (None, asyncio.Event()):
        sleeping = asyncio.create_task(backoff.sleep(until=until))
        await clock.settle()
        assert clock.sleepers == 1
        sleeping.cancel()
        with pytest.raises(asyncio.CancelledError):
            await sleeping
        assert clock.sleepers == 0
