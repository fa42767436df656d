"""``sagaz.testing.eventually`` / ``continually``: the suite's (and users') polling helpers."""

from __future__ import annotations

import asyncio
import time

import pytest

from sagaz.testing import continually, eventually


async def test_eventually_returns_the_first_truthy_answer_of_a_plain_condition() -> None:
    answers = iter([None, 0, "", "ready", "later"])
    assert await eventually(lambda: next(answers), within=1, interval=0) == "ready"


async def test_eventually_awaits_an_async_condition() -> None:
    polls = 0

    async def third_time_lucky() -> int | None:
        nonlocal polls
        polls += 1
        return polls if polls == 3 else None

    assert await eventually(third_time_lucky, within=1, interval=0) == 3


async def test_eventually_waits_for_a_change_made_by_another_task() -> None:
    done: list[int] = []

    async def later() -> None:
        await asyncio.sleep(0.05)
        done.append(1)

    task = asyncio.create_task(later())
    await eventually(lambda: done, within=2, what="the other task")
    await task
    assert done == [1]


async def test_eventually_fails_with_what_it_waited_for_after_the_deadline() -> None:
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"timed out after 0\.1s waiting for the order row"):
        await eventually(lambda: False, within=0.1, what="the order row")
    assert 0.1 <= time.monotonic() - started < 1


async def test_an_error_in_the_condition_is_raised_at_once_not_retried() -> None:
    calls = 0

    def broken() -> bool:
        nonlocal calls
        calls += 1
        raise ConnectionError("store down")

    with pytest.raises(ConnectionError, match="store down"):
        await eventually(broken, within=5)
    assert calls == 1


async def test_continually_passes_when_the_condition_holds_for_the_whole_window() -> None:
    polls = 0

    async def holds() -> bool:
        nonlocal polls
        polls += 1
        return True

    started = time.monotonic()
    await continually(holds, during=0.1, interval=0.01)
    assert time.monotonic() - started >= 0.1
    assert polls >= 2


async def test_continually_fails_at_the_first_poll_that_breaks_the_invariant() -> None:
    answers = iter([True, True, False])
    started = time.monotonic()
    with pytest.raises(AssertionError, match="at most one in flight stopped holding"):
        await continually(lambda: next(answers), during=5, interval=0, what="at most one in flight")
    assert time.monotonic() - started < 1  # not after the whole window
